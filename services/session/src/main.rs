use clap::Parser;
use iot_runtime::{CancellationToken, logging, shutdown_signal};
use iot_session::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    // Exports spans when OTEL_EXPORTER_OTLP_ENDPOINT is set; dropping the guard at the end of
    // main flushes them.
    let _telemetry = logging::init_with_guard("iot-session", config.log_format);
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        on_signal.cancel();
    });
    Application::build(config).await?.run_until_stopped(shutdown).await
}
