//! Device simulator: N devices, each publishing `{"ts": <epoch ms>, "metrics": {...}}` to
//! `devices/{id}/telemetry` at a fixed rate, with realistic values (temperature and humidity
//! random walks, a slowly draining battery, signal strength). Used by `scripts/up.sh` so that
//! data flows, and by the benchmarks (the payload `ts` is the send time, so ingest's lag
//! histogram and row timestamps measure end-to-end latency).
//!
//! Timestamps are unique per device (a device never sends two messages in the same
//! millisecond), so every message becomes its own rows and `count(*)` checks totals.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use iot_runtime::{CancellationToken, logging::LogFormat};
use rand::{Rng, SeedableRng, rngs::StdRng};
use rumqttc::v5::{
    AsyncClient, Event, MqttOptions,
    mqttbytes::{
        QoS,
        v5::{ConnectReturnCode, Packet, PublishProperties},
    },
};

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "iot-sim", about = "Simulated devices publishing telemetry over MQTT")]
pub struct Config {
    #[arg(long, env = "SIM_MQTT_HOST", default_value = "127.0.0.1")]
    pub mqtt_host: String,
    #[arg(long, env = "SIM_MQTT_PORT", default_value_t = 1883)]
    pub mqtt_port: u16,
    /// Connect over TLS (the broker's TLS listener, usually port 8883).
    #[arg(long, env = "SIM_MQTT_TLS")]
    pub mqtt_tls: bool,
    /// PEM CA certificate(s) the broker's certificate must chain to (default: system roots).
    #[arg(long, env = "SIM_MQTT_CA_FILE")]
    pub mqtt_ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for a broker listener that requires one.
    #[arg(long, env = "SIM_MQTT_CLIENT_CERT")]
    pub mqtt_client_cert: Option<PathBuf>,
    #[arg(long, env = "SIM_MQTT_CLIENT_KEY")]
    pub mqtt_client_key: Option<PathBuf>,
    /// Number of devices (ignored with --credentials-file, which lists them).
    #[arg(long, env = "SIM_DEVICES", default_value_t = 10)]
    pub devices: usize,
    /// Device ids are this prefix plus a 4-digit number.
    #[arg(long, env = "SIM_DEVICE_PREFIX", default_value = "sim-")]
    pub device_prefix: String,
    /// Messages per second per device.
    #[arg(long, env = "SIM_RATE", default_value_t = 1.0)]
    pub rate: f64,
    /// Stop after this many seconds.
    #[arg(long = "duration", env = "SIM_DURATION_SECS")]
    pub duration_secs: Option<f64>,
    /// Stop after this many messages per device.
    #[arg(long, env = "SIM_COUNT")]
    pub count: Option<u64>,
    /// MQTT QoS of the publishes (0 or 1).
    #[arg(long, env = "SIM_QOS", default_value_t = 1)]
    pub qos: u8,
    /// File with one device per line: `device_id username password` (spaces, tabs or commas),
    /// e.g. credentials the api provisioned. Each device then connects with its device id as
    /// MQTT client id (a provisioned broker account accepts no other).
    #[arg(long, env = "SIM_CREDENTIALS_FILE")]
    pub credentials_file: Option<PathBuf>,
    /// Shared device password; each device then logs in with its device id as username.
    #[arg(long, env = "SIM_DEVICE_PASSWORD", hide_env_values = true)]
    pub device_password: Option<String>,
    /// Spread the devices over this many MQTT connections instead of one per device
    /// (benchmarks on an anonymous broker; not with per-device credentials).
    #[arg(long, env = "SIM_CONNECTIONS")]
    pub connections: Option<usize>,
    /// Unacknowledged QoS 1 publishes per connection.
    #[arg(long, env = "SIM_INFLIGHT", default_value_t = 100)]
    pub inflight: u16,
    /// Create the owner user and the devices in storage first, so that ingest accepts the data.
    #[arg(long, env = "SIM_REGISTER")]
    pub register: bool,
    #[arg(long, env = "SIM_STORAGE_URL", default_value = "http://127.0.0.1:50051")]
    pub storage_url: String,
    /// Owner of the registered devices (created if missing).
    #[arg(long, env = "SIM_OWNER", default_value = "sim")]
    pub owner: String,
    #[arg(long, env = "SIM_OWNER_PASSWORD", default_value = "sim-password", hide_env_values = true)]
    pub owner_password: String,
    /// Fraction of messages (0 to 1) that carry a W3C `traceparent` MQTT v5 user property, which
    /// ingest and storage continue: each such message is one trace from the device to the
    /// database. With `OTEL_EXPORTER_OTLP_ENDPOINT` set the simulator also exports the device's
    /// side (a producer span per traced message); without, the traceparent names a span nobody
    /// exports (tracing UIs show the trace with a missing root).
    #[arg(long, env = "SIM_TRACE_FRACTION", default_value_t = 0.0)]
    pub trace_fraction: f64,
    /// At the end, how long to wait for the broker to acknowledge what was published.
    #[arg(long, env = "SIM_ACK_TIMEOUT_SECS", default_value_t = 30)]
    pub ack_timeout_secs: u64,
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCredentials {
    pub device_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Totals {
    pub devices: usize,
    pub published: u64,
    pub acked: u64,
    pub errors: u64,
    pub elapsed: Duration,
}

impl Totals {
    pub fn summary(&self) -> String {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        format!(
            "devices={} published={} acked={} errors={} elapsed={:.2}s rate={:.0}/s",
            self.devices,
            self.published,
            self.acked,
            self.errors,
            secs,
            self.published as f64 / secs
        )
    }
}

/// Parses a credentials file: `device_id username password` per line; `#` comments.
pub fn parse_credentials(text: &str) -> anyhow::Result<Vec<DeviceCredentials>> {
    let mut devices = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<_> = line.split(|c: char| c == ',' || c.is_whitespace()).filter(|f| !f.is_empty()).collect();
        match fields.as_slice() {
            [id, user, pass] => devices.push(DeviceCredentials {
                device_id: (*id).to_string(),
                username: Some((*user).to_string()),
                password: Some((*pass).to_string()),
            }),
            _ => anyhow::bail!("credentials line {}: expected `device_id username password`", n + 1),
        }
    }
    Ok(devices)
}

/// A device's simulated sensors.
pub struct DeviceModel {
    rng: StdRng,
    base_temperature: f64,
    temperature: f64,
    humidity: f64,
    battery: f64,
    rssi: f64,
    last_ts_ms: i64,
}

impl DeviceModel {
    pub fn new(device_id: &str) -> Self {
        // Seeded by the id: the same device looks the same across runs.
        let seed = device_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        let mut rng = StdRng::seed_from_u64(seed);
        let base_temperature = rng.random_range(17.0..25.0);
        Self {
            base_temperature,
            temperature: base_temperature,
            humidity: rng.random_range(30.0..60.0),
            battery: rng.random_range(60.0..100.0),
            rssi: rng.random_range(-90.0..-50.0),
            last_ts_ms: 0,
            rng,
        }
    }

    /// The next payload; `now_ms` is the send time (made unique per device).
    pub fn next_payload(&mut self, now_ms: i64) -> String {
        let ts = now_ms.max(self.last_ts_ms + 1);
        self.last_ts_ms = ts;
        let step = |rng: &mut StdRng, scale: f64| (rng.random::<f64>() + rng.random::<f64>() - 1.0) * scale;
        // Mean-reverting random walks stay plausible however long the simulation runs.
        self.temperature += step(&mut self.rng, 0.1) + (self.base_temperature - self.temperature) * 0.01;
        self.humidity = (self.humidity + step(&mut self.rng, 0.3) + (45.0 - self.humidity) * 0.005).clamp(5.0, 95.0);
        self.battery -= self.rng.random_range(0.0..0.01);
        if self.battery < 5.0 {
            self.battery = 100.0; // someone changed the batteries
        }
        self.rssi = (self.rssi + step(&mut self.rng, 1.0)).clamp(-110.0, -30.0);
        serde_json::json!({
            "ts": ts,
            "metrics": {
                "temperature": round(self.temperature, 2),
                "humidity": round(self.humidity, 1),
                "battery": round(self.battery, 2),
                "rssi": self.rssi.round(),
            }
        })
        .to_string()
    }
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10_f64.powi(digits);
    (v * f).round() / f
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn devices(config: &Config) -> anyhow::Result<Vec<DeviceCredentials>> {
    if let Some(path) = &config.credentials_file {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let devices = parse_credentials(&text)?;
        anyhow::ensure!(!devices.is_empty(), "{} lists no devices", path.display());
        return Ok(devices);
    }
    Ok((0..config.devices)
        .map(|i| {
            let device_id = format!("{}{:04}", config.device_prefix, i);
            DeviceCredentials {
                username: config.device_password.as_ref().map(|_| device_id.clone()),
                password: config.device_password.clone(),
                device_id,
            }
        })
        .collect())
}

/// Creates the owner (or finds it) and every device in storage; existing ones are fine.
pub async fn register(storage_url: &str, owner: &str, password: &str, devices: &[String]) -> anyhow::Result<u64> {
    use iot_proto::storage::v1::{
        CreateDeviceRequest, CreateUserRequest, GetUserRequest, get_user_request::Key,
        storage_service_client::StorageServiceClient,
    };
    // Storage may still be starting when a local stack comes up: retry for a while.
    let mut attempts = 0;
    let mut storage = loop {
        match StorageServiceClient::connect(storage_url.to_string()).await {
            Ok(client) => break client,
            Err(e) if attempts < 30 => {
                attempts += 1;
                tracing::info!(error = %e, "storage not reachable yet; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("connecting to storage at {storage_url}")),
        }
    };
    let owner_id = match storage
        .create_user(CreateUserRequest {
            username: owner.to_string(),
            password: password.to_string(),
            is_admin: false,
            only_if_first: false,
        })
        .await
    {
        Ok(user) => user.into_inner().id,
        Err(status) if status.code() == tonic::Code::AlreadyExists => {
            storage
                .get_user(GetUserRequest { key: Some(Key::Username(owner.to_string())) })
                .await
                .context("looking up the existing owner")?
                .into_inner()
                .id
        }
        Err(status) => return Err(status).context("creating the owner user"),
    };
    for device_id in devices {
        let request = CreateDeviceRequest {
            device_id: device_id.clone(),
            owner_id,
            name: format!("Simulated {device_id}"),
            attributes_json: r#"{"simulated":true}"#.to_string(),
        };
        match storage.create_device(request).await {
            Ok(_) => {}
            Err(status) if status.code() == tonic::Code::AlreadyExists => {}
            Err(status) => return Err(status).with_context(|| format!("creating device {device_id}")),
        }
    }
    Ok(owner_id)
}

struct Counters {
    published: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
}

/// Runs the simulation until `--count`/`--duration` or `shutdown`, then waits for the broker's
/// acknowledgements and returns the totals.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<Totals> {
    anyhow::ensure!(config.rate > 0.0 && config.rate.is_finite(), "--rate must be positive");
    anyhow::ensure!(config.qos <= 1, "--qos must be 0 or 1");
    anyhow::ensure!((0.0..=1.0).contains(&config.trace_fraction), "--trace-fraction must be between 0 and 1");
    let devices = devices(&config)?;
    if config.register {
        let ids: Vec<_> = devices.iter().map(|d| d.device_id.clone()).collect();
        let owner_id = register(&config.storage_url, &config.owner, &config.owner_password, &ids).await?;
        tracing::info!(owners = owner_id, devices = ids.len(), "registered devices in storage");
    }
    let per_device_login = devices.iter().any(|d| d.username.is_some());
    let connections = match config.connections {
        Some(n) if !per_device_login => n.clamp(1, devices.len()),
        Some(_) => anyhow::bail!("--connections cannot be used with per-device credentials"),
        None => devices.len(),
    };
    let qos = if config.qos == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce };
    let tls = iot_mqtt::TlsSettings {
        enabled: config.mqtt_tls,
        ca_file: config.mqtt_ca_file.clone(),
        client_cert: config.mqtt_client_cert.clone(),
        client_key: config.mqtt_client_key.clone(),
    }
    .transport()
    .context("MQTT TLS (SIM_MQTT_TLS, SIM_MQTT_CA_FILE, ...)")?;
    let counters = Arc::new(Counters { published: AtomicU64::new(0), acked: AtomicU64::new(0), errors: AtomicU64::new(0) });
    let stop_loops = CancellationToken::new();
    let run_id: u32 = rand::rng().random();

    let mut clients = Vec::with_capacity(connections);
    let mut loops = tokio::task::JoinSet::new();
    for c in 0..connections {
        let first = &devices[c * devices.len() / connections];
        let client_id = if first.username.is_some() {
            // Provisioned accounts are bound to the device id as client id.
            first.device_id.clone()
        } else if connections == devices.len() {
            format!("sim-{}-{run_id:08x}", first.device_id)
        } else {
            format!("sim-conn{c}-{run_id:08x}")
        };
        let mut options = MqttOptions::new(client_id, config.mqtt_host.clone(), config.mqtt_port);
        // MQTT v5: user properties carry the trace context (--trace-fraction).
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_outgoing_inflight_upper_limit(config.inflight.max(1))
            .set_clean_start(true);
        if let (Some(user), Some(pass)) = (&first.username, &first.password) {
            options.set_credentials(user.clone(), pass.clone());
        }
        if let Some(transport) = &tls {
            options.set_transport(transport.clone());
        }
        let (client, mut eventloop) = AsyncClient::new(options, usize::from(config.inflight) * 2 + 16);
        clients.push(client);
        let counters = counters.clone();
        let stop = stop_loops.clone();
        loops.spawn(async move {
            loop {
                let event = tokio::select! {
                    event = eventloop.poll() => event,
                    _ = stop.cancelled() => return,
                };
                match event {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        counters.acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Incoming(Packet::ConnAck(ack))) if ack.code != ConnectReturnCode::Success => {
                        tracing::error!(code = ?ack.code, "connection refused");
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(e) => {
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "MQTT connection error; reconnecting");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = stop.cancelled() => return,
                        }
                    }
                }
            }
        });
    }

    let started = Instant::now();
    let deadline = config.duration_secs.map(|s| started + Duration::from_secs_f64(s.max(0.0)));
    let period = Duration::from_secs_f64(1.0 / config.rate);
    let mut publishers = tokio::task::JoinSet::new();
    for (i, device) in devices.iter().enumerate() {
        let client = clients[i * connections / devices.len()].clone();
        let counters = counters.clone();
        let shutdown = shutdown.clone();
        let device_id = device.device_id.clone();
        let count = config.count;
        let trace_fraction = config.trace_fraction;
        // Spread the devices' first messages over one period instead of a burst.
        let offset = period.mul_f64(i as f64 / devices.len() as f64);
        publishers.spawn(async move {
            let topic = format!("devices/{device_id}/telemetry");
            let mut model = DeviceModel::new(&device_id);
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut sent = 0_u64;
            loop {
                if count.is_some_and(|c| sent >= c) || deadline.is_some_and(|d| Instant::now() >= d) {
                    return;
                }
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = shutdown.cancelled() => return,
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return;
                }
                let payload = model.next_payload(now_ms());
                let traced = trace_fraction > 0.0 && rand::random::<f64>() < trace_fraction;
                let properties = PublishProperties {
                    user_properties: if traced { trace_properties(&topic, payload.len()) } else { Vec::new() },
                    ..Default::default()
                };
                tokio::select! {
                    result = client.publish_with_properties(topic.clone(), qos, false, payload, properties) => {
                        if let Err(e) = result {
                            tracing::error!(error = %e, device = %device_id, "publish failed");
                            return;
                        }
                    }
                    _ = shutdown.cancelled() => return,
                }
                sent += 1;
                counters.published.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while publishers.join_next().await.is_some() {}
    let elapsed = started.elapsed();

    // QoS 1: wait until the broker has acknowledged everything (or give up after a while).
    if qos == QoS::AtLeastOnce {
        let ack_deadline = Instant::now() + Duration::from_secs(config.ack_timeout_secs);
        while counters.acked.load(Ordering::Relaxed) < counters.published.load(Ordering::Relaxed)
            && Instant::now() < ack_deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    } else {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for client in &clients {
        let _ = client.try_disconnect();
    }
    let _ = tokio::time::timeout(Duration::from_secs(3), async { while loops.join_next().await.is_some() {} }).await;
    stop_loops.cancel();
    while loops.join_next().await.is_some() {}

    let published = counters.published.load(Ordering::Relaxed);
    Ok(Totals {
        devices: devices.len(),
        published,
        acked: if qos == QoS::AtLeastOnce { counters.acked.load(Ordering::Relaxed) } else { published },
        errors: counters.errors.load(Ordering::Relaxed),
        elapsed,
    })
}

/// The `traceparent` (and `tracestate`) user properties of a traced message: the context of a
/// producer span exported by the simulator when tracing is on, else a fresh random span id.
fn trace_properties(topic: &str, body_size: usize) -> Vec<(String, String)> {
    use iot_runtime::telemetry::{self, mqtt};
    let mut properties = Vec::new();
    if telemetry::is_enabled() {
        // Created outside any other span: a new trace per message, ended when dropped here.
        let span = mqtt::publish_span(topic, body_size);
        mqtt::inject_context(&telemetry::context_of(&span), &mut properties);
    }
    if properties.is_empty() {
        let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let mut trace: [u8; 16] = rand::random();
        let mut span: [u8; 8] = rand::random();
        trace[0] |= 1; // an all-zero id is invalid
        span[0] |= 1;
        properties.push(("traceparent".to_string(), format!("00-{}-{}-01", hex(&trace), hex(&span))));
    }
    properties
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn traced_messages_carry_a_valid_traceparent() {
        let properties = trace_properties("devices/sim-0001/telemetry", 10);
        let parent = iot_runtime::telemetry::mqtt::extract_user_properties(&properties);
        assert!(parent.is_some(), "{properties:?}");
        assert_ne!(trace_properties("devices/sim-0001/telemetry", 10), properties, "a new trace per message");
    }

    #[test]
    fn credentials_file_formats() {
        let text = "# id user pass\ndev-1 u1 p1\n\ndev-2,u2,p2\ndev-3\tu3\tp3\n";
        let creds = parse_credentials(text).unwrap();
        assert_eq!(creds.len(), 3);
        assert_eq!(creds[1], DeviceCredentials { device_id: "dev-2".into(), username: Some("u2".into()), password: Some("p2".into()) });
        assert!(parse_credentials("dev-1 only-user").is_err());
    }

    #[test]
    fn payloads_parse_and_have_unique_timestamps() {
        let mut model = DeviceModel::new("sim-0001");
        let mut last = 0;
        for _ in 0..1000 {
            let payload = model.next_payload(1_767_225_600_000);
            let parsed = iot_payload::parse("devices/sim-0001/telemetry", payload.as_bytes(), 1_767_225_600_000_000).unwrap();
            assert_eq!(parsed.readings.len(), 4);
            let ts = parsed.readings[0].ts_us;
            assert!(ts > last, "timestamps must increase");
            last = ts;
            let battery = parsed.readings.iter().find(|r| r.metric == "battery").unwrap().value;
            assert!((0.0..=100.0).contains(&battery));
        }
    }
}
