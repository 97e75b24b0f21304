//! One trace end to end: from an HTTP request through api, session and storage to Redis and
//! the database; from a device's MQTT message through ingest and storage to the database.

use std::{collections::BTreeSet, time::Duration};

use iot_proto::storage::v1::{
    Reading, WriteReadingsRequest, storage_service_client::StorageServiceClient,
};
use iot_testkit::{
    otlp::{CollectedSpan, describe, random_parent, traceparent},
    unique_suffix,
};
use reqwest::StatusCode;
use serde_json::Value;

use crate::stack::{Services, Stack};


/// Every span's parent is the remote parent or a span of the same trace: nothing dangles and
/// nothing of the request went to another trace.
fn assert_connected(trace: &[CollectedSpan], remote_parent: &str, all: &str) {
    let ids: BTreeSet<&str> = trace.iter().map(|s| s.span_id.as_str()).collect();
    for span in trace {
        let parent = span
            .parent_span_id
            .as_deref()
            .unwrap_or_else(|| panic!("{} is a root:\n{all}", span.name));
        assert!(
            parent == remote_parent || ids.contains(parent),
            "{}'s parent {parent} is not in the trace:\n{all}",
            span.name
        );
    }
}

fn child_of<'a>(
    trace: &'a [CollectedSpan],
    parent: &CollectedSpan,
    service: &str,
    kind: i32,
    name: &str,
) -> &'a CollectedSpan {
    let found: Vec<_> = trace
        .iter()
        .filter(|s| {
            s.parent_span_id.as_deref() == Some(parent.span_id.as_str())
                && s.service_name == service
                && s.kind == kind
                && s.name == name
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {kind} span {name} of {service} under {}:\n{}",
        parent.name,
        describe(trace)
    );
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_request_is_one_trace_across_api_session_storage_redis_and_the_database() {
    let stack = Stack::start(Services {
        api: true,
        ingest: false,
    })
    .await;
    let (http, device_id) = stack.user_with_device("traced").await;
    let mut storage = StorageServiceClient::connect(stack.storage_url())
        .await
        .unwrap();
    let readings = (0..3)
        .map(|i| Reading {
            device_id: device_id.clone(),
            metric: "temperature".into(),
            ts_us: 1_767_225_600_000_000 + i,
            value: 20.5,
        })
        .collect();
    storage
        .write_readings(WriteReadingsRequest { readings })
        .await
        .unwrap();

    let (trace_id, parent_id) = random_parent();
    let response = http
        .get(stack.api_url(&format!("/api/v1/devices/{device_id}/readings")))
        .header("traceparent", traceparent(&trace_id, &parent_id))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["readings"].as_array().map(Vec::len), Some(3));

    // api, session and storage each export the request's spans, the database and Redis calls included.
    let spans = stack
        .receiver
        .wait_for_spans(
            |spans| {
                let trace: Vec<_> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
                let has = |f: &dyn Fn(&CollectedSpan) -> bool| trace.iter().any(|s| f(s));
                has(&|s| s.service_name == "iot-api" && s.kind == CollectedSpan::KIND_SERVER)
                    && has(&|s| {
                        s.service_name == "iot-session" && s.attr("db.system.name") == Some("redis")
                    })
                    && has(&|s| s.service_name == "iot-storage" && s.name == "SELECT readings")
                    && has(&|s| {
                        s.service_name == "iot-storage"
                            && s.name == "iot.storage.v1.StorageService/QueryReadings"
                    })
            },
            Duration::from_secs(20),
        )
        .await;
    // Late spans of the same request (the server span ends after its children) get a moment.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let trace = stack.receiver.trace(&trace_id);
    let all = describe(&trace);
    assert_connected(&trace, &parent_id, &all);
    let services: BTreeSet<&str> = trace.iter().map(|s| s.service_name.as_str()).collect();
    assert_eq!(
        services,
        BTreeSet::from(["iot-api", "iot-session", "iot-storage"]),
        "{all}"
    );
    assert!(spans.iter().filter(|s| s.trace_id == trace_id).count() <= trace.len());

    // The api's server span is the child of the caller's span, and the only span under it.
    let roots: Vec<_> = trace
        .iter()
        .filter(|s| s.parent_span_id.as_deref() == Some(parent_id.as_str()))
        .collect();
    assert_eq!(roots.len(), 1, "{all}");
    let server = roots[0];
    assert_eq!(
        (server.service_name.as_str(), server.kind),
        ("iot-api", CollectedSpan::KIND_SERVER),
        "{all}"
    );
    assert_eq!(server.name, "GET /api/v1/devices/{device_id}/readings");
    assert_eq!(server.attr("http.request.method"), Some("GET"));
    assert_eq!(
        server.attr("http.route"),
        Some("/api/v1/devices/{device_id}/readings")
    );
    assert_eq!(server.attr("http.response.status_code"), Some("200"));
    assert_eq!(
        server.resource.get("service.name").map(String::as_str),
        Some("iot-api")
    );

    // api -> session: client span, server span under it, Redis under that.
    let validate = "iot.session.v1.SessionService/ValidateSession";
    let call = child_of(
        &trace,
        server,
        "iot-api",
        CollectedSpan::KIND_CLIENT,
        validate,
    );
    assert_eq!(call.attr("rpc.system"), Some("grpc"));
    assert_eq!(call.attr("rpc.method"), Some("ValidateSession"));
    let session = child_of(
        &trace,
        call,
        "iot-session",
        CollectedSpan::KIND_SERVER,
        validate,
    );
    assert_eq!(session.attr("rpc.grpc.status_code"), Some("0"));
    let redis: Vec<_> = trace
        .iter()
        .filter(|s| s.parent_span_id.as_deref() == Some(session.span_id.as_str()))
        .collect();
    assert!(!redis.is_empty(), "{all}");
    for span in redis {
        assert_eq!(
            (span.kind, span.attr("db.system.name")),
            (CollectedSpan::KIND_CLIENT, Some("redis")),
            "{all}"
        );
    }

    // api -> storage: one query (it checks the device's owner itself), a client span with the
    // storage server span under it and its statements under that: the device with its metrics,
    // then the readings.
    let name = "iot.storage.v1.StorageService/QueryReadings";
    let call = child_of(&trace, server, "iot-api", CollectedSpan::KIND_CLIENT, name);
    let served = child_of(
        &trace,
        call,
        "iot-storage",
        CollectedSpan::KIND_SERVER,
        name,
    );
    assert_eq!(
        served.attr("rpc.service"),
        Some("iot.storage.v1.StorageService")
    );
    assert!(
        served.start_time_unix_nano >= call.start_time_unix_nano,
        "{all}"
    );
    for table in ["devices", "readings"] {
        let statement = trace
            .iter()
            .find(|s| {
                s.parent_span_id.as_deref() == Some(served.span_id.as_str())
                    && s.name == format!("SELECT {table}")
            })
            .unwrap_or_else(|| panic!("no SELECT {table} under {name}:\n{all}"));
        assert_eq!(statement.kind, CollectedSpan::KIND_CLIENT);
        assert_eq!(statement.attr("db.operation.name"), Some("SELECT"));
        assert_eq!(statement.attr("db.collection.name"), Some(table));
        assert_eq!(statement.attr("db.namespace"), Some(stack.db.name.as_str()));
        assert!(
            statement
                .attr("db.system.name")
                .is_some_and(|s| s == "mariadb" || s == "mysql"),
            "{all}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_message_is_followed_through_ingest_and_storage_under_the_devices_trace() {
    let stack = Stack::start(Services {
        api: false,
        ingest: true,
    })
    .await;
    let device_id = format!("dev-{}", unique_suffix());
    stack.register_devices(&[&device_id]).await;
    let topic = format!("devices/{device_id}/telemetry");
    let (trace_id, device_span) = random_parent();
    // One traced message and two without a trace context, published together: one batch.
    let message = |ts: i64, traced: bool| {
        let properties = if traced {
            vec![(
                "traceparent".to_string(),
                traceparent(&trace_id, &device_span),
            )]
        } else {
            Vec::new()
        };
        (
            topic.clone(),
            format!(r#"{{"ts": {ts}, "metrics": {{"temperature": 21.5}}}}"#).into_bytes(),
            properties,
        )
    };
    stack
        .publish(&[
            // The traced message in the middle: the batch must pick it, not the first one.
            message(1_767_225_600_000, false),
            message(1_767_225_600_001, true),
            message(1_767_225_600_002, false),
        ])
        .await;

    stack
        .receiver
        .wait_for_spans(
            |spans| {
                spans.iter().any(|s| {
                    s.trace_id == trace_id
                        && s.service_name == "iot-storage"
                        && s.name == "INSERT readings"
                }) && spans
                    .iter()
                    .filter(|s| {
                        s.name.starts_with("process ") && s.kind == CollectedSpan::KIND_CONSUMER
                    })
                    .count()
                    >= 4
            },
            Duration::from_secs(20),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let spans = stack.receiver.spans();
    let trace = stack.receiver.trace(&trace_id);
    let all = describe(&spans);
    assert_connected(&trace, &device_span, &all);
    let services: BTreeSet<&str> = trace.iter().map(|s| s.service_name.as_str()).collect();
    assert_eq!(
        services,
        BTreeSet::from(["iot-ingest", "iot-storage"]),
        "{all}"
    );

    // ingest: the message's process span under the device's span ...
    let subscription = "$share/ingest/devices/+/telemetry";
    let process: Vec<_> = trace
        .iter()
        .filter(|s| s.parent_span_id.as_deref() == Some(device_span.as_str()))
        .collect();
    assert_eq!(process.len(), 1, "{all}");
    let process = process[0];
    assert_eq!(
        (process.service_name.as_str(), process.kind),
        ("iot-ingest", CollectedSpan::KIND_CONSUMER),
        "{all}"
    );
    assert_eq!(process.name, format!("process {subscription}"));
    assert_eq!(process.attr("messaging.system"), Some("mqtt"));
    assert_eq!(process.attr("messaging.operation.type"), Some("process"));
    assert_eq!(
        process.attr("messaging.destination.name"),
        Some(topic.as_str())
    );
    assert_eq!(
        process.attr("messaging.destination.subscription.name"),
        Some(subscription)
    );
    assert_eq!(
        process.resource.get("service.name").map(String::as_str),
        Some("iot-ingest")
    );

    // ... the batch under it, linked to the other two messages, each the root of its own trace ...
    let batch = child_of(
        &trace,
        process,
        "iot-ingest",
        CollectedSpan::KIND_CONSUMER,
        &format!("process {subscription}"),
    );
    assert_eq!(
        batch.attr("messaging.batch.message_count"),
        Some("3"),
        "{all}"
    );
    assert_eq!(batch.links.len(), 2, "{all}");
    for link in &batch.links {
        let (linked_trace, linked_span) = link.split_once(':').unwrap();
        let linked = spans
            .iter()
            .find(|s| s.span_id == linked_span && s.trace_id == linked_trace)
            .unwrap_or_else(|| panic!("linked span {link} not exported:\n{all}"));
        assert_ne!(linked.trace_id, trace_id, "{all}");
        assert_eq!(
            (linked.kind, linked.parent_span_id.as_deref()),
            (CollectedSpan::KIND_CONSUMER, None),
            "{all}"
        );
        assert_eq!(
            linked.attr("messaging.destination.name"),
            Some(topic.as_str())
        );
    }

    // ... the WriteReadings call under the batch, storage's server span under the call, and the
    // statements under that.
    let write = "iot.storage.v1.StorageService/WriteReadings";
    let call = child_of(
        &trace,
        batch,
        "iot-ingest",
        CollectedSpan::KIND_CLIENT,
        write,
    );
    let served = child_of(
        &trace,
        call,
        "iot-storage",
        CollectedSpan::KIND_SERVER,
        write,
    );
    assert_eq!(served.attr("rpc.grpc.status_code"), Some("0"));
    let insert = child_of(
        &trace,
        served,
        "iot-storage",
        CollectedSpan::KIND_CLIENT,
        "INSERT readings",
    );
    assert_eq!(insert.attr("db.collection.name"), Some("readings"));
    assert_eq!(insert.attr("db.operation.name"), Some("INSERT"));
    assert!(
        insert
            .attr("server.port")
            .is_some_and(|p| p.parse::<u16>().is_ok_and(|p| p > 0)),
        "{all}"
    );
    assert!(
        insert.attr("server.address").is_some_and(|a| !a.is_empty()),
        "{all}"
    );
    // The message span lasts until the message is acknowledged, after the commit. (Not compared
    // with the server span: that one ends when storage has finished sending, which can be after
    // ingest has read the answer.)
    assert!(
        process.end_time_unix_nano >= insert.end_time_unix_nano,
        "process {}..{} batch {}..{} call {}..{} insert {}..{}",
        process.start_time_unix_nano,
        process.end_time_unix_nano,
        batch.start_time_unix_nano,
        batch.end_time_unix_nano,
        call.start_time_unix_nano,
        call.end_time_unix_nano,
        insert.start_time_unix_nano,
        insert.end_time_unix_nano
    );
    assert!(
        process.end_time_unix_nano >= call.end_time_unix_nano,
        "process {}..{} batch {}..{} call {}..{}",
        process.start_time_unix_nano,
        process.end_time_unix_nano,
        batch.start_time_unix_nano,
        batch.end_time_unix_nano,
        call.start_time_unix_nano,
        call.end_time_unix_nano
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulators_traced_messages_start_traces_that_ingest_and_storage_continue() {
    let stack = Stack::start(Services {
        api: false,
        ingest: true,
    })
    .await;
    let prefix = format!("sim{}-", unique_suffix());
    let output = stack
        .command("iot-sim")
        .args([
            "--devices",
            "2",
            "--count",
            "2",
            "--rate",
            "20",
            "--trace-fraction",
            "1",
            "--register",
        ])
        .args([
            "--device-prefix",
            &prefix,
            "--owner",
            &format!("owner{}", unique_suffix()),
        ])
        .env("SIM_MQTT_HOST", "127.0.0.1")
        .env("SIM_MQTT_PORT", stack.broker.port.to_string())
        .env("SIM_STORAGE_URL", stack.storage_url())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "iot-sim failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    // 4 messages, each its own trace: the simulator's producer span, ingest's process span under
    // it, and the rows written under that trace.
    let spans = stack
        .receiver
        .wait_for_spans(
            |spans| {
                let sends: Vec<_> = spans
                    .iter()
                    .filter(|s| s.service_name == "iot-sim")
                    .collect();
                sends.len() == 4
                    && sends.iter().all(|send| {
                        spans.iter().any(|s| {
                            s.service_name == "iot-ingest"
                                && s.parent_span_id.as_deref() == Some(send.span_id.as_str())
                        })
                    })
                    && spans.iter().filter(|s| s.name == "INSERT readings").count() >= 1
            },
            Duration::from_secs(20),
        )
        .await;
    let all = describe(&spans);
    let sends: Vec<_> = spans
        .iter()
        .filter(|s| s.service_name == "iot-sim")
        .collect();
    let traces: BTreeSet<&str> = sends.iter().map(|s| s.trace_id.as_str()).collect();
    assert_eq!(traces.len(), 4, "a trace per message:\n{all}");
    for send in &sends {
        assert_eq!(send.kind, CollectedSpan::KIND_PRODUCER, "{all}");
        assert_eq!(send.parent_span_id, None, "{all}");
        assert!(
            send.name.starts_with(&format!("send devices/{prefix}")),
            "{all}"
        );
        assert_eq!(send.attr("messaging.system"), Some("mqtt"));
        assert_eq!(send.attr("messaging.operation.type"), Some("send"));
        let process = spans
            .iter()
            .find(|s| s.parent_span_id.as_deref() == Some(send.span_id.as_str()))
            .unwrap_or_else(|| panic!("nothing continues {}:\n{all}", send.name));
        assert_eq!(
            (process.service_name.as_str(), process.kind),
            ("iot-ingest", CollectedSpan::KIND_CONSUMER),
            "{all}"
        );
        assert_eq!(process.trace_id, send.trace_id);
        assert_eq!(
            process.attr("messaging.destination.name"),
            send.attr("messaging.destination.name")
        );
    }
    // Storage continued at least one of them (a batch continues its first traced message).
    assert!(
        spans
            .iter()
            .any(|s| s.name == "INSERT readings" && traces.contains(s.trace_id.as_str())),
        "{all}"
    );
}
