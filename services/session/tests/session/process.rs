//! The real `iot-session` binary: ops endpoint, gRPC health, a call, clean exit on SIGTERM.

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    time::Duration,
};

use iot_proto::session::v1::{
    CreateSessionRequest, ValidateSessionRequest, session_service_client::SessionServiceClient,
};
use iot_testkit::{ChildGuard, free_port, workspace_bin};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

#[tokio::test]
async fn binary_serves_health_and_exits_cleanly_on_sigterm() {
    let grpc_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let metrics_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let prefix = format!("iot:test:{}:", iot_testkit::unique_suffix());
    let child = Command::new(workspace_bin("iot-session"))
        .env("SESSION_GRPC_ADDR", grpc_addr.to_string())
        .env("SESSION_METRICS_ADDR", metrics_addr.to_string())
        .env("SESSION_REDIS_URL", iot_testkit::redis_url())
        .env("SESSION_KEY_PREFIX", &prefix)
        .env("SESSION_IDLE_TIMEOUT", "10m")
        .env("SESSION_ABSOLUTE_LIFETIME", "1h")
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(Some(child));
    child.wait_listening(metrics_addr, Duration::from_secs(20)).await;
    child.wait_listening(grpc_addr, Duration::from_secs(20)).await;

    let healthz = reqwest::get(format!("http://{metrics_addr}/healthz")).await.unwrap();
    assert_eq!(healthz.status(), reqwest::StatusCode::OK);
    let readyz = reqwest::get(format!("http://{metrics_addr}/readyz")).await.unwrap();
    assert_eq!(readyz.status(), reqwest::StatusCode::OK, "{}", readyz.text().await.unwrap_or_default());

    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{grpc_addr}")).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "iot.session.v1.SessionService"] {
        let status =
            health.check(HealthCheckRequest { service: service.to_string() }).await.unwrap().into_inner().status;
        assert_eq!(status, ServingStatus::Serving as i32, "health of {service:?}");
    }

    let mut sessions = SessionServiceClient::connect(format!("http://{grpc_addr}")).await.unwrap();
    let created = sessions
        .create_session(CreateSessionRequest {
            user_id: 3,
            username: "proc".into(),
            is_admin: false,
            user_agent: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let session =
        sessions.validate_session(ValidateSessionRequest { token: created.token }).await.unwrap().into_inner();
    assert_eq!(session.username, "proc");
    assert_eq!(session.idle_expires_at_us - session.last_seen_us, 600_000_000, "SESSION_IDLE_TIMEOUT=10m applied");
    drop(sessions);
    drop(health);

    // Off the runtime thread: the (dropped) clients' connection tasks must keep running so
    // that they can answer the server's graceful GOAWAY while it shuts down.
    let exited_cleanly = tokio::task::spawn_blocking(move || child.terminate(Duration::from_secs(15))).await.unwrap();
    assert!(exited_cleanly, "iot-session did not exit 0 on SIGTERM");

    // Clean up this test's keys in the shared Redis.
    let client = redis::Client::open(iot_testkit::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut conn).await.unwrap();
    assert_eq!(keys.len(), 2, "one session, one index: {keys:?}");
    let _: i64 = redis::cmd("DEL").arg(keys).query_async(&mut conn).await.unwrap();
}

#[tokio::test]
async fn health_turns_not_serving_when_shutdown_begins() {
    let app = crate::helpers::spawn_app().await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", app.grpc_addr)).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel);
    let mut watch = health
        .watch(HealthCheckRequest { service: "iot.session.v1.SessionService".into() })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    app.begin_shutdown();
    let next = tokio::time::timeout(Duration::from_secs(10), watch.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    assert_eq!(app.readyz().await, reqwest::StatusCode::SERVICE_UNAVAILABLE);
    drop(watch);
    app.stop().await;
}
