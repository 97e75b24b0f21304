//! OpenTelemetry traces of the real `iot-storage` binary (a process of its own: the tracer is
//! global), exported to an in-test OTLP receiver: server spans under the caller's context and a
//! database client span per statement under them, with the database conventions' attributes
//! and none of the statement's values.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use iot_proto::storage::v1 as pb;
use iot_testkit::{
    ChildGuard, TestDatabase, free_port,
    otlp::{CollectedSpan, OtlpReceiver, describe, random_parent, traceparent},
};

use crate::helpers::{connect, query, reading};

fn traced<T>(message: T, parent: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("traceparent", parent.parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_export_server_spans_with_one_database_span_per_statement() {
    let receiver = OtlpReceiver::start().await;
    let db = TestDatabase::create().await;
    let grpc_port = free_port();
    let metrics_port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_iot-storage"))
        .env("STORAGE_GRPC_ADDR", format!("127.0.0.1:{grpc_port}"))
        .env("STORAGE_METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
        .env("STORAGE_DATABASE_URL", &db.url)
        .env("STORAGE_DB_POOL_SIZE", "2")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
        // Far beyond this test's waits: the spans arrive through the flush on SIGTERM.
        .env("OTEL_BSP_SCHEDULE_DELAY", "600000")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_RESOURCE_ATTRIBUTES")
        .env_remove("OTEL_SDK_DISABLED")
        .env_remove("OTEL_TRACES_SAMPLER")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(Some(child));
    let grpc_addr = std::net::SocketAddr::from(([127, 0, 0, 1], grpc_port));
    child
        .wait_listening(grpc_addr, Duration::from_secs(30))
        .await;
    let mut client = connect(grpc_addr).await;

    let (trace_id, parent_id) = random_parent();
    let parent = traceparent(&trace_id, &parent_id);
    let device_id = format!("dev-{}", iot_testkit::unique_suffix());
    let user = client
        .create_user(traced(
            pb::CreateUserRequest {
                username: format!("u-{}", iot_testkit::unique_suffix()),
                password: "a long secret password".into(),
                is_admin: false,
                only_if_first: false,
            },
            &parent,
        ))
        .await
        .unwrap()
        .into_inner();
    let device = pb::CreateDeviceRequest {
        device_id: device_id.clone(),
        owner_id: user.id,
        name: "traced".into(),
        attributes_json: "{}".into(),
    };
    client
        .create_device(traced(device.clone(), &parent))
        .await
        .unwrap();
    let again = client.create_device(traced(device, &parent)).await;
    assert_eq!(
        again.map(|_| ()).unwrap_err().code(),
        tonic::Code::AlreadyExists
    );
    let value = 4242.125;
    client
        .write_readings(traced(
            pb::WriteReadingsRequest {
                readings: vec![reading(
                    &device_id,
                    "temperature",
                    1_767_225_600_000_000,
                    value,
                )],
            },
            &parent,
        ))
        .await
        .unwrap();
    let page = client
        .query_readings(traced(query(&device_id, "", 0, 0, 10), &parent))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.readings.len(), 1);
    // Probes: neither /readyz (a database ping) nor gRPC health may produce spans.
    let http = reqwest::Client::new();
    for _ in 0..3 {
        let ready = http
            .get(format!("http://127.0.0.1:{metrics_port}/readyz"))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 200);
    }

    let exited = tokio::task::spawn_blocking(move || child.terminate(Duration::from_secs(15)))
        .await
        .unwrap();
    assert!(exited, "iot-storage did not exit 0 on SIGTERM");
    let spans = receiver
        .wait_for_spans(
            |spans| {
                spans
                    .iter()
                    .filter(|s| s.kind == CollectedSpan::KIND_SERVER)
                    .count()
                    >= 5
            },
            Duration::from_secs(10),
        )
        .await;
    let all = describe(&spans);
    assert!(
        spans.iter().all(|s| s.trace_id == trace_id),
        "every span belongs to the callers' trace (probes are not traced):\n{all}"
    );
    let server = |method: &str| -> Vec<&CollectedSpan> {
        spans
            .iter()
            .filter(|s| {
                s.kind == CollectedSpan::KIND_SERVER
                    && s.name == format!("iot.storage.v1.StorageService/{method}")
            })
            .collect()
    };
    let children = |of: &CollectedSpan| -> Vec<&CollectedSpan> {
        spans
            .iter()
            .filter(|s| s.parent_span_id.as_deref() == Some(of.span_id.as_str()))
            .collect()
    };
    for span in &spans {
        assert_eq!(span.service_name, "iot-storage", "{all}");
        if span.kind == CollectedSpan::KIND_SERVER {
            assert_eq!(
                span.parent_span_id.as_deref(),
                Some(parent_id.as_str()),
                "{all}"
            );
            assert_eq!(span.attr("rpc.system"), Some("grpc"));
        }
    }

    let write = server("WriteReadings");
    assert_eq!(write.len(), 1, "{all}");
    let statements = children(write[0]);
    let insert = statements
        .iter()
        .find(|s| s.name == "INSERT readings")
        .unwrap_or_else(|| panic!("no INSERT readings span under WriteReadings:\n{all}"));
    assert_eq!(insert.kind, CollectedSpan::KIND_CLIENT);
    let system = insert.attr("db.system.name").unwrap_or_default();
    assert!(system == "mariadb" || system == "mysql", "{all}");
    assert_eq!(insert.attr("db.operation.name"), Some("INSERT"));
    assert_eq!(insert.attr("db.collection.name"), Some("readings"));
    assert_eq!(insert.attr("db.query.summary"), Some("INSERT readings"));
    assert_eq!(insert.attr("db.namespace"), Some(db.name.as_str()));
    assert!(
        insert.attr("server.address").is_some_and(|a| !a.is_empty()),
        "{all}"
    );
    assert!(
        insert
            .attr("server.port")
            .is_some_and(|p| p.parse::<u16>().is_ok()),
        "{all}"
    );
    assert_eq!(insert.status_code, 0, "{all}");
    assert!(insert.start_time_unix_nano >= write[0].start_time_unix_nano);
    assert!(insert.end_time_unix_nano <= write[0].end_time_unix_nano);

    let read = server("QueryReadings");
    assert_eq!(read.len(), 1, "{all}");
    assert!(
        children(read[0]).iter().any(|s| s.name == "SELECT readings"
            && s.attr("db.operation.name") == Some("SELECT")
            && s.attr("db.collection.name") == Some("readings")),
        "{all}"
    );

    // The second CreateDevice: the INSERT fails on the unique key, which the database span
    // records as an error; ALREADY_EXISTS is the caller's problem, not a server error.
    let creates = server("CreateDevice");
    assert_eq!(creates.len(), 2, "{all}");
    let duplicate = creates
        .iter()
        .find(|s| s.attr("rpc.grpc.status_code") == Some("6"))
        .unwrap_or_else(|| panic!("no ALREADY_EXISTS CreateDevice span:\n{all}"));
    assert_ne!(duplicate.status_code, 2, "{all}");
    let failed: Vec<_> = children(duplicate)
        .into_iter()
        .filter(|s| s.status_code == 2)
        .collect();
    assert_eq!(failed.len(), 1, "{all}");
    assert_eq!(failed[0].attr("error.type"), Some("unique_violation"));
    assert_eq!(failed[0].attr("db.collection.name"), Some("devices"));

    // No statement value reaches an attribute: not the device id, the reading, the password.
    let db_spans: Vec<_> = spans
        .iter()
        .filter(|s| s.attr("db.system.name").is_some())
        .collect();
    assert!(db_spans.len() >= 5, "{all}");
    for span in db_spans {
        for (key, value) in &span.attributes {
            for secret in [device_id.as_str(), "4242.125", "a long secret password"] {
                assert!(
                    !value.contains(secret),
                    "{key}={value} leaks a value:\n{all}"
                );
            }
        }
    }
}
