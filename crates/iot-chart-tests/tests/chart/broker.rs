//! The broker configuration and bootstrap script the chart ships, run for real: the rendered
//! mosquitto.conf and bootstrap.sh with this machine's Mosquitto (as the pod would run them,
//! with paths and the port moved to a temporary directory).

use std::{
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use std::os::unix::process::CommandExt;

use iot_chart_tests::{render_all, tool};

struct Broker {
    child: Child,
}

impl Drop for Broker {
    fn drop(&mut self) {
        // As root the broker runs under `runuser`, which forks it: killing only our child
        // would leave the broker running. It leads its own process group; kill the group.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The plugin that belongs to [`mosquitto_bin`]: beside it for a broker unpacked by
/// scripts/lib/deps.sh (`bin/mosquitto`, `lib/`), else the machine's.
fn dynsec_plugin() -> Option<PathBuf> {
    let beside = mosquitto_bin().and_then(|bin| Some(bin.parent()?.join("../lib")));
    let system = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib",
        "/usr/local/lib",
    ]
    .map(PathBuf::from);
    beside
        .into_iter()
        .chain(system)
        .map(|d| d.join("mosquitto_dynamic_security.so"))
        .find(|p| p.is_file())
}

/// PATH for the bootstrap script, whose `mosquitto` and `mosquitto_ctrl` must be those of
/// [`mosquitto_bin`] (scripts/lib/mosquitto.sh does the same).
fn path_with_broker_tools() -> std::ffi::OsString {
    let mut dirs: Vec<PathBuf> = mosquitto_bin()
        .and_then(|bin| bin.parent().map(Path::to_path_buf))
        .into_iter()
        .collect();
    dirs.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
    std::env::join_paths(dirs).unwrap_or_default()
}

fn mosquitto_bin() -> Option<PathBuf> {
    std::env::var_os("MOSQUITTO_BIN")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .or_else(|| tool("mosquitto"))
        .or_else(|| Some(PathBuf::from("/usr/sbin/mosquitto")).filter(|p| p.is_file()))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// The pod runs the bootstrap and the broker as the non-root mosquitto user; so does the test
/// when it runs as root (Mosquitto started as root would drop to that user half-way).
fn give_to_broker_user(dir: &Path) {
    if is_root() {
        let status = Command::new("chown")
            .args(["-R", "mosquitto:"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "chown {} to the mosquitto user",
            dir.display()
        );
    }
}

/// A command run as the mosquitto user when the test runs as root.
fn as_broker_user(program: &Path) -> Command {
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "mosquitto", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

struct Accounts<'a> {
    admin: (&'a str, &'a str),
    ingest: (&'a str, &'a str),
    api: (&'a str, &'a str),
}

fn bootstrap(
    script: &Path,
    data: &Path,
    tmp: &Path,
    plugin: &Path,
    a: &Accounts,
) -> (bool, String) {
    let out = as_broker_user(Path::new("/bin/sh"))
        .arg(script)
        .env("PATH", path_with_broker_tools())
        .env("DATA_DIR", data)
        .env("PLUGIN", plugin)
        .env("TMPDIR", tmp)
        .env("BOOTSTRAP_PORT", free_port().to_string())
        .env("ADMIN_USERNAME", a.admin.0)
        .env("ADMIN_PASSWORD", a.admin.1)
        .env("INGEST_USERNAME", a.ingest.0)
        .env("INGEST_PASSWORD", a.ingest.1)
        .env("API_USERNAME", a.api.0)
        .env("API_PASSWORD", a.api.1)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn start(bin: &Path, conf: &Path, log: &Path, port: u16) -> Broker {
    let log_file = std::fs::File::create(log).unwrap();
    let child = as_broker_user(bin)
        .arg("-c")
        .arg(conf)
        .process_group(0)
        .stdout(Stdio::from(log_file.try_clone().unwrap()))
        .stderr(Stdio::from(log_file))
        .spawn()
        .unwrap();
    let broker = Broker { child };
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "broker did not listen on {port}:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    broker
}

fn publish(port: u16, login: Option<(&str, &str)>, topic: &str, message: &str) -> bool {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-q",
        "1",
        "-t",
        topic,
        "-m",
        message,
    ]);
    if let Some((user, pass)) = login {
        cmd.args(["-u", user, "-P", pass]);
    }
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn the_chart_broker_refuses_strangers_and_serves_provisioned_devices_across_restarts() {
    let test = "the_chart_broker_refuses_strangers_and_serves_provisioned_devices_across_restarts";
    let Some(sets) = render_all(test).unwrap() else {
        return;
    };
    let (Some(bin), Some(plugin)) = (mosquitto_bin(), dynsec_plugin()) else {
        panic!(
            "mosquitto with the dynamic-security plugin is required (scripts/lib/deps.sh installs it)"
        );
    };
    assert!(
        tool("mosquitto_ctrl").is_some() && tool("mosquitto_pub").is_some(),
        "mosquitto_ctrl and mosquitto-clients are required"
    );
    let default = sets.iter().find(|r| r.name == "default").unwrap();
    let cm = default.find("ConfigMap", "mosquitto").unwrap();
    let conf_text = cm["data"]["mosquitto.conf"].as_str().unwrap();
    let script_text = cm["data"]["bootstrap.sh"].as_str().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let (data, tmp) = (dir.path().join("data"), dir.path().join("tmp"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&tmp).unwrap();
    let script = dir.path().join("bootstrap.sh");
    std::fs::write(&script, script_text).unwrap();
    give_to_broker_user(dir.path());

    // First start of the pod: the init container creates the state.
    let accounts = Accounts {
        admin: ("admin", "admin-pw"),
        ingest: ("iot-ingest", "ingest-pw-1"),
        api: ("iot-api", "api-pw"),
    };
    let (ok, out) = bootstrap(&script, &data, &tmp, &plugin, &accounts);
    assert!(ok, "bootstrap failed:\n{out}");
    assert!(data.join("dynamic-security.json").is_file());
    // A rollout after the ingest password was rotated in the Secret: same script, new password.
    let rotated = Accounts {
        ingest: ("iot-ingest", "ingest-pw-2"),
        ..accounts
    };
    let (ok, out) = bootstrap(&script, &data, &tmp, &plugin, &rotated);
    assert!(ok, "second bootstrap (existing state) failed:\n{out}");

    let port = free_port();
    let conf = conf_text
        .replace("/mosquitto/data/", &format!("{}/", data.display()))
        .replace("/mosquitto/data", &data.display().to_string())
        .replace(
            "/usr/lib/mosquitto_dynamic_security.so",
            &plugin.display().to_string(),
        )
        .replace("listener 1883\n", &format!("listener {port} 127.0.0.1\n"));
    assert!(
        conf.contains(&format!("listener {port} 127.0.0.1")),
        "the chart's listener line moved:\n{conf}"
    );
    let conf_path = dir.path().join("mosquitto.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let log = dir.path().join("broker.log");
    let broker = start(&bin, &conf_path, &log, port);

    // No anonymous access, no wrong or stale passwords.
    assert!(
        !publish(port, None, "devices/d1/telemetry", "{}"),
        "anonymous client accepted"
    );
    assert!(
        !publish(port, Some(("iot-ingest", "wrong")), "x", "x"),
        "wrong password accepted"
    );
    assert!(
        !publish(port, Some(("iot-ingest", "ingest-pw-1")), "x", "x"),
        "rotated-out password accepted"
    );
    assert!(
        publish(port, Some(("iot-ingest", "ingest-pw-2")), "x", "x"),
        "ingest service account refused"
    );

    // The api provisions a device through the dynamic-security control topic.
    let provision = r#"{"commands":[
        {"command":"createRole","rolename":"device-d1"},
        {"command":"addRoleACL","rolename":"device-d1","acltype":"publishClientSend","topic":"devices/d1/telemetry","allow":true},
        {"command":"createClient","username":"d1","password":"d1-pw"},
        {"command":"addClientRole","username":"d1","rolename":"device-d1"}]}"#;
    assert!(publish(
        port,
        Some(("iot-api", "api-pw")),
        "$CONTROL/dynamic-security/v1",
        provision
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !publish(port, Some(("d1", "d1-pw")), "devices/d1/telemetry", "hello") {
        assert!(
            Instant::now() < deadline,
            "provisioned device cannot connect:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Ingest receives the device's own topic through the shared subscription, and not what the
    // device forges for another device's topic.
    let received = receive_one_while_publishing(
        port,
        &[
            ("devices/d2/telemetry", "forged"),
            ("devices/d1/telemetry", "genuine"),
        ],
    );
    assert_eq!(
        received.trim(),
        "devices/d1/telemetry genuine",
        "ingest got:\n{received}"
    );

    // Broker restart (new pod on the same volume): bootstrap again, the device is still there.
    drop(broker);
    let (ok, out) = bootstrap(&script, &data, &tmp, &plugin, &rotated);
    assert!(ok, "bootstrap after restart failed:\n{out}");
    let _broker = start(&bin, &conf_path, &log, port);
    assert!(
        publish(port, Some(("d1", "d1-pw")), "devices/d1/telemetry", "again"),
        "provisioned device lost on restart"
    );
    assert!(
        !publish(port, None, "devices/d1/telemetry", "{}"),
        "anonymous client accepted after restart"
    );
}

/// Subscribes as ingest to the shared subscription and publishes as device d1 until one
/// message arrives; returns "topic payload".
fn receive_one_while_publishing(port: u16, messages: &[(&str, &str)]) -> String {
    let sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-u",
            "iot-ingest",
            "-P",
            "ingest-pw-2",
        ])
        .args([
            "-t",
            "$share/ingest/devices/+/telemetry",
            "-q",
            "1",
            "-C",
            "1",
            "-W",
            "20",
            "-v",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut sub = Some(sub);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for (topic, payload) in messages {
            publish(port, Some(("d1", "d1-pw")), topic, payload);
        }
        let child = sub.as_mut().unwrap();
        if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = sub.take().unwrap().wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as a cert-manager
/// `kubernetes.io/tls` Secret would hold them (ca.crt, tls.crt, tls.key).
fn make_certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=iot test CA",
        ],
    );
    for (name, cn, san) in [
        (
            "tls",
            "localhost",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ),
        ("client", "d1", "subjectAltName=DNS:d1"),
    ] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={cn}"),
                "-addext",
                san,
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.crt"),
                "-days",
                "2",
                "-copy_extensions",
                "copy",
            ],
        );
    }
}

fn publish_tls(port: u16, dir: &Path, client_cert: bool, login: (&str, &str)) -> bool {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-q",
        "1",
        "-t",
        "x",
        "-m",
        "x",
        "-u",
        login.0,
        "-P",
        login.1,
    ]);
    cmd.arg("--cafile").arg(dir.join("ca.crt"));
    if client_cert {
        cmd.arg("--cert")
            .arg(dir.join("client.crt"))
            .arg("--key")
            .arg(dir.join("client.key"));
    }
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn the_chart_broker_tls_listener_requires_the_ca_and_a_client_certificate() {
    let test = "the_chart_broker_tls_listener_requires_the_ca_and_a_client_certificate";
    let Some(sets) = render_all(test).unwrap() else {
        return;
    };
    let (Some(bin), Some(plugin)) = (mosquitto_bin(), dynsec_plugin()) else {
        panic!(
            "mosquitto with the dynamic-security plugin is required (scripts/lib/deps.sh installs it)"
        );
    };
    // ci/trial-observability-values.yaml: TLS on 8883 with client certificates required.
    let trial = sets
        .iter()
        .find(|r| r.name == "trial-observability-values")
        .unwrap();
    let cm = trial.find("ConfigMap", "mosquitto").unwrap();
    let conf_text = cm["data"]["mosquitto.conf"].as_str().unwrap();
    assert!(conf_text.contains("require_certificate true"));

    let dir = tempfile::tempdir().unwrap();
    let (data, tmp, tls) = (
        dir.path().join("data"),
        dir.path().join("tmp"),
        dir.path().join("tls"),
    );
    for d in [&data, &tmp, &tls] {
        std::fs::create_dir_all(d).unwrap();
    }
    make_certificates(&tls);
    let script = dir.path().join("bootstrap.sh");
    std::fs::write(&script, cm["data"]["bootstrap.sh"].as_str().unwrap()).unwrap();
    give_to_broker_user(dir.path());
    let accounts = Accounts {
        admin: ("admin", "a"),
        ingest: ("iot-ingest", "i"),
        api: ("iot-api", "p"),
    };
    let (ok, out) = bootstrap(&script, &data, &tmp, &plugin, &accounts);
    assert!(ok, "bootstrap failed:\n{out}");

    let (plain, secure) = (free_port(), free_port());
    let conf = conf_text
        .replace("/mosquitto/data/", &format!("{}/", data.display()))
        .replace("/mosquitto/tls", &tls.display().to_string())
        .replace(
            "/usr/lib/mosquitto_dynamic_security.so",
            &plugin.display().to_string(),
        )
        .replace("listener 1883\n", &format!("listener {plain} 127.0.0.1\n"))
        .replace("listener 8883\n", &format!("listener {secure} 127.0.0.1\n"));
    let conf_path = dir.path().join("mosquitto.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let log = dir.path().join("broker.log");
    let _broker = start(&bin, &conf_path, &log, secure);
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();

    assert!(
        publish_tls(secure, &tls, true, ("iot-ingest", "i")),
        "TLS with the CA and a client certificate refused:\n{}",
        logs()
    );
    assert!(
        !publish_tls(secure, &tls, false, ("iot-ingest", "i")),
        "TLS without a client certificate accepted"
    );
    assert!(
        !publish_tls(secure, &tls, true, ("iot-ingest", "wrong")),
        "TLS with a wrong password accepted"
    );
    assert!(
        !publish(secure, Some(("iot-ingest", "i")), "x", "x"),
        "plain MQTT accepted on the TLS port"
    );
    assert!(
        publish(plain, Some(("iot-ingest", "i")), "x", "x"),
        "in-cluster plain listener refused ingest"
    );
}

#[test]
fn the_chart_bootstraps_the_broker_with_the_script_of_deploy_mosquitto() {
    // One script, two copies (Helm reads files only inside the chart): scripts/up.sh and the
    // tests run deploy/mosquitto/dynsec-bootstrap.sh, the pod runs the chart's copy.
    let root = iot_chart_tests::repo_root();
    let deploy = std::fs::read_to_string(root.join("deploy/mosquitto/dynsec-bootstrap.sh")).unwrap();
    let chart =
        std::fs::read_to_string(root.join("helm/iot-telemetry/files/mosquitto-bootstrap.sh")).unwrap();
    assert_eq!(
        chart, deploy,
        "helm/iot-telemetry/files/mosquitto-bootstrap.sh differs from deploy/mosquitto/dynsec-bootstrap.sh"
    );
}

fn env_of<'a>(r: &'a iot_chart_tests::Rendered, container: &str) -> Vec<&'a serde_json::Value> {
    r.env_entries()
        .into_iter()
        .filter(|(c, _)| c == container)
        .map(|(_, e)| e)
        .collect()
}

fn env_value(env: &[&serde_json::Value], name: &str) -> Option<String> {
    env.iter()
        .find(|e| e["name"] == name)
        .map(|e| match e["value"].as_str() {
            Some(v) => v.to_string(),
            None => format!("secret:{}", e["valueFrom"]["secretKeyRef"]["key"].as_str().unwrap_or("?")),
        })
}

#[test]
fn the_api_provisions_device_logins_with_its_account_and_a_tls_only_broker_is_reached_over_tls() {
    let Some(helm) = iot_chart_tests::helm_or_skip(
        "the_api_provisions_device_logins_with_its_account_and_a_tls_only_broker_is_reached_over_tls",
    ) else {
        return;
    };
    let set = |args: &[&str]| -> Vec<String> {
        args.iter().flat_map(|a| ["--set".to_string(), a.to_string()]).collect()
    };

    // Default: the api provisions with its own account (whose role the bootstrap gives the
    // $CONTROL/dynamic-security ACLs); ingest and api use the plain in-cluster listener.
    let r = iot_chart_tests::render_with(&helm, "default", &[]).unwrap();
    let api = env_of(&r, "api");
    assert_eq!(env_value(&api, "API_MQTT_ADMIN_USERNAME").as_deref(), Some("secret:api-username"));
    assert_eq!(env_value(&api, "API_MQTT_ADMIN_PASSWORD").as_deref(), Some("secret:api-password"));
    assert_eq!(env_value(&api, "API_MQTT_USERNAME").as_deref(), Some("secret:api-username"));
    assert_eq!(env_value(&api, "API_MQTT_TLS"), None);
    let script = r.find("ConfigMap", "mosquitto").unwrap()["data"]["bootstrap.sh"].as_str().unwrap().to_string();
    assert!(
        script.contains("addRoleACL iot-api publishClientSend '$CONTROL/dynamic-security/v1' allow")
            && script.contains("addRoleACL iot-ingest subscribePattern '$share/ingest/devices/+/telemetry' allow"),
        "the bootstrap no longer grants what api and ingest need"
    );

    // Provisioning off: no admin login for the api (it answers "broker_enforced": false).
    let r = iot_chart_tests::render_with(&helm, "no-provisioning", &set(&["api.brokerProvisioning=false"])).unwrap();
    assert_eq!(env_value(&env_of(&r, "api"), "API_MQTT_ADMIN_USERNAME"), None);

    // TLS only: ingest and api connect to the TLS port, trusting ca.crt of the broker's Secret,
    // and the NetworkPolicies let them.
    let tls_only = set(&["mosquitto.plainListener=false", "mosquitto.tls.enabled=true", "mosquitto.tls.existingSecret=mq-tls"]);
    let r = iot_chart_tests::render_with(&helm, "tls-only", &tls_only).unwrap();
    for (container, prefix) in [("ingest", "INGEST"), ("api", "API")] {
        let env = env_of(&r, container);
        assert_eq!(env_value(&env, &format!("{prefix}_MQTT_PORT")).as_deref(), Some("8883"), "{container}");
        assert_eq!(env_value(&env, &format!("{prefix}_MQTT_TLS")).as_deref(), Some("true"), "{container}");
        let ca = env_value(&env, &format!("{prefix}_MQTT_CA_FILE")).unwrap();
        let workload = r
            .workloads()
            .into_iter()
            .find(|w| w.containers().iter().any(|c| c["name"] == container))
            .unwrap();
        let pod = workload.pod;
        let mount = &pod["containers"][0]["volumeMounts"][0];
        assert!(ca.starts_with(mount["mountPath"].as_str().unwrap()), "{container}: {ca} is not mounted");
        let volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == mount["name"]).unwrap();
        assert_eq!(volume["secret"]["secretName"], "mq-tls", "{container}");
        let np = r.find("NetworkPolicy", container).unwrap();
        let egress = serde_json::to_string(&np["spec"]["egress"]).unwrap();
        assert!(egress.contains("\"port\":8883"), "{container}: egress to the TLS port not allowed: {egress}");
    }
    // Client certificates required and no plain listener: ingest and api could not connect.
    let mut both = tls_only.clone();
    both.extend(set(&["mosquitto.tls.requireCertificate=true"]));
    let refused = iot_chart_tests::template_text(&helm, &both);
    assert!(
        refused.as_ref().is_err_and(|e| e.to_string().contains("requireCertificate needs plainListener")),
        "TLS-only with client certificates required must be refused: {refused:?}"
    );
}

#[test]
fn the_api_session_cache_settings_reach_the_api() {
    let Some(helm) = iot_chart_tests::helm_or_skip("the_api_session_cache_settings_reach_the_api") else {
        return;
    };
    let r = iot_chart_tests::render_with(&helm, "default", &[]).unwrap();
    let api = env_of(&r, "api");
    assert_eq!(env_value(&api, "API_SESSION_CACHE_TTL").as_deref(), Some("1s"));
    assert_eq!(env_value(&api, "API_SESSION_CACHE_CAPACITY").as_deref(), Some("10000"));
    // An operator who needs revocations to take effect at once on every replica turns it off.
    let off = ["--set", "api.sessionCacheTtl=0s", "--set", "api.sessionCacheCapacity=50"].map(String::from);
    let r = iot_chart_tests::render_with(&helm, "session-cache-off", &off).unwrap();
    let api = env_of(&r, "api");
    assert_eq!(env_value(&api, "API_SESSION_CACHE_TTL").as_deref(), Some("0s"));
    assert_eq!(env_value(&api, "API_SESSION_CACHE_CAPACITY").as_deref(), Some("50"));
}

#[test]
fn the_storage_pool_size_reaches_storage() {
    let Some(helm) = iot_chart_tests::helm_or_skip("the_storage_pool_size_reaches_storage") else {
        return;
    };
    let r = iot_chart_tests::render_with(&helm, "default", &[]).unwrap();
    assert_eq!(env_value(&env_of(&r, "storage"), "STORAGE_DB_POOL_SIZE").as_deref(), Some("8"));
    let bigger = ["--set", "storage.dbPoolSize=24"].map(String::from);
    let r = iot_chart_tests::render_with(&helm, "storage-pool-24", &bigger).unwrap();
    assert_eq!(env_value(&env_of(&r, "storage"), "STORAGE_DB_POOL_SIZE").as_deref(), Some("24"));
}
