//! SQL text with binds whose prepared statement diesel keeps per connection.
//!
//! diesel never caches `sql_query` statements, so each costs a prepare round trip before the
//! execute. The read paths that need SQL text (UNION ALL over a device's metrics) produce only
//! a handful of distinct texts, so keeping them prepared turns two round trips into one. Texts
//! beyond `MAX_CACHED_PARTS` parts are left uncached so that the number of server-side
//! statements stays bounded (MySQL's `max_prepared_stmt_count` is server-wide).

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
#[derive(Debug, Clone)]
pub struct CachedSql {
    sql: String,
    binds: Vec<Bind>,
    cache: bool,
}

impl CachedSql {
    pub fn new(sql: String, binds: Vec<Bind>, cache: bool) -> Self {
        debug_assert_eq!(sql.matches('?').count(), binds.len());
        Self { sql, binds, cache }
    }
}

impl QueryFragment<Mysql> for CachedSql {
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

impl QueryId for CachedSql {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for CachedSql {
    type SqlType = Untyped;
}
