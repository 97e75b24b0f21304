//! Slow request heads on kept-alive connections (issue 10 part 3): actix times only the first
//! request of a connection; `src/request_deadline.rs` times every one. Over real sockets,
//! against the real api with real storage and session behind it.

use std::time::Duration;

use rumqttc::{AsyncClient, MqttOptions, QoS};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{
    helpers::{TestApp, spawn_app_configured, unique_device},
    hostile_input::{raw_json_body, read_until_closed, still_serving},
    hostile_sessions::login_sid,
};

/// One kept-alive connection and what has arrived on it but not been taken yet.
struct Connection {
    stream: TcpStream,
    received: Vec<u8>,
}

impl Connection {
    async fn open(app: &TestApp) -> Self {
        Self { stream: TcpStream::connect(app.addr).await.unwrap(), received: Vec::new() }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    async fn fill(&mut self) {
        let mut buf = [0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut buf))
            .await
            .expect("a response within 10 s")
            .unwrap();
        assert!(n > 0, "the server closed the connection; had: {}", String::from_utf8_lossy(&self.received));
        self.received.extend_from_slice(&buf[..n]);
    }

    /// The next response's status and body (the api sends these with a Content-Length).
    async fn response(&mut self) -> (u16, String) {
        let head_end = loop {
            if let Some(at) = self.received.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            self.fill().await;
        };
        let head = String::from_utf8_lossy(&self.received[..head_end]).to_ascii_lowercase();
        let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .unwrap_or_else(|| panic!("no content-length in {head}"))
            .trim()
            .parse()
            .unwrap();
        while self.received.len() < head_end + length {
            self.fill().await;
        }
        let body = String::from_utf8_lossy(&self.received[head_end..head_end + length]).into_owned();
        self.received.drain(..head_end + length);
        (status, body)
    }
}

fn whoami(sid: &str) -> String {
    format!("GET /api/v1/sessions/current HTTP/1.1\r\nHost: api.test\r\nCookie: sid={sid}\r\n\r\n")
}

/// A logged-in admin's session id, and the client of that admin.
async fn admin_sid(app: &TestApp) -> (String, reqwest::Client, String) {
    let (admin, username) = app.admin().await;
    (login_sid(app, &username, None).await, admin, username)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_head_after_a_first_request_is_cut_off_with_408() {
    let timeout = Duration::from_secs(2);
    let app = spawn_app_configured(&[], |c| c.client_request_timeout = timeout).await;
    let (sid, admin, _) = admin_sid(&app).await;

    let mut connection = Connection::open(&app).await;
    connection.send(whoami(&sid).as_bytes()).await;
    assert_eq!(connection.response().await.0, 200);

    // The next request's head, one byte a second: 76 s for all of it.
    let head = format!("GET /api/v1/sessions/current HTTP/1.1\r\nHost: api.test\r\nCookie: sid={sid}\r\n\r\n");
    let (mut reader, mut writer) = connection.stream.into_split();
    let trickle = tokio::spawn(async move {
        for byte in head.as_bytes() {
            if writer.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let (response, closed) = read_until_closed(&mut reader, Duration::from_secs(15)).await;
    trickle.abort();
    let held = closed.unwrap_or_else(|| panic!("the connection was still open after 15 s; got {response:?}"));
    eprintln!("a slow second head was held for {held:?} (client request timeout {timeout:?})");
    assert!(response.starts_with("HTTP/1.1 408"), "{response:?}");
    assert!(response.to_ascii_lowercase().contains("connection: close"), "{response:?}");
    assert_eq!(raw_json_body(&response)["error"]["code"], "request_timeout");
    // The server's clock starts when the first byte arrives, a moment after ours.
    assert!(held >= timeout - Duration::from_millis(100), "closed after {held:?}, before the timeout");
    assert!(held < timeout + Duration::from_millis(1500), "a slow head held its connection for {held:?}");
    still_serving(&app, &admin).await;
}

/// actix closes this one itself (see `src/request_deadline.rs`); the wrapper must not keep it
/// open, e.g. by polling actix, which restarts its keep-alive timer each time.
#[tokio::test(flavor = "multi_thread")]
async fn a_partial_pipelined_head_and_then_silence_is_closed_at_keep_alive() {
    let (timeout, keep_alive) = (Duration::from_secs(1), Duration::from_secs(3));
    let app = spawn_app_configured(&[], |c| {
        c.client_request_timeout = timeout;
        c.keep_alive = keep_alive;
    })
    .await;
    let (sid, admin, _) = admin_sid(&app).await;

    // A whole request and the start of the next one in one write, so that they arrive in one
    // read; then nothing.
    let mut connection = Connection::open(&app).await;
    connection.send(format!("{}GET /api/v1/sess", whoami(&sid)).as_bytes()).await;
    assert_eq!(connection.response().await.0, 200);
    let (response, closed) = read_until_closed(&mut connection.stream, Duration::from_secs(15)).await;
    let held = closed.unwrap_or_else(|| panic!("the connection was still open after 15 s; got {response:?}"));
    eprintln!("a silent partial head was held for {held:?} (keep-alive {keep_alive:?})");
    assert!(response.is_empty() || response.starts_with("HTTP/1.1 408"), "{response:?}");
    // actix's keep-alive clock is coarse (it reads a time cached every 500 ms).
    assert!(held < keep_alive + Duration::from_millis(1500), "held for {held:?}");
    still_serving(&app, &admin).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kept_alive_connections_serve_request_after_request() {
    let timeout = Duration::from_secs(1);
    let app = spawn_app_configured(&[], |c| c.client_request_timeout = timeout).await;
    let (sid, _, username) = admin_sid(&app).await;

    let mut connection = Connection::open(&app).await;
    connection.send(whoami(&sid).as_bytes()).await;
    assert_eq!(connection.response().await.0, 200);
    // Idle well past the head timeout (but not keep-alive) before each request, and a head
    // that arrives in pieces within it.
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let request = whoami(&sid);
        let (first, rest) = request.split_at(20);
        connection.send(first.as_bytes()).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        connection.send(rest.as_bytes()).await;
        let (status, body) = connection.response().await;
        assert_eq!(status, 200, "round {round}: {body}");
        assert!(body.contains(&username), "round {round}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_requests_are_all_answered() {
    let timeout = Duration::from_secs(1);
    let app = spawn_app_configured(&[], |c| c.client_request_timeout = timeout).await;
    let (sid, _, username) = admin_sid(&app).await;

    let mut connection = Connection::open(&app).await;
    // Five requests in one write, then five more in pieces that cut across requests.
    connection.send(whoami(&sid).repeat(5).as_bytes()).await;
    let more = whoami(&sid).repeat(5);
    for piece in more.as_bytes().chunks(37) {
        connection.send(piece).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for n in 0..10 {
        let (status, body) = connection.response().await;
        assert_eq!(status, 200, "response {n}: {body}");
        assert!(body.contains(&username), "response {n}: {body}");
    }
    // And the connection is still good for more after a pause.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    connection.send(whoami(&sid).repeat(2).as_bytes()).await;
    for n in 0..2 {
        assert_eq!(connection.response().await.0, 200, "response {n} after the pause");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_stream_outlives_every_deadline_while_the_client_sends_nothing() {
    let (timeout, keep_alive) = (Duration::from_secs(1), Duration::from_secs(2));
    let app = spawn_app_configured(&[], |c| {
        c.client_request_timeout = timeout;
        c.keep_alive = keep_alive;
    })
    .await;
    let (sid, admin, _) = admin_sid(&app).await;
    let device = unique_device();
    app.create_device(&admin, &device).await;

    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let request = format!(
        "GET /api/v1/devices/{device}/stream HTTP/1.1\r\nHost: api.test\r\nAccept: text/event-stream\r\nCookie: sid={sid}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut received = String::new();
    let mut buf = [0u8; 8192];
    while !received.contains("retry:") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "the stream ended: {received}");
        received.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(received.starts_with("HTTP/1.1 200"), "{received}");

    // Past the head timeout, keep-alive and the idle backstop, before the first heartbeat
    // (15 s): nothing to read, and the connection still open.
    let quiet = keep_alive + timeout + Duration::from_secs(2);
    let read = tokio::time::timeout(quiet, stream.read(&mut buf)).await;
    assert!(read.is_err(), "after {quiet:?} of silence the stream gave {read:?}");

    // And it still delivers.
    let mut options = MqttOptions::new(format!("test-device-{device}"), "127.0.0.1", app.broker.port);
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let topic = format!("devices/{device}/telemetry");
    let publisher = tokio::spawn(async move {
        for _ in 0..100 {
            let payload = r#"{"metrics":{"temperature":21.5}}"#;
            let _ = client.publish(topic.clone(), QoS::AtLeastOnce, false, payload).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let delivered = tokio::time::timeout(Duration::from_secs(20), async {
        while !received.contains("event: reading") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the stream ended: {received}");
            received.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
    .await;
    publisher.abort();
    assert!(delivered.is_ok(), "no reading on the stream within 20 s: {received}");
}
