//! The ingest service (business logic still to come): configuration, ops endpoint, shutdown.

use std::net::SocketAddr;

use iot_runtime::{CancellationToken, OpsServer, ReadinessCheck, logging::LogFormat};

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "iot-ingest", about = "IoT telemetry ingest service")]
pub struct Config {
    /// Address of the ops endpoint (/healthz, /readyz, /metrics).
    #[arg(long, env = "INGEST_METRICS_ADDR", default_value = "127.0.0.1:9101")]
    pub metrics_addr: SocketAddr,
    /// Log format: text or json.
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

/// Runs until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let registry = prometheus::Registry::new();
    let ops = OpsServer::start(config.metrics_addr, registry, ReadinessCheck::always_ready(), shutdown.clone()).await?;
    shutdown.cancelled().await;
    ops.task.await?;
    Ok(())
}
