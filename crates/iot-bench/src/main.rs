//! Tools for `scripts/bench` (not a service): a QoS 1 load generator that also measures what
//! was stored and how late, a subscriber that only counts, a direct-to-MariaDB range-query
//! load, and device registration through storage's gRPC API (and on the secured broker). Every command prints one JSON
//! object on stdout; progress goes to stderr.

mod broker_dropped;
mod dbquery;
mod provision;
mod publish;
mod setup;
mod stats;
mod subscribe;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "iot-bench", about = "Benchmark tools used by scripts/bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish QoS 1 telemetry for a fixed time, then count what was stored and measure latency.
    Publish(publish::Args),
    /// Subscribe at QoS 1 and only count messages (the broker's own ceiling).
    CountSub(subscribe::Args),
    /// Range queries straight to MariaDB over N connections (the database's own rate).
    DbQuery(dbquery::Args),
    /// Create the owner user and the devices through storage's gRPC API (and their broker accounts).
    Setup(setup::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let out = match cli.command {
        Command::Publish(args) => publish::run(args).await?,
        Command::CountSub(args) => subscribe::run(args).await?,
        Command::DbQuery(args) => dbquery::run(args).await?,
        Command::Setup(args) => setup::run(args).await?,
    };
    println!("{out}");
    Ok(())
}
