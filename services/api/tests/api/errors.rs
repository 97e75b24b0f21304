use reqwest::{StatusCode, header};
use serde_json::{Value, json};

use crate::helpers::{error_code, spawn_app, unique_device};

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_get_json_errors_with_the_right_status() {
    let app = spawn_app().await;
    let (admin, _) = app.admin().await;
    let devices = app.url("/api/v1/devices");

    // 406: nothing the client accepts.
    let response = admin.get(&devices).header(header::ACCEPT, "application/xml").send().await.unwrap();
    assert_eq!(error_code(response, StatusCode::NOT_ACCEPTABLE).await, "not_acceptable");
    // q-values: json at q=0.1 is still acceptable.
    let response = admin.get(&devices).header(header::ACCEPT, "text/plain, application/json;q=0.1").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // 415: not JSON.
    let response = admin
        .post(&devices)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(json!({"device_id": unique_device(), "name": "x"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response, StatusCode::UNSUPPORTED_MEDIA_TYPE).await, "unsupported_media_type");

    // 413: larger than API_MAX_BODY_BYTES (16 KiB in tests).
    let big = json!({"device_id": unique_device(), "name": "x".repeat(64 * 1024)}).to_string();
    let response = admin.post(&devices).header(header::CONTENT_TYPE, "application/json").body(big).send().await.unwrap();
    assert_eq!(error_code(response, StatusCode::PAYLOAD_TOO_LARGE).await, "payload_too_large");

    // 400: not JSON at all; 422: JSON of the wrong shape.
    let response =
        admin.post(&devices).header(header::CONTENT_TYPE, "application/json").body("{\"device_id\": ").send().await.unwrap();
    assert_eq!(error_code(response, StatusCode::BAD_REQUEST).await, "bad_request");
    let response = admin.post(&devices).json(&json!({"device_id": 5, "name": ["x"]})).send().await.unwrap();
    assert_eq!(error_code(response, StatusCode::UNPROCESSABLE_ENTITY).await, "unprocessable");
    let response = admin.post(&devices).json(&json!({"name": "no id"})).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // Query parameters: malformed -> 400.
    let id = unique_device();
    app.create_device(&admin, &id).await;
    let response = admin.get(app.url(&format!("/api/v1/devices/{id}/readings?from=yesterday"))).send().await.unwrap();
    assert_eq!(error_code(response, StatusCode::BAD_REQUEST).await, "bad_request");
    let response = admin.get(app.url(&format!("/api/v1/devices/{id}/readings?limit=many"))).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = admin.get(app.url(&format!("/api/v1/devices/{id}/readings?limit=0"))).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let response = admin.get(app.url("/api/v1/devices?page_size=-3")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    // Unknown path -> 404, known path with a wrong method -> 405, both JSON.
    let response = admin.get(app.url("/api/v1/nothing-here")).send().await.unwrap();
    assert_eq!(error_code(response, StatusCode::NOT_FOUND).await, "not_found");
    let response = admin.put(&devices).json(&json!({})).send().await.unwrap();
    assert_eq!(error_code(response, StatusCode::METHOD_NOT_ALLOWED).await, "method_not_allowed");
    // A device id that cannot exist.
    let response = admin.get(app.url("/api/v1/devices/no%20such")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    // The OpenAPI document describes every path the issue lists.
    let response = admin.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let doc: Value = response.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/api/v1/users",
        "/api/v1/sessions",
        "/api/v1/sessions/current",
        "/api/v1/devices",
        "/api/v1/devices/{device_id}",
        "/api/v1/devices/{device_id}/credentials",
        "/api/v1/devices/{device_id}/readings",
        "/api/v1/devices/{device_id}/readings/latest",
        "/api/v1/devices/{device_id}/readings/aggregate",
        "/api/v1/devices/{device_id}/stream",
    ] {
        assert!(doc["paths"][path].is_object(), "openapi.json lacks {path}");
    }

    // Metrics count requests by route pattern.
    let metrics = reqwest::get(format!("{}/metrics", app.ops)).await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("api_http_requests_total{method=\"POST\",route=\"/api/v1/devices\",status=\"415\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("api_http_request_duration_seconds_bucket"));
}
