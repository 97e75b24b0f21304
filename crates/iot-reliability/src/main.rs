//! `iot-reliability faults|soak --out DIR`: runs a long form and writes `DIR/<part>.json` and
//! `DIR/<part>.md` (a fragment of docs/reliability.md). Exit status 1 when something was lost
//! or the soak was not flat.

use std::{path::PathBuf, time::Duration};

use clap::Parser;
use iot_reliability::{faults, soak};

#[derive(Parser)]
#[command(name = "iot-reliability")]
struct Cli {
    /// `faults` or `soak`.
    part: String,
    #[arg(long, default_value = "reliability-results")]
    out: PathBuf,
    #[arg(long, default_value_t = 8)]
    devices: usize,
    /// Messages per second per device.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Faults: seconds of load around each fault. Soak: seconds measured.
    #[arg(long, default_value_t = 10)]
    secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    std::fs::create_dir_all(&cli.out)?;
    let ok = match cli.part.as_str() {
        "faults" => {
            let report = faults::run(&faults::FaultOptions {
                devices: cli.devices,
                rate_per_device: cli.rate,
                settle: Duration::from_secs(cli.secs),
                down_for: Duration::from_secs(3),
            })
            .await?;
            let sessions = vec![
                faults::sessions_across_redis_restart(true).await?,
                faults::sessions_across_redis_restart(false).await?,
            ];
            let crash = faults::broker_crash(&faults::FaultOptions {
                devices: cli.devices,
                rate_per_device: cli.rate,
                settle: Duration::from_secs(cli.secs),
                down_for: Duration::from_secs(1),
            })
            .await?;
            let json = serde_json::json!({"faults": report, "sessions": sessions, "broker_crash": crash});
            std::fs::write(cli.out.join("faults.json"), serde_json::to_string_pretty(&json)?)?;
            let md = format!("{}\n{}", faults::markdown(&report, &sessions), faults::crash_markdown(&crash));
            std::fs::write(cli.out.join("faults.md"), md)?;
            report.lost() == 0 && report.phantom_rows == 0 && report.incomplete == 0
        }
        "soak" => {
            let report = soak::run(&soak::SoakOptions {
                devices: cli.devices,
                rate_per_device: cli.rate,
                warmup: Duration::from_secs(20),
                duration: Duration::from_secs(cli.secs),
                api_clients: 4,
            })
            .await?;
            std::fs::write(cli.out.join("soak.json"), serde_json::to_string_pretty(&report)?)?;
            std::fs::write(cli.out.join("soak.md"), soak::markdown(&report))?;
            report.flat
        }
        other => anyhow::bail!("unknown part {other:?}: faults or soak"),
    };
    print!("{}", std::fs::read_to_string(cli.out.join(format!("{}.md", cli.part)))?);
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}
