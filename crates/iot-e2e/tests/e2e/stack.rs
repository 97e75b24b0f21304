//! The whole backend as processes: storage, session, api and ingest binaries on free ports,
//! with the test's own database, Redis key prefix and broker, all exporting spans to one
//! in-test OTLP receiver.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use iot_proto::storage::v1::{
    CreateDeviceRequest, CreateUserRequest, storage_service_client::StorageServiceClient,
};
use iot_testkit::{
    ChildGuard, Mosquitto, TestDatabase, eventually, free_port, otlp::OtlpReceiver, unique_suffix,
    wait_for_child_port, workspace_bin,
};
use rumqttc::v5::{
    AsyncClient, Event, MqttOptions,
    mqttbytes::{
        QoS,
        v5::{Packet, PublishProperties},
    },
};

/// The password of the users the tests register through the api.
pub const PASSWORD: &str = "correct horse battery staple";

/// An MQTT message to publish: topic, payload, user properties.
pub type Message = (String, Vec<u8>, Vec<(String, String)>);

/// Which services to start besides storage.
#[derive(Clone, Copy, Default)]
pub struct Services {
    pub api: bool,
    pub ingest: bool,
}

/// One running service: its main address (gRPC or HTTP; none for ingest) and its ops address.
pub struct Service {
    pub addr: Option<SocketAddr>,
    pub ops: SocketAddr,
    child: ChildGuard,
}

impl Service {
    /// Scrapes `/metrics`: sample (name with labels as exposed, e.g.
    /// `x_total{reason="y"}`) -> value.
    pub async fn metrics(&self) -> BTreeMap<String, f64> {
        let text = reqwest::get(format!("http://{}/metrics", self.ops))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
            .filter_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                Some((name.to_string(), value.parse().ok()?))
            })
            .collect()
    }
}

pub struct Stack {
    pub receiver: OtlpReceiver,
    pub broker: Mosquitto,
    pub storage: Service,
    pub session: Option<Service>,
    pub api: Option<Service>,
    pub ingest: Option<Service>,
    pub db: TestDatabase,
    dir: tempfile::TempDir,
}

fn log_file(dir: &Path, name: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .unwrap()
}

/// A service binary with the tracing environment every service gets here: export to the
/// receiver every 200 ms (tests wait for spans, not for a shutdown flush), nothing inherited.
fn command(binary: &str, receiver: &OtlpReceiver, dir: &Path) -> Command {
    let mut command = Command::new(workspace_bin(binary));
    command
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_RESOURCE_ATTRIBUTES")
        .env_remove("OTEL_SDK_DISABLED")
        .env_remove("OTEL_TRACES_SAMPLER")
        .env_remove("OTEL_TRACES_SAMPLER_ARG")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log_file(dir, &format!("{binary}.log")))
        .stderr(log_file(dir, &format!("{binary}.log")));
    command
}

/// Starts a service whose main port is `addr`, trying other ports when a parallel test took the
/// one picked (the child then exits).
async fn start_listening(mut spawn: impl FnMut(SocketAddr, SocketAddr) -> Child) -> Service {
    for _ in 0..5 {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let ops: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut child = spawn(addr, ops);
        // Our own child must hold the port: a connect alone could reach another test's service.
        if wait_for_child_port(&mut child, addr, Duration::from_secs(60)).await
            && wait_for_child_port(&mut child, ops, Duration::from_secs(10)).await
        {
            return Service {
                addr: Some(addr),
                ops,
                child: ChildGuard(Some(child)),
            };
        }
        let _ = child.kill();
        let _ = child.wait();
        eprintln!("service on {addr} exited early; retrying on other ports");
    }
    panic!("the service did not start in 5 attempts (see its log)");
}

async fn wait_ready(service: &Service, what: &str) {
    let url = format!("http://{}/readyz", service.ops);
    eventually(
        &format!("{what} /readyz answers 200"),
        Duration::from_secs(60),
        || {
            let url = url.clone();
            async move {
                let response = reqwest::get(&url).await.ok()?;
                response.status().is_success().then_some(())
            }
        },
    )
    .await;
}

impl Stack {
    pub async fn start(services: Services) -> Self {
        let receiver = OtlpReceiver::start().await;
        let dir = tempfile::tempdir().unwrap();
        let db = TestDatabase::create().await;
        let broker = Mosquitto::start("allow_anonymous true").await;
        let storage = start_listening(|addr, ops| {
            command("iot-storage", &receiver, dir.path())
                .env("STORAGE_DATABASE_URL", &db.url)
                .env("STORAGE_GRPC_ADDR", addr.to_string())
                .env("STORAGE_METRICS_ADDR", ops.to_string())
                .env("STORAGE_DB_POOL_SIZE", "4")
                .spawn()
                .unwrap()
        })
        .await;
        let storage_url = format!("http://{}", storage.addr.unwrap());
        let (session, api) = if services.api {
            let prefix = format!("iot:test:e2e:{}:", unique_suffix());
            let session = start_listening(|addr, ops| {
                command("iot-session", &receiver, dir.path())
                    .env("SESSION_REDIS_URL", iot_testkit::redis_url())
                    .env("SESSION_KEY_PREFIX", &prefix)
                    .env("SESSION_GRPC_ADDR", addr.to_string())
                    .env("SESSION_METRICS_ADDR", ops.to_string())
                    .spawn()
                    .unwrap()
            })
            .await;
            let session_url = format!("http://{}", session.addr.unwrap());
            let api = start_listening(|addr, ops| {
                command("iot-api", &receiver, dir.path())
                    .env("API_LISTEN_ADDR", addr.to_string())
                    .env("API_METRICS_ADDR", ops.to_string())
                    .env("API_STORAGE_URL", &storage_url)
                    .env("API_SESSION_URL", &session_url)
                    .env("API_MQTT_HOST", "127.0.0.1")
                    .env("API_MQTT_PORT", broker.port.to_string())
                    .env("API_WORKERS", "2")
                    // Every request validates its cookie with the session service, so that
                    // counts and traces are exact; the api's session cache (on by default,
                    // ~1 s) is tested in services/api.
                    .env("API_SESSION_CACHE_TTL", "0")
                    .spawn()
                    .unwrap()
            })
            .await;
            wait_ready(&api, "api").await;
            (Some(session), Some(api))
        } else {
            (None, None)
        };
        let ingest = if services.ingest {
            let mut service = None;
            for _ in 0..5 {
                let ops: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
                let mut child = command("iot-ingest", &receiver, dir.path())
                    .env("INGEST_MQTT_HOST", "127.0.0.1")
                    .env("INGEST_MQTT_PORT", broker.port.to_string())
                    .env(
                        "INGEST_CLIENT_ID",
                        format!("ingest-e2e-{}", unique_suffix()),
                    )
                    .env("INGEST_STORAGE_URL", &storage_url)
                    .env("INGEST_METRICS_ADDR", ops.to_string())
                    // Messages published together end up in one batch.
                    .env("INGEST_BATCH_LINGER_MS", "300")
                    .spawn()
                    .unwrap();
                if wait_for_child_port(&mut child, ops, Duration::from_secs(60)).await {
                    service = Some(Service {
                        addr: None,
                        ops,
                        child: ChildGuard(Some(child)),
                    });
                    break;
                }
                let _ = child.kill();
                let _ = child.wait();
            }
            let service = service.expect("ingest did not start in 5 attempts (see its log)");
            // Ready = connected and subscribed: from now on published messages reach it.
            wait_ready(&service, "ingest").await;
            Some(service)
        } else {
            None
        };
        Self {
            receiver,
            broker,
            storage,
            session,
            api,
            ingest,
            db,
            dir,
        }
    }

    /// A workspace binary with the stack's tracing environment (e.g. the simulator).
    pub fn command(&self, binary: &str) -> Command {
        let mut command = command(binary, &self.receiver, self.dir.path());
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        command
    }

    pub fn storage_url(&self) -> String {
        format!("http://{}", self.storage.addr.unwrap())
    }

    pub fn api_url(&self, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.api.as_ref().expect("api started").addr.unwrap()
        )
    }

    /// Through the api: registers a new user, logs in (the returned client keeps the session
    /// cookie) and creates a device of that user named `device_name`; returns the client and the
    /// device id.
    pub async fn user_with_device(&self, device_name: &str) -> (reqwest::Client, String) {
        let http = reqwest::Client::builder()
            .cookie_store(true)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let credentials =
            serde_json::json!({"username": format!("admin{}", unique_suffix()), "password": PASSWORD});
        for path in ["/api/v1/users", "/api/v1/sessions"] {
            let response = http.post(self.api_url(path)).json(&credentials).send().await.unwrap();
            assert_eq!(response.status(), reqwest::StatusCode::CREATED, "POST {path}");
        }
        let device_id = format!("dev-{}", unique_suffix());
        let response = http
            .post(self.api_url("/api/v1/devices"))
            .json(&serde_json::json!({"device_id": device_id, "name": device_name}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::CREATED, "POST /api/v1/devices");
        (http, device_id)
    }

    /// Creates a user and these devices straight in storage (no trace context).
    pub async fn register_devices(&self, devices: &[&str]) {
        let mut storage = StorageServiceClient::connect(self.storage_url())
            .await
            .unwrap();
        let user = storage
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
            storage
                .create_device(CreateDeviceRequest {
                    device_id: (*device_id).to_string(),
                    owner_id: user.id,
                    name: (*device_id).to_string(),
                    attributes_json: String::new(),
                })
                .await
                .unwrap();
        }
    }

    /// Publishes `(topic, payload, user properties)` with MQTT v5 at QoS 1 and returns once the
    /// broker has acknowledged every one.
    pub async fn publish(&self, messages: &[Message]) {
        let mut options = MqttOptions::new(
            format!("device-{}", unique_suffix()),
            "127.0.0.1",
            self.broker.port,
        );
        options.set_keep_alive(Duration::from_secs(10));
        let (client, mut eventloop) = AsyncClient::new(options, messages.len() + 10);
        for (topic, payload, properties) in messages {
            let properties = PublishProperties {
                user_properties: properties.clone(),
                ..Default::default()
            };
            client
                .publish_with_properties(
                    topic.clone(),
                    QoS::AtLeastOnce,
                    false,
                    payload.clone(),
                    properties,
                )
                .await
                .unwrap();
        }
        let expected = messages.len();
        let acked = tokio::time::timeout(Duration::from_secs(20), async {
            let mut acked = 0;
            while acked < expected {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                    Ok(_) => {}
                    Err(error) => panic!("publishing failed: {error}"),
                }
            }
        })
        .await;
        assert!(
            acked.is_ok(),
            "the broker did not acknowledge {expected} publishes"
        );
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), eventloop.poll()).await;
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for service in [
            Some(&mut self.storage),
            self.session.as_mut(),
            self.api.as_mut(),
            self.ingest.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            service.child.kill();
        }
        if std::thread::panicking() {
            for name in [
                "iot-storage.log",
                "iot-session.log",
                "iot-api.log",
                "iot-ingest.log",
            ] {
                let Ok(log) = std::fs::read_to_string(self.dir.path().join(name)) else {
                    continue;
                };
                let tail: String = log
                    .chars()
                    .rev()
                    .take(3000)
                    .collect::<String>()
                    .chars()
                    .rev()
                    .collect();
                eprintln!("--- {name} (tail) ---\n{tail}");
            }
        }
    }
}

/// `name{a="b",c="d"}` -> (`name`, {a: b, c: d}).
fn split_sample(key: &str) -> (&str, BTreeMap<&str, &str>) {
    let Some((name, rest)) = key.split_once('{') else {
        return (key, BTreeMap::new());
    };
    let labels = rest
        .trim_end_matches('}')
        .split("\",")
        .filter_map(|pair| {
            let (k, v) = pair.split_once("=\"")?;
            Some((k.trim_start_matches(','), v.trim_end_matches('"')))
        })
        .collect();
    (name, labels)
}

/// The sample of `name` with exactly these labels (in any order), 0 when absent.
pub fn sample(metrics: &BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let wanted: BTreeMap<&str, &str> = labels.iter().copied().collect();
    metrics
        .iter()
        .find(|(key, _)| split_sample(key) == (name, wanted.clone()))
        .map(|(_, value)| *value)
        .unwrap_or(0.0)
}

/// The sum of every sample of `name`, whatever its labels.
pub fn total(metrics: &BTreeMap<String, f64>, name: &str) -> f64 {
    metrics
        .iter()
        .filter(|(key, _)| split_sample(key).0 == name)
        .map(|(_, value)| value)
        .sum()
}

/// Metric family names present in a scrape (`_bucket`/`_sum`/`_count` folded into the histogram).
pub fn families(metrics: &BTreeMap<String, f64>) -> std::collections::BTreeSet<String> {
    metrics
        .keys()
        .map(|key| {
            let name = split_sample(key).0;
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name)
                .to_string()
        })
        .collect()
}
