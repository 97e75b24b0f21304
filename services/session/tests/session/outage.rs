//! Redis outages: calls fail with UNAVAILABLE within a bounded time, /readyz says so, and the
//! same service instance works again once Redis is back.

use std::time::Duration;

use iot_proto::session::v1::CreateSessionRequest;
use iot_testkit::redis::RedisServer;
use tonic::Code;

use crate::helpers::{TestApp, spawn_app_with};

/// Long enough for any machine, short enough that a hang is caught.
const BOUND: Duration = Duration::from_secs(10);

async fn try_create(app: &TestApp) -> Result<String, tonic::Status> {
    let request =
        CreateSessionRequest { user_id: 21, username: "olga".into(), is_admin: false, user_agent: String::new() };
    let response = tokio::time::timeout(BOUND, app.client.clone().create_session(request))
        .await
        .expect("CreateSession hung while Redis was down")?;
    Ok(response.into_inner().token)
}

async fn assert_unavailable(app: &TestApp, token: &str) {
    let status = tokio::time::timeout(BOUND, app.validate(token))
        .await
        .expect("ValidateSession hung while Redis was down")
        .expect_err("validated a session while Redis was down");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("Redis"), "the message names the cause: {}", status.message());
    let status = try_create(app).await.expect_err("created a session while Redis was down");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}

#[tokio::test]
async fn redis_outage_gives_unavailable_then_recovers_without_restart() {
    let mut redis = RedisServer::start().await;
    let app = spawn_app_with(|config| {
        config.redis_url = redis.url();
        config.redis_timeout = Duration::from_secs(1);
    })
    .await;
    let before = try_create(&app).await.unwrap();
    app.assert_valid(&before).await;
    assert_eq!(app.readyz().await, reqwest::StatusCode::OK);

    redis.stop();
    assert_unavailable(&app, &before).await;
    // Repeated calls during the outage stay bounded too (reconnect attempts do not pile up).
    assert_unavailable(&app, &before).await;
    assert_eq!(app.readyz().await, reqwest::StatusCode::SERVICE_UNAVAILABLE);

    redis.start_again().await;
    let after = iot_testkit::eventually("CreateSession to succeed after Redis came back", BOUND, || async {
        try_create(&app).await.ok()
    })
    .await;
    app.assert_valid(&after).await;
    // The new Redis is empty (no persistence): the old session is simply unknown.
    app.assert_rejected(&before).await;
    iot_testkit::eventually("/readyz to be ready again", BOUND, || async {
        (app.readyz().await == reqwest::StatusCode::OK).then_some(())
    })
    .await;
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"session_grpc_requests_total{code="UNAVAILABLE",method="ValidateSession"} 2"#),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn starts_while_redis_is_down_and_connects_when_it_comes_up() {
    let mut redis = RedisServer::start().await;
    redis.stop();
    let app = spawn_app_with(|config| {
        config.redis_url = redis.url();
        config.redis_timeout = Duration::from_millis(500);
    })
    .await;
    assert_unavailable(&app, &"A".repeat(43)).await;
    assert_eq!(app.readyz().await, reqwest::StatusCode::SERVICE_UNAVAILABLE);

    redis.start_again().await;
    let token = iot_testkit::eventually("CreateSession to succeed once Redis is up", BOUND, || async {
        try_create(&app).await.ok()
    })
    .await;
    app.assert_valid(&token).await;
    app.stop().await;
}

#[tokio::test]
async fn a_hung_redis_gives_unavailable_not_a_hang() {
    let redis = RedisServer::start().await;
    let app = spawn_app_with(|config| {
        config.redis_url = redis.url();
        config.redis_timeout = Duration::from_millis(500);
    })
    .await;
    let before = try_create(&app).await.unwrap();
    app.assert_valid(&before).await;

    redis.pause();
    assert_unavailable(&app, &before).await;
    assert_eq!(app.readyz().await, reqwest::StatusCode::SERVICE_UNAVAILABLE);

    redis.resume();
    // Same Redis, same data: the session created before the stall is still there.
    iot_testkit::eventually("ValidateSession to succeed after Redis resumed", BOUND, || async {
        app.validate(&before).await.ok()
    })
    .await;
    let after = try_create(&app).await.unwrap();
    app.assert_valid(&after).await;
    app.stop().await;
}
