//! SQL text with binds whose prepared statement diesel keeps per connection.
//!
//! diesel never caches `sql_query` statements, so each costs a prepare round trip before the
//! execute. The read paths that need SQL text (UNION ALL over a device's metrics) produce only
//! a handful of distinct texts, so keeping them prepared turns two round trips into one. Texts
//! beyond `MAX_CACHED_PARTS` parts are left uncached so that the number of server-side
//! statements stays bounded (MySQL's `max_prepared_stmt_count` is server-wide).

use std::marker::PhantomData;

use diesel::{
    QueryResult,
    mysql::Mysql,
    query_builder::{AstPass, Query, QueryFragment, QueryId},
    sql_types::{BigInt, Unsigned, Untyped, Varchar},
};

pub const MAX_CACHED_PARTS: usize = 16;

#[derive(Debug, Clone)]
pub enum Bind {
    U64(u64),
    I64(i64),
    Text(String),
}

/// `sql` holds exactly one `?` per entry of `binds`, in order, and no other `?`.
///
/// `ST` is the SQL type of a result row. `Untyped` rows load into `QueryableByName` structs,
/// which look every column up by name in every row; a tuple of SQL types (e.g. `(Varchar,
/// BigInt, Double)`) loads positionally into a tuple, which on a page of readings is a
/// measurable share of storage's CPU.
#[derive(Debug, Clone)]
pub struct CachedSql<ST = Untyped> {
    sql: String,
    binds: Vec<Bind>,
    cache: bool,
    row: PhantomData<fn() -> ST>,
}

impl<ST> CachedSql<ST> {
    pub fn new(sql: String, binds: Vec<Bind>, cache: bool) -> Self {
        debug_assert_eq!(sql.matches('?').count(), binds.len());
        Self {
            sql,
            binds,
            cache,
            row: PhantomData,
        }
    }
}

impl<ST> QueryFragment<Mysql> for CachedSql<ST> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Mysql>) -> QueryResult<()> {
        if !self.cache {
            out.unsafe_to_cache_prepared();
        }
        let mut pieces = self.sql.split('?');
        if let Some(first) = pieces.next() {
            out.push_sql(first);
        }
        for (bind, piece) in self.binds.iter().zip(pieces) {
            match bind {
                Bind::U64(value) => out.push_bind_param::<Unsigned<BigInt>, _>(value)?,
                Bind::I64(value) => out.push_bind_param::<BigInt, _>(value)?,
                Bind::Text(value) => out.push_bind_param::<Varchar, _>(value)?,
            }
            out.push_sql(piece);
        }
        Ok(())
    }
}

impl<ST> QueryId for CachedSql<ST> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<ST: 'static> Query for CachedSql<ST> {
    type SqlType = ST;
}
