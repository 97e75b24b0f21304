//! A private MariaDB server (its own data directory, socket and port under a temporary
//! directory) for tests that stop, kill and restart the database. Tests that only need *a*
//! database use the shared server ([`crate::TestDatabase`]).

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{free_port, wait_for_child_port};

/// `mariadbd` on a free port of 127.0.0.1, root without a password, killed on drop.
/// `MARIADBD_BIN` and `MARIADB_INSTALL_DB_BIN` override the binaries.
pub struct MariaDbServer {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl MariaDbServer {
    /// Creates the data directory (`mariadb-install-db`, a few seconds) and starts the server.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Its own temporary directory: install-db runs of concurrent tests sharing /tmp failed
        // deleting each other's internal temporary tables ("Error on delete of '/tmp/#sql-temptable-...'").
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let bin = std::env::var("MARIADB_INSTALL_DB_BIN").unwrap_or_else(|_| "mariadb-install-db".to_string());
        let out = Command::new(bin)
            .env("TMPDIR", dir.path().join("tmp"))
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.path().join("data").display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .arg(format!("--user={}", current_user()))
            .output()
            .expect("cannot run mariadb-install-db (apt-get install mariadb-server)");
        assert!(out.status.success(), "mariadb-install-db failed:\n{}", String::from_utf8_lossy(&out.stderr));
        let mut server = Self { port: free_port(), dir, child: None };
        for _ in 0..5 {
            if server.spawn().await {
                return server;
            }
            server.port = free_port();
        }
        panic!("mariadbd did not start in 5 attempts:\n{}", server.log())
    }

    /// `mysql://root@127.0.0.1:{port}` (no database).
    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("mariadbd.log")
    }

    async fn spawn(&mut self) -> bool {
        let bin = std::env::var("MARIADBD_BIN").unwrap_or_else(|_| "mariadbd".to_string());
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).unwrap();
        let mut child = Command::new(bin)
            .arg("--no-defaults")
            .arg(format!("--tmpdir={}", self.dir.path().join("tmp").display()))
            .arg(format!("--datadir={}", self.dir.path().join("data").display()))
            .arg(format!("--socket={}", self.dir.path().join("mariadbd.sock").display()))
            .arg(format!("--pid-file={}", self.dir.path().join("mariadbd.pid").display()))
            .arg(format!("--port={}", self.port))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--user={}", current_user()))
            // Small and quick to start; durability as in production (the tests restart it).
            .args(["--innodb-buffer-pool-size=64M", "--innodb-log-file-size=32M", "--skip-log-bin"])
            .args(["--max-connections=500", "--skip-name-resolve=0"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start mariadbd (apt-get install mariadb-server)");
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let listening = wait_for_child_port(&mut child, addr, Duration::from_secs(60)).await;
        self.child = Some(child);
        listening
    }

    /// Graceful stop (SIGTERM; InnoDB shuts down cleanly) and wait.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }

    /// SIGKILL, as a crash would (InnoDB recovers from its redo log on the next start).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and data directory after a stop or kill.
    pub async fn start_again(&mut self) {
        let listening = self.spawn().await;
        assert!(listening, "mariadbd did not start again on port {}:\n{}", self.port, self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for MariaDbServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn current_user() -> String {
    Command::new("id")
        .arg("-un")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "root".to_string())
}
