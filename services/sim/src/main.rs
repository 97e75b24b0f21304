use clap::Parser;
use iot_runtime::{CancellationToken, logging, shutdown_signal};
use iot_sim::{Config, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    // Flushes the spans of traced messages (--trace-fraction) at the end.
    let telemetry = logging::init_with_guard("iot-sim", config.log_format);
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        on_signal.cancel();
    });
    let totals = run(config, shutdown).await?;
    println!("{}", totals.summary());
    if totals.acked < totals.published {
        drop(telemetry); // process::exit skips destructors
        std::process::exit(2);
    }
    Ok(())
}
