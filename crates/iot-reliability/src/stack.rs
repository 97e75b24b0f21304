//! The whole stack as real processes on private dependencies: MariaDB, Redis and Mosquitto
//! (the project's deploy/mosquitto configuration, persistence on, restart guard armed at every
//! start), storage, session, api and two ingest replicas.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, atomic::AtomicUsize},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use iot_testkit::{
    ChildGuard, Mosquitto, free_port,
    mariadb::MariaDbServer,
    mqtt::{DevicePublisher, DeviceSpec},
    redis::RedisServer,
};
use mysql_async::prelude::Queryable;

/// Directory of the workspace binaries: `IOT_BIN_DIR`, else the directory of this executable
/// (a test binary lives one level deeper, in `deps/`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("IOT_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") { dir.parent().map(Path::to_path_buf).unwrap_or(dir) } else { dir }
}

/// A service process with a fixed environment, restartable.
pub struct Service {
    pub name: String,
    bin: PathBuf,
    env: Vec<(String, String)>,
    /// The port the service must listen on before it counts as started.
    pub listen: SocketAddr,
    pub log: PathBuf,
    pub child: ChildGuard,
}

impl Service {
    fn new(name: &str, bin: &str, env: Vec<(String, String)>, listen: SocketAddr, dir: &Path) -> Self {
        Self {
            name: name.to_string(),
            bin: bin_dir().join(bin),
            env,
            listen,
            log: dir.join(format!("{name}.log")),
            child: ChildGuard(None),
        }
    }

    pub async fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let mut cmd = Command::new(&self.bin);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v))).env("RUST_LOG", "info").env("LOG_FORMAT", "json");
        let child =
            cmd.stdout(log.try_clone()?).stderr(log).spawn().with_context(|| {
                format!("starting {} (build it first: cargo build --workspace)", self.bin.display())
            })?;
        self.child = ChildGuard(Some(child));
        self.child.wait_listening(self.listen, Duration::from_secs(60)).await;
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        let pid = self.child.pid();
        (pid != 0).then_some(pid)
    }
}

pub struct Options {
    pub devices: usize,
    /// Messages per second per device.
    pub rate_per_device: f64,
    pub redis_persistent: bool,
    pub ingest_replicas: usize,
}

pub struct Stack {
    pub dir: tempfile::TempDir,
    pub db: MariaDbServer,
    pub db_url: String,
    pub redis: RedisServer,
    pub broker: Mosquitto,
    pub storage: Service,
    pub session: Service,
    pub api: Service,
    pub ingest: Vec<Service>,
    pub api_url: String,
    /// A logged-in api client (cookie `sid`).
    pub user: reqwest::Client,
    pub credentials: (String, String),
    pub devices: Vec<String>,
    /// The broker login of each device (provisioned by the api): username, password, client id.
    pub device_logins: Vec<(String, String, String)>,
    pub phase: Arc<AtomicUsize>,
    pub publishers: Vec<DevicePublisher>,
}

fn addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

impl Stack {
    /// Everything but the device load.
    pub async fn start(options: &Options) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let (db, redis, broker) = tokio::join!(
            MariaDbServer::start(),
            async {
                if options.redis_persistent {
                    RedisServer::start_persistent().await
                } else {
                    RedisServer::start().await
                }
            },
            // The project's secured broker (dynamic security, service accounts, no anonymous
            // access) with persistence, started through the restart guard as in the chart.
            Mosquitto::start_secured_with_restart_guard(false),
        );
        let mut conn = mysql_async::Conn::from_url(db.url().as_str()).await?;
        conn.query_drop("CREATE DATABASE iot CHARACTER SET utf8mb4 COLLATE utf8mb4_bin").await?;
        conn.disconnect().await?;
        let db_url = format!("{}/iot", db.url());

        let storage_addr = addr();
        let mut storage = Service::new(
            "storage",
            "iot-storage",
            vec![
                ("STORAGE_DATABASE_URL".into(), db_url.clone()),
                ("STORAGE_GRPC_ADDR".into(), storage_addr.to_string()),
                ("STORAGE_METRICS_ADDR".into(), addr().to_string()),
            ],
            storage_addr,
            dir.path(),
        );
        let session_addr = addr();
        let mut session = Service::new(
            "session",
            "iot-session",
            vec![
                ("SESSION_REDIS_URL".into(), redis.url()),
                ("SESSION_GRPC_ADDR".into(), session_addr.to_string()),
                ("SESSION_METRICS_ADDR".into(), addr().to_string()),
            ],
            session_addr,
            dir.path(),
        );
        let api_addr = addr();
        let mut api = Service::new(
            "api",
            "iot-api",
            vec![
                ("API_LISTEN_ADDR".into(), api_addr.to_string()),
                ("API_METRICS_ADDR".into(), addr().to_string()),
                ("API_STORAGE_URL".into(), format!("http://{storage_addr}")),
                ("API_SESSION_URL".into(), format!("http://{session_addr}")),
                ("API_MQTT_HOST".into(), "127.0.0.1".into()),
                ("API_MQTT_PORT".into(), broker.port.to_string()),
                ("API_MQTT_USERNAME".into(), broker.security().api.username.clone()),
                ("API_MQTT_PASSWORD".into(), broker.security().api.password.clone()),
                // Devices created through the api get a broker login of their own.
                ("API_MQTT_ADMIN_USERNAME".into(), broker.security().api.username.clone()),
                ("API_MQTT_ADMIN_PASSWORD".into(), broker.security().api.password.clone()),
                ("API_WORKERS".into(), "2".into()),
            ],
            api_addr,
            dir.path(),
        );
        storage.start().await?;
        session.start().await?;
        api.start().await?;
        let mut ingest = Vec::new();
        for i in 0..options.ingest_replicas {
            let ops = addr();
            let mut replica = Service::new(
                &format!("ingest-{i}"),
                "iot-ingest",
                vec![
                    ("INGEST_MQTT_HOST".into(), "127.0.0.1".into()),
                    ("INGEST_MQTT_PORT".into(), broker.port.to_string()),
                    ("INGEST_MQTT_USERNAME".into(), broker.security().ingest.username.clone()),
                    ("INGEST_MQTT_PASSWORD".into(), broker.security().ingest.password.clone()),
                    ("INGEST_CLIENT_ID".into(), format!("ingest-{i}")),
                    ("INGEST_STORAGE_URL".into(), format!("http://{storage_addr}")),
                    ("INGEST_METRICS_ADDR".into(), ops.to_string()),
                    ("INGEST_KEEP_ALIVE_SECS".into(), "5".into()),
                    ("INGEST_RESTART_GUARD_RECHECK_SECS".into(), "30".into()),
                ],
                ops,
                dir.path(),
            );
            replica.start().await?;
            ingest.push(replica);
        }
        let api_url = format!("http://{api_addr}");
        let user = reqwest::Client::builder().cookie_store(true).timeout(Duration::from_secs(5)).build()?;
        let credentials = ("operator".to_string(), "correct horse battery staple".to_string());
        let response = user
            .post(format!("{api_url}/api/v1/users"))
            .json(&serde_json::json!({"username": credentials.0, "password": credentials.1}))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("registering a user: {} {}", response.status(), response.text().await.unwrap_or_default());
        }
        let mut stack = Self {
            dir,
            db,
            db_url,
            redis,
            broker,
            storage,
            session,
            api,
            ingest,
            api_url,
            user,
            credentials,
            devices: Vec::new(),
            device_logins: Vec::new(),
            phase: Arc::new(AtomicUsize::new(0)),
            publishers: Vec::new(),
        };
        stack.log_in().await?;
        for i in 0..options.devices {
            let device = format!("sensor-{i:03}");
            let response = stack
                .user
                .post(format!("{}/api/v1/devices", stack.api_url))
                .json(&serde_json::json!({"device_id": device, "name": device}))
                .send()
                .await?;
            if !response.status().is_success() {
                bail!("creating device {device}: {} {}", response.status(), response.text().await.unwrap_or_default());
            }
            let body: serde_json::Value = response.json().await?;
            if body["mqtt"]["broker_enforced"] != true {
                bail!("the api did not provision a broker login for {device}: {body}");
            }
            let login = |key: &str| body["mqtt"][key].as_str().unwrap_or_default().to_string();
            stack.device_logins.push((login("username"), login("password"), login("client_id")));
            stack.devices.push(device);
        }
        Ok(stack)
    }

    pub async fn log_in(&self) -> anyhow::Result<()> {
        let response = self
            .user
            .post(format!("{}/api/v1/sessions", self.api_url))
            .json(&serde_json::json!({"username": self.credentials.0, "password": self.credentials.1}))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("logging in: {}", response.status());
        }
        Ok(())
    }

    /// One api request as the logged-in user: the HTTP status, or 0 when there was no answer.
    pub async fn probe(&self) -> u16 {
        match self
            .user
            .get(format!("{}/api/v1/devices", self.api_url))
            .header("Accept", "application/json")
            .send()
            .await
        {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    }

    /// Polls the api until it answers something other than a 5xx or nothing; returns that
    /// status and how long it took.
    pub async fn wait_api(&self, timeout: Duration) -> (u16, Duration) {
        let started = Instant::now();
        loop {
            let status = self.probe().await;
            if (status != 0 && status < 500) || started.elapsed() > timeout {
                return (status, started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn start_load(&mut self, rate_per_device: f64, first_ts_ms: i64) {
        for (device, login) in self.devices.iter().zip(&self.device_logins) {
            self.publishers.push(DevicePublisher::spawn(
                DeviceSpec {
                    host: "127.0.0.1".into(),
                    port: self.broker.port,
                    device: device.clone(),
                    credentials: Some((login.0.clone(), login.1.clone())),
                    client_id: Some(login.2.clone()),
                    rate_per_sec: rate_per_device,
                    first_ts_ms,
                    max_inflight: 100,
                },
                self.phase.clone(),
            ));
        }
    }

    /// (device, ts_us) -> number of readings stored for that message.
    pub async fn stored(&self) -> anyhow::Result<std::collections::BTreeMap<(String, i64), u64>> {
        let mut conn = mysql_async::Conn::from_url(self.db_url.as_str()).await?;
        let rows: Vec<(String, i64, u64)> = conn
            .query(
                "SELECT d.device_id, r.ts_us, COUNT(*) FROM readings r JOIN devices d ON d.id = r.device_pk \
                 GROUP BY d.device_id, r.ts_us",
            )
            .await?;
        conn.disconnect().await?;
        Ok(rows.into_iter().map(|(d, t, n)| ((d, t), n)).collect())
    }

    pub async fn count_readings(&self) -> anyhow::Result<u64> {
        let mut conn = mysql_async::Conn::from_url(self.db_url.as_str()).await?;
        let n: Option<u64> = conn.query_first("SELECT COUNT(*) FROM readings").await?;
        conn.disconnect().await?;
        Ok(n.unwrap_or(0))
    }
}

/// Scrapes a Prometheus endpoint: sample (with labels) -> value.
pub async fn scrape(addr: SocketAddr) -> anyhow::Result<std::collections::BTreeMap<String, f64>> {
    let text = reqwest::get(format!("http://{addr}/metrics")).await?.text().await?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect())
}
