//! End to end through the real exporter: `logging::init` with an OTLP endpoint, a tonic
//! client and server with the trace layers, MQTT/HTTP carriers, `logging::shutdown` flushing,
//! and an in-test OTLP receiver. The tracer is global, so this binary holds exactly one test
//! (nextest and `cargo test` alike run it in a process of its own).

#![allow(clippy::unwrap_used)]

use std::{collections::HashSet, time::Duration};

use iot_runtime::{
    logging::{self, LogFormat},
    telemetry::{
        self,
        grpc::{GrpcServerTraceLayer, TraceContextInterceptor, traced_channel},
    },
};
use iot_testkit::otlp::{CollectedSpan, OtlpReceiver, describe};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tracing::Instrument;

#[test]
fn spans_are_exported_with_parents_across_grpc_mqtt_and_http() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(scenario());
}

async fn scenario() {
    let receiver = OtlpReceiver::start().await;
    // SAFETY: set before anything reads the environment; the runtime's threads do not read or
    // write environment variables concurrently at this point.
    unsafe {
        std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint());
        std::env::remove_var("OTEL_SERVICE_NAME");
        std::env::remove_var("OTEL_RESOURCE_ATTRIBUTES");
        std::env::remove_var("OTEL_SDK_DISABLED");
        std::env::remove_var("OTEL_TRACES_SAMPLER");
        // Logging everything must not put the exporter's own gRPC stack into the traces.
        std::env::set_var("RUST_LOG", "debug");
    }
    logging::init("otel-export-test", LogFormat::Text);
    assert!(telemetry::is_enabled(), "an endpoint is set, so tracing must be on");

    // A gRPC server (the standard health service) behind the server trace layer.
    let (health_reporter, health_service) = iot_runtime::grpc::health();
    health_reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .layer(GrpcServerTraceLayer::all())
        .add_service(health_service)
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap();
    let channel = endpoint.connect().await.unwrap();

    let root = tracing::info_span!("test.root");
    let root_trace = telemetry::trace_id(&root).expect("the root span is recorded");
    let (mut props, headers) = async {
        let mut traced = HealthClient::new(traced_channel(channel.clone(), endpoint.uri()));
        traced.check(HealthCheckRequest { service: String::new() }).await.unwrap();
        let missing = traced.check(HealthCheckRequest { service: "no.such.Service".into() }).await.unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound);

        // Injection only: the server span's parent is the current (root) span.
        let mut intercepted = HealthClient::with_interceptor(channel.clone(), TraceContextInterceptor);
        intercepted.check(HealthCheckRequest { service: String::new() }).await.unwrap();

        let mut props = vec![("unit".to_string(), "celsius".to_string())];
        telemetry::mqtt::inject_user_properties(&mut props);
        let headers = telemetry::http::inject_headers(&telemetry::current_context());
        (props, headers)
    }
    .instrument(root.clone())
    .await;
    assert_eq!(props.len(), 2, "traceparent added next to the other property: {props:?}");

    // A consumer elsewhere continues the trace from the user properties ...
    let consumer =
        telemetry::mqtt::process_span("devices/d1/telemetry", "$share/ingest/devices/+/telemetry", &props, 42);
    consumer.in_scope(|| tracing::info!("processing"));
    // ... with a message without context (its process span starts a trace of its own) in the
    // same batch, whose span continues the traced message and links to the other one, as ingest
    // builds it ...
    let untraced = telemetry::mqtt::process_span("devices/d2/telemetry", "$share/ingest/devices/+/telemetry", &[], 7);
    let untraced_trace = telemetry::trace_id(&untraced).expect("the untraced message's span is recorded");
    let batch = telemetry::mqtt::batch_span_of("$share/ingest/devices/+/telemetry", &consumer, [&consumer, &untraced]);
    drop(batch);
    drop(untraced);
    drop(consumer);
    // ... and an HTTP server continues it from the headers (as pairs, the way the actix api passes them).
    let mut request_headers: Vec<(String, String)> = headers.clone();
    request_headers.push(("User-Agent".into(), "curl/8".into()));
    let http_server = telemetry::http::server_span(
        "GET",
        "/api/v1/devices/d1/readings",
        Some("/api/v1/devices/{device_id}/readings"),
        request_headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())),
    );
    telemetry::http::record_response(&http_server, 503);
    drop(http_server);
    props.clear();
    drop(root);

    // Everything ended: shutdown must flush it (the batch delay is 5 s; the wait below is
    // short enough that only the flush can deliver in time).
    logging::shutdown();
    assert!(!telemetry::is_enabled());
    let spans = receiver
        .wait_for_spans(
            |spans| {
                spans.iter().filter(|s| s.trace_id == root_trace).count() >= 9
                    && spans.iter().any(|s| s.name.starts_with("process ") && s.links.len() == 1)
            },
            Duration::from_secs(3),
        )
        .await;
    let trace = receiver.trace(&root_trace);
    let all = describe(&spans);

    let names: HashSet<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    let expected: HashSet<&str> = [
        "test.root",
        "grpc.health.v1.Health/Check",
        "process $share/ingest/devices/+/telemetry",
        "GET /api/v1/devices/{device_id}/readings",
    ]
    .into_iter()
    .collect();
    assert_eq!(names, expected, "only our spans, nothing from h2/hyper/tonic/tower:\n{all}");
    assert!(spans.iter().all(|s| s.service_name == "otel-export-test"), "{all}");

    let root_span = one(&trace, |s| s.name == "test.root", &all);
    assert_eq!(root_span.parent_span_id, None);
    let clients: Vec<_> = trace.iter().filter(|s| s.kind == CollectedSpan::KIND_CLIENT).collect();
    let servers: Vec<_> =
        trace.iter().filter(|s| s.kind == CollectedSpan::KIND_SERVER && s.attr("rpc.system").is_some()).collect();
    assert_eq!(clients.len(), 2, "{all}");
    assert_eq!(servers.len(), 3, "{all}");
    for client in &clients {
        assert_eq!(client.parent_span_id.as_deref(), Some(root_span.span_id.as_str()), "{all}");
        assert_eq!(client.attr("rpc.system"), Some("grpc"));
        assert_eq!(client.attr("rpc.service"), Some("grpc.health.v1.Health"));
        assert_eq!(client.attr("rpc.method"), Some("Check"));
        assert_eq!(client.attr("server.address"), Some("127.0.0.1"));
        assert_eq!(client.attr("server.port"), Some(addr.port().to_string().as_str()));
    }
    for server in &servers {
        assert_eq!(server.attr("rpc.system"), Some("grpc"), "{all}");
        assert_eq!(server.attr("trace_id"), Some(root_trace.as_str()), "log lines name the trace");
        assert_eq!(server.attr("rpc.service"), Some("grpc.health.v1.Health"));
        assert_eq!(server.attr("rpc.method"), Some("Check"));
        assert_eq!(server.attr("network.peer.address"), Some("127.0.0.1"));
        let parent = server.parent_span_id.as_deref().unwrap();
        let via_client = clients.iter().find(|c| c.span_id == parent);
        match via_client {
            // The client span and its server span agree on the outcome.
            Some(client) => assert_eq!(client.attr("rpc.grpc.status_code"), server.attr("rpc.grpc.status_code")),
            None => assert_eq!(parent, root_span.span_id, "interceptor call parented to the root span: {all}"),
        }
    }
    let not_found =
        one(&trace, |s| s.kind == CollectedSpan::KIND_SERVER && s.attr("rpc.grpc.status_code") == Some("5"), &all);
    assert_eq!(not_found.status_code, 0, "NOT_FOUND is not a server error");
    let not_found_client =
        one(&trace, |s| s.kind == CollectedSpan::KIND_CLIENT && s.attr("rpc.grpc.status_code") == Some("5"), &all);
    assert_eq!(not_found_client.status_code, 2, "but it is an error for the client");
    assert_eq!(not_found_client.attr("error.type"), Some("NOT_FOUND"));
    assert_eq!(
        trace.iter().filter(|s| s.attr("rpc.grpc.status_code") == Some("0")).count(),
        3,
        "two OK server spans, one OK client span: {all}"
    );

    let consumer = one(&trace, |s| s.attr("messaging.message.body.size").is_some(), &all);
    assert_eq!(consumer.parent_span_id.as_deref(), Some(root_span.span_id.as_str()));
    assert_eq!(consumer.attr("messaging.system"), Some("mqtt"));
    assert_eq!(consumer.attr("messaging.destination.name"), Some("devices/d1/telemetry"));
    assert_eq!(consumer.attr("messaging.operation.type"), Some("process"));
    assert_eq!(consumer.attr("messaging.message.body.size"), Some("42"));
    let batch = one(&trace, |s| s.attr("messaging.batch.message_count").is_some(), &all);
    assert_eq!(batch.parent_span_id.as_deref(), Some(consumer.span_id.as_str()), "continues the traced message");
    assert_eq!(batch.attr("messaging.batch.message_count"), Some("2"));
    let untraced = one(&spans, |s| s.attr("messaging.destination.name") == Some("devices/d2/telemetry"), &all);
    assert_eq!(untraced.trace_id, untraced_trace);
    assert_ne!(untraced.trace_id, root_trace, "a message without context starts its own trace");
    assert_eq!(batch.links, vec![format!("{untraced_trace}:{}", untraced.span_id)], "linked to the other message");
    let http_server = one(&trace, |s| s.attr("http.request.method") == Some("GET"), &all);
    assert_eq!(http_server.kind, CollectedSpan::KIND_SERVER);
    assert_eq!(http_server.parent_span_id.as_deref(), Some(root_span.span_id.as_str()));
    assert_eq!(http_server.attr("trace_id"), Some(root_trace.as_str()));
    assert_eq!(http_server.attr("http.route"), Some("/api/v1/devices/{device_id}/readings"));
    assert_eq!(http_server.attr("url.path"), Some("/api/v1/devices/d1/readings"));
    assert_eq!(http_server.attr("user_agent.original"), Some("curl/8"));
    assert_eq!(http_server.attr("http.response.status_code"), Some("503"));
    assert_eq!(http_server.status_code, 2, "5xx is a server error");
}

fn one<'a>(spans: &'a [CollectedSpan], what: impl Fn(&CollectedSpan) -> bool, all: &str) -> &'a CollectedSpan {
    let found: Vec<_> = spans.iter().filter(|s| what(s)).collect();
    assert_eq!(found.len(), 1, "expected exactly one such span:\n{all}");
    found[0]
}
