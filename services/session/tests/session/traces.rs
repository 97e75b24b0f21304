//! OpenTelemetry traces of the real binary (a process of its own: the tracer is global),
//! exported to an in-test OTLP receiver.

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    time::Duration,
};

use iot_proto::session::v1::{
    CreateSessionRequest, ValidateSessionRequest, session_service_client::SessionServiceClient,
};
use iot_testkit::{
    ChildGuard, free_port,
    otlp::{CollectedSpan, OtlpReceiver, describe},
    workspace_bin,
};

fn random_hex(bytes: usize) -> String {
    (0..bytes).map(|_| format!("{:02x}", rand::random::<u8>())).collect()
}

fn traced<T>(message: T, trace_id: &str, parent_id: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("traceparent", format!("00-{trace_id}-{parent_id}-01").parse().unwrap());
    request
}

#[tokio::test]
async fn calls_export_server_and_redis_spans_under_the_callers_trace() {
    let receiver = OtlpReceiver::start().await;
    let grpc_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let metrics_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let prefix = format!("iot:test:{}:", iot_testkit::unique_suffix());
    let child = Command::new(workspace_bin("iot-session"))
        .env("SESSION_GRPC_ADDR", grpc_addr.to_string())
        .env("SESSION_METRICS_ADDR", metrics_addr.to_string())
        .env("SESSION_REDIS_URL", iot_testkit::redis_url())
        .env("SESSION_KEY_PREFIX", &prefix)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
        // Far beyond this test's waits: the spans can only arrive through the flush on exit.
        .env("OTEL_BSP_SCHEDULE_DELAY", "600000")
        // What the Helm chart sets (helm/iot-telemetry/templates/_helpers.tpl, iot.commonEnv).
        .env("OTEL_SERVICE_NAME", "iot-session")
        .env("OTEL_RESOURCE_ATTRIBUTES", "service.namespace=iot-telemetry,k8s.pod.name=session-0")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
        .env("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
        .env("OTEL_TRACES_SAMPLER_ARG", "1.0")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_SDK_DISABLED")
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(Some(child));
    let mut stdout = child.0.as_mut().unwrap().stdout.take().unwrap();
    let logs = std::thread::spawn(move || {
        let mut logs = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut logs).unwrap();
        logs
    });
    child.wait_listening(grpc_addr, Duration::from_secs(20)).await;
    // A readiness probe pings Redis; probes must not produce traces.
    let readyz = reqwest::get(format!("http://{metrics_addr}/readyz")).await.unwrap();
    assert_eq!(readyz.status(), reqwest::StatusCode::OK);

    let mut client = SessionServiceClient::connect(format!("http://{grpc_addr}")).await.unwrap();
    let (create_trace, create_parent) = (random_hex(16), random_hex(8));
    let created = client
        .create_session(traced(
            CreateSessionRequest {
                user_id: crate::helpers::user_id(),
                username: "traced".into(),
                is_admin: false,
                user_agent: String::new(),
            },
            &create_trace,
            &create_parent,
        ))
        .await
        .unwrap()
        .into_inner();
    let (reject_trace, reject_parent) = (random_hex(16), random_hex(8));
    let unknown = iot_session::token::new_token();
    let rejected = client
        .validate_session(traced(ValidateSessionRequest { token: unknown }, &reject_trace, &reject_parent))
        .await
        .unwrap_err();
    assert_eq!(rejected.code(), tonic::Code::Unauthenticated);
    // No traceparent: the service starts a trace of its own.
    client.validate_session(ValidateSessionRequest { token: created.token }).await.unwrap();
    drop(client);

    let exited_cleanly = tokio::task::spawn_blocking(move || child.terminate(Duration::from_secs(15))).await.unwrap();
    assert!(exited_cleanly, "iot-session did not exit 0 on SIGTERM");
    let logs = logs.join().unwrap();
    print!("{logs}");
    let created_line =
        logs.lines().find(|line| line.contains("session created")).expect("a 'session created' log line");
    assert!(
        created_line.contains(&format!("\"trace_id\":\"{create_trace}\"")),
        "the log line names the trace: {created_line}"
    );
    let spans = receiver
        .wait_for_spans(
            |spans| spans.iter().filter(|s| s.service_name == "iot-session").count() >= 6,
            Duration::from_secs(10),
        )
        .await;
    let all = describe(&spans);

    // CreateSession: server span under the caller's span, Redis span under the server span.
    let create = receiver.trace(&create_trace);
    assert_eq!(create.len(), 2, "one server and one Redis span:\n{all}");
    let server = one(&create, |s| s.kind == CollectedSpan::KIND_SERVER, &all);
    assert_eq!(server.name, "iot.session.v1.SessionService/CreateSession");
    assert_eq!(server.parent_span_id.as_deref(), Some(create_parent.as_str()), "{all}");
    assert_eq!(server.service_name, "iot-session");
    assert_eq!(server.resource.get("service.namespace").map(String::as_str), Some("iot-telemetry"));
    assert_eq!(server.resource.get("k8s.pod.name").map(String::as_str), Some("session-0"));
    assert_eq!(server.attr("rpc.system"), Some("grpc"));
    assert_eq!(server.attr("rpc.service"), Some("iot.session.v1.SessionService"));
    assert_eq!(server.attr("rpc.method"), Some("CreateSession"));
    assert_eq!(server.attr("rpc.grpc.status_code"), Some("0"));
    let redis = one(&create, |s| s.kind == CollectedSpan::KIND_CLIENT, &all);
    assert_eq!(redis.parent_span_id.as_deref(), Some(server.span_id.as_str()), "{all}");
    assert_eq!(redis.name, "EVALSHA create");
    assert_eq!(redis.attr("db.system"), Some("redis"));
    assert_eq!(redis.attr("db.operation"), Some("EVALSHA"));
    assert!(redis.attr("server.address").is_some_and(|a| !a.is_empty()), "{all}");
    assert!(redis.start_time_unix_nano >= server.start_time_unix_nano);
    assert!(redis.end_time_unix_nano <= server.end_time_unix_nano);

    // UNAUTHENTICATED is the caller's problem: recorded, but not a server error.
    let reject = receiver.trace(&reject_trace);
    let server = one(&reject, |s| s.kind == CollectedSpan::KIND_SERVER, &all);
    assert_eq!(server.attr("rpc.method"), Some("ValidateSession"));
    assert_eq!(server.parent_span_id.as_deref(), Some(reject_parent.as_str()));
    assert_eq!(server.attr("rpc.grpc.status_code"), Some("16"));
    assert_eq!(server.status_code, 0, "{all}");
    let redis = one(&reject, |s| s.kind == CollectedSpan::KIND_CLIENT, &all);
    assert_eq!(redis.name, "EVALSHA validate");
    assert_eq!(redis.parent_span_id.as_deref(), Some(server.span_id.as_str()));

    let own = one(
        &spans,
        |s| s.attr("rpc.method") == Some("ValidateSession") && s.attr("rpc.grpc.status_code") == Some("0"),
        &all,
    );
    assert_eq!(own.parent_span_id, None, "a root span without a traceparent: {all}");
    assert!(spans.iter().all(|s| s.attr("db.operation") == Some("EVALSHA") || s.kind == CollectedSpan::KIND_SERVER));
    assert_eq!(spans.len(), 6, "nothing else, no readiness PING: {all}");

    // Clean up this test's keys in the shared Redis.
    let mut conn = crate::helpers::redis_conn(&iot_testkit::redis_url()).await;
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut conn).await.unwrap();
    if !keys.is_empty() {
        let _: i64 = redis::cmd("DEL").arg(keys).query_async(&mut conn).await.unwrap();
    }
}

fn one<'a>(spans: &'a [CollectedSpan], what: impl Fn(&CollectedSpan) -> bool, all: &str) -> &'a CollectedSpan {
    let found: Vec<_> = spans.iter().filter(|s| what(s)).collect();
    assert_eq!(found.len(), 1, "expected exactly one such span:\n{all}");
    found[0]
}
