//! Soak: sustained device load plus api traffic; memory of every process and the connection
//! counts of MariaDB, Redis and the broker at the start and at the end.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use mysql_async::prelude::Queryable;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::stack::{Options, Stack};

#[derive(Debug, Serialize, Clone, Default)]
pub struct Sample {
    pub at_s: f64,
    /// Resident memory per process, KiB.
    pub rss_kib: BTreeMap<String, u64>,
    pub mariadb_threads_connected: u64,
    pub redis_connected_clients: u64,
    /// `$SYS/broker/clients/connected` (refreshed every sys_interval = 10 s; 0 before the first).
    pub broker_clients_connected: u64,
    /// Established TCP connections to the broker's port right now (exact at the sample time).
    pub broker_tcp_connections: u64,
    pub readings_stored: u64,
}

#[derive(Debug, Serialize, Default)]
pub struct SoakReport {
    pub duration_s: f64,
    pub devices: usize,
    pub rate_per_second: f64,
    pub api_requests: u64,
    pub api_errors: u64,
    pub start: Sample,
    /// The sample half-way through the measured period.
    pub mid: Sample,
    pub end: Sample,
    /// Every sample (every `sample_every_s`), warm-up end included.
    pub samples: Vec<Sample>,
    pub sample_every_s: f64,
    /// RSS may grow by this fraction plus `rss_slack_kib` and still count as flat.
    pub rss_tolerance: f64,
    pub rss_slack_kib: u64,
    /// Connection counts may differ by this much and still count as flat.
    pub connection_tolerance: u64,
    pub flat: bool,
    pub not_flat: Vec<String>,
}

pub fn rss_kib(pid: Option<u32>) -> u64 {
    let Some(pid) = pid else { return 0 };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn redis_clients(port: u16) -> anyhow::Result<u64> {
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    conn.write_all(b"INFO clients\r\n").await?;
    let mut buf = vec![0_u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf[..n]);
    let clients = text
        .lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    // This probe's own connection is one of them.
    Ok(clients.saturating_sub(1))
}

async fn broker_clients(port: u16, admin: &iot_testkit::BrokerLogin) -> anyhow::Result<u64> {
    let mut options =
        rumqttc::MqttOptions::new(format!("soak-probe-{}", iot_testkit::unique_suffix()), "127.0.0.1", port);
    // The dynamic-security administrator may read $SYS; the service accounts may not.
    options.set_keep_alive(Duration::from_secs(5)).set_credentials(admin.username.clone(), admin.password.clone());
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
    client.subscribe("$SYS/broker/clients/connected", rumqttc::QoS::AtMostOnce).await?;
    let value = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) = eventloop.poll().await {
                return String::from_utf8_lossy(&p.payload).trim().parse::<u64>().ok();
            }
        }
    })
    .await
    .ok()
    .flatten()
    .unwrap_or(0);
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
    // $SYS is refreshed every sys_interval (10 s) and counts this probe when it is fresh.
    Ok(value)
}

/// Established TCP connections whose local port is `port` (the server side; Linux /proc).
pub fn established_to(port: u16) -> u64 {
    let port_hex = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|t| std::fs::read_to_string(t).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.len() > 3 && f[1].ends_with(&port_hex) && f[3] == "01"
                })
                .count()
                .checked_add(0)
        })
        .sum::<usize>() as u64
}

pub async fn sample(stack: &Stack, started: Instant) -> anyhow::Result<Sample> {
    let mut rss = BTreeMap::new();
    rss.insert("storage".into(), rss_kib(stack.storage.pid()));
    rss.insert("session".into(), rss_kib(stack.session.pid()));
    rss.insert("api".into(), rss_kib(stack.api.pid()));
    for replica in &stack.ingest {
        rss.insert(replica.name.clone(), rss_kib(replica.pid()));
    }
    rss.insert("mosquitto".into(), rss_kib(stack.broker.pid()));
    rss.insert("mariadbd".into(), rss_kib(stack.db.pid()));
    rss.insert("redis-server".into(), rss_kib(stack.redis.pid()));
    let mut conn = mysql_async::Conn::from_url(stack.db.url().as_str()).await?;
    let threads: Option<(String, u64)> = conn.query_first("SHOW GLOBAL STATUS LIKE 'Threads_connected'").await?;
    conn.disconnect().await?;
    Ok(Sample {
        at_s: started.elapsed().as_secs_f64(),
        rss_kib: rss,
        // Minus this query's own connection.
        mariadb_threads_connected: threads.map(|(_, n)| n.saturating_sub(1)).unwrap_or(0),
        redis_connected_clients: redis_clients(stack.redis.port).await?,
        broker_clients_connected: broker_clients(stack.broker.port, &stack.broker.security().admin).await?,
        broker_tcp_connections: established_to(stack.broker.port),
        readings_stored: stack.count_readings().await?,
    })
}

pub struct SoakOptions {
    pub devices: usize,
    pub rate_per_device: f64,
    pub warmup: Duration,
    pub duration: Duration,
    pub api_clients: usize,
}

pub async fn run(options: &SoakOptions) -> anyhow::Result<SoakReport> {
    let mut stack = Stack::start(&Options {
        devices: options.devices,
        rate_per_device: options.rate_per_device,
        redis_persistent: true,
        ingest_replicas: 2,
    })
    .await?;
    stack.start_load(options.rate_per_device, 1_767_225_600_000);
    let stack = Arc::new(stack);
    let stop = Arc::new(AtomicBool::new(false));
    let requests = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for c in 0..options.api_clients {
        let (stack, stop, requests, errors) = (stack.clone(), stop.clone(), requests.clone(), errors.clone());
        clients.push(tokio::spawn(async move {
            let mut i = c;
            while !stop.load(Ordering::SeqCst) {
                let device = &stack.devices[i % stack.devices.len().max(1)];
                i += 1;
                let path = match i % 3 {
                    0 => "/api/v1/devices".to_string(),
                    1 => format!("/api/v1/devices/{device}/readings/latest"),
                    _ => format!("/api/v1/devices/{device}/readings?limit=100"),
                };
                let ok = stack
                    .user
                    .get(format!("{}{path}", stack.api_url))
                    .header("Accept", "application/json")
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success() || r.status().as_u16() == 404);
                requests.fetch_add(1, Ordering::SeqCst);
                if !ok {
                    errors.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(options.warmup).await;
    let every = (options.duration / 10).max(Duration::from_secs(1));
    let mut samples = vec![sample(&stack, started).await?];
    let measure_from = Instant::now();
    while measure_from.elapsed() + every / 2 < options.duration {
        tokio::time::sleep(every).await;
        samples.push(sample(&stack, started).await?);
    }
    stop.store(true, Ordering::SeqCst);
    let start = samples[0].clone();
    let mid = samples[samples.len() / 2].clone();
    let end = samples[samples.len() - 1].clone();
    for c in clients {
        let _ = c.await;
    }
    let (rss_tolerance, rss_slack_kib, connection_tolerance) = (0.25, 16 * 1024, 2);
    // Flat is judged over the second half of the measured period: pools fill and caches warm up
    // in the first (MariaDB connections grow on demand up to storage's pool size), what keeps
    // growing after that is a leak.
    let mut not_flat = Vec::new();
    for (name, &before) in &mid.rss_kib {
        let after = end.rss_kib.get(name).copied().unwrap_or(0);
        if after as f64 > before as f64 * (1.0 + rss_tolerance) + rss_slack_kib as f64 {
            not_flat.push(format!("{name} RSS {before} -> {after} KiB"));
        }
    }
    for (what, a, b) in [
        ("MariaDB Threads_connected", mid.mariadb_threads_connected, end.mariadb_threads_connected),
        ("Redis connected_clients", mid.redis_connected_clients, end.redis_connected_clients),
        ("broker TCP connections", mid.broker_tcp_connections, end.broker_tcp_connections),
    ] {
        if b > a + connection_tolerance {
            not_flat.push(format!("{what} {a} -> {b}"));
        }
    }
    Ok(SoakReport {
        duration_s: options.duration.as_secs_f64(),
        devices: options.devices,
        rate_per_second: options.rate_per_device * options.devices as f64,
        api_requests: requests.load(Ordering::SeqCst),
        api_errors: errors.load(Ordering::SeqCst),
        flat: not_flat.is_empty(),
        start,
        mid,
        end,
        samples,
        sample_every_s: every.as_secs_f64(),
        rss_tolerance,
        rss_slack_kib,
        connection_tolerance,
        not_flat,
    })
}

pub fn markdown(r: &SoakReport) -> String {
    let mut md = format!(
        "### Soak\n\n{} devices at {:.0} messages/s in total plus {} api requests ({} failed) over {:.0} s, measured \
         after a warm-up. Flat means: between the middle and the end of the measured period RSS grew by at most \
         {:.0} % + {} MiB and connection counts by at most {} (the first half lets pools fill).\n\n\
         | | start ({:.0} s) | middle ({:.0} s) | end ({:.0} s) |\n|---|---|---|---|\n",
        r.devices,
        r.rate_per_second,
        r.api_requests,
        r.api_errors,
        r.duration_s,
        r.rss_tolerance * 100.0,
        r.rss_slack_kib / 1024,
        r.connection_tolerance,
        r.start.at_s,
        r.mid.at_s,
        r.end.at_s
    );
    let mib = |s: &Sample, name: &str| s.rss_kib.get(name).copied().unwrap_or(0) as f64 / 1024.0;
    for name in r.start.rss_kib.keys() {
        md.push_str(&format!(
            "| RSS {name} | {:.1} MiB | {:.1} MiB | {:.1} MiB |\n",
            mib(&r.start, name),
            mib(&r.mid, name),
            mib(&r.end, name)
        ));
    }
    let row = |what: &str, f: &dyn Fn(&Sample) -> u64| {
        format!("| {what} | {} | {} | {} |\n", f(&r.start), f(&r.mid), f(&r.end))
    };
    md.push_str(&row("MariaDB Threads_connected", &|s| s.mariadb_threads_connected));
    md.push_str(&row("Redis connected_clients", &|s| s.redis_connected_clients));
    md.push_str(&row("broker $SYS clients connected (10 s refresh)", &|s| s.broker_clients_connected));
    md.push_str(&row("broker TCP connections", &|s| s.broker_tcp_connections));
    md.push_str(&row("readings stored", &|s| s.readings_stored));
    md.push_str(&format!("\nRSS every {:.0} s (MiB):\n\n", r.sample_every_s));
    for name in r.start.rss_kib.keys() {
        let series: Vec<String> = r.samples.iter().map(|s| format!("{:.1}", mib(s, name))).collect();
        md.push_str(&format!("- {name}: {}\n", series.join(" ")));
    }
    md.push_str(&format!(
        "\nResult: **{}**{}\n",
        if r.flat { "flat" } else { "not flat" },
        if r.not_flat.is_empty() { String::new() } else { format!(" ({})", r.not_flat.join("; ")) }
    ));
    md
}
