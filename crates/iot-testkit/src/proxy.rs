//! A TCP proxy in front of a real server (MariaDB, Redis, a broker) that a test can cut and
//! restore, to see how a service behaves while its dependency is unreachable, without
//! stopping the shared server every other test uses.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use tokio::{
    io::copy_bidirectional,
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

struct Shared {
    upstream: String,
    cut: AtomicBool,
    /// Bumped by `cut()`; every forwarding task watches it and closes its sockets on a change.
    epoch: watch::Sender<u64>,
    accepted: AtomicUsize,
}

/// Listens on a free port of 127.0.0.1 and forwards every connection to `upstream`.
pub struct TcpProxy {
    pub port: u16,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl TcpProxy {
    /// `upstream` is `host:port`.
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (epoch, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            cut: AtomicBool::new(false),
            epoch,
            accepted: AtomicUsize::new(0),
        });
        let accept_shared = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                if accept_shared.cut.load(Ordering::SeqCst) {
                    // Refused: the client sees its connection closed at once, as with a
                    // server that is down, and the port stays ours for the restore.
                    drop(client);
                    continue;
                }
                accept_shared.accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(forward(client, accept_shared.clone()));
            }
        });
        Self { port, shared, task }
    }

    /// A proxy in front of the test MariaDB server (`TEST_MYSQL_URL`).
    pub async fn to_mysql() -> Self {
        Self::start(&host_port(&crate::mysql_server_url())).await
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `url` (e.g. a `TestDatabase` URL) with its host and port replaced by this proxy's.
    pub fn url_via(&self, url: &str) -> String {
        let authority = host_port(url);
        url.replacen(&authority, &format!("127.0.0.1:{}", self.port), 1)
    }

    /// Closes every forwarded connection and refuses new ones until `restore()`.
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        self.shared.epoch.send_modify(|epoch| *epoch += 1);
    }

    pub fn restore(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    pub fn is_cut(&self) -> bool {
        self.shared.cut.load(Ordering::SeqCst)
    }

    /// Connections forwarded so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
        // Closes the forwarded connections too.
        self.shared.epoch.send_modify(|epoch| *epoch += 1);
    }
}

async fn forward(mut client: TcpStream, shared: Arc<Shared>) {
    let mut epoch = shared.epoch.subscribe();
    let Ok(mut server) = TcpStream::connect(&shared.upstream).await else { return };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    tokio::select! {
        _ = copy_bidirectional(&mut client, &mut server) => {}
        _ = epoch.changed() => {}
    }
    // Dropping both streams closes them.
}

/// `host:port` of a `scheme://[user[:password]@]host:port[/path]` URL.
fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    rest.split(['/', '?']).next().unwrap_or(rest).to_string()
}

#[cfg(test)]
mod tests {
    use super::host_port;

    #[test]
    fn host_port_of_urls() {
        assert_eq!(host_port("mysql://root@127.0.0.1:3306"), "127.0.0.1:3306");
        assert_eq!(host_port("mysql://u:p@db:3307/iot?x=1"), "db:3307");
        assert_eq!(host_port("redis://127.0.0.1:6379"), "127.0.0.1:6379");
    }
}
