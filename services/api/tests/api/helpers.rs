use std::{
    net::SocketAddr,
    process::{Child, Command},
    time::Duration,
};

use iot_api::{Application, Config, CookieSecure};
use iot_proto::storage::v1::{WriteReadingsRequest, storage_service_client::StorageServiceClient};
use iot_runtime::{CancellationToken, logging::LogFormat};
use iot_testkit::{ChildGuard, Mosquitto, TestDatabase, eventually, free_port, unique_suffix, wait_for_child_port, workspace_bin};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

pub const PASSWORD: &str = "correct horse battery staple";

#[allow(dead_code)] // not every test module reads every field
pub struct TestApp {
    /// `http://127.0.0.1:PORT` of the api.
    pub base: String,
    pub addr: SocketAddr,
    pub ops: String,
    pub storage_url: String,
    pub storage_addr: SocketAddr,
    pub session_url: String,
    pub broker: Mosquitto,
    pub db: TestDatabase,
    storage: ChildGuard,
    session: ChildGuard,
    pub shutdown: CancellationToken,
    dir: tempfile::TempDir,
}

pub fn log_file(dir: &std::path::Path, name: &str) -> std::fs::File {
    std::fs::OpenOptions::new().create(true).append(true).open(dir.join(name)).unwrap()
}

/// Starts a service on a fresh free port and waits until it listens. A port that was free a
/// moment ago can be taken by a parallel test before the child binds it: then the child exits
/// and another port is tried.
pub async fn start_listening(mut spawn: impl FnMut(SocketAddr) -> Child) -> (SocketAddr, ChildGuard) {
    for _ in 0..5 {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut child = spawn(addr);
        // Our own child must hold the port: a connect alone could reach another test's service.
        if wait_for_child_port(&mut child, addr, Duration::from_secs(90)).await {
            return (addr, ChildGuard(Some(child)));
        }
        eprintln!("service on {addr} exited early; retrying on another port");
    }
    panic!("the service did not start in 5 attempts (see its log)");
}

pub fn start_storage(db_url: &str, addr: SocketAddr, dir: &std::path::Path) -> Child {
    Command::new(workspace_bin("iot-storage"))
        .env("STORAGE_DATABASE_URL", db_url)
        .env("STORAGE_GRPC_ADDR", addr.to_string())
        .env("STORAGE_METRICS_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("STORAGE_DB_POOL_SIZE", "4")
        .stdout(log_file(dir, "storage.log"))
        .stderr(log_file(dir, "storage.log"))
        .spawn()
        .unwrap()
}

/// Real storage (own MariaDB database) and session (own Redis key prefix) processes, a private
/// Mosquitto, and the api in this process on port 0.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// As `spawn_app`, with extra environment for the session service (e.g. short expiries).
pub async fn spawn_app_with(session_env: &[(&str, &str)]) -> TestApp {
    spawn_app_configured(session_env, |_| {}).await
}

/// As `spawn_app_with`, with changes to the api's configuration (e.g. short timeouts).
pub async fn spawn_app_configured(session_env: &[(&str, &str)], configure: impl FnOnce(&mut Config)) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::create().await;
    let broker = Mosquitto::start("allow_anonymous true").await;

    let (storage_addr, storage) = start_listening(|addr| start_storage(&db.url, addr, dir.path())).await;

    let prefix = format!("iot:test:api:{}:", unique_suffix());
    let (session_addr, session) = start_listening(|addr| {
        Command::new(workspace_bin("iot-session"))
            .env("SESSION_REDIS_URL", iot_testkit::redis_url())
            .env("SESSION_KEY_PREFIX", &prefix)
            .env("SESSION_GRPC_ADDR", addr.to_string())
            .envs(session_env.iter().copied())
            .env("SESSION_METRICS_ADDR", format!("127.0.0.1:{}", free_port()))
            .stdout(log_file(dir.path(), "session.log"))
            .stderr(log_file(dir.path(), "session.log"))
            .spawn()
            .unwrap()
    })
    .await;

    let mut config = Config {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        storage_url: format!("http://{storage_addr}"),
        session_url: format!("http://{session_addr}"),
        mqtt_host: "127.0.0.1".into(),
        mqtt_port: broker.port,
        mqtt_username: None,
        mqtt_password: None,
        broker: Default::default(),
        public_mqtt_host: "mqtt.example.test".into(),
        public_mqtt_port: 8883,
        cookie_secure: CookieSecure::Auto,
        max_body_bytes: 16 * 1024,
        client_request_timeout: Duration::from_secs(5),
        body_timeout: Duration::from_secs(10),
        client_disconnect_timeout: Duration::from_secs(2),
        keep_alive: Duration::from_secs(75),
        session_cache_ttl: Duration::from_secs(1),
        session_cache_capacity: 10_000,
        workers: 2,
        log_format: LogFormat::Text,
    };
    configure(&mut config);
    let shutdown = CancellationToken::new();
    let app = Application::build(config.clone(), shutdown.clone()).await.unwrap();
    let addr = app.local_addr;
    let ops = format!("http://{}", app.ops_addr);
    tokio::spawn(app.run_until_stopped());

    let app = TestApp {
        base: format!("http://{addr}"),
        addr,
        ops,
        storage_url: config.storage_url,
        storage_addr,
        session_url: config.session_url,
        broker,
        db,
        storage,
        session,
        shutdown,
        dir,
    };
    let probe = Client::new();
    let ready = format!("{}/readyz", app.ops);
    eventually("api /readyz answers 200 (storage and session reachable)", Duration::from_secs(60), || {
        let probe = probe.clone();
        let ready = ready.clone();
        async move { probe.get(&ready).send().await.ok().filter(|r| r.status() == StatusCode::OK) }
    })
    .await;
    app
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if std::thread::panicking() {
            for name in ["storage.log", "session.log"] {
                let log = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
                eprintln!("--- {name} ---\n{}", log.chars().rev().take(4000).collect::<String>().chars().rev().collect::<String>());
            }
        }
    }
}

/// A client that keeps cookies and does not follow redirects (tests look at them).
pub fn client() -> Client {
    Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

pub fn bare_client() -> Client {
    Client::builder().redirect(reqwest::redirect::Policy::none()).timeout(Duration::from_secs(30)).build().unwrap()
}

impl TestApp {
    /// SIGKILLs the storage process (an outage as a crash would cause).
    pub fn kill_storage(&mut self) {
        self.storage.kill();
    }

    pub async fn restart_storage(&mut self) {
        // Same port: the api's channel must find it where it was.
        let mut child = start_storage(&self.db.url, self.storage_addr, self.dir.path());
        let listening = wait_for_child_port(&mut child, self.storage_addr, Duration::from_secs(90)).await;
        self.storage = ChildGuard(Some(child));
        assert!(listening, "storage did not start again on {}", self.storage_addr);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Registers the first user (the admin) and returns a logged-in client.
    pub async fn admin(&self) -> (Client, String) {
        let username = format!("admin{}", unique_suffix());
        let response = bare_client()
            .post(self.url("/api/v1/users"))
            .json(&json!({"username": username, "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED, "{}", response.text().await.unwrap());
        (self.login(&username).await, username)
    }

    /// Registers a normal user through the admin's session and logs them in.
    pub async fn user(&self, admin: &Client) -> (Client, String) {
        let username = format!("user{}", unique_suffix());
        let response = admin
            .post(self.url("/api/v1/users"))
            .json(&json!({"username": username, "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED, "{}", response.text().await.unwrap());
        (self.login(&username).await, username)
    }

    pub async fn login(&self, username: &str) -> Client {
        let client = client();
        let response = client
            .post(self.url("/api/v1/sessions"))
            .json(&json!({"username": username, "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED, "{}", response.text().await.unwrap());
        client
    }

    pub async fn create_device(&self, client: &Client, device_id: &str) -> Value {
        let response = client
            .post(self.url("/api/v1/devices"))
            .json(&json!({"device_id": device_id, "name": format!("Device {device_id}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED, "{}", response.text().await.unwrap());
        response.json().await.unwrap()
    }

    /// Writes readings the way ingest does, straight into storage.
    pub async fn write_readings(&self, device_id: &str, points: &[(&str, i64, f64)]) {
        let mut storage = StorageServiceClient::connect(self.storage_url.clone()).await.unwrap();
        let readings = points
            .iter()
            .map(|(metric, ts_us, value)| iot_proto::storage::v1::Reading {
                device_id: device_id.to_string(),
                metric: metric.to_string(),
                ts_us: *ts_us,
                value: *value,
            })
            .collect();
        let written = storage.write_readings(WriteReadingsRequest { readings }).await.unwrap().into_inner();
        assert_eq!(written.inserted as usize, points.len());
    }
}

/// Asserts the design's error shape and returns the code.
pub async fn error_code(response: reqwest::Response, status: StatusCode) -> String {
    assert_eq!(response.status(), status, "unexpected status");
    let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
    assert_eq!(content_type.as_deref(), Some("application/json"));
    let body: Value = response.json().await.unwrap();
    let code = body["error"]["code"].as_str().unwrap_or_else(|| panic!("no error.code in {body}")).to_string();
    assert!(body["error"]["message"].is_string(), "no error.message in {body}");
    code
}

pub fn unique_device() -> String {
    format!("dev-{}", unique_suffix())
}
