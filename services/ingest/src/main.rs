use clap::Parser;
use iot_ingest::{Config, run};
use iot_runtime::{CancellationToken, logging, shutdown_signal};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    // Flushes the spans not exported yet when main returns.
    let _telemetry = logging::init_with_guard("iot-ingest", config.log_format);
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        on_signal.cancel();
    });
    run(config, shutdown).await
}
