//! Broker security end to end: the project's secured Mosquitto (deploy/mosquitto with the
//! dynamic-security plugin, bootstrapped by deploy/mosquitto/dynsec-bootstrap.sh), the real
//! iot-api and iot-ingest binaries with their service accounts, storage and session processes.
//! Devices get their credentials from the api; the tests then act as devices over MQTT.

use std::{path::PathBuf, process::Command, time::Duration};

use iot_testkit::{
    BrokerLogin, ChildGuard, Mosquitto, TestDatabase, eventually, free_port, unique_suffix, workspace_bin,
};
use mysql_async::prelude::Queryable;
use reqwest::{Client, StatusCode};
use rumqttc::{AsyncClient, ConnectReturnCode, Event, MqttOptions, Outgoing, Packet, QoS, SubscribeReasonCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::helpers::{PASSWORD, bare_client, client, log_file, start_listening, start_storage};

/// Broker, storage, session, api and ingest as processes; the api provisions devices.
struct SecureStack {
    broker: Mosquitto,
    db: TestDatabase,
    api_base: String,
    api_ops: String,
    ingest_ops: String,
    /// Where clients connect: the TLS listener when the stack was started with TLS.
    mqtt_port: u16,
    ca_file: Option<PathBuf>,
    dir: tempfile::TempDir,
    _storage: ChildGuard,
    _session: ChildGuard,
    _api: ChildGuard,
    _ingest: ChildGuard,
}

impl SecureStack {
    async fn start(tls: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDatabase::create().await;
        let broker = Mosquitto::start_secured(tls).await;
        let security = broker.security().clone();
        let (mqtt_port, ca_file) = match &security.tls {
            Some(t) => (t.port, Some(t.ca_file.clone())),
            None => (broker.port, None),
        };
        // The services reach the broker the way devices do in this stack: over TLS or not.
        let tls_env = |prefix: &str| -> Vec<(String, String)> {
            ca_file
                .iter()
                .flat_map(|ca| {
                    [
                        (format!("{prefix}_MQTT_TLS"), "true".to_string()),
                        (format!("{prefix}_MQTT_CA_FILE"), ca.display().to_string()),
                    ]
                })
                .collect()
        };

        let (storage_addr, storage) = start_listening(|addr| start_storage(&db.url, addr, dir.path())).await;
        let prefix = format!("iot:test:sec:{}:", unique_suffix());
        let (session_addr, session) = start_listening(|addr| {
            Command::new(workspace_bin("iot-session"))
                .env("SESSION_REDIS_URL", iot_testkit::redis_url())
                .env("SESSION_KEY_PREFIX", &prefix)
                .env("SESSION_GRPC_ADDR", addr.to_string())
                .env("SESSION_METRICS_ADDR", format!("127.0.0.1:{}", free_port()))
                .stdout(log_file(dir.path(), "session.log"))
                .stderr(log_file(dir.path(), "session.log"))
                .spawn()
                .unwrap()
        })
        .await;
        let api_ops_addr = format!("127.0.0.1:{}", free_port());
        let (api_addr, api) = start_listening(|addr| {
            Command::new(workspace_bin("iot-api"))
                .env("API_LISTEN_ADDR", addr.to_string())
                .env("API_METRICS_ADDR", &api_ops_addr)
                .env("API_STORAGE_URL", format!("http://{storage_addr}"))
                .env("API_SESSION_URL", format!("http://{session_addr}"))
                .env("API_MQTT_HOST", "127.0.0.1")
                .env("API_MQTT_PORT", mqtt_port.to_string())
                .env("API_MQTT_USERNAME", &security.api.username)
                .env("API_MQTT_PASSWORD", &security.api.password)
                .env("API_MQTT_ADMIN_USERNAME", &security.api.username)
                .env("API_MQTT_ADMIN_PASSWORD", &security.api.password)
                .env("API_PUBLIC_MQTT_PORT", mqtt_port.to_string())
                .env("API_WORKERS", "2")
                .envs(tls_env("API"))
                .stdout(log_file(dir.path(), "api.log"))
                .stderr(log_file(dir.path(), "api.log"))
                .spawn()
                .unwrap()
        })
        .await;
        let ingest_ops = format!("127.0.0.1:{}", free_port());
        let ingest = Command::new(workspace_bin("iot-ingest"))
            .env("INGEST_METRICS_ADDR", &ingest_ops)
            .env("INGEST_MQTT_HOST", "127.0.0.1")
            .env("INGEST_MQTT_PORT", mqtt_port.to_string())
            .env("INGEST_MQTT_USERNAME", &security.ingest.username)
            .env("INGEST_MQTT_PASSWORD", &security.ingest.password)
            .env("INGEST_CLIENT_ID", format!("ingest-{}", unique_suffix()))
            .env("INGEST_STORAGE_URL", format!("http://{storage_addr}"))
            .env("INGEST_BATCH_LINGER_MS", "5")
            .envs(tls_env("INGEST"))
            .stdout(log_file(dir.path(), "ingest.log"))
            .stderr(log_file(dir.path(), "ingest.log"))
            .spawn()
            .unwrap();
        let stack = Self {
            broker,
            db,
            api_base: format!("http://{api_addr}"),
            api_ops: format!("http://{api_ops_addr}"),
            ingest_ops: format!("http://{ingest_ops}"),
            mqtt_port,
            ca_file,
            dir,
            _storage: storage,
            _session: session,
            _api: api,
            _ingest: ChildGuard(Some(ingest)),
        };
        // Ready = ingest subscribed through its service account (the $share ACL works), and
        // the api logged in with its own and opened the provisioning connection.
        let probe = bare_client();
        for (what, url) in [
            ("ingest /readyz (subscribed with the ingest account)", format!("{}/readyz", stack.ingest_ops)),
            ("api /readyz", format!("{}/readyz", stack.api_ops)),
        ] {
            let logs = stack.logs();
            eventually(&format!("{what}\n{logs}"), Duration::from_secs(60), || {
                let (probe, url) = (probe.clone(), url.clone());
                async move { probe.get(&url).send().await.ok().filter(|r| r.status() == StatusCode::OK) }
            })
            .await;
        }
        stack.wait_provisioning(true).await;
        stack
    }

    /// Waits until the api's provisioning connection is (or is no longer) up.
    async fn wait_provisioning(&self, up: bool) {
        let want = format!("api_broker_provisioning_connected {}", u8::from(up));
        let url = format!("{}/metrics", self.api_ops);
        let probe = bare_client();
        eventually(&format!("{want} in the api's /metrics"), Duration::from_secs(30), || {
            let (probe, url, want) = (probe.clone(), url.clone(), want.clone());
            async move {
                let text = probe.get(&url).send().await.ok()?.text().await.ok()?;
                text.lines().any(|l| l == want).then_some(())
            }
        })
        .await;
    }

    /// A counter or gauge from ingest's /metrics (0 when absent).
    async fn ingest_metric(&self, name: &str) -> f64 {
        let text = bare_client().get(format!("{}/metrics", self.ingest_ops)).send().await.unwrap().text().await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0.0)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.api_base, path)
    }

    fn logs(&self) -> String {
        ["api.log", "ingest.log"]
            .iter()
            .map(|name| {
                let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
                let tail: Vec<_> = text.lines().rev().take(15).collect();
                format!("--- {name}\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn admin(&self) -> Client {
        let username = format!("admin{}", unique_suffix());
        let body = json!({"username": username, "password": PASSWORD});
        let response = bare_client().post(self.url("/api/v1/users")).json(&body).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let client = client();
        let response = client.post(self.url("/api/v1/sessions")).json(&body).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        client
    }

    /// Creates a device through the api; returns its broker login from the `mqtt` block.
    async fn create_device(&self, admin: &Client, device_id: &str) -> BrokerLogin {
        let response = admin
            .post(self.url("/api/v1/devices"))
            .json(&json!({"device_id": device_id, "name": device_id}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED, "{}", response.text().await.unwrap());
        let body: Value = response.json().await.unwrap();
        let mqtt = &body["mqtt"];
        assert_eq!(mqtt["broker_enforced"], true, "{body}");
        assert_eq!(mqtt["username"], device_id);
        assert_eq!(mqtt["client_id"], device_id);
        assert_eq!(mqtt["port"], self.mqtt_port);
        BrokerLogin { username: device_id.to_string(), password: mqtt["password"].as_str().unwrap().to_string() }
    }

    async fn readings_of(&self, device_id: &str) -> u64 {
        let mut conn = self.db.connect().await;
        conn.exec_first(
            "SELECT COUNT(*) FROM readings r JOIN devices d ON d.id = r.device_pk WHERE d.device_id = ?",
            (device_id,),
        )
        .await
        .unwrap()
        .unwrap_or(0)
    }

    async fn connect(&self, client_id: &str, login: Option<&BrokerLogin>) -> Result<Mqtt, String> {
        Mqtt::connect(self.mqtt_port, self.ca_file.as_ref(), client_id, login).await
    }
}

/// An MQTT 3.1.1 client whose event loop runs in a task; its events arrive on a channel.
struct Mqtt {
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<Result<Packet, String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Mqtt {
    /// Connects; `Err` with the reason when the broker refuses or the connection fails.
    async fn connect(
        port: u16,
        ca_file: Option<&PathBuf>,
        client_id: &str,
        login: Option<&BrokerLogin>,
    ) -> Result<Self, String> {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30)).set_clean_session(true);
        if let Some(login) = login {
            options.set_credentials(login.username.clone(), login.password.clone());
        }
        iot_mqtt::TlsSettings { enabled: ca_file.is_some(), ca_file: ca_file.cloned(), ..Default::default() }
            .apply(&mut options)
            .unwrap();
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(packet)) => {
                        if tx.send(Ok(packet)).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(error) => {
                        // First error ends it: the tests want to see a disconnection, not a retry.
                        let _ = tx.send(Err(error.to_string()));
                        return;
                    }
                }
            }
        });
        let mut mqtt = Self { client, events, task };
        match mqtt.next(Duration::from_secs(10)).await {
            Some(Ok(Packet::ConnAck(ack))) if ack.code == ConnectReturnCode::Success => Ok(mqtt),
            other => Err(format!("{other:?}")),
        }
    }

    async fn next(&mut self, timeout: Duration) -> Option<Result<Packet, String>> {
        tokio::time::timeout(timeout, self.events.recv()).await.ok().flatten()
    }

    /// Publishes at QoS 1 and waits for the broker's PUBACK (which Mosquitto sends for a
    /// publish its ACLs dropped as well).
    async fn publish_acked(&mut self, topic: &str, payload: String) {
        self.client.publish(topic, QoS::AtLeastOnce, false, payload).await.unwrap();
        loop {
            match self.next(Duration::from_secs(10)).await {
                Some(Ok(Packet::PubAck(_))) => return,
                Some(Ok(_)) => {}
                other => panic!("no PUBACK for {topic}: {other:?}"),
            }
        }
    }

    /// Subscribes and returns whether the broker granted it.
    async fn subscribe(&mut self, filter: &str) -> bool {
        self.client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        loop {
            match self.next(Duration::from_secs(10)).await {
                Some(Ok(Packet::SubAck(ack))) => {
                    return ack.return_codes.iter().all(|c| matches!(c, SubscribeReasonCode::Success(_)));
                }
                Some(Ok(_)) => {}
                other => panic!("no SUBACK for {filter}: {other:?}"),
            }
        }
    }

    /// Waits until the broker closes this connection.
    async fn disconnected(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Err(_)) | None) => return true,
                Ok(Some(Ok(_))) => {}
                Err(_) => return false,
            }
        }
    }

    /// The next PUBLISH within `timeout` as "topic payload".
    async fn next_publish(&mut self, timeout: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Ok(Packet::Publish(p)))) => {
                    return Some(format!("{} {}", p.topic, String::from_utf8_lossy(&p.payload)));
                }
                Ok(Some(Ok(_))) => {}
                _ => return None,
            }
        }
    }
}

impl Drop for Mqtt {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn reading(seq: u32) -> String {
    json!({"metrics": {"seq": seq}}).to_string()
}

#[tokio::test]
async fn devices_get_their_own_topic_only_and_rotated_or_deleted_credentials_stop_working() {
    let stack = SecureStack::start(false).await;
    let admin = stack.admin().await;
    let (a, b) = (format!("sec-a-{}", unique_suffix()), format!("sec-b-{}", unique_suffix()));
    let login_a = stack.create_device(&admin, &a).await;
    let login_b = stack.create_device(&admin, &b).await;

    // No anonymous clients, no wrong passwords, no other device's login or client id.
    assert!(stack.connect(&a, None).await.is_err(), "anonymous client accepted");
    let wrong = BrokerLogin { username: a.clone(), password: "wrong".into() };
    assert!(stack.connect(&a, Some(&wrong)).await.is_err(), "wrong password accepted");
    assert!(stack.connect(&b, Some(&login_a)).await.is_err(), "device a connected with device b's client id");
    let anon_pub = stack.connect("anon-probe", None).await;
    assert!(anon_pub.is_err(), "anonymous client accepted");

    // The api's live-stream account sees every device's telemetry: it shows what the broker
    // delivers to subscribers.
    let api_login = stack.broker.security().api.clone();
    let mut watcher = stack.connect(&format!("watch-{}", unique_suffix()), Some(&api_login)).await.unwrap();
    assert!(watcher.subscribe("devices/+/telemetry").await, "the api account may not subscribe to telemetry");

    let mut device_a = stack.connect(&a, Some(&login_a)).await.unwrap();
    // Forged first, genuine second, on one connection: once the genuine reading is stored,
    // the forged one would have been delivered before it.
    device_a.publish_acked(&format!("devices/{b}/telemetry"), reading(1)).await;
    device_a.publish_acked(&format!("devices/{a}/telemetry"), reading(2)).await;
    let seen = watcher.next_publish(Duration::from_secs(10)).await;
    assert_eq!(
        seen.as_deref(),
        Some(format!("devices/{a}/telemetry {}", reading(2)).as_str()),
        "first message delivered"
    );
    eventually("device a's own reading stored by ingest", Duration::from_secs(20), || {
        let stack = &stack;
        let a = a.clone();
        async move { (stack.readings_of(&a).await == 1).then_some(()) }
    })
    .await;
    assert_eq!(stack.readings_of(&b).await, 0, "a reading forged by device a for device b was stored");
    // Ingest itself saw one PUBLISH: the forged one never reached it.
    assert_eq!(stack.ingest_metric("ingest_messages_received_total").await, 1.0, "ingest received the forged message");
    assert_eq!(watcher.next_publish(Duration::from_millis(300)).await, None, "forged message delivered late");

    // Device b works with its own login; subscriptions: own commands only.
    let mut device_b = stack.connect(&b, Some(&login_b)).await.unwrap();
    assert!(device_b.subscribe(&format!("devices/{b}/commands")).await, "own commands topic refused");
    assert!(!device_b.subscribe(&format!("devices/{a}/commands")).await, "another device's commands topic granted");
    assert!(!device_b.subscribe("devices/+/telemetry").await, "a device may read all telemetry");

    // Rotation: the connected device is disconnected, the old password fails, the new works.
    let response = admin.post(stack.url(&format!("/api/v1/devices/{a}/credentials"))).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let rotated: Value = response.json().await.unwrap();
    assert_eq!(rotated["mqtt"]["broker_enforced"], true);
    let new_a =
        BrokerLogin { username: a.clone(), password: rotated["mqtt"]["password"].as_str().unwrap().to_string() };
    assert_ne!(new_a.password, login_a.password);
    assert!(
        device_a.disconnected(Duration::from_secs(5)).await,
        "a client with the rotated-out password stayed connected"
    );
    assert!(stack.connect(&a, Some(&login_a)).await.is_err(), "rotated-out password accepted");
    let mut device_a = stack.connect(&a, Some(&new_a)).await.expect("the new password is refused");

    // Deletion: revoked at the broker, the connected client is disconnected.
    let response = admin.delete(stack.url(&format!("/api/v1/devices/{a}"))).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(device_a.disconnected(Duration::from_secs(5)).await, "a deleted device's client stayed connected");
    assert!(stack.connect(&a, Some(&new_a)).await.is_err(), "a deleted device's password accepted");
    assert!(stack.connect(&b, Some(&login_b)).await.is_ok(), "deleting device a revoked device b's login too");

    // A device id that names a service account is refused, and no device is left behind.
    let ingest_name = stack.broker.security().ingest.username.clone();
    let response = admin
        .post(stack.url("/api/v1/devices"))
        .json(&json!({"device_id": ingest_name, "name": "impostor"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CONFLICT, "{}", response.text().await.unwrap());
    let response = admin.get(stack.url(&format!("/api/v1/devices/{ingest_name}"))).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND, "the refused device was kept");
    let ingest_login = stack.broker.security().ingest.clone();
    assert!(
        stack.connect(&format!("probe-{}", unique_suffix()), Some(&ingest_login)).await.is_ok(),
        "the ingest account was changed"
    );
}

#[tokio::test]
async fn with_the_broker_down_device_changes_fail_with_503_and_leave_nothing_half_done() {
    let mut stack = SecureStack::start(false).await;
    let admin = stack.admin().await;
    let kept = format!("sec-k-{}", unique_suffix());
    let kept_login = stack.create_device(&admin, &kept).await;

    stack.broker.stop();
    stack.wait_provisioning(false).await;
    let lost = format!("sec-l-{}", unique_suffix());
    let response =
        admin.post(stack.url("/api/v1/devices")).json(&json!({"device_id": lost, "name": lost})).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    let response = admin.get(stack.url(&format!("/api/v1/devices/{lost}"))).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND, "a device without broker credentials was kept");
    // Rotation and deletion fail the same way and change nothing.
    let response = admin.post(stack.url(&format!("/api/v1/devices/{kept}/credentials"))).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let response = admin.delete(stack.url(&format!("/api/v1/devices/{kept}"))).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let response = admin.get(stack.url(&format!("/api/v1/devices/{kept}"))).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "deleted in storage although the broker kept its login");

    // Back up: the api reconnects by itself; the same device id can now be created, and the
    // device whose rotation failed still has its old password.
    stack.broker.restart().await;
    stack.wait_provisioning(true).await;
    stack.create_device(&admin, &lost).await;
    assert!(stack.connect(&kept, Some(&kept_login)).await.is_ok(), "the failed rotation changed the password");
}

#[tokio::test]
async fn tls_listener_serves_api_ingest_and_sim_with_the_development_ca_and_refuses_plain_mqtt() {
    let stack = SecureStack::start(true).await;
    let tls_port = stack.mqtt_port;
    let security = stack.broker.security().clone();
    let ingest_login = security.ingest.clone();

    // Plain MQTT on the TLS port fails; TLS with a CA that did not sign the broker's fails.
    assert!(
        Mqtt::connect(tls_port, None, &format!("plain-{}", unique_suffix()), Some(&ingest_login)).await.is_err(),
        "plain MQTT accepted on the TLS listener"
    );
    let other_ca = stack.dir.path().join("other-ca");
    let out = Command::new(iot_testkit::repo_root().join("scripts/dev-ca.sh")).arg(&other_ca).output().unwrap();
    assert!(out.status.success());
    assert!(
        Mqtt::connect(tls_port, Some(&other_ca.join("ca.crt")), &format!("t-{}", unique_suffix()), Some(&ingest_login))
            .await
            .is_err(),
        "TLS accepted a broker certificate from an untrusted CA"
    );

    // api (provisioning and live stream) and ingest are up over TLS (SecureStack waited for
    // both); a device created through the api publishes with iot-sim over TLS and its
    // readings are stored.
    let admin = stack.admin().await;
    let device = format!("sec-t-{}", unique_suffix());
    let login = stack.create_device(&admin, &device).await;
    let credentials = stack.dir.path().join("credentials.txt");
    std::fs::write(&credentials, format!("{device} {} {}\n", login.username, login.password)).unwrap();
    let output = tokio::process::Command::new(workspace_bin("iot-sim"))
        .env("SIM_MQTT_HOST", "127.0.0.1")
        .env("SIM_MQTT_PORT", tls_port.to_string())
        .env("SIM_MQTT_TLS", "true")
        .env("SIM_MQTT_CA_FILE", stack.ca_file.as_ref().unwrap())
        .env("SIM_CREDENTIALS_FILE", &credentials)
        .env("SIM_RATE", "20")
        .env("SIM_COUNT", "3")
        .env("SIM_ACK_TIMEOUT_SECS", "10")
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "iot-sim over TLS failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eventually("the simulated device's readings stored (3 messages x 4 metrics)", Duration::from_secs(20), || {
        let (stack, device) = (&stack, device.clone());
        async move { (stack.readings_of(&device).await == 12).then_some(()) }
    })
    .await;

    // The plain listener of the same broker still refuses anonymous clients.
    assert!(Mqtt::connect(stack.broker.port, None, "anon", None).await.is_err());
}
