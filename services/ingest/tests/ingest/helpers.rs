use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use iot_proto::storage::v1::{CreateDeviceRequest, CreateUserRequest, storage_service_client::StorageServiceClient};
use iot_testkit::{ChildGuard, Mosquitto, TestDatabase, eventually, free_port, unique_suffix, workspace_bin};
use mysql_async::prelude::Queryable;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// The broker settings that matter to ingest, taken from the project's configuration so the
/// tests exercise what is deployed (in-flight window, queue sizes, packet size).
pub fn broker_config() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/mosquitto/mosquitto.conf");
    let keys = [
        "max_inflight_messages",
        "max_inflight_bytes",
        "max_queued_messages",
        "max_queued_bytes",
        "queue_qos0_messages",
        "max_packet_size",
        "persistent_client_expiration",
    ];
    let from_file: Vec<String> = std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .filter(|line| keys.iter().any(|k| line.split_whitespace().next() == Some(*k)))
        .map(str::to_string)
        .collect();
    let settings = if from_file.is_empty() {
        "max_inflight_messages 10000\nmax_queued_messages 1000000\nmax_queued_bytes 268435456\nmax_packet_size 262144"
            .to_string()
    } else {
        from_file.join("\n")
    };
    format!("allow_anonymous true\npersistence true\n{settings}\n")
}

/// A storage process on a test database.
pub struct Storage {
    pub grpc_addr: SocketAddr,
    metrics_addr: SocketAddr,
    db_url: String,
    log: PathBuf,
    pub child: ChildGuard,
}

impl Storage {
    pub async fn start(db: &TestDatabase, dir: &std::path::Path) -> Self {
        let grpc_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let metrics_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut storage = Self {
            grpc_addr,
            metrics_addr,
            db_url: db.url.clone(),
            log: dir.join(format!("storage-{}.log", unique_suffix())),
            child: ChildGuard(None),
        };
        storage.spawn().await;
        storage
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(workspace_bin("iot-storage"))
            .env("STORAGE_DATABASE_URL", &self.db_url)
            .env("STORAGE_GRPC_ADDR", self.grpc_addr.to_string())
            .env("STORAGE_METRICS_ADDR", self.metrics_addr.to_string())
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = ChildGuard(Some(child));
        // Our own child must hold the port: a connect alone could reach another test's storage.
        self.child.wait_listening(self.grpc_addr, Duration::from_secs(30)).await;
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    pub fn stop(&mut self) {
        self.child.kill();
    }

    pub async fn restart(&mut self) {
        self.child.kill();
        self.spawn().await;
    }
}

/// Everything but ingest: database, storage with one user and some devices, broker.
pub struct Stack {
    pub db: TestDatabase,
    pub broker: Mosquitto,
    pub storage: Storage,
    pub dir: tempfile::TempDir,
}

impl Stack {
    pub async fn start(devices: &[String]) -> Self {
        Self::start_with(devices, false).await
    }

    /// With the restart guard armed at every broker start (deploy/mosquitto/restart-guard.sh).
    pub async fn start_guarded(devices: &[String]) -> Self {
        Self::start_with(devices, true).await
    }

    async fn start_with(devices: &[String], guarded: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDatabase::create().await;
        let broker = if guarded {
            Mosquitto::start_with_restart_guard(&broker_config()).await
        } else {
            Mosquitto::start(&broker_config()).await
        };
        let storage = Storage::start(&db, dir.path()).await;
        let stack = Self { db, broker, storage, dir };
        stack.register(devices).await;
        stack
    }

    async fn register(&self, devices: &[String]) {
        let mut client = eventually("storage answers", Duration::from_secs(30), || {
            let url = self.storage.url();
            async move { StorageServiceClient::connect(url).await.ok() }
        })
        .await;
        let user = client
            .create_user(CreateUserRequest {
                username: format!("owner{}", unique_suffix()),
                password: "correct horse battery".into(),
                is_admin: false,
                only_if_first: false,
            })
            .await
            .unwrap()
            .into_inner();
        for device_id in devices {
            client
                .create_device(CreateDeviceRequest {
                    device_id: device_id.clone(),
                    owner_id: user.id,
                    name: device_id.clone(),
                    attributes_json: String::new(),
                })
                .await
                .unwrap();
        }
    }

    pub fn ingest(&self, client_id: &str) -> IngestBuilder<'_> {
        IngestBuilder { stack: self, client_id: client_id.to_string(), env: Vec::new() }
    }

    pub async fn count_rows(&self) -> u64 {
        let mut conn = self.db.connect().await;
        let n: Option<u64> = conn.query_first("SELECT COUNT(*) FROM readings").await.unwrap();
        conn.disconnect().await.unwrap();
        n.unwrap_or(0)
    }

    /// (device_id, metric, ts_us) -> value of every stored reading.
    pub async fn rows(&self) -> BTreeMap<(String, String, i64), f64> {
        let mut conn = self.db.connect().await;
        let rows: Vec<(String, String, i64, f64)> = conn
            .query(
                "SELECT d.device_id, r.metric, r.ts_us, r.value FROM readings r JOIN devices d ON d.id = r.device_pk",
            )
            .await
            .unwrap();
        conn.disconnect().await.unwrap();
        rows.into_iter().map(|(d, m, t, v)| ((d, m, t), v)).collect()
    }

    pub async fn wait_for_rows(&self, expected: u64, timeout: Duration) {
        let mut last = 0;
        let result = tokio::time::timeout(timeout, async {
            loop {
                last = self.count_rows().await;
                if last >= expected {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
        assert!(result.is_ok(), "expected {expected} rows, have {last} after {timeout:?}");
        // Nothing more may arrive: more rows than expected means something was stored twice.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(self.count_rows().await, expected, "row count overshoots");
    }
}

pub struct IngestBuilder<'a> {
    stack: &'a Stack,
    client_id: String,
    env: Vec<(String, String)>,
}

impl IngestBuilder<'_> {
    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub async fn start(self) -> Ingest {
        let mut ingest = Ingest {
            client_id: self.client_id,
            broker_port: self.stack.broker.port,
            storage_url: self.stack.storage.url(),
            env: self.env,
            ops_addr: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            log: self.stack.dir.path().join(format!("ingest-{}.log", unique_suffix())),
            child: ChildGuard(None),
        };
        ingest.spawn().await;
        ingest
    }
}

/// An `iot-ingest` process.
pub struct Ingest {
    pub client_id: String,
    broker_port: u16,
    storage_url: String,
    env: Vec<(String, String)>,
    pub ops_addr: SocketAddr,
    pub log: PathBuf,
    pub child: ChildGuard,
}

impl Ingest {
    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_iot-ingest"));
        command
            .env("INGEST_MQTT_HOST", "127.0.0.1")
            .env("INGEST_MQTT_PORT", self.broker_port.to_string())
            .env("INGEST_CLIENT_ID", &self.client_id)
            .env("INGEST_STORAGE_URL", &self.storage_url)
            .env("INGEST_METRICS_ADDR", self.ops_addr.to_string())
            .env("INGEST_KEEP_ALIVE_SECS", "5")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info");
        for (k, v) in &self.env {
            command.env(k, v);
        }
        // Logs go to stdout (iot-runtime's fmt layer); keep both streams for failure messages.
        let child = command.stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap();
        self.child = ChildGuard(Some(child));
        self.child.wait_listening(self.ops_addr, Duration::from_secs(30)).await;
        let url = format!("http://{}/readyz", self.ops_addr);
        eventually(&format!("ingest {} ready", self.client_id), Duration::from_secs(30), || {
            let url = url.clone();
            async move {
                let response = reqwest::get(&url).await.ok()?;
                response.status().is_success().then_some(())
            }
        })
        .await;
    }

    pub async fn restart(&mut self) {
        self.child.kill();
        self.spawn().await;
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Scrapes /metrics: sample name (with labels, e.g. `x_total{reason="y"}`) -> value.
    pub async fn metrics(&self) -> BTreeMap<String, f64> {
        let text = reqwest::get(format!("http://{}/metrics", self.ops_addr)).await.unwrap().text().await.unwrap();
        parse_metrics(&text)
    }

    pub async fn metric(&self, name: &str) -> f64 {
        self.metrics().await.get(name).copied().unwrap_or(0.0)
    }
}

pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// A QoS 1 publisher (MQTT 3.1.1, as most devices) that counts the broker's PUBACKs.
pub struct Publisher {
    pub client: AsyncClient,
    pub acked: Arc<AtomicU64>,
    pub published: u64,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    pub async fn connect(port: u16) -> Self {
        let mut options = MqttOptions::new(format!("pub-{}", unique_suffix()), "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(10)).set_inflight(200).set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        let acked = Arc::new(AtomicU64::new(0));
        let counter = acked.clone();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Self { client, acked, published: 0, task }
    }

    pub async fn publish(&mut self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client.publish(topic, QoS::AtLeastOnce, false, payload.into()).await.unwrap();
        self.published += 1;
    }

    /// Waits until the broker has acknowledged every publish (so it owns the messages).
    pub async fn flush(&self) {
        let want = self.published;
        let acked = self.acked.clone();
        eventually("broker acknowledges every publish", Duration::from_secs(60), || {
            let acked = acked.clone();
            async move { (acked.load(Ordering::SeqCst) >= want).then_some(()) }
        })
        .await;
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn devices(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("dev-{i}-{}", unique_suffix())).collect()
}

/// A JSON-form payload with a unique timestamp; the values encode (message, metric) so a
/// swapped or altered value shows up in the comparison.
pub fn payload(ts_ms: i64, i: u64) -> (String, [(String, f64); 2]) {
    let a = i as f64 + 0.25;
    let b = -(i as f64) * 1.5;
    let body = format!(r#"{{"ts":{ts_ms},"metrics":{{"temperature":{a},"humidity":{b}}}}}"#);
    (body, [("temperature".to_string(), a), ("humidity".to_string(), b)])
}

/// 2026-01-01T00:00:00Z in ms: a fixed base, so that expected keys are easy to compute.
pub const BASE_MS: i64 = 1_767_225_600_000;

/// Expected rows of `payload()` messages `range` for `device`.
pub fn expect_rows(
    expected: &mut BTreeMap<(String, String, i64), f64>,
    device: &str,
    ts_ms: i64,
    values: [(String, f64); 2],
) {
    for (metric, value) in values {
        expected.insert((device.to_string(), metric, ts_ms * 1000), value);
    }
}
