use std::time::Duration;

use iot_testkit::eventually;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{error_code, spawn_app, spawn_app_with, unique_device};

#[tokio::test(flavor = "multi_thread")]
async fn storage_outage_is_503_and_the_api_recovers_without_restart() {
    let mut app = spawn_app().await;
    let (admin, _) = app.admin().await;
    let id = unique_device();
    app.create_device(&admin, &id).await;

    app.kill_storage();
    let response = admin.get(app.url("/api/v1/devices")).send().await.unwrap();
    assert_eq!(error_code(response, StatusCode::SERVICE_UNAVAILABLE).await, "unavailable");
    let ready = reqwest::get(format!("{}/readyz", app.ops)).await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);

    app.restart_storage().await;
    let list: Value = eventually("the api answers again once storage is back", Duration::from_secs(30), || async {
        let response = admin.get(app.url("/api/v1/devices")).send().await.ok()?;
        if response.status() == StatusCode::OK { response.json().await.ok() } else { None }
    })
    .await;
    assert_eq!(list["devices"][0]["device_id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_session_is_401() {
    let app = spawn_app_with(&[("SESSION_IDLE_TIMEOUT", "1s")]).await;
    let (admin, _) = app.admin().await;
    let response = admin.get(app.url("/api/v1/sessions/current")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let response = admin.get(app.url("/api/v1/devices")).send().await.unwrap();
    assert_eq!(error_code(response, StatusCode::UNAUTHORIZED).await, "unauthenticated");
}
