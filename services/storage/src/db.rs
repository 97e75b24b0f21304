//! Connection pool, database creation and migrations.

use std::time::Duration;

use anyhow::Context as _;
use deadpool::Runtime;
use diesel::{QueryableByName, sql_types::BigInt};
use diesel_async::{
    AsyncMysqlConnection, RunQueryDsl,
    async_connection_wrapper::AsyncConnectionWrapper,
    pooled_connection::{AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod, deadpool::Pool},
};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use futures::FutureExt as _;
use mysql_async::prelude::Queryable as _;

use crate::error::{Result, StorageError};

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

pub type DbPool = Pool<AsyncMysqlConnection>;
pub type DbConn = deadpool::managed::Object<AsyncDieselConnectionManager<AsyncMysqlConnection>>;

/// The pool plus the bound every database round of one request must finish within.
#[derive(Clone)]
pub struct Db {
    pool: DbPool,
    query_timeout: Duration,
}

impl Db {
    pub fn new(pool: DbPool, query_timeout: Duration) -> Self {
        Self { pool, query_timeout }
    }

    pub fn pool(&self) -> &DbPool {
        &self.pool
    }

    pub async fn conn(&self) -> Result<DbConn> {
        Ok(self.pool.get().await?)
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
    AsyncMysqlConnection::try_from(conn).await
}

pub struct PoolSettings {
    pub max_size: usize,
    pub connect_timeout: Duration,
}

pub fn build_pool(url: &str, settings: &PoolSettings) -> anyhow::Result<DbPool> {
    let mut manager_config = ManagerConfig::<AsyncMysqlConnection>::default();
    manager_config.custom_setup = Box::new(|url| establish(url.to_string()).boxed());
    // Each checkout pings the connection: a connection that died while the database was away
    // is dropped and replaced instead of failing the next request.
    manager_config.recycling_method = RecyclingMethod::Verified;
    let manager = AsyncDieselConnectionManager::<AsyncMysqlConnection>::new_with_config(url, manager_config);
    Pool::builder(manager)
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
    conn.query_drop(format!(
        "CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
    ))
    .await
    .with_context(|| format!("cannot create database {name}"))?;
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
        let mut wrapper: AsyncConnectionWrapper<AsyncMysqlConnection> = AsyncConnectionWrapper::from(conn);
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
    let _ = diesel::sql_query("SELECT RELEASE_LOCK(CONCAT('iot_storage_migrations.', MD5(DATABASE())))")
        .execute(&mut conn)
        .await;
    Ok(())
}

/// Used by /readyz: one round trip on a pooled connection.
pub async fn ping(db: &Db) -> Result<()> {
    db.bounded(async {
        let mut conn = db.conn().await?;
        diesel::sql_query("SELECT 1").execute(&mut conn).await?;
        Ok(())
    })
    .await
}

