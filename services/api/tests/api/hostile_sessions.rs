//! Hostile use of sessions (issue 10 part 3): session fixation, stolen-then-revoked cookies,
//! one user reaching for another's devices and readings.

use std::time::Duration;

use iot_proto::session::v1::{RevokeUserSessionsRequest, session_service_client::SessionServiceClient};
use reqwest::{Client, Method, StatusCode, header};
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TestApp, bare_client, spawn_app, unique_device};

fn sid_of(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.strip_prefix("sid=").map(|rest| rest.split(';').next().unwrap_or("").to_string()))
}

async fn whoami(app: &TestApp, sid: &str) -> Option<String> {
    let response = bare_client().get(app.url("/api/v1/sessions/current")).header(header::COOKIE, format!("sid={sid}")).send().await.unwrap();
    match response.status() {
        StatusCode::OK => response.json::<Value>().await.unwrap()["user"]["username"].as_str().map(str::to_string),
        StatusCode::UNAUTHORIZED => None,
        other => panic!("/api/v1/sessions/current answered {other}"),
    }
}

pub(crate) async fn login_sid(app: &TestApp, username: &str, planted: Option<&str>) -> String {
    let mut request = bare_client().post(app.url("/api/v1/sessions")).json(&json!({"username": username, "password": PASSWORD}));
    if let Some(planted) = planted {
        request = request.header(header::COOKIE, format!("sid={planted}"));
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    sid_of(&response).expect("login sets sid")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_id_chosen_before_login_is_never_kept() {
    let app = spawn_app().await;
    let (admin, victim) = app.admin().await;
    let (_, attacker) = app.user(&admin).await;

    // A value the attacker made up: login issues a fresh one; the made-up one stays worthless.
    let chosen = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let issued = login_sid(&app, &victim, Some(chosen)).await;
    assert_ne!(issued, chosen);
    assert_eq!(whoami(&app, chosen).await, None);
    assert_eq!(whoami(&app, &issued).await.as_deref(), Some(victim.as_str()));

    // The attacker plants their own valid session in the victim's browser; the victim logs in:
    // the victim gets a new session, and the planted one still belongs to the attacker only.
    let planted = login_sid(&app, &attacker, None).await;
    let issued = login_sid(&app, &victim, Some(&planted)).await;
    assert_ne!(issued, planted);
    assert_eq!(whoami(&app, &planted).await.as_deref(), Some(attacker.as_str()));
    assert_eq!(whoami(&app, &issued).await.as_deref(), Some(victim.as_str()));

    // The HTML login form behaves the same.
    for planted in [chosen.to_string(), login_sid(&app, &attacker, None).await] {
        let response = bare_client()
            .post(app.url("/login"))
            .header(header::COOKIE, format!("sid={planted}"))
            .form(&[("username", victim.as_str()), ("password", PASSWORD)])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        let issued = sid_of(&response).expect("form login sets sid");
        assert_ne!(issued, planted);
        assert_eq!(whoami(&app, &issued).await.as_deref(), Some(victim.as_str()));
        assert_ne!(whoami(&app, &planted).await.as_deref(), Some(victim.as_str()));
    }
}

/// Every route a session cookie opens, with what a refused request must get: JSON routes 401,
/// pages a redirect to the login form.
fn cookie_routes(device: &str) -> Vec<(Method, String, Option<Value>, StatusCode)> {
    let unauthorized = StatusCode::UNAUTHORIZED;
    let mut routes: Vec<(Method, String, Option<Value>, StatusCode)> = vec![
        (Method::GET, "/api/v1/sessions/current".into(), None, unauthorized),
        (Method::HEAD, "/api/v1/sessions/current".into(), None, unauthorized),
        (Method::DELETE, "/api/v1/sessions/current".into(), None, unauthorized),
        (Method::GET, "/api/v1/devices".into(), None, unauthorized),
        (Method::POST, "/api/v1/devices".into(), Some(json!({"device_id": unique_device(), "name": "stolen"})), unauthorized),
        (Method::POST, "/api/v1/users".into(), Some(json!({"username": "intruder", "password": PASSWORD})), unauthorized),
        (Method::GET, format!("/api/v1/devices/{device}"), None, unauthorized),
        (Method::PUT, format!("/api/v1/devices/{device}"), Some(json!({"name": "stolen"})), unauthorized),
        (Method::PATCH, format!("/api/v1/devices/{device}"), Some(json!({"name": "stolen"})), unauthorized),
        (Method::DELETE, format!("/api/v1/devices/{device}"), None, unauthorized),
        (Method::POST, format!("/api/v1/devices/{device}/credentials"), None, unauthorized),
        (Method::GET, format!("/api/v1/devices/{device}/readings/latest"), None, unauthorized),
        (Method::GET, format!("/api/v1/devices/{device}/readings/aggregate?metric=t"), None, unauthorized),
        (Method::DELETE, format!("/api/v1/devices/{device}/readings"), None, unauthorized),
        (Method::GET, format!("/api/v1/devices/{device}/stream"), None, unauthorized),
        (Method::GET, "/devices".into(), None, StatusCode::SEE_OTHER),
        (Method::GET, format!("/devices/{device}"), None, StatusCode::SEE_OTHER),
    ];
    for format in ["json", "csv", "png", "html"] {
        routes.push((Method::GET, format!("/api/v1/devices/{device}/readings?format={format}"), None, unauthorized));
    }
    routes
}

async fn assert_refused_everywhere(app: &TestApp, sid: &str, device: &str, what: &str) {
    let http = bare_client();
    for (method, path, body, expected) in cookie_routes(device) {
        let mut request = http.request(method.clone(), app.url(&path)).header(header::COOKIE, format!("sid={sid}"));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), expected, "{what}: {method} {path}");
        if expected == StatusCode::SEE_OTHER {
            assert_eq!(response.headers()[header::LOCATION], "/login", "{what}: {method} {path}");
        }
    }
    // The HTML forms do nothing either (they redirect to the login form).
    for path in ["/devices", "/users"] {
        let response = http
            .post(app.url(path))
            .header(header::COOKIE, format!("sid={sid}"))
            .form(&[("csrf_token", "x"), ("device_id", &unique_device()), ("name", "n"), ("username", "u"), ("password", PASSWORD)])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "{what}: POST {path}");
    }
}

async fn device_unchanged(app: &TestApp, owner: &Client, device: &str) {
    let response = owner.get(app.url(&format!("/api/v1/devices/{device}"))).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "the device is gone");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["name"], format!("Device {device}"));
    let latest: Value =
        owner.get(app.url(&format!("/api/v1/devices/{device}/readings/latest"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(latest["readings"].as_array().map(Vec::len), Some(1), "{latest}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stolen_cookie_is_refused_everywhere_once_revoked() {
    let app = spawn_app().await;
    let (admin, _) = app.admin().await;
    let (owner, username) = app.user(&admin).await;
    let device = unique_device();
    app.create_device(&owner, &device).await;
    app.write_readings(&device, &[("t", chrono::Utc::now().timestamp_micros() - 1_000_000, 1.0)]).await;

    // Logout through the API: the copy the thief kept stops working at once, on every route
    // (the logout goes through this api process, so no cache may keep it alive).
    let stolen = login_sid(&app, &username, None).await;
    assert_eq!(whoami(&app, &stolen).await.as_deref(), Some(username.as_str()));
    let response = bare_client().delete(app.url("/api/v1/sessions/current")).header(header::COOKIE, format!("sid={stolen}")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_refused_everywhere(&app, &stolen, &device, "after DELETE /api/v1/sessions/current").await;

    // Logout through the page (with its CSRF token).
    let stolen = login_sid(&app, &username, None).await;
    let me: Value = bare_client()
        .get(app.url("/api/v1/sessions/current"))
        .header(header::COOKIE, format!("sid={stolen}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let csrf = me["csrf_token"].as_str().unwrap().to_string();
    let response = bare_client()
        .post(app.url("/logout"))
        .header(header::COOKIE, format!("sid={stolen}"))
        .form(&[("csrf_token", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_refused_everywhere(&app, &stolen, &device, "after POST /logout").await;

    // Revoke-all (what an operator or a password reset does through the session service):
    // every session of the user, used a moment before, is refused right after.
    let stolen: Vec<String> = [login_sid(&app, &username, None).await, login_sid(&app, &username, None).await].into();
    let user_id = {
        let me: Value = bare_client()
            .get(app.url("/api/v1/sessions/current"))
            .header(header::COOKIE, format!("sid={}", stolen[0]))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        me["user"]["id"].as_u64().unwrap()
    };
    for sid in &stolen {
        // Warm whatever the api may cache about the session.
        assert_eq!(whoami(&app, sid).await.as_deref(), Some(username.as_str()));
        let response = bare_client().get(app.url("/api/v1/devices")).header(header::COOKIE, format!("sid={sid}")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let mut sessions = SessionServiceClient::connect(app.session_url.clone()).await.unwrap();
    let revoked_at = std::time::Instant::now();
    let revoked = sessions.revoke_user_sessions(RevokeUserSessionsRequest { user_id }).await.unwrap().into_inner();
    assert!(revoked.revoked >= 2, "{revoked:?}");
    // A revocation that did not go through this api process may be served from the api's
    // short session cache (if one is configured) for up to its TTL (1 s): allow that much,
    // and no more.
    for sid in &stolen {
        while whoami(&app, sid).await.is_some() {
            assert!(revoked_at.elapsed() < Duration::from_secs(3), "a revoked session still works after {:?}", revoked_at.elapsed());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for sid in &stolen {
        assert_refused_everywhere(&app, sid, &device, "after RevokeUserSessions").await;
    }

    // None of the refused requests changed anything.
    let owner_again = app.login(&username).await;
    device_unchanged(&app, &owner_again, &device).await;
    drop(owner);
}

#[tokio::test(flavor = "multi_thread")]
async fn another_users_devices_and_readings_cannot_be_read_changed_or_detected() {
    let app = spawn_app().await;
    let (admin, _) = app.admin().await;
    let (alice, _) = app.user(&admin).await;
    let (bob, _) = app.user(&admin).await;
    let device = unique_device();
    app.create_device(&alice, &device).await;
    let ts = chrono::Utc::now().timestamp_micros() - 1_000_000;
    app.write_readings(&device, &[("t", ts, 1.0)]).await;
    let bobs = unique_device();
    app.create_device(&bob, &bobs).await;

    // For every route, Bob gets for Alice's device exactly what he gets for one that does not
    // exist: same status, same body.
    let missing = unique_device();
    for (method, path, body, _) in cookie_routes(&device) {
        if !path.contains(&device) {
            continue;
        }
        let send = |path: String| {
            let mut request = bob.request(method.clone(), app.url(&path));
            if let Some(body) = &body {
                request = request.json(body);
            }
            request.send()
        };
        let theirs = send(path.clone()).await.unwrap();
        let nothing = send(path.replace(&device, &missing)).await.unwrap();
        assert_eq!(theirs.status(), StatusCode::NOT_FOUND, "{method} {path}");
        assert_eq!(nothing.status(), StatusCode::NOT_FOUND, "{method} {path} (missing)");
        let (theirs, nothing) = (theirs.bytes().await.unwrap(), nothing.bytes().await.unwrap());
        assert_eq!(theirs, nothing, "{method} {path}: the answer tells an existing device from a missing one");
    }

    // Listing, even when starting from a page token that names Alice's device.
    let list: Value = bob.get(app.url("/api/v1/devices")).send().await.unwrap().json().await.unwrap();
    let ids: Vec<&str> = list["devices"].as_array().unwrap().iter().filter_map(|d| d["device_id"].as_str()).collect();
    assert_eq!(ids, vec![bobs.as_str()]);
    use base64::Engine;
    let before_alice = &device[..device.len() - 1];
    for token in [format!("d1:{device}"), format!("d1:{before_alice}")] {
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token);
        let response = bob.get(app.url(&format!("/api/v1/devices?page_token={token}"))).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let list: Value = response.json().await.unwrap();
        assert!(!list.to_string().contains(&device), "{list}");
    }
    let page = bob.get(app.url("/devices")).send().await.unwrap().text().await.unwrap();
    assert!(!page.contains(&device), "Bob's device page lists Alice's device");

    // A cursor made from Alice's readings does not open them through Bob's device.
    let cursor = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("r1:{}:t", ts - 1));
    let response = bob.get(app.url(&format!("/api/v1/devices/{bobs}/readings?cursor={cursor}"))).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let page: Value = response.json().await.unwrap();
    assert_eq!(page["readings"], json!([]), "{page}");

    // Alice's device and reading are untouched; the admin sees both devices.
    device_unchanged(&app, &alice, &device).await;
    let all: Value = admin.get(app.url("/api/v1/devices")).send().await.unwrap().json().await.unwrap();
    assert!(all.to_string().contains(&device) && all.to_string().contains(&bobs));
}
