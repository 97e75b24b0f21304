use clap::Parser;
use iot_api::{Config, run};
use iot_runtime::{CancellationToken, logging, shutdown_signal};

// Per-thread free lists: a request allocates and frees hundreds of small buffers (rows, protos,
// JSON), which glibc malloc served at a measurable share of the CPU. The price is memory:
// after a 32-connection range-query run RSS was about 26 MB (storage) and 32 MB (api), against
// 14 and 13 MB with glibc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    // Exports spans when OTEL_EXPORTER_OTLP_ENDPOINT is set; dropping the guard at the end of
    // main flushes them.
    let _telemetry = logging::init_with_guard("iot-api", config.log_format);
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        on_signal.cancel();
    });
    run(config, shutdown).await
}
