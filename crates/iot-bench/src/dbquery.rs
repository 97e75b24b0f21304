//! The database's own rate for the api's range query: the statement storage runs for
//! GET /api/v1/devices/{id}/readings (random device, random one-hour window), sent by
//! `--connections` clients as prepared statements, for a fixed time.

use std::time::{Duration, Instant};

use anyhow::Context;
use mysql_async::prelude::Queryable;
use rand::Rng;
use serde_json::json;

use crate::stats::{opt2, percentile, round2, sort};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Schema {
    Project,
    Baseline,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// mysql://user@host:port/db
    #[arg(long)]
    mysql_url: String,
    #[arg(long, value_enum, default_value = "project")]
    schema: Schema,
    #[arg(long, default_value_t = 32)]
    connections: usize,
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    #[arg(long, default_value_t = 1000)]
    devices: u32,
    /// Samples per device, 60 s apart, from --base.
    #[arg(long, default_value_t = 500)]
    samples: i64,
    /// First sample, epoch seconds (2026-01-01T00:00:00Z).
    #[arg(long, default_value_t = 1_767_225_600)]
    base: i64,
    #[arg(long, default_value_t = 3600)]
    window_s: i64,
}

/// The form storage uses: one primary-key range scan per metric, merged (device looked up by
/// its public id, as the api passes it).
const PROJECT_SQL: &str = "(SELECT metric, ts_us, value FROM readings \
     WHERE device_pk = (SELECT id FROM devices WHERE device_id = ?) AND metric = 'humidity' \
     AND ts_us >= ? AND ts_us < ? ORDER BY ts_us LIMIT 1001) UNION ALL \
     (SELECT metric, ts_us, value FROM readings \
     WHERE device_pk = (SELECT id FROM devices WHERE device_id = ?) AND metric = 'temperature' \
     AND ts_us >= ? AND ts_us < ? ORDER BY ts_us LIMIT 1001) ORDER BY ts_us, metric LIMIT 1001";
const BASELINE_SQL: &str = "SELECT id, device_id, metric, value, ts FROM readings \
     WHERE device_id = ? AND ts BETWEEN '1970-01-01 00:00:00' + INTERVAL ? SECOND \
     AND '1970-01-01 00:00:00' + INTERVAL ? SECOND ORDER BY ts";

pub async fn run(args: Args) -> anyhow::Result<serde_json::Value> {
    let opts = mysql_async::Opts::from_url(&args.mysql_url).context("--mysql-url")?;
    let constraints = mysql_async::PoolConstraints::new(args.connections, args.connections)
        .context("pool constraints")?;
    let opts = mysql_async::OptsBuilder::from_opts(opts)
        .pool_opts(mysql_async::PoolOpts::default().with_constraints(constraints))
        .stmt_cache_size(16);
    let pool = mysql_async::Pool::new(opts);
    let deadline = Instant::now() + Duration::from_secs_f64(args.duration);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.connections {
        let pool = pool.clone();
        let (schema, devices, samples, base, window) = (args.schema, args.devices, args.samples, args.base, args.window_s);
        tasks.spawn(async move {
            let mut conn = pool.get_conn().await?;
            let mut latencies = Vec::new();
            let mut rows_total = 0_u64;
            let mut errors = 0_u64;
            while Instant::now() < deadline {
                let (device, start) = {
                    let mut rng = rand::rng();
                    (rng.random_range(1..=devices), base + rng.random_range(0..=(samples * 60 - window).max(0)))
                };
                let t = Instant::now();
                let result = match schema {
                    Schema::Project => conn
                        .exec::<(String, i64, f64), _, _>(
                            PROJECT_SQL,
                            (
                                device.to_string(),
                                start * 1_000_000,
                                (start + window) * 1_000_000,
                                device.to_string(),
                                start * 1_000_000,
                                (start + window) * 1_000_000,
                            ),
                        )
                        .await
                        .map(|r| r.len()),
                    Schema::Baseline => conn
                        .exec::<mysql_async::Row, _, _>(BASELINE_SQL, (device, start, start + window))
                        .await
                        .map(|r| r.len()),
                };
                match result {
                    Ok(n) => {
                        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                        rows_total += n as u64;
                    }
                    Err(e) => {
                        errors += 1;
                        if errors < 3 {
                            eprintln!("db-query: {e}");
                        }
                    }
                }
            }
            Ok::<_, anyhow::Error>((latencies, rows_total, errors))
        });
    }
    let mut latencies = Vec::new();
    let (mut rows, mut errors) = (0_u64, 0_u64);
    while let Some(done) = tasks.join_next().await {
        let (l, r, e) = done??;
        latencies.extend(l);
        rows += r;
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let _ = pool.disconnect().await;
    sort(&mut latencies);
    let n = latencies.len();
    Ok(json!({
        "connections": args.connections,
        "duration_s": round2(elapsed),
        "queries": n,
        "qps": round2(n as f64 / elapsed),
        "rows_per_query": round2(rows as f64 / n.max(1) as f64),
        "p50_ms": opt2(percentile(&latencies, 50.0)),
        "p99_ms": opt2(percentile(&latencies, 99.0)),
        "errors": errors,
    }))
}
