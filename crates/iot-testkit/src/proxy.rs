//! A TCP proxy in front of a real server (MariaDB, Redis, a broker) that a test can cut,
//! stall and restore, to see how a service behaves while its dependency is unreachable or
//! silent, without stopping the shared server every other test uses.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicUsize, Ordering},
    },
};

use tokio::{
    io::copy_bidirectional,
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

const OPEN: u8 = 0;
const CUT: u8 = 1;
const STALLED: u8 = 2;

struct Shared {
    upstream: String,
    mode: AtomicU8,
    /// Bumped on every mode change; every connection task watches it.
    epoch: watch::Sender<u64>,
    accepted: AtomicUsize,
}

impl Shared {
    fn set_mode(&self, mode: u8) {
        // Only a real change interrupts the connections.
        if self.mode.swap(mode, Ordering::SeqCst) != mode {
            self.epoch.send_modify(|epoch| *epoch += 1);
        }
    }
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
            mode: AtomicU8::new(OPEN),
            epoch,
            accepted: AtomicUsize::new(0),
        });
        let accept_shared = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                match accept_shared.mode.load(Ordering::SeqCst) {
                    // Refused: the client sees its connection closed at once, as with a
                    // server that is down, and the port stays ours for the restore.
                    CUT => drop(client),
                    STALLED => {
                        tokio::spawn(hold(client, accept_shared.epoch.subscribe()));
                    }
                    _ => {
                        accept_shared.accepted.fetch_add(1, Ordering::SeqCst);
                        tokio::spawn(forward(client, accept_shared.clone()));
                    }
                }
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
        self.shared.set_mode(CUT);
    }

    /// A silent server: connections stay open but nothing is forwarded any more, and new ones
    /// are accepted and then ignored, until `restore()` or `cut()` (which close them).
    pub fn stall(&self) {
        self.shared.set_mode(STALLED);
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.shared.set_mode(OPEN);
    }

    pub fn is_cut(&self) -> bool {
        self.shared.mode.load(Ordering::SeqCst) == CUT
    }

    /// Connections forwarded so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
        // Closes the connections too.
        self.shared.set_mode(CUT);
    }
}

async fn forward(mut client: TcpStream, shared: Arc<Shared>) {
    let mut epoch = shared.epoch.subscribe();
    let Ok(mut server) = TcpStream::connect(&shared.upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    tokio::select! {
        _ = copy_bidirectional(&mut client, &mut server) => return,
        _ = epoch.changed() => {}
    }
    // The copy was interrupted, so bytes may be lost: this connection can only end now.
    if shared.mode.load(Ordering::SeqCst) == STALLED {
        // A silent server: keep both sockets open and answer nothing until the next change.
        let _ = epoch.changed().await;
    }
    // Dropping both streams closes them.
}

/// A connection accepted while stalled: open, unanswered, closed at the next mode change.
async fn hold(client: TcpStream, mut epoch: watch::Receiver<u64>) {
    let _ = epoch.changed().await;
    drop(client);
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
