//! OpenTelemetry traces of the real `iot-api` binary (a process of its own: the tracer is
//! global), exported to an in-test OTLP receiver.

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    time::Duration,
};

use iot_testkit::{ChildGuard, free_port, otlp::{CollectedSpan, OtlpReceiver, describe}, workspace_bin};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{PASSWORD, client, spawn_app};

fn random_hex(bytes: usize) -> String {
    (0..bytes).map(|_| format!("{:02x}", rand::random::<u8>())).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_exports_a_server_span_under_the_callers_trace_with_grpc_client_children() {
    let receiver = OtlpReceiver::start().await;
    let app = spawn_app().await;
    let (_, username) = app.admin().await;

    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let child = Command::new(workspace_bin("iot-api"))
        .env("API_LISTEN_ADDR", listen.to_string())
        .env("API_METRICS_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("API_STORAGE_URL", &app.storage_url)
        .env("API_SESSION_URL", &app.session_url)
        .env("API_MQTT_PORT", app.broker.port.to_string())
        .env("API_WORKERS", "1")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
        // Far beyond this test's waits: the spans can only arrive through the flush on exit.
        .env("OTEL_BSP_SCHEDULE_DELAY", "600000")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_RESOURCE_ATTRIBUTES")
        .env_remove("OTEL_SDK_DISABLED")
        .env_remove("OTEL_TRACES_SAMPLER")
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(Some(child));
    child.wait_listening(listen, Duration::from_secs(20)).await;

    let http = client();
    let base = format!("http://{listen}");
    let response = http
        .post(format!("{base}/api/v1/sessions"))
        .json(&json!({"username": username, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let (trace_id, parent_id) = (random_hex(16), random_hex(8));
    let response = http
        .get(format!("{base}/api/v1/devices"))
        .header("traceparent", format!("00-{trace_id}-{parent_id}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let exited_cleanly = tokio::task::spawn_blocking(move || child.terminate(Duration::from_secs(15))).await.unwrap();
    assert!(exited_cleanly, "iot-api did not exit 0 on SIGTERM");
    let spans = receiver
        .wait_for_spans(|spans| spans.iter().filter(|s| s.trace_id == trace_id).count() >= 3, Duration::from_secs(10))
        .await;
    let all = describe(&spans);
    let trace = receiver.trace(&trace_id);
    let servers: Vec<_> = trace.iter().filter(|s| s.kind == CollectedSpan::KIND_SERVER).collect();
    assert_eq!(servers.len(), 1, "{all}");
    let server = servers[0];
    assert_eq!(server.service_name, "iot-api");
    assert_eq!(server.name, "GET /api/v1/devices");
    assert_eq!(server.parent_span_id.as_deref(), Some(parent_id.as_str()), "{all}");
    assert_eq!(server.attr("http.route"), Some("/api/v1/devices"));
    assert_eq!(server.attr("http.response.status_code"), Some("200"));
    for method in ["iot.session.v1.SessionService/ValidateSession", "iot.storage.v1.StorageService/ListDevices"] {
        let call = trace
            .iter()
            .find(|s| s.kind == CollectedSpan::KIND_CLIENT && s.name == method)
            .unwrap_or_else(|| panic!("no client span {method}:\n{all}"));
        assert_eq!(call.parent_span_id.as_deref(), Some(server.span_id.as_str()), "{all}");
        assert!(call.start_time_unix_nano >= server.start_time_unix_nano);
    }
}
