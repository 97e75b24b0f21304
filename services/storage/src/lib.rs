//! The storage service: the only owner of the relational database. Users, devices and
//! readings over gRPC (`iot.storage.v1.StorageService`), on MariaDB/MySQL through diesel-async.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use iot_proto::storage::v1::storage_service_server::StorageServiceServer;
use iot_runtime::{CancellationToken, OpsServer, ReadinessCheck, logging::LogFormat};
use tokio::net::TcpListener;
use tokio_stream::{StreamExt as _, wrappers::TcpListenerStream};

mod bounded_map;
mod cached_sql;
pub mod db;
pub mod db_trace;
pub mod devices;
pub mod error;
pub mod metrics;
pub mod readings;
pub mod schema;
pub mod service;
pub mod users;
pub mod validate;

pub use error::StorageError;

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "iot-storage", about = "IoT telemetry storage service")]
pub struct Config {
    /// Address of the gRPC server.
    #[arg(long, env = "STORAGE_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,
    /// Address of the ops endpoint (/healthz, /readyz, /metrics).
    #[arg(long, env = "STORAGE_METRICS_ADDR", default_value = "127.0.0.1:9102")]
    pub metrics_addr: SocketAddr,
    /// MySQL/MariaDB URL including the database, which is created if missing.
    #[arg(
        long,
        env = "STORAGE_DATABASE_URL",
        default_value = "mysql://root@127.0.0.1:3306/iot"
    )]
    pub database_url: String,
    /// Maximum number of pooled database connections. More connections than the database
    /// server can run at once mostly add contention: with a 2-core MariaDB, range reads at 32
    /// concurrent requests had a p99 about half as long with 4 or 8 connections as with 16, at
    /// the same throughput (docs/benchmarks.md). Across replicas, aim at 2 to 4 per database core.
    #[arg(long, env = "STORAGE_DB_POOL_SIZE", default_value_t = 8)]
    pub db_pool_size: usize,
    /// How many WriteReadings calls run against the database at once; the others wait for a
    /// turn (within STORAGE_DB_QUERY_TIMEOUT). Concurrent batch inserts into the one readings
    /// table contend inside the database: with a 2-core MariaDB and two ingest replicas at
    /// 39,500 msg/s, the publish-to-commit p99 was 242 to 1,066 ms with up to 8 writes at once
    /// and 39 to 62 ms with this bound at 2 (docs/benchmarks.md). Reads are not limited by this.
    #[arg(long, env = "STORAGE_MAX_CONCURRENT_WRITES", default_value_t = 2)]
    pub max_concurrent_writes: usize,
    /// Bound on connecting to the database and on waiting for a pooled connection, in seconds.
    #[arg(long, env = "STORAGE_DB_CONNECT_TIMEOUT", default_value_t = 5.0)]
    pub db_connect_timeout: f64,
    /// Bound on the database work of one request, in seconds; beyond it the call fails UNAVAILABLE.
    #[arg(long, env = "STORAGE_DB_QUERY_TIMEOUT", default_value_t = 30.0)]
    pub db_query_timeout: f64,
    /// How long to keep retrying the database at start before giving up, in seconds.
    #[arg(long, env = "STORAGE_DB_STARTUP_TIMEOUT", default_value_t = 30.0)]
    pub db_startup_timeout: f64,
    /// After SIGTERM, how long calls in flight may take before the server stops anyway, in seconds.
    #[arg(long, env = "STORAGE_SHUTDOWN_GRACE", default_value_t = 20.0)]
    pub shutdown_grace: f64,
    /// Log format: text or json.
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    /// Create and migrate the database, then exit (a Helm pre-upgrade Job runs this once).
    #[arg(long, env = "STORAGE_MIGRATE_ONLY")]
    pub migrate_only: bool,
}

impl Config {
    /// Defaults for tests and embedding: everything on port 0 against `database_url`.
    pub fn for_tests(database_url: impl Into<String>) -> Self {
        Self {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            database_url: database_url.into(),
            db_pool_size: 8,
            max_concurrent_writes: 2,
            db_connect_timeout: 5.0,
            db_query_timeout: 30.0,
            db_startup_timeout: 10.0,
            shutdown_grace: 10.0,
            log_format: LogFormat::Text,
            migrate_only: false,
        }
    }

    fn seconds(value: f64, name: &str) -> anyhow::Result<Duration> {
        Duration::try_from_secs_f64(value)
            .ok()
            .filter(|d| !d.is_zero())
            .with_context(|| format!("{name} must be a positive number of seconds"))
    }
}

/// A built storage service: database migrated, listeners bound, nothing served yet except the
/// ops endpoint.
pub struct Application {
    grpc_listener: TcpListener,
    grpc_addr: SocketAddr,
    ops: OpsServer,
    ops_shutdown: CancellationToken,
    api: service::StorageApi,
    db: db::Db,
    shutdown_grace: Duration,
    /// Set when shutdown begins, so that /readyz turns 503 while calls in flight drain.
    draining: Arc<AtomicBool>,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        anyhow::ensure!(config.db_pool_size > 0, "db-pool-size must be at least 1");
        anyhow::ensure!(
            config.max_concurrent_writes > 0,
            "max-concurrent-writes must be at least 1"
        );
        let connect_timeout = Config::seconds(config.db_connect_timeout, "db-connect-timeout")?;
        let query_timeout = Config::seconds(config.db_query_timeout, "db-query-timeout")?;
        let startup_timeout = Config::seconds(config.db_startup_timeout, "db-startup-timeout")?;
        let shutdown_grace = Config::seconds(config.shutdown_grace, "shutdown-grace")?;

        prepare_database(&config.database_url, connect_timeout, startup_timeout).await?;

        let pool = db::build_pool(
            &config.database_url,
            &db::PoolSettings {
                max_size: config.db_pool_size,
                connect_timeout,
            },
        )?;
        let db = db::Db::new(pool.clone(), query_timeout);
        let registry = prometheus::Registry::new();
        let metrics = Arc::new(metrics::Metrics::register(&registry, pool)?);
        let passwords = users::Passwords::new().await?;
        let api = service::StorageApi::new(
            db.clone(),
            passwords,
            metrics,
            config.max_concurrent_writes,
        );

        let grpc_listener = TcpListener::bind(config.grpc_addr)
            .await
            .with_context(|| format!("cannot bind the gRPC address {}", config.grpc_addr))?;
        let grpc_addr = grpc_listener.local_addr()?;
        let ops_shutdown = CancellationToken::new();
        let readiness_db = db.clone();
        let draining = Arc::new(AtomicBool::new(false));
        let readiness_draining = draining.clone();
        let readiness = ReadinessCheck::new(move || {
            let db = readiness_db.clone();
            let draining = readiness_draining.load(Ordering::SeqCst);
            async move {
                if draining {
                    return Err("shutting down".to_string());
                }
                db::ping(&db).await.map_err(|e| e.to_string())
            }
        });
        let ops = OpsServer::start(
            config.metrics_addr,
            registry,
            readiness,
            ops_shutdown.clone(),
        )
        .await
        .with_context(|| format!("cannot bind the ops address {}", config.metrics_addr))?;
        tracing::info!(%grpc_addr, "storage gRPC server listening");
        Ok(Self {
            grpc_listener,
            grpc_addr,
            ops,
            ops_shutdown,
            api,
            db,
            shutdown_grace,
            draining,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.ops.local_addr
    }

    /// Serves until `shutdown` is cancelled, then reports NOT_SERVING, lets calls in flight
    /// finish and returns.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let (reporter, health_service) = iot_runtime::grpc::health();
        let (reflection_v1, reflection_v1alpha) = iot_runtime::grpc::reflection()?;
        reporter
            .set_serving::<StorageServiceServer<service::StorageApi>>()
            .await;
        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;

        let incoming = TcpListenerStream::new(self.grpc_listener).map(|stream| {
            if let Ok(stream) = &stream {
                // Small request/response messages: no Nagle delay.
                let _ = stream.set_nodelay(true);
            }
            stream
        });
        let on_shutdown = {
            let shutdown = shutdown.clone();
            let reporter = reporter.clone();
            let draining = self.draining.clone();
            async move {
                shutdown.cancelled().await;
                draining.store(true, Ordering::SeqCst);
                reporter
                    .set_not_serving::<StorageServiceServer<service::StorageApi>>()
                    .await;
                reporter
                    .set_service_status("", tonic_health::ServingStatus::NotServing)
                    .await;
                tracing::info!("storage shutting down: draining calls in flight");
            }
        };
        // A server span per call, continuing the caller's trace (traceparent metadata); the
        // database spans of the handler (db_trace.rs) are its children.
        let server = iot_runtime::telemetry::grpc::traced_server()
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                StorageServiceServer::new(self.api).max_decoding_message_size(64 * 1024 * 1024),
            )
            .serve_with_incoming_shutdown(incoming, on_shutdown);
        // A client that keeps a call open must not hold the process past its grace period.
        let grace = self.shutdown_grace;
        let deadline = async move {
            shutdown.cancelled().await;
            tokio::time::sleep(grace).await;
        };
        let served = tokio::select! {
            served = server => served,
            () = deadline => {
                tracing::warn!(?grace, "calls still open after the shutdown grace period; stopping anyway");
                Ok(())
            }
        };
        self.ops_shutdown.cancel();
        let _ = self.ops.task.await;
        self.db.pool().close();
        served.context("gRPC server failed")?;
        tracing::info!("storage stopped");
        Ok(())
    }
}

/// Creates the database if needed and applies pending migrations, then returns: the
/// `--migrate-only` mode. Safe next to running replicas (the same lock guards both).
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    let connect_timeout = Config::seconds(config.db_connect_timeout, "db-connect-timeout")?;
    let startup_timeout = Config::seconds(config.db_startup_timeout, "db-startup-timeout")?;
    prepare_database(&config.database_url, connect_timeout, startup_timeout).await?;
    tracing::info!("database migrated");
    Ok(())
}

/// Creates the database if needed and migrates it, retrying while the server is not reachable
/// yet (it may be starting next to us).
async fn prepare_database(
    url: &str,
    connect_timeout: Duration,
    startup_timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + startup_timeout;
    let mut delay = Duration::from_millis(200);
    loop {
        let attempt = async {
            db::ensure_database(url, connect_timeout).await?;
            db::run_migrations(url, connect_timeout).await
        };
        match attempt.await {
            Ok(()) => return Ok(()),
            Err(error) if tokio::time::Instant::now() + delay < deadline => {
                tracing::warn!(error = format!("{error:#}"), "database not ready, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(error) => return Err(error.context("cannot prepare the database")),
        }
    }
}

/// Builds and runs until `shutdown` is cancelled (what `main` calls).
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    Application::build(config)
        .await?
        .run_until_stopped(shutdown)
        .await
}
