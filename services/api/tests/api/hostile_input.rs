//! Hostile input over real sockets (issue 10 part 3): oversized bodies, slow heads and bodies,
//! SQL/HTML injection attempts in every string field.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use reqwest::{StatusCode, header};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::helpers::{PASSWORD, bare_client, error_code, spawn_app, spawn_app_configured, unique_device};

/// Reads until the server closes the connection (or `limit` passes); returns what arrived and
/// when the connection ended, `None` if it was still open at `limit`.
pub(crate) async fn read_until_closed(stream: &mut (impl AsyncRead + Unpin), limit: Duration) -> (String, Option<Duration>) {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let Some(left) = limit.checked_sub(started.elapsed()) else {
            return (String::from_utf8_lossy(&received).into_owned(), None);
        };
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&received).into_owned(), None),
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&received).into_owned(), Some(started.elapsed())),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
}

/// The JSON body of a raw HTTP/1.1 response (after the blank line; not chunked).
pub(crate) fn raw_json_body(response: &str) -> Value {
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not a JSON body ({e}): {response}"))
}

pub(crate) async fn still_serving(app: &crate::helpers::TestApp, client: &reqwest::Client) {
    let started = Instant::now();
    let response = client.get(app.url("/api/v1/sessions/current")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(5), "a normal request took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_bodies_are_refused_with_413_json_and_the_server_keeps_serving() {
    let app = spawn_app().await; // API_MAX_BODY_BYTES is 16 KiB in tests
    let (admin, _) = app.admin().await;
    let big_name = "x".repeat(1024 * 1024);

    // JSON routes, declared length over the limit: refused without reading the body.
    for path in ["/api/v1/devices", "/api/v1/sessions", "/api/v1/users"] {
        let body = json!({"device_id": unique_device(), "name": big_name, "username": "u", "password": big_name}).to_string();
        let response = admin.post(app.url(path)).header(header::CONTENT_TYPE, "application/json").body(body).send().await.unwrap();
        assert_eq!(error_code(response, StatusCode::PAYLOAD_TOO_LARGE).await, "payload_too_large", "{path}");
    }
    // HTML forms too.
    for path in ["/login", "/devices", "/users", "/logout"] {
        let form = format!("username=u&password={big_name}&csrf_token=x&device_id=d&name=n");
        let response = admin
            .post(app.url(path))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(response, StatusCode::PAYLOAD_TOO_LARGE).await, "payload_too_large", "{path}");
    }

    // Chunked, no declared length: refused once the limit is crossed, mid-stream.
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /api/v1/sessions HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        app.addr
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 8192, "a".repeat(8192));
    for _ in 0..4 {
        // The server may close while we write: what it answered is what counts.
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let (response, closed) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert_eq!(raw_json_body(&response)["error"]["code"], "payload_too_large");
    assert!(closed.is_some(), "the connection with an unread body stays open");

    // A head past actix's limit (128 KiB): refused with 431 and closed, never a 5xx.
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let head = format!("GET /api/v1/devices HTTP/1.1\r\nHost: {}\r\nX-Padding: {}\r\n\r\n", app.addr, "p".repeat(200 * 1024));
    // The server may stop reading once it has seen enough.
    let _ = stream.write_all(head.as_bytes()).await;
    let (response, closed) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");
    assert!(closed.is_some(), "the connection stays open after 431");
    // A huge query string: a readable error, never a 5xx.
    let response = admin.get(app.url(&format!("/api/v1/devices?page_token={}", "t".repeat(30 * 1024)))).send().await.unwrap();
    assert!(response.status().is_client_error(), "{}", response.status());

    still_serving(&app, &admin).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_request_heads_are_cut_off_at_the_client_request_timeout() {
    let timeout = Duration::from_secs(1);
    let app = spawn_app_configured(&[], |c| c.client_request_timeout = timeout).await;
    let (admin, _) = app.admin().await;

    // Slowloris: a head that never ends, one header line every 200 ms, on 20 connections.
    let mut attackers = Vec::new();
    for _ in 0..20 {
        let addr: SocketAddr = app.addr;
        attackers.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let started = Instant::now();
            stream.write_all(b"GET /api/v1/devices HTTP/1.1\r\nHost: x\r\n").await.unwrap();
            while started.elapsed() < Duration::from_secs(10) {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if stream.write_all(b"X-Slow: 1\r\n").await.is_err() {
                    break;
                }
                // A closed connection shows up on read (0 bytes or an error).
                let mut probe = [0u8; 1024];
                match tokio::time::timeout(Duration::from_millis(1), stream.read(&mut probe)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(_)) => {
                        let (_, closed) = read_until_closed(&mut stream, Duration::from_secs(3)).await;
                        assert!(closed.is_some(), "answered but kept the connection open");
                        break;
                    }
                    Err(_) => {}
                }
            }
            started.elapsed()
        }));
    }
    // Meanwhile normal requests are served.
    still_serving(&app, &admin).await;
    for attacker in attackers {
        let held = attacker.await.unwrap();
        // The server's timer starts at accept, a moment before ours.
        assert!(held >= timeout - Duration::from_millis(200), "closed after {held:?}, before the timeout");
        assert!(held < timeout + Duration::from_secs(3), "a slow head held its connection for {held:?}");
    }

    // An idle connection that never sends anything is closed too (408).
    let mut idle = TcpStream::connect(app.addr).await.unwrap();
    let (response, closed) = read_until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(closed.is_some(), "an idle connection stayed open");
    assert!(response.is_empty() || response.starts_with("HTTP/1.1 408"), "{response}");
    still_serving(&app, &admin).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_bodies_are_cut_off_at_the_body_timeout_with_408_json() {
    let timeout = Duration::from_secs(1);
    let app = spawn_app_configured(&[], |c| c.body_timeout = timeout).await;
    let (admin, username) = app.admin().await;

    for (path, content_type) in [("/api/v1/sessions", "application/json"), ("/login", "application/x-www-form-urlencoded")] {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        let started = Instant::now();
        let head = format!("POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\nContent-Length: 400\r\n\r\n", app.addr);
        stream.write_all(head.as_bytes()).await.unwrap();
        // One byte every 100 ms: 40 s for the whole body.
        let writer = tokio::spawn(async move {
            for _ in 0..400 {
                if stream.write_all(b" ").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                let mut probe = [0u8; 4096];
                match tokio::time::timeout(Duration::from_millis(1), stream.read(&mut probe)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return (String::new(), started.elapsed()),
                    Ok(Ok(n)) => {
                        let mut response = String::from_utf8_lossy(&probe[..n]).into_owned();
                        let (rest, closed) = read_until_closed(&mut stream, Duration::from_secs(3)).await;
                        response.push_str(&rest);
                        assert!(closed.is_some(), "{path}: answered 408 but kept the connection open");
                        return (response, started.elapsed());
                    }
                    Err(_) => {}
                }
            }
            (String::new(), started.elapsed())
        });
        let (response, held) = writer.await.unwrap();
        assert!(response.starts_with("HTTP/1.1 408"), "{path}: {response:?} after {held:?}");
        assert_eq!(raw_json_body(&response)["error"]["code"], "request_timeout", "{path}");
        assert!(held >= timeout && held < timeout + Duration::from_secs(3), "{path}: held for {held:?}");
    }

    // A chunked body the handler never reads (401 before the body matters), trickled on:
    // actix would drain it chunk by chunk for as long as the client keeps sending.
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let started = Instant::now();
    let head = format!(
        "POST /api/v1/devices HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{{\r\n",
        app.addr
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let trickle = tokio::spawn(async move {
        let mut response = Vec::new();
        while started.elapsed() < Duration::from_secs(20) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if stream.write_all(b"1\r\n \r\n").await.is_err() {
                break;
            }
            let mut probe = [0u8; 4096];
            match tokio::time::timeout(Duration::from_millis(1), stream.read(&mut probe)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => response.extend_from_slice(&probe[..n]),
                Err(_) => {}
            }
        }
        (String::from_utf8_lossy(&response).into_owned(), started.elapsed())
    });
    let (response, held) = trickle.await.unwrap();
    assert!(response.starts_with("HTTP/1.1 401"), "{response:?}");
    assert!(held < Duration::from_secs(5), "an unread chunked body held the connection for {held:?}");

    // A body that arrives in time is fine.
    let response = bare_client()
        .post(app.url("/api/v1/sessions"))
        .json(&json!({"username": username, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    still_serving(&app, &admin).await;
}

/// Strings an attacker would try in every text field.
const HOSTILE: &[&str] = &[
    "'; DROP TABLE devices; --",
    "Robert'); DROP TABLE users;--",
    "\" OR \"1\"=\"1",
    "1' OR '1'='1' /*",
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(document.cookie)>",
    "\"><svg/onload=alert(1)>",
    "javascript:alert(1)",
    "{{7*7}}${7*7}",
    "=HYPERLINK(\"http://evil.example\",\"x\")",
    "+SUM(1+1)*cmd|' /C calc'!A0",
    "@SUM(1)",
    "-2+3",
    "\\u0000 %00 \\x00",
    "ünïcødé \u{202e} RTL",
];

fn assert_escaped(page: &str, raw: &str, what: &str) {
    if raw.contains('<') || raw.contains('"') {
        assert!(!page.contains(raw), "{what}: {raw:?} appears unescaped");
    }
    let escaped = raw
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;");
    assert!(page.contains(&escaped), "{what}: {escaped:?} missing");
}

#[tokio::test(flavor = "multi_thread")]
async fn injection_attempts_are_stored_verbatim_and_shown_inertly() {
    let app = spawn_app().await;
    let (admin, _) = app.admin().await;

    // Device names and attributes: stored and returned verbatim.
    let mut ids = Vec::new();
    for (i, hostile) in HOSTILE.iter().enumerate() {
        let id = format!("inj-{i}-{}", unique_device());
        let mut attributes = serde_json::Map::new();
        attributes.insert("note".into(), json!(hostile));
        attributes.insert(hostile.to_string(), json!([hostile]));
        let response = admin
            .post(app.url("/api/v1/devices"))
            .json(&json!({"device_id": id, "name": hostile, "attributes": attributes}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED, "{hostile:?}: {}", response.text().await.unwrap());
        let device: Value = admin.get(app.url(&format!("/api/v1/devices/{id}"))).send().await.unwrap().json().await.unwrap();
        assert_eq!(device["name"], *hostile);
        assert_eq!(device["attributes"]["note"], *hostile);
        assert_eq!(device["attributes"][*hostile][0], *hostile);
        let patched = admin
            .patch(app.url(&format!("/api/v1/devices/{id}")))
            .json(&json!({"name": format!("{hostile} (2)")}))
            .send()
            .await
            .unwrap();
        assert_eq!(patched.status(), StatusCode::OK);
        assert_eq!(patched.json::<Value>().await.unwrap()["name"], format!("{hostile} (2)"));
        app.write_readings(&id, &[("temperature", chrono::Utc::now().timestamp_micros() - 1_000_000, 1.5)]).await;
        ids.push((id, format!("{hostile} (2)")));
    }
    let list: Value = admin.get(app.url("/api/v1/devices?page_size=1000")).send().await.unwrap().json().await.unwrap();
    let names: Vec<&str> = list["devices"].as_array().unwrap().iter().filter_map(|d| d["name"].as_str()).collect();
    for (_, name) in &ids {
        assert!(names.contains(&name.as_str()), "{name:?} not listed verbatim");
    }

    // HTML pages escape them: the device list, each device page, the readings page.
    let page = admin.get(app.url("/devices")).send().await.unwrap().text().await.unwrap();
    for (_, name) in &ids {
        assert_escaped(&page, name, "device list");
    }
    for (id, name) in &ids {
        let response = admin.get(app.url(&format!("/devices/{id}"))).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap().contains("default-src 'self'"));
        let page = response.text().await.unwrap();
        assert_escaped(&page, name, "device page");
        let page = admin
            .get(app.url(&format!("/api/v1/devices/{id}/readings?format=html")))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_escaped(&page, name, "readings page");
    }

    // Identifiers with a fixed alphabet refuse them (422/404/401), never a 5xx.
    let anonymous = bare_client();
    for hostile in HOSTILE {
        let response = admin.post(app.url("/api/v1/devices")).json(&json!({"device_id": hostile, "name": "n"})).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY, "device_id {hostile:?}");
        let response = admin.post(app.url("/api/v1/users")).json(&json!({"username": hostile, "password": PASSWORD})).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY, "username {hostile:?}");
        let response =
            anonymous.post(app.url("/api/v1/sessions")).json(&json!({"username": hostile, "password": hostile})).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "login {hostile:?}");
        let response = anonymous.post(app.url("/login")).form(&[("username", hostile), ("password", hostile)]).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "form login {hostile:?}");
        let page = response.text().await.unwrap();
        if hostile.contains('<') {
            assert!(!page.contains(hostile), "the login page reflects {hostile:?}");
        }
        let encoded: String = url_encode(hostile);
        let response = admin.get(app.url(&format!("/api/v1/devices/{encoded}"))).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "path {hostile:?}");
        let response = admin.get(app.url(&format!("/devices/{encoded}"))).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "page path {hostile:?}");
        // Every query parameter of the readings routes.
        let (id, _) = &ids[0];
        let readings = ["metric", "from", "to", "cursor", "order", "format", "limit", "width", "height"].map(|p| ("readings", p));
        let aggregate = ["metric", "from", "to", "bucket"].map(|p| ("readings/aggregate", p));
        for (route, param) in readings.into_iter().chain(aggregate) {
            {
                let metric = if param == "metric" { String::new() } else { "metric=temperature&".to_string() };
                let url = app.url(&format!("/api/v1/devices/{id}/{route}?{metric}{param}={encoded}"));
                let response = admin.get(&url).send().await.unwrap();
                let status = response.status();
                assert!(status.is_client_error(), "{route} {param}={hostile:?}: {status}");
                let body: Value = response.json().await.unwrap();
                assert!(body["error"]["message"].is_string(), "{body}");
            }
        }
        let response = admin.get(app.url(&format!("/api/v1/devices?page_token={encoded}"))).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY, "page_token {hostile:?}");
        let response = admin.delete(app.url(&format!("/api/v1/devices/{id}/readings?metric={encoded}"))).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY, "delete metric {hostile:?}");
    }

    // Nothing was dropped or rewritten: every device and its reading is still there.
    for (id, name) in &ids {
        let device: Value = admin.get(app.url(&format!("/api/v1/devices/{id}"))).send().await.unwrap().json().await.unwrap();
        assert_eq!(device["name"], name.as_str());
        let latest: Value =
            admin.get(app.url(&format!("/api/v1/devices/{id}/readings/latest"))).send().await.unwrap().json().await.unwrap();
        assert_eq!(latest["readings"].as_array().map(Vec::len), Some(1), "{latest}");
    }
}

/// CSV decision (services/api/README.md): the only user-controlled text in CSV output is the
/// metric name, whose alphabet `[A-Za-z0-9_.:/-]` storage enforces. No cell can start with
/// `=`, `+`, `@`, a tab or a carriage return, nor contain `(`, `|`, `!` or quotes, so no
/// function call, DDE or external reference can be formed; a leading `-` is kept verbatim
/// (escaping it would change the data for every machine reader).
#[tokio::test(flavor = "multi_thread")]
async fn csv_cells_cannot_carry_formulas() {
    let app = spawn_app().await;
    let (admin, _) = app.admin().await;
    let id = unique_device();
    app.create_device(&admin, &id).await;
    let ts = chrono::Utc::now().timestamp_micros() - 1_000_000;
    app.write_readings(&id, &[("-A1:B2", ts, -3.0), ("temp", ts, 21.5)]).await;

    // Storage refuses metric names that could open a formula.
    let mut storage =
        iot_proto::storage::v1::storage_service_client::StorageServiceClient::connect(app.storage_url.clone()).await.unwrap();
    for metric in ["=1+1", "+1", "@SUM(1)", "\tx", "cmd|' /C calc'!A0", "a,b", "a\"b", "a\nb"] {
        let refused = storage
            .write_readings(iot_proto::storage::v1::WriteReadingsRequest {
                readings: vec![iot_proto::storage::v1::Reading { device_id: id.clone(), metric: metric.to_string(), ts_us: ts, value: 1.0 }],
            })
            .await;
        assert_eq!(refused.map(|_| ()).unwrap_err().code(), tonic::Code::InvalidArgument, "{metric:?}");
    }

    let csv = admin.get(app.url(&format!("/api/v1/devices/{id}/readings?format=csv"))).send().await.unwrap().text().await.unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("metric,ts,value"));
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 2, "{csv}");
    for row in rows {
        let cells: Vec<&str> = row.split(',').collect();
        assert_eq!(cells.len(), 3, "{row}");
        for cell in cells {
            assert!(!cell.starts_with(['=', '+', '@', '\t', '\r']), "{cell:?}");
            assert!(!cell.contains(['(', '|', '!', '"', '\'']), "{cell:?}");
        }
    }
    assert!(csv.contains("\n-A1:B2,"), "metric names are written verbatim: {csv}");
}

fn url_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// Regression (schemathesis ST204): a 405 must carry `Allow` (RFC 9110 §15.5.6).
#[tokio::test(flavor = "multi_thread")]
async fn a_405_names_the_allowed_methods() {
    let app = spawn_app().await;
    let (admin, _) = app.admin().await;
    let id = unique_device();
    app.create_device(&admin, &id).await;
    for (method, path, allowed) in [
        ("TRACE", format!("/api/v1/devices/{id}"), "DELETE, GET, HEAD, PATCH, PUT"),
        ("PUT", "/api/v1/devices".to_string(), "GET, HEAD, POST"),
        ("GET", format!("/api/v1/devices/{id}/credentials"), "POST"),
        ("PATCH", format!("/api/v1/devices/{id}/readings"), "DELETE, GET, HEAD"),
        ("GET", "/api/v1/sessions".to_string(), "POST"),
        ("DELETE", "/login".to_string(), "GET, HEAD, POST"),
        ("GET", "/logout".to_string(), "POST"),
    ] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = admin.request(method.clone(), app.url(&path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        let mut got: Vec<String> =
            response.headers()[header::ALLOW].to_str().unwrap().split(',').map(|m| m.trim().to_string()).collect();
        got.sort();
        assert_eq!(got.join(", "), allowed, "{method} {path}");
        assert_eq!(error_code(response, StatusCode::METHOD_NOT_ALLOWED).await, "method_not_allowed");
    }
}
