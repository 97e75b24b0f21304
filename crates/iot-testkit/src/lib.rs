//! Helpers for integration tests. They start or reach *real* MariaDB, Redis and Mosquitto;
//! `scripts/test.sh` makes sure those exist and exports where they are:
//! `TEST_MYSQL_URL` (server URL without a database), `TEST_REDIS_URL`, `MOSQUITTO_BIN`.

#![allow(clippy::unwrap_used)] // test support: a failed set-up should fail the test loudly

pub mod mariadb;
pub mod mqtt;
pub mod otlp;
pub mod proxy;
pub mod redis;

use std::{
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use mysql_async::prelude::Queryable;
use rand::Rng;

/// MariaDB server URL without a database, e.g. `mysql://root@127.0.0.1:3306`.
pub fn mysql_server_url() -> String {
    std::env::var("TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_string())
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

/// A random lowercase suffix for names (databases, key prefixes, client ids).
pub fn unique_suffix() -> String {
    let mut rng = rand::rng();
    (0..12).map(|_| char::from(b'a' + rng.random_range(0..26u8))).collect()
}

/// A port that was free a moment ago on 127.0.0.1.
///
/// Chosen at random below Linux's ephemeral range (32768-60999): a port the kernel hands out
/// for `bind(0)` or an outgoing connection in another test process cannot land on it, and a
/// random pick keeps two parallel test binaries from choosing the same one. Tests that start
/// a service on it still confirm with [`wait_for_child_port`] that their own child got it.
pub fn free_port() -> u16 {
    use std::sync::Mutex;
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut rng = rand::rng();
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    for _ in 0..1000 {
        let port = rng.random_range(20000..32000u16);
        if handed_out.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.push(port);
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until `child` itself listens on `addr` (its socket, not another process's that
/// happens to hold the port), or returns `false` as soon as the child has exited (e.g. it
/// lost a race for the port). Panics after `timeout`.
pub async fn wait_for_child_port(child: &mut Child, addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(_status)) = child.try_wait() {
            return false;
        }
        if child_listens_on(child.id(), addr.port()) {
            return true;
        }
        assert!(Instant::now() < deadline, "process {} does not listen on {addr} after {timeout:?}", child.id());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether process `pid` owns a TCP socket in LISTEN state on `port` (Linux `/proc`).
pub fn child_listens_on(pid: u32, port: u16) -> bool {
    let port_hex = format!(":{port:04X}");
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // fields: sl, local_address, rem_address, st, ..., inode at index 9; 0A = LISTEN
            if fields.len() > 9 && fields[1].ends_with(&port_hex) && fields[3] == "0A" {
                inodes.push(format!("socket:[{}]", fields[9]));
            }
        }
    }
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .map(|target| inodes.iter().any(|inode| target.as_os_str() == inode.as_str()))
            .unwrap_or(false)
    })
}

/// A database of its own for one test, dropped when the value is dropped.
pub struct TestDatabase {
    pub name: String,
    /// Full URL including the database name.
    pub url: String,
    server_url: String,
}

impl TestDatabase {
    pub async fn create() -> Self {
        let server_url = mysql_server_url();
        let name = format!("iot_test_{}", unique_suffix());
        let pool = mysql_async::Pool::new(server_url.as_str());
        let mut conn = pool.get_conn().await.unwrap_or_else(|e| {
            panic!("MariaDB is not reachable at {server_url} ({e}); run the tests through scripts/test.sh")
        });
        conn.query_drop(format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")).await.unwrap();
        drop(conn);
        pool.disconnect().await.unwrap();
        let url = format!("{}/{}", server_url.trim_end_matches('/'), name);
        Self { name, url, server_url }
    }

    /// A raw connection to this test's database, for assertions that look at rows directly.
    pub async fn connect(&self) -> mysql_async::Conn {
        mysql_async::Conn::from_url(self.url.as_str()).await.unwrap()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let server_url = self.server_url.clone();
        let name = self.name.clone();
        // Drop runs inside or outside a runtime; a short thread of its own works in both.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut conn) = mysql_async::Conn::from_url(server_url.as_str()).await {
                    let _ = conn.query_drop(format!("DROP DATABASE IF EXISTS `{name}`")).await;
                    let _ = conn.disconnect().await;
                }
            });
        })
        .join();
    }
}

/// A private Mosquitto with a configuration of the test's choosing, killed on drop.
pub struct Mosquitto {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    extra_config: String,
    restart_guard: bool,
    security: Option<BrokerSecurity>,
}

/// A username and password on the broker.
#[derive(Debug, Clone)]
pub struct BrokerLogin {
    pub username: String,
    pub password: String,
}

/// What a broker from [`Mosquitto::start_secured`] has: the dynamic-security administrator,
/// the ingest and api service accounts (deploy/mosquitto/dynsec-bootstrap.sh), and the TLS
/// listener when asked for.
#[derive(Debug, Clone)]
pub struct BrokerSecurity {
    pub admin: BrokerLogin,
    pub ingest: BrokerLogin,
    pub api: BrokerLogin,
    pub tls: Option<BrokerTls>,
}

/// The TLS listener of a secured broker and the development CA (scripts/dev-ca.sh) of its
/// certificate. `ca_dir` also holds `client.crt`/`client.key`.
#[derive(Debug, Clone)]
pub struct BrokerTls {
    pub port: u16,
    pub ca_file: PathBuf,
    pub ca_dir: PathBuf,
}

/// The repository's root (for deploy/ and scripts/).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn mosquitto_bin() -> String {
    std::env::var("MOSQUITTO_BIN").unwrap_or_else(|_| "mosquitto".to_string())
}

/// Runs `script` with bash after sourcing scripts/lib/mosquitto.sh; panics with its output on failure.
fn mosquitto_sh(script: &str, args: &[&str], env: &[(&str, &str)]) {
    let lib = repo_root().join("scripts/lib/mosquitto.sh");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("set -euo pipefail; source \"$0\"; {script}"))
        .arg(lib)
        .args(args)
        .env("MOSQUITTO_BIN", mosquitto_bin())
        .envs(env.iter().copied())
        .output()
        .expect("bash is required");
    assert!(
        out.status.success(),
        "scripts/lib/mosquitto.sh `{script}` failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Mosquitto {
    /// Starts `mosquitto` on a free port. `extra_config` is appended after the listener
    /// lines (e.g. `allow_anonymous true`, persistence, limits).
    pub async fn start(extra_config: &str) -> Self {
        Self::start_with(extra_config, false).await
    }

    /// As [`Mosquitto::start`], but every start runs `deploy/mosquitto/restart-guard.sh arm`
    /// first, as the deployed broker does (see that script); needs `persistence true`.
    pub async fn start_with_restart_guard(extra_config: &str) -> Self {
        Self::start_with(extra_config, true).await
    }

    async fn start_with(extra_config: &str, restart_guard: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let broker = Self {
            port: free_port(),
            dir,
            child: None,
            extra_config: extra_config.to_string(),
            restart_guard,
            security: None,
        };
        broker.start_on_free_ports().await
    }

    /// Starts the project's secured broker: deploy/mosquitto/mosquitto.conf with
    /// security/dynamic-security.conf (and security/tls.conf on a second port when `tls`,
    /// with certificates from scripts/dev-ca.sh), rendered by scripts/lib/mosquitto.sh as
    /// scripts/up.sh does, after deploy/mosquitto/dynsec-bootstrap.sh created the admin and
    /// the ingest/api service accounts with random passwords. No anonymous access.
    pub async fn start_secured(tls: bool) -> Self {
        Self::start_secured_with(tls, false).await
    }

    /// [`Mosquitto::start_secured`] with `deploy/mosquitto/restart-guard.sh arm` run before
    /// every start, as the chart starts the broker.
    pub async fn start_secured_with_restart_guard(tls: bool) -> Self {
        Self::start_secured_with(tls, true).await
    }

    async fn start_secured_with(tls: bool, restart_guard: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let login = |username: &str| BrokerLogin { username: username.to_string(), password: unique_suffix() };
        let (admin, ingest, api) = (login("admin"), login("iot-ingest"), login("iot-api"));
        let dir_str = dir.path().display().to_string();
        mosquitto_sh(
            "mosquitto_dynsec_bootstrap \"$1\" >/dev/null",
            &[&dir_str],
            &[
                ("ADMIN_USERNAME", &admin.username),
                ("ADMIN_PASSWORD", &admin.password),
                ("INGEST_USERNAME", &ingest.username),
                ("INGEST_PASSWORD", &ingest.password),
                ("API_USERNAME", &api.username),
                ("API_PASSWORD", &api.password),
            ],
        );
        let tls = tls.then(|| {
            let ca_dir = dir.path().join("dev-ca");
            let out = Command::new(repo_root().join("scripts/dev-ca.sh")).arg(&ca_dir).output().unwrap();
            assert!(out.status.success(), "scripts/dev-ca.sh failed: {}", String::from_utf8_lossy(&out.stderr));
            BrokerTls { port: free_port(), ca_file: ca_dir.join("ca.crt"), ca_dir }
        });
        let security = Some(BrokerSecurity { admin, ingest, api, tls });
        let broker = Self { port: free_port(), dir, child: None, extra_config: String::new(), restart_guard, security };
        broker.start_on_free_ports().await
    }

    /// The accounts (and TLS listener) of a broker from [`Mosquitto::start_secured`].
    pub fn security(&self) -> &BrokerSecurity {
        self.security.as_ref().expect("not a secured broker: use Mosquitto::start_secured")
    }

    async fn start_on_free_ports(mut self) -> Self {
        // Another test process may take a port between the pick and the bind: pick again.
        for _ in 0..5 {
            if self.spawn().await {
                return self;
            }
            self.port = free_port();
            if let Some(tls) = self.security.as_mut().and_then(|s| s.tls.as_mut()) {
                tls.port = free_port();
            }
        }
        panic!("mosquitto did not start in 5 attempts:\n{}", self.log())
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.conf")
    }

    /// Starts the broker; `false` when it exited without listening (port taken).
    async fn spawn(&mut self) -> bool {
        if self.security.is_some() {
            return self.spawn_secured().await;
        }
        // Started as root, Mosquitto switches to the `mosquitto` user, which cannot write the
        // persistence file into this root-owned 0700 temporary directory: a restart would then
        // lose every session and queued message. `user <ourselves>` keeps it as it is.
        let user = Command::new("id")
            .arg("-un")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .map(|name| format!("user {}\n", name.trim()))
            .unwrap_or_default();
        let config = format!(
            "{user}listener {port} 127.0.0.1\npersistence_location {dir}/\n{extra}\n",
            port = self.port,
            dir = self.dir.path().display(),
            extra = self.extra_config
        );
        std::fs::write(self.config_path(), config).unwrap();
        let bin = mosquitto_bin();
        self.arm_restart_guard();
        let log = std::fs::File::create(self.dir.path().join("mosquitto.log")).unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(self.config_path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start mosquitto; run the tests through scripts/test.sh");
        let mut child = child;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let listening = wait_for_child_port(&mut child, addr, Duration::from_secs(10)).await;
        self.child = Some(child);
        listening
    }

    /// With the restart guard on: `deploy/mosquitto/restart-guard.sh arm` on the rendered
    /// configuration, before the broker starts.
    fn arm_restart_guard(&self) {
        if !self.restart_guard {
            return;
        }
        let out = Command::new("sh")
            .arg(repo_root().join("deploy/mosquitto/restart-guard.sh"))
            .arg("arm")
            .arg(self.config_path())
            .env("MOSQUITTO", mosquitto_bin())
            .env("GUARD_PORT", free_port().to_string())
            .output()
            .unwrap();
        assert!(out.status.success(), "restart-guard.sh arm failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }

    /// The secured broker, configured by scripts/lib/mosquitto.sh from deploy/mosquitto.
    async fn spawn_secured(&mut self) -> bool {
        let dir = self.dir.path().display().to_string();
        let port = self.port.to_string();
        let tls = self.security.as_ref().and_then(|s| s.tls.clone());
        let (tls_port, ca_dir) = match &tls {
            Some(t) => (t.port.to_string(), t.ca_dir.display().to_string()),
            None => (String::new(), String::new()),
        };
        mosquitto_sh(
            r#"extra=("$(mosquitto_security_conf "$1")")
               if [[ -n "$3" ]]; then extra+=("$(mosquitto_tls_conf "$1" "$3" "$4")"); fi
               mosquitto_render_config "$1" "$2" "${extra[@]}""#,
            &[&dir, &port, &tls_port, &ca_dir],
            &[],
        );
        self.arm_restart_guard();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("mosquitto.log"))
            .unwrap();
        let mut child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(self.config_path())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start mosquitto; run the tests through scripts/test.sh");
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut listening = wait_for_child_port(&mut child, addr, Duration::from_secs(10)).await;
        if let (true, Some(tls)) = (listening, &tls) {
            let tls_addr = SocketAddr::from(([127, 0, 0, 1], tls.port));
            listening = wait_for_child_port(&mut child, tls_addr, Duration::from_secs(10)).await;
        }
        self.child = Some(child);
        if !listening {
            self.stop();
        }
        listening
    }

    /// Stops the broker (SIGTERM, so that persistence is written) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }

    /// SIGKILL, as a crash would: only what the last autosave wrote survives.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again after [`stop`](Self::stop) or [`kill`](Self::kill).
    pub async fn start_again(&mut self) {
        let listening = self.spawn().await;
        assert!(listening, "mosquitto did not start again on port {}:\n{}", self.port, self.log());
    }

    /// Starts it again on the same port with the same configuration and data directory.
    pub async fn restart(&mut self) {
        self.stop();
        let listening = self.spawn().await;
        assert!(listening, "mosquitto did not start again on port {}:\n{}", self.port, self.log());
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until something accepts TCP connections on `addr`; panics after `timeout`.
pub async fn wait_for_port(addr: SocketAddr, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        assert!(Instant::now() < deadline, "nothing listens on {addr} after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `condition` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut condition: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = condition().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Path of a binary built from this workspace (e.g. `iot-storage`), for tests that run
/// another service as a real process. `cargo test --workspace` / `cargo nextest run
/// --workspace` build every binary before the tests run.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test-binary> -> target/<profile>/<name>
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --workspace` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A child process killed (SIGKILL) on drop unless it already exited.
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    pub fn pid(&self) -> u32 {
        self.0.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Sends SIGTERM and waits up to `timeout` for a clean exit; returns whether it exited 0.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        let Some(mut child) = self.0.take() else {
            return false;
        };
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until this child itself listens on `addr` (see [`wait_for_child_port`]); panics
    /// if it exits first or after `timeout`.
    pub async fn wait_listening(&mut self, addr: SocketAddr, timeout: Duration) {
        let child = self.0.as_mut().expect("the child was already stopped");
        let listening = wait_for_child_port(child, addr, timeout).await;
        assert!(listening, "the child exited before listening on {addr}");
    }

    /// SIGKILL, as a crash or an OOM kill would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}
