//! The ingest load: N devices publishing QoS 1 for a fixed time (as fast as the broker
//! acknowledges, or at a given total rate), then: how much was stored when publishing stopped,
//! how much once the pipeline drained, and publish-to-visible latency of probe devices.
//!
//! Latency method: for a few probe devices every published `ts` (epoch ms, taken just before
//! the publish call, the same clock as below) is remembered; a poller queries MariaDB every
//! `--poll-ms` for the probe devices' rows newer than the oldest still-missing one (a
//! primary-key / index range scan) and records `time the SELECT returned - ts` for each row it
//! sees for the first time. A row is visible to a SELECT only once its transaction committed,
//! so this is publish-to-commit as an outside reader sees it, overstated by at most one poll
//! interval plus the query time (and up to 1 ms by the ms-resolution ts).

use std::{
    collections::{BTreeSet, HashMap},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use mysql_async::prelude::Queryable;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;

use crate::stats::{now_ms_f64, opt2, percentile, round2, sort};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `{"ts": ms, "metrics": {...}}`, the project's payload; device ids "1".."N".
    Project,
    /// `{"ts": ms, "values": {...}}`, what the reference baseline's ingest.py reads.
    Baseline,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// Devices "1".."N" (topics devices/{i}/telemetry).
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// MQTT connections the devices are spread over; 0 = one per device.
    #[arg(long, default_value_t = 0)]
    connections: usize,
    /// Unacknowledged QoS 1 publishes allowed per connection.
    #[arg(long, default_value_t = 20)]
    inflight: u16,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Total messages/s over all devices; 0 = as fast as the broker acknowledges.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    #[arg(long, value_enum, default_value = "project")]
    format: Format,
    /// Metrics per message.
    #[arg(long, default_value_t = 2)]
    metrics: usize,
    /// Database to count rows in (mysql://user@host:port/db); its table `readings` is either
    /// the project's (`--format project`) or the baseline's schema.
    #[arg(long)]
    mysql_url: Option<String>,
    /// Instead of a database: a file holding a message count (written by `count-sub`).
    #[arg(long)]
    count_file: Option<PathBuf>,
    /// Empty `readings` first.
    #[arg(long)]
    truncate: bool,
    /// Devices whose every message is timed to its commit (0 = no latency measurement).
    #[arg(long, default_value_t = 20)]
    probe_devices: usize,
    #[arg(long, default_value_t = 5)]
    poll_ms: u64,
    /// After publishing: give up waiting for the stored count to reach the acknowledged one.
    #[arg(long, default_value_t = 60.0)]
    drain_timeout: f64,
    /// ...or when it has not moved for this long.
    #[arg(long, default_value_t = 5.0)]
    drain_stall: f64,
    /// How often the stored count is read after publishing (the last commit's time is known to
    /// this plus one count query).
    #[arg(long, default_value_t = 250)]
    count_poll_ms: u64,
    #[arg(long, default_value_t = 30.0)]
    ack_timeout: f64,
    /// Secured broker: each device logs in as itself (username = client id = device id) with
    /// the password `iot-bench setup --provision` derived from this secret. Needs one
    /// connection per device (a device's account may publish only to its own topic).
    #[arg(long, env = "BENCH_DEVICE_PASSWORD_SECRET", hide_env_values = true)]
    password_secret: Option<String>,
    /// Also report how many messages the broker itself dropped during the run because a
    /// client's queue was full (its `$SYS` count; crate::broker_dropped), read with the
    /// measuring subscribers' account on a secured broker.
    #[arg(long)]
    broker_dropped: bool,
    #[arg(long, env = "BENCH_SUBSCRIBER_USERNAME")]
    subscriber_username: Option<String>,
    #[arg(long, env = "BENCH_SUBSCRIBER_PASSWORD", hide_env_values = true)]
    subscriber_password: Option<String>,
}

pub fn metric_names(n: usize) -> Vec<String> {
    const NAMES: [&str; 4] = ["temperature", "humidity", "pressure", "battery"];
    (0..n).map(|i| NAMES.get(i).map_or_else(|| format!("m{i}"), |s| (*s).to_string())).collect()
}

enum Counter {
    Mysql { pool: mysql_async::Pool, metrics: u64 },
    File(PathBuf),
}

impl Counter {
    /// Messages stored (rows / metrics per message) or counted by the subscriber.
    async fn messages(&self) -> anyhow::Result<u64> {
        match self {
            Counter::Mysql { pool, metrics } => {
                let mut conn = pool.get_conn().await?;
                let rows: Option<u64> = conn.query_first("SELECT COUNT(*) FROM readings").await?;
                Ok(rows.unwrap_or(0) / metrics.max(&1))
            }
            Counter::File(path) => {
                let text = tokio::fs::read_to_string(path).await.unwrap_or_default();
                Ok(text.trim().parse().unwrap_or(0))
            }
        }
    }
}

struct Probe {
    /// Device index -> key used in the database (device_pk or the baseline's integer id).
    keys: HashMap<usize, u64>,
    /// (ts_ms, db key) published and not yet seen.
    pending: Mutex<BTreeSet<(i64, u64)>>,
    /// (publish ts_ms, ms until first seen committed).
    latencies: Mutex<Vec<(i64, f64)>>,
}

pub async fn run(args: Args) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(args.devices > 0 && args.metrics > 0, "--devices and --metrics must be positive");
    let metrics = metric_names(args.metrics);
    let pool = match &args.mysql_url {
        Some(url) => Some(mysql_async::Pool::new(mysql_async::Opts::from_url(url).context("--mysql-url")?)),
        None => None,
    };
    let counter = match (&pool, &args.count_file) {
        (Some(pool), _) => Counter::Mysql { pool: pool.clone(), metrics: args.metrics as u64 },
        (None, Some(path)) => Counter::File(path.clone()),
        (None, None) => anyhow::bail!("give --mysql-url or --count-file"),
    };
    if let (Some(pool), true) = (&pool, args.truncate) {
        pool.get_conn().await?.query_drop("TRUNCATE TABLE readings").await?;
    }
    let before = counter.messages().await?;
    let broker = args.broker_dropped.then(|| crate::broker_dropped::Broker {
        host: args.host.clone(),
        port: args.port,
        login: args
            .subscriber_username
            .clone()
            .filter(|u| !u.is_empty())
            .map(|u| (u, args.subscriber_password.clone().unwrap_or_default())),
    });
    // The previous phase's drops were republished long ago (its drain outlasts the settle time).
    let dropped_before = match &broker {
        Some(broker) => Some(crate::broker_dropped::read(broker.clone(), Duration::ZERO).await?),
        None => None,
    };

    // Probe devices, spread over the id range.
    let probe = match &pool {
        Some(pool) if args.probe_devices > 0 => {
            let k = args.probe_devices.min(args.devices);
            let indexes: Vec<usize> = (0..k).map(|j| j * args.devices / k).collect();
            let keys = match args.format {
                Format::Baseline => indexes.iter().map(|&i| (i, (i + 1) as u64)).collect(),
                Format::Project => {
                    let list = indexes.iter().map(|i| format!("'{}'", i + 1)).collect::<Vec<_>>().join(",");
                    let rows: Vec<(u64, String)> = pool
                        .get_conn()
                        .await?
                        .query(format!("SELECT id, device_id FROM devices WHERE device_id IN ({list})"))
                        .await?;
                    let by_id: HashMap<String, u64> = rows.into_iter().map(|(pk, id)| (id, pk)).collect();
                    let mut keys = HashMap::new();
                    for &i in &indexes {
                        let pk = by_id.get(&(i + 1).to_string()).with_context(|| format!("device {} is not registered", i + 1))?;
                        keys.insert(i, *pk);
                    }
                    keys
                }
            };
            Some(Arc::new(Probe { keys, pending: Mutex::new(BTreeSet::new()), latencies: Mutex::new(Vec::new()) }))
        }
        _ => None,
    };

    // Connections.
    let connections = if args.connections == 0 { args.devices } else { args.connections.min(args.devices) };
    let secret = args.password_secret.as_deref().filter(|s| !s.is_empty());
    anyhow::ensure!(
        secret.is_none() || connections == args.devices,
        "with device logins (--password-secret) every device needs its own connection (--connections 0)"
    );
    let run_id: u32 = rand::random();
    let acked = Arc::new(AtomicU64::new(0));
    let published = Arc::new(AtomicU64::new(0));
    let conn_errors = Arc::new(AtomicU64::new(0));
    let connected = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let closing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_loops = tokio_util_like::Token::default();
    let mut clients = Vec::with_capacity(connections);
    let mut loops = tokio::task::JoinSet::new();
    for c in 0..connections {
        let mut options = match secret {
            // The broker binds each device's account to its client id.
            Some(secret) => {
                let device_id = (c + 1).to_string();
                let password = crate::provision::device_password(secret, &device_id);
                let mut options = MqttOptions::new(device_id.clone(), args.host.clone(), args.port);
                options.set_credentials(device_id, password);
                options
            }
            None => MqttOptions::new(format!("bench-pub-{run_id:08x}-{c}"), args.host.clone(), args.port),
        };
        options.set_keep_alive(Duration::from_secs(60)).set_clean_session(true).set_inflight(args.inflight.max(1));
        // A short request queue: what is queued when the window closes is still sent afterwards.
        let (client, mut eventloop) = AsyncClient::new(options, usize::from(args.inflight) + 8);
        clients.push(client);
        let (acked, conn_errors, connected, stop) = (acked.clone(), conn_errors.clone(), connected.clone(), stop_loops.clone());
        let refused = refused.clone();
        let closing = closing.clone();
        loops.spawn(async move {
            loop {
                let event = tokio::select! {
                    event = eventloop.poll() => event,
                    _ = stop.cancelled() => return,
                };
                match event {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connected.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    // The broker closing connections after our DISCONNECT is not an error.
                    Err(_) if closing.load(Ordering::Relaxed) => return,
                    Err(e) => {
                        if matches!(e, rumqttc::ConnectionError::ConnectionRefused(_)) {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                        if conn_errors.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("publish: MQTT connection error: {e}");
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
    }
    let connect_deadline = Instant::now() + Duration::from_secs(30);
    while connected.load(Ordering::Relaxed) < connections as u64 && Instant::now() < connect_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::ensure!(
        connected.load(Ordering::Relaxed) >= connections as u64,
        "only {} of {connections} MQTT connections were accepted ({} logins refused)",
        connected.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed)
    );

    // Latency poller.
    let stop_observer = tokio_util_like::Token::default();
    let observer = match (&probe, &pool) {
        (Some(probe), Some(pool)) => {
            let (probe, pool, stop) = (probe.clone(), pool.clone(), stop_observer.clone());
            let (format, poll, metric) = (args.format, Duration::from_millis(args.poll_ms.max(1)), metrics[0].clone());
            Some(tokio::spawn(async move { observe(probe, pool, format, metric, poll, stop).await }))
        }
        _ => None,
    };

    // Publishers: one task per connection, cycling over its devices.
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.duration.max(0.0));
    let key = match args.format {
        Format::Project => "metrics",
        Format::Baseline => "values",
    };
    let mut publishers = tokio::task::JoinSet::new();
    for (c, client) in clients.iter().enumerate() {
        let devices: Vec<usize> = (c..args.devices).step_by(connections).collect();
        let (client, published, probe, metrics) = (client.clone(), published.clone(), probe.clone(), metrics.clone());
        let period = (args.rate > 0.0).then(|| Duration::from_secs_f64(connections as f64 / args.rate));
        publishers.spawn(async move {
            let topics: Vec<String> = devices.iter().map(|d| format!("devices/{}/telemetry", d + 1)).collect();
            let mut last_ts = vec![0_i64; devices.len()];
            let mut ticks = period.map(|p| {
                // Spread the connections' ticks over one period.
                let offset = p.mul_f64(c as f64 / connections as f64);
                let mut t = tokio::time::interval_at(tokio::time::Instant::now() + offset, p);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                t
            });
            let mut seq = 0_u64;
            'outer: loop {
                for (slot, &device) in devices.iter().enumerate() {
                    if let Some(t) = ticks.as_mut() {
                        tokio::select! {
                            _ = t.tick() => {}
                            _ = tokio::time::sleep_until(deadline.into()) => break 'outer,
                        }
                    }
                    if Instant::now() >= deadline {
                        break 'outer;
                    }
                    let ts = (now_ms_f64() as i64).max(last_ts[slot] + 1);
                    last_ts[slot] = ts;
                    seq += 1;
                    let values: Vec<String> = metrics
                        .iter()
                        .enumerate()
                        .map(|(m, name)| format!("\"{name}\":{:.2}", 20.0 + ((seq + m as u64 * 7) % 100) as f64 * 0.1))
                        .collect();
                    let payload = format!("{{\"ts\":{ts},\"{key}\":{{{}}}}}", values.join(","));
                    if let Some(probe) = &probe
                        && let Some(&k) = probe.keys.get(&device)
                        && let Ok(mut pending) = probe.pending.lock()
                    {
                        pending.insert((ts, k));
                    }
                    if client.publish(topics[slot].clone(), QoS::AtLeastOnce, false, payload).await.is_err() {
                        break 'outer;
                    }
                    published.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while publishers.join_next().await.is_some() {}
    let publish_end = Instant::now();
    let window = publish_end.duration_since(started).as_secs_f64();
    let stored_at_end = counter.messages().await?.saturating_sub(before);
    let acked_at_end = acked.load(Ordering::Relaxed);
    let published_total = published.load(Ordering::Relaxed);
    eprintln!("publish: window {window:.2}s published={published_total} acked={acked_at_end} stored={stored_at_end}");

    // Until everything published is acknowledged (or the ack timeout) and everything acknowledged
    // is stored (or progress stops, or the drain timeout). The stored count is polled throughout:
    // the time it last grew is when the last message was committed. A broker may deliver much of
    // a burst only after its publishers stop (Mosquitto 2.0.13+ serves publishers first), so the
    // committed rate is taken over publishing plus that tail, not over the publishing window.
    let count_poll = Duration::from_millis(args.count_poll_ms.max(1));
    let ack_deadline = publish_end + Duration::from_secs_f64(args.ack_timeout);
    let mut acks_settled_at: Option<Instant> = None;
    let mut stored = stored_at_end;
    let mut stored_grew_at = publish_end;
    // Why the wait ended: a count cut short by a timeout is not a loss by itself.
    let mut drain_ended = "complete";
    // Read once the broker has acknowledged everything: no message can be dropped after that.
    let mut dropped_after = None;
    loop {
        let acked_now = acked.load(Ordering::Relaxed);
        let now = Instant::now();
        let awaiting_acks = acked_now < published_total && now < ack_deadline;
        let draining = match acks_settled_at {
            None if !awaiting_acks => {
                acks_settled_at = Some(now);
                dropped_after = broker
                    .clone()
                    .map(|broker| tokio::spawn(crate::broker_dropped::read(broker, crate::broker_dropped::SETTLE)));
                stored < acked_now
            }
            None => true,
            Some(settled) => {
                if stored >= acked_now {
                    false
                } else if now.duration_since(settled).as_secs_f64() >= args.drain_timeout {
                    drain_ended = "timeout";
                    false
                } else if now.duration_since(stored_grew_at.max(settled)).as_secs_f64() >= args.drain_stall {
                    drain_ended = "stall";
                    false
                } else {
                    true
                }
            }
        };
        if !draining {
            break;
        }
        tokio::time::sleep(count_poll).await;
        // A count sees what was committed before it started.
        let asked_at = Instant::now();
        let count = counter.messages().await?.saturating_sub(before);
        if count != stored {
            stored = count;
            stored_grew_at = asked_at;
        }
    }
    let acked_total = acked.load(Ordering::Relaxed);
    let drain_s = publish_end.elapsed().as_secs_f64();
    let broker_dropped = match (dropped_before, dropped_after) {
        (Some(before), Some(after)) => Some(after.await.context("the $SYS reader panicked")??.saturating_sub(before)),
        _ => None,
    };
    // Overstated by at most one poll interval plus the previous count query.
    let last_commit_s = stored_grew_at.duration_since(started).as_secs_f64();
    stop_observer.cancel();
    if let Some(observer) = observer {
        match observer.await {
            Ok(Err(e)) => eprintln!("publish: latency poller failed: {e:#}"),
            Err(e) => eprintln!("publish: latency poller panicked: {e}"),
            Ok(Ok(())) => {}
        }
    }
    let mqtt_errors = conn_errors.load(Ordering::Relaxed);
    closing.store(true, Ordering::Relaxed);
    for client in &clients {
        let _ = client.try_disconnect();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop_loops.cancel();
    while loops.join_next().await.is_some() {}
    if let Some(pool) = pool {
        let _ = pool.disconnect().await;
    }

    let latency = match &probe {
        Some(probe) => {
            let timed = probe.latencies.lock().map(|l| l.clone()).unwrap_or_default();
            let mut l: Vec<f64> = timed.iter().map(|(_, latency)| *latency).collect();
            sort(&mut l);
            // When in the phase the slow ones were published: a tail from one stall (a broker
            // snapshot, a database flush) shows as one bad second, a saturated path as many.
            let first_ts = timed.iter().map(|(ts, _)| *ts).min().unwrap_or(0);
            let mut max_by_second: Vec<f64> = Vec::new();
            for (ts, latency) in &timed {
                let second = usize::try_from((ts - first_ts) / 1000).unwrap_or(0);
                if max_by_second.len() <= second {
                    max_by_second.resize(second + 1, 0.0);
                }
                max_by_second[second] = max_by_second[second].max(*latency);
            }
            let unseen = probe.pending.lock().map(|p| p.len()).unwrap_or(0);
            json!({
                "method": "probe devices' rows polled in MariaDB; ms from payload ts to the SELECT that first returned the row",
                "samples": l.len(), "unseen": unseen,
                "p50_ms": opt2(percentile(&l, 50.0)), "p90_ms": opt2(percentile(&l, 90.0)),
                "p99_ms": opt2(percentile(&l, 99.0)), "max_ms": opt2(l.last().copied()),
                "max_ms_by_second_published": max_by_second.iter().map(|v| round2(*v)).collect::<Vec<_>>(),
            })
        }
        None => serde_json::Value::Null,
    };
    Ok(json!({
        "devices": args.devices,
        "connections": connections,
        "metrics_per_message": args.metrics,
        "target_rate": args.rate,
        "duration_s": round2(window),
        "published": published_total,
        "acked": acked_total,
        "acked_in_window": acked_at_end,
        "acked_msgs_per_s": round2(acked_at_end as f64 / window),
        "stored_in_window": stored_at_end,
        "committed_in_window_msgs_per_s": round2(stored_at_end as f64 / window),
        // Everything stored over the time from the first publish to the last commit.
        "committed_msgs_per_s": round2(stored as f64 / last_commit_s.max(window)),
        "last_commit_s": round2(last_commit_s),
        "stored": stored,
        "lost": acked_total as i64 - stored as i64,
        // Of all messages, these the broker acknowledged and then dropped for a full client queue
        // (max_queued_messages/bytes): part of `lost` when the consumer was ours.
        "broker_dropped": broker_dropped,
        "unacked": published_total.saturating_sub(acked_total),
        "drain_s": round2(drain_s),
        // complete (everything acknowledged is stored), stall (the count stopped growing) or
        // timeout (it was still growing: `lost` then includes what was still on its way).
        "drain_ended": drain_ended,
        "mqtt_errors": mqtt_errors,
        "logins_refused": refused.load(Ordering::Relaxed),
        "device_logins": secret.is_some(),
        // How fast the backlog went once the publishers had stopped (and freed their CPU).
        "drain_msgs_per_s": if last_commit_s - window > 0.5 {
            round2(stored.saturating_sub(stored_at_end) as f64 / (last_commit_s - window))
        } else {
            0.0
        },
        "latency": latency,
    }))
}

async fn observe(
    probe: Arc<Probe>,
    pool: mysql_async::Pool,
    format: Format,
    metric: String,
    poll: Duration,
    stop: tokio_util_like::Token,
) -> anyhow::Result<()> {
    let mut conn = pool.get_conn().await?;
    // Every SELECT sees what is committed at its start.
    conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED").await?;
    let keys: Vec<String> = probe.keys.values().map(u64::to_string).collect();
    let keys = keys.join(",");
    let mut ticker = tokio::time::interval(poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // One last pass after the stop so that rows committed during the drain are counted.
    let mut last_pass = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled(), if !last_pass => { last_pass = true; }
        }
        let oldest = probe.pending.lock().ok().and_then(|p| p.first().map(|(ts, _)| *ts));
        if let Some(oldest) = oldest {
            let sql = match format {
                Format::Project => format!(
                    "SELECT device_pk, ts_us DIV 1000 FROM readings WHERE device_pk IN ({keys}) \
                     AND metric = '{metric}' AND ts_us >= {}",
                    oldest * 1000
                ),
                Format::Baseline => format!(
                    "SELECT device_id, TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', ts) DIV 1000 FROM readings \
                     WHERE device_id IN ({keys}) AND metric = '{metric}' \
                     AND ts >= '1970-01-01 00:00:00' + INTERVAL {} MICROSECOND",
                    oldest * 1000
                ),
            };
            let rows: Vec<(u64, i64)> = conn.query(sql).await?;
            let seen_at = now_ms_f64();
            if let (Ok(mut pending), Ok(mut latencies)) = (probe.pending.lock(), probe.latencies.lock()) {
                for (key, ts) in rows {
                    if pending.remove(&(ts, key)) {
                        latencies.push((ts, seen_at - ts as f64));
                    }
                }
            }
        }
        if last_pass {
            return Ok(());
        }
    }
}

/// A cancellation flag with an awaitable `cancelled()` (tokio-util is not a dependency here).
mod tokio_util_like {
    use std::sync::Arc;

    use tokio::sync::watch;

    #[derive(Clone)]
    pub struct Token(Arc<watch::Sender<bool>>);

    impl Default for Token {
        fn default() -> Self {
            Self(Arc::new(watch::channel(false).0))
        }
    }

    impl Token {
        pub fn cancel(&self) {
            self.0.send_replace(true);
        }

        pub async fn cancelled(&self) {
            let mut rx = self.0.subscribe();
            let _ = rx.wait_for(|v| *v).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::metric_names;

    #[test]
    fn metric_names_are_stable_and_distinct() {
        assert_eq!(metric_names(2), ["temperature", "humidity"]);
        let many = metric_names(6);
        assert_eq!(many[5], "m5");
        let mut unique = many.clone();
        unique.dedup();
        assert_eq!(unique.len(), 6);
    }
}
