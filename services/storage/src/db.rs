//! Connection pool, database creation and migrations.

use std::time::Duration;

use anyhow::Context as _;
use deadpool::Runtime;
use deadpool::managed::{Manager, Metrics, RecycleError, RecycleResult};
use diesel::{QueryableByName, sql_types::BigInt};
use diesel_async::{
    AsyncConnection as _, AsyncMysqlConnection, RunQueryDsl,
    async_connection_wrapper::AsyncConnectionWrapper,
    pooled_connection::{PoolError as ConnPoolError, PoolableConnection},
};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use mysql_async::prelude::Queryable as _;

use crate::error::{Result, StorageError};

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

pub type DbPool = deadpool::managed::Pool<MysqlManager>;
pub type DbConn = deadpool::managed::Object<MysqlManager>;

/// Same shape as diesel-async's helper: lets `run` demand a `Send` future from an async closure
/// that borrows the connection, which tonic's handlers need.
pub trait AsyncFunc<T, R>:
    AsyncFnOnce(T) -> R + FnOnce(T) -> <Self as AsyncFunc<T, R>>::Fut
{
    type Fut: Future<Output = R>;
}

impl<F, T, Fut, R> AsyncFunc<T, R> for F
where
    F: AsyncFnOnce(T) -> R + FnOnce(T) -> Fut,
    Fut: Future<Output = R>,
{
    type Fut = Fut;
}
/// The pool plus the bound every database round of one request must finish within.
#[derive(Clone)]
pub struct Db {
    pool: DbPool,
    query_timeout: Duration,
}

impl Db {
    pub fn new(pool: DbPool, query_timeout: Duration) -> Self {
        Self {
            pool,
            query_timeout,
        }
    }

    pub fn pool(&self) -> &DbPool {
        &self.pool
    }

    /// Bound on the database work of one request.
    pub fn query_timeout(&self) -> Duration {
        self.query_timeout
    }

    pub async fn conn(&self) -> Result<DbConn> {
        Ok(self.pool.get().await?)
    }

    /// Runs `work` on a pooled connection within the query timeout. A connection whose work
    /// failed for connection reasons or was cut short by the timeout (its protocol state is then
    /// unknown) is dropped from the pool instead of being handed to the next request.
    pub async fn run<T, F>(&self, work: F) -> Result<T>
    where
        for<'r> F: AsyncFnOnce(&'r mut AsyncMysqlConnection) -> Result<T>
            + AsyncFunc<&'r mut AsyncMysqlConnection, Result<T>, Fut: Send>
            + Send,
        T: Send,
    {
        let mut checkout = Checkout {
            conn: Some(self.conn().await?),
            keep: false,
        };
        let Some(conn) = checkout.conn.as_mut() else {
            return Err(StorageError::Unexpected(anyhow::anyhow!(
                "checked-out connection missing"
            )));
        };
        let result = self.bounded(work(conn)).await;
        checkout.keep = !matches!(result, Err(StorageError::Unavailable(_)));
        result
    }

    /// Runs `work` (usually a few queries on one pooled connection) with the query timeout,
    /// so that a database that stops answering gives UNAVAILABLE instead of a hung call.
    pub async fn bounded<T>(&self, work: impl Future<Output = Result<T>>) -> Result<T> {
        match tokio::time::timeout(self.query_timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(StorageError::Unavailable(format!(
                "the database did not answer within {:?}",
                self.query_timeout
            ))),
        }
    }
}

/// A connection on loan to one request. Unless the request finished in a known state, the
/// connection is closed rather than returned: that covers failures, timeouts, and the request
/// future being dropped halfway through a query (a client that cancels its call), after which
/// the connection's protocol state is unknown.
struct Checkout {
    conn: Option<DbConn>,
    keep: bool,
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if !self.keep
            && let Some(conn) = self.conn.take()
        {
            drop(DbConn::take(conn));
        }
    }
}

/// Connection options shared by the pool and the one-off connections below.
fn connection_opts(url: &str) -> Result<mysql_async::OptsBuilder, diesel::ConnectionError> {
    let opts = mysql_async::Opts::from_url(url)
        .map_err(|e| diesel::ConnectionError::InvalidConnectionUrl(e.to_string()))?;
    // mysql_async otherwise reconnects through the server's Unix socket when the host is
    // local, which silently bypasses whatever sits on the TCP path (a proxy, a port
    // forward) and ignores the address the operator configured. A URL may still opt in.
    let prefer_socket = url.contains("prefer_socket=true");
    Ok(mysql_async::OptsBuilder::from_opts(opts)
        .prefer_socket(prefer_socket)
        .stmt_cache_size(0) // diesel-async keeps its own statement cache
        .client_found_rows(true) // affected rows = matched rows for UPDATE, as diesel expects
        .tcp_nodelay(true)
        .tcp_keepalive(Some(30_000u32)))
}

async fn establish(url: String) -> diesel::ConnectionResult<AsyncMysqlConnection> {
    let opts = connection_opts(&url)?;
    let conn = mysql_async::Conn::new(opts)
        .await
        .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))?;
    let target = crate::db_trace::Target::of(&conn);
    let mut conn = AsyncMysqlConnection::try_from(conn).await?;
    // Client spans for the statements run inside traced requests (db_trace.rs).
    conn.set_instrumentation(crate::db_trace::QueryTracing::new(target));
    Ok(conn)
}

/// Connections for the pool. A connection idle for a while is pinged before reuse (the server
/// may have closed it, or gone away and come back); one in steady use is not, which saves a
/// round trip per request. A connection that fails in use is dropped by `Db::run`.
pub struct MysqlManager {
    url: String,
    verify_after_idle: Duration,
}

impl Manager for MysqlManager {
    type Type = AsyncMysqlConnection;
    type Error = ConnPoolError;

    async fn create(&self) -> Result<AsyncMysqlConnection, ConnPoolError> {
        establish(self.url.clone())
            .await
            .map_err(ConnPoolError::ConnectionError)
    }

    async fn recycle(
        &self,
        conn: &mut AsyncMysqlConnection,
        metrics: &Metrics,
    ) -> RecycleResult<ConnPoolError> {
        if conn.is_broken() {
            return Err(RecycleError::message(
                "connection left in a broken transaction state",
            ));
        }
        if metrics.last_used() >= self.verify_after_idle {
            diesel::sql_query("SELECT 1")
                .execute(conn)
                .await
                .map_err(|e| RecycleError::Backend(ConnPoolError::QueryError(e)))?;
        }
        Ok(())
    }
}

pub struct PoolSettings {
    pub max_size: usize,
    pub connect_timeout: Duration,
}

pub fn build_pool(url: &str, settings: &PoolSettings) -> anyhow::Result<DbPool> {
    let manager = MysqlManager {
        url: url.to_string(),
        verify_after_idle: Duration::from_secs(1),
    };
    DbPool::builder(manager)
        .max_size(settings.max_size)
        .wait_timeout(Some(settings.connect_timeout))
        .create_timeout(Some(settings.connect_timeout))
        .recycle_timeout(Some(settings.connect_timeout))
        .runtime(Runtime::Tokio1)
        .build()
        .context("cannot build the database connection pool")
}

/// Creates the database named in `url` if it does not exist yet (local runs and tests).
pub async fn ensure_database(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let opts = connection_opts(url)?;
    let mysql_opts = mysql_async::Opts::from(opts.clone());
    let Some(name) = mysql_opts.db_name().map(str::to_string) else {
        anyhow::bail!("the database URL names no database");
    };
    if name.contains('`') {
        anyhow::bail!("unsupported database name {name:?}");
    }
    let server_opts = opts.db_name(None::<String>);
    let mut conn = tokio::time::timeout(timeout, mysql_async::Conn::new(server_opts))
        .await
        .context("timed out connecting to the database server")?
        .context("cannot connect to the database server")?;
    // Asked first so that an account without the CREATE privilege works on an existing database.
    let exists: Option<String> = conn
        .exec_first(
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
            (name.as_str(),),
        )
        .await
        .context("cannot list databases")?;
    if exists.is_none() {
        conn.query_drop(format!(
            "CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        ))
        .await
        .with_context(|| format!("cannot create database {name}"))?;
        tracing::info!(database = %name, "created database");
    }
    let _ = conn.disconnect().await;
    Ok(())
}

#[derive(QueryableByName)]
struct LockResult {
    #[diesel(sql_type = diesel::sql_types::Nullable<BigInt>)]
    locked: Option<i64>,
}

/// Applies pending migrations. Replicas starting together serialise on a named lock scoped to
/// this database, so exactly one of them runs each migration and the others find nothing to do.
pub async fn run_migrations(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let mut conn = tokio::time::timeout(timeout, establish(url.to_string()))
        .await
        .context("timed out connecting to the database")?
        .context("cannot connect to the database")?;
    // Writes send their readings through JSON_TABLE (readings.rs): refuse to start on a server
    // without it rather than fail every write later.
    diesel::sql_query("SELECT x FROM JSON_TABLE('[1]', '$[*]' COLUMNS (x INT PATH '$')) AS t")
        .execute(&mut conn)
        .await
        .context("the database server lacks JSON_TABLE (MariaDB 10.6+ or MySQL 8.0+ is needed)")?;
    let lock: LockResult = diesel::sql_query(
        "SELECT GET_LOCK(CONCAT('iot_storage_migrations.', MD5(DATABASE())), 60) AS locked",
    )
    .get_result(&mut conn)
    .await
    .context("cannot take the migration lock")?;
    if lock.locked != Some(1) {
        anyhow::bail!("another replica held the migration lock for 60 s; giving up");
    }
    // diesel's migration harness is synchronous: run it on a blocking thread through the
    // wrapper, which drives the async connection with the runtime handle.
    let conn = tokio::task::spawn_blocking(move || -> anyhow::Result<AsyncMysqlConnection> {
        let mut wrapper: AsyncConnectionWrapper<AsyncMysqlConnection> =
            AsyncConnectionWrapper::from(conn);
        let applied = wrapper
            .run_pending_migrations(MIGRATIONS)
            .map_err(|e| anyhow::anyhow!("migration failed: {e}"))?;
        for version in applied {
            tracing::info!(%version, "applied migration");
        }
        Ok(wrapper.into_inner())
    })
    .await
    .context("migration task failed")??;
    let mut conn = conn;
    // Closing the connection would release the lock too; releasing it keeps the others from
    // waiting for the close to be noticed.
    let _ = diesel::sql_query(
        "SELECT RELEASE_LOCK(CONCAT('iot_storage_migrations.', MD5(DATABASE())))",
    )
    .execute(&mut conn)
    .await;
    Ok(())
}

/// Used by /readyz: one round trip on a pooled connection.
pub async fn ping(db: &Db) -> Result<()> {
    db.run(async |conn| {
        diesel::sql_query("SELECT 1").execute(conn).await?;
        Ok(())
    })
    .await
}
