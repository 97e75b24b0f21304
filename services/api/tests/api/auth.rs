use reqwest::{StatusCode, header};
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, bare_client, error_code, spawn_app, unique_device};

#[tokio::test(flavor = "multi_thread")]
async fn first_user_is_admin_later_registrations_need_an_admin_session() {
    let app = spawn_app().await;
    let anonymous = bare_client();
    let first: Value = {
        let response = anonymous
            .post(app.url("/api/v1/users"))
            .json(&json!({"username": "root-admin", "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json().await.unwrap()
    };
    assert_eq!(first["is_admin"], true);
    assert_eq!(first["username"], "root-admin");

    // A second anonymous registration is refused.
    let response = anonymous
        .post(app.url("/api/v1/users"))
        .json(&json!({"username": "intruder", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response, StatusCode::UNAUTHORIZED).await, "unauthenticated");

    let admin = app.login("root-admin").await;
    let (user, username) = app.user(&admin).await;
    let me: Value = user.get(app.url("/api/v1/sessions/current")).send().await.unwrap().json().await.unwrap();
    assert_eq!(me["user"]["username"], username.as_str());
    assert_eq!(me["user"]["is_admin"], false);

    // A normal user cannot register others.
    let response = user
        .post(app.url("/api/v1/users"))
        .json(&json!({"username": "friend", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response, StatusCode::FORBIDDEN).await, "forbidden");

    // Duplicate username -> 409; a too-short password -> 422.
    let response = admin.post(app.url("/api/v1/users")).json(&json!({"username": username, "password": PASSWORD})).send().await.unwrap();
    assert_eq!(error_code(response, StatusCode::CONFLICT).await, "conflict");
    let response = admin.post(app.url("/api/v1/users")).json(&json!({"username": "shorty", "password": "short"})).send().await.unwrap();
    assert_eq!(error_code(response, StatusCode::UNPROCESSABLE_ENTITY).await, "unprocessable");
}

fn set_cookie(response: &reqwest::Response) -> String {
    response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("sid="))
        .expect("a sid cookie")
}

#[tokio::test(flavor = "multi_thread")]
async fn session_cookie_attributes_current_user_and_logout() {
    let app = spawn_app().await;
    let (_, username) = app.admin().await;
    let http = bare_client();

    let response = http
        .post(app.url("/api/v1/sessions"))
        .json(&json!({"username": username, "password": "wrong password!"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response, StatusCode::UNAUTHORIZED).await, "unauthenticated");
    let response = http
        .post(app.url("/api/v1/sessions"))
        .json(&json!({"username": "nobody-here", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    let response = http
        .post(app.url("/api/v1/sessions"))
        .json(&json!({"username": username, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let cookie = set_cookie(&response);
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Lax"), "{cookie}");
    assert!(cookie.contains("Path=/"), "{cookie}");
    assert!(!cookie.contains("Secure"), "plain HTTP must not get Secure: {cookie}");
    let token = cookie.trim_start_matches("sid=").split(';').next().unwrap().to_string();
    assert!(token.len() >= 22, "token too short for 128 bits: {token}");
    let body: Value = response.json().await.unwrap();
    assert!(body["csrf_token"].as_str().is_some_and(|t| !t.is_empty()));

    // Behind a TLS-terminating proxy the cookie is Secure.
    let response = http
        .post(app.url("/api/v1/sessions"))
        .header("X-Forwarded-Proto", "https")
        .json(&json!({"username": username, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert!(set_cookie(&response).contains("Secure"));

    let sid = format!("sid={token}");
    let response = http.get(app.url("/api/v1/sessions/current")).header(header::COOKIE, &sid).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let me: Value = response.json().await.unwrap();
    assert_eq!(me["user"]["username"], username.as_str());
    assert_eq!(me["user"]["is_admin"], true);

    // No cookie, a garbage cookie -> 401.
    let response = http.get(app.url("/api/v1/sessions/current")).send().await.unwrap();
    assert_eq!(error_code(response, StatusCode::UNAUTHORIZED).await, "unauthenticated");
    let response = http.get(app.url("/api/v1/devices")).header(header::COOKIE, "sid=forged").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    let response = http.delete(app.url("/api/v1/sessions/current")).header(header::COOKIE, &sid).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let cleared = set_cookie(&response);
    assert!(cleared.contains("Max-Age=0") || cleared.contains("Expires="), "{cleared}");
    // The old token no longer works.
    let response = http.get(app.url("/api/v1/sessions/current")).header(header::COOKIE, &sid).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread")]
async fn cross_site_state_changes_with_the_cookie_are_refused() {
    let app = spawn_app().await;
    let (admin, _) = app.admin().await;
    let host = app.addr.to_string();

    let post = |origin: Option<&str>, fetch_site: Option<&str>| {
        let mut request = admin.post(app.url("/api/v1/devices")).json(&json!({"device_id": unique_device(), "name": "x"}));
        if let Some(origin) = origin {
            request = request.header(header::ORIGIN, origin.to_string());
        }
        if let Some(site) = fetch_site {
            request = request.header("Sec-Fetch-Site", site.to_string());
        }
        request.send()
    };
    let response = post(Some("http://evil.example"), None).await.unwrap();
    assert_eq!(error_code(response, StatusCode::FORBIDDEN).await, "forbidden");
    let response = post(None, Some("cross-site")).await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let response = post(Some("null"), None).await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    // Same origin (what a browser sends from our own pages) and no Origin at all (curl) work.
    let response = post(Some(&format!("http://{host}")), Some("same-origin")).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let response = post(None, None).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);

    // DELETE is state-changing too.
    let response = admin
        .delete(app.url("/api/v1/sessions/current"))
        .header(header::ORIGIN, "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    // Safe methods are not affected.
    let response = admin.get(app.url("/api/v1/devices")).header(header::ORIGIN, "https://evil.example").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // HTML forms: the session's CSRF token is required.
    let csrf: Value = admin.get(app.url("/api/v1/sessions/current")).send().await.unwrap().json().await.unwrap();
    let csrf = csrf["csrf_token"].as_str().unwrap().to_string();
    let response = admin
        .post(app.url("/devices"))
        .form(&[("csrf_token", "wrong"), ("device_id", "form-dev"), ("name", "Form")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let response = admin
        .post(app.url("/devices"))
        .form(&[("csrf_token", csrf.as_str()), ("device_id", "form-dev"), ("name", "Form")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let page = response.text().await.unwrap();
    assert!(page.contains("form-dev"), "{page}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_revoked_elsewhere_is_refused_within_the_cache_ttl() {
    use iot_proto::session::v1::{RevokeSessionRequest, revoke_session_request, session_service_client::SessionServiceClient};
    let app = spawn_app().await;
    let (_, username) = app.admin().await;
    let response = bare_client()
        .post(app.url("/api/v1/sessions"))
        .json(&json!({"username": username, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let token = set_cookie(&response).trim_start_matches("sid=").split(';').next().unwrap().to_string();
    let sid = format!("sid={token}");
    let current = || bare_client().get(app.url("/api/v1/sessions/current")).header(header::COOKIE, sid.clone()).send();
    // Validated once: now in the api's session cache.
    assert_eq!(current().await.unwrap().status(), StatusCode::OK);

    // Revoked behind the api's back (another replica's logout, an operator): the api may
    // still accept it for up to its cache TTL (1 s in these tests), never longer.
    let mut session = SessionServiceClient::connect(app.session_url.clone()).await.unwrap();
    session
        .revoke_session(RevokeSessionRequest { key: Some(revoke_session_request::Key::Token(token.clone())), user_id: 0 })
        .await
        .unwrap();
    let revoked_at = std::time::Instant::now();
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let response = current().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "still accepted {:?} after the revocation", revoked_at.elapsed());
}
