//! A private `redis-server` for tests that stop and restart Redis (outage tests). Tests that
//! only need *a* Redis use the shared one ([`crate::redis_url`]) with their own key prefix.

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{free_port, wait_for_child_port};

/// A `redis-server` on a free port of 127.0.0.1 with a temporary directory, without
/// persistence unless started with [`RedisServer::start_persistent`], killed on drop. `REDIS_SERVER_BIN` overrides the binary.
pub struct RedisServer {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    persistent: bool,
}

impl RedisServer {
    pub async fn start() -> Self {
        Self::start_with(false).await
    }

    /// With persistence: an append-only file (fsync every second) in its directory, so that
    /// a restart ([`restart`](Self::restart)) keeps the keys.
    pub async fn start_persistent() -> Self {
        Self::start_with(true).await
    }

    async fn start_with(persistent: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut server = Self { port: free_port(), dir, child: None, persistent };
        // Another test process may take the port between the pick and the bind: pick again.
        for _ in 0..5 {
            if server.spawn().await {
                return server;
            }
            server.port = free_port();
        }
        panic!("redis-server did not start in 5 attempts:\n{}", server.log())
    }

    /// `redis://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Starts the server; `false` when it exited without listening (port taken).
    async fn spawn(&mut self) -> bool {
        let bin = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".to_string());
        let log = std::fs::File::create(self.dir.path().join("redis.log")).unwrap();
        let appendonly = if self.persistent { "yes" } else { "no" };
        let child = Command::new(bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", appendonly])
            .args(["--appendfsync", "everysec"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--daemonize", "no", "--protected-mode", "yes"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start redis-server; install it (apt-get install redis-server) or set REDIS_SERVER_BIN");
        let mut child = child;
        let listening = wait_for_child_port(&mut child, self.addr(), Duration::from_secs(10)).await;
        self.child = Some(child);
        listening
    }

    /// Stops the server (SIGKILL, as an outage would) and waits for it to be gone.
    /// Nothing survives: there is no persistence.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A paused server would not die before SIGCONT on some kernels' job control; be sure.
            let _ = Command::new("kill").arg("-CONT").arg(child.id().to_string()).status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Graceful restart (SIGTERM, then start on the same port and directory): with
    /// persistence the keys survive, without it the server comes back empty.
    pub async fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
        let listening = self.spawn().await;
        assert!(listening, "redis-server did not start again on port {}:\n{}", self.port, self.log());
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing answers, as with a
    /// hung or overloaded Redis.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Undoes [`pause`](Self::pause) (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill").arg(signal).arg(child.id().to_string()).status().unwrap();
            assert!(status.success(), "kill {signal} failed");
        }
    }

    /// Starts a fresh (empty) server on the same port after [`stop`](Self::stop).
    pub async fn start_again(&mut self) {
        self.stop();
        let listening = self.spawn().await;
        assert!(listening, "redis-server did not start again on port {}:\n{}", self.port, self.log());
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
