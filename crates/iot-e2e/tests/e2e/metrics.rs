//! `/metrics` of every service, scraped before and after a known workload: the counters move by
//! exactly the workload, and every metric the Grafana dashboard queries is really exported.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use iot_testkit::eventually;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::stack::{Message, Service, Services, Stack, families, sample, total};

const READINGS_ROUTE: &str = "/api/v1/devices/{device_id}/readings";

struct Scrape {
    ingest: BTreeMap<String, f64>,
    storage: BTreeMap<String, f64>,
    session: BTreeMap<String, f64>,
    api: BTreeMap<String, f64>,
}

async fn scrape(stack: &Stack) -> Scrape {
    fn started(service: Option<&Service>) -> &Service {
        service.expect("service started")
    }
    Scrape {
        ingest: started(stack.ingest.as_ref()).metrics().await,
        storage: stack.storage.metrics().await,
        session: started(stack.session.as_ref()).metrics().await,
        api: started(stack.api.as_ref()).metrics().await,
    }
}

/// How much a sample moved between two scrapes.
fn delta(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    sample(after, name, labels) - sample(before, name, labels)
}

fn delta_total(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, name: &str) -> f64 {
    total(after, name) - total(before, name)
}

/// Metric names a PromQL expression refers to (the services' prefixes; histogram series
/// folded into their family).
fn metric_names(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| {
            ["ingest_", "storage_", "session_", "api_"]
                .iter()
                .any(|p| t.starts_with(p))
        })
        .map(|t| {
            ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| t.strip_suffix(s))
                .unwrap_or(t)
                .to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_workload_moves_the_counters_by_exactly_that_much() {
    let stack = Stack::start(Services {
        api: true,
        ingest: true,
    })
    .await;
    let (http, device_id) = stack.user_with_device("metered").await;

    let before = scrape(&stack).await;

    // 7 valid messages of 2 readings each, 1 that is not JSON, 1 with a string for a number.
    let topic = format!("devices/{device_id}/telemetry");
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut messages: Vec<Message> = (0..7)
        .map(|i| {
            let payload = json!({"ts": now_ms - 1000 + i, "metrics": {"temperature": 20.0 + i as f64, "humidity": 40}});
            (topic.clone(), payload.to_string().into_bytes(), Vec::new())
        })
        .collect();
    messages.insert(3, (topic.clone(), b"{not json".to_vec(), Vec::new()));
    messages.push((
        topic.clone(),
        br#"{"metrics": {"temperature": "hot"}}"#.to_vec(),
        Vec::new(),
    ));
    stack.publish(&messages).await;
    let ingest = stack.ingest.as_ref().unwrap();
    let acked_before = sample(&before.ingest, "ingest_messages_acked_total", &[]);
    eventually(
        "ingest acknowledges the 9 messages",
        Duration::from_secs(20),
        || async {
            let metrics = ingest.metrics().await;
            (sample(&metrics, "ingest_messages_acked_total", &[]) >= acked_before + 9.0)
                .then_some(())
        },
    )
    .await;

    // 5 reads of the device's readings and 1 of a device that does not exist.
    for _ in 0..5 {
        let response = http
            .get(stack.api_url(&format!("/api/v1/devices/{device_id}/readings")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["readings"].as_array().map(Vec::len), Some(14));
    }
    let response = http
        .get(stack.api_url("/api/v1/devices/no-such-device/readings"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    let after = scrape(&stack).await;
    let (b, a) = (&before, &after);

    // ingest: in +9, rejected +2 (one per reason), written +7 messages / +14 readings, all acked.
    assert_eq!(
        delta(&b.ingest, &a.ingest, "ingest_messages_received_total", &[]),
        9.0
    );
    assert_eq!(
        delta(&b.ingest, &a.ingest, "ingest_messages_acked_total", &[]),
        9.0
    );
    assert_eq!(
        delta_total(&b.ingest, &a.ingest, "ingest_messages_rejected_total"),
        2.0
    );
    assert_eq!(
        delta(
            &b.ingest,
            &a.ingest,
            "ingest_messages_rejected_total",
            &[("reason", "malformed_json")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            &b.ingest,
            &a.ingest,
            "ingest_messages_rejected_total",
            &[("reason", "wrong_type")]
        ),
        1.0
    );
    assert_eq!(
        delta(&b.ingest, &a.ingest, "ingest_messages_written_total", &[]),
        7.0
    );
    assert_eq!(
        delta(&b.ingest, &a.ingest, "ingest_readings_written_total", &[]),
        14.0
    );
    assert_eq!(
        delta(&b.ingest, &a.ingest, "ingest_readings_duplicate_total", &[]),
        0.0
    );
    assert_eq!(
        delta(
            &b.ingest,
            &a.ingest,
            "ingest_end_to_end_lag_seconds_count",
            &[]
        ),
        7.0
    );
    assert_eq!(
        delta(&b.ingest, &a.ingest, "ingest_batch_messages_sum", &[]),
        7.0
    );
    assert_eq!(
        delta(&b.ingest, &a.ingest, "ingest_batch_readings_sum", &[]),
        14.0
    );
    let batches = delta(&b.ingest, &a.ingest, "ingest_batches_total", &[]);
    assert!((1.0..=7.0).contains(&batches), "{batches} batches");
    assert_eq!(
        delta(&b.ingest, &a.ingest, "ingest_batch_messages_count", &[]),
        batches
    );
    assert_eq!(sample(&a.ingest, "ingest_inflight_messages", &[]), 0.0);
    // storage: the same 14 rows, one WriteReadings per batch, 5 queries and 1 of a device
    // that does not exist (the query checks the device and its owner itself: no GetDevice).
    assert_eq!(
        delta(
            &b.storage,
            &a.storage,
            "storage_readings_inserted_total",
            &[]
        ),
        14.0
    );
    let ok = |method| [("method", method), ("code", "OK")];
    assert_eq!(
        delta(
            &b.storage,
            &a.storage,
            "storage_grpc_requests_total",
            &ok("WriteReadings")
        ),
        batches
    );
    assert_eq!(
        delta(
            &b.storage,
            &a.storage,
            "storage_grpc_requests_total",
            &ok("QueryReadings")
        ),
        5.0
    );
    assert_eq!(
        delta(
            &b.storage,
            &a.storage,
            "storage_grpc_request_duration_seconds_count",
            &ok("QueryReadings")
        ),
        5.0
    );
    assert_eq!(
        delta(
            &b.storage,
            &a.storage,
            "storage_grpc_requests_total",
            &[("method", "QueryReadings"), ("code", "NOT_FOUND")]
        ),
        1.0
    );
    assert_eq!(
        delta_total(&b.storage, &a.storage, "storage_grpc_requests_total") - batches - 6.0,
        0.0,
        "no other storage calls"
    );
    assert_eq!(sample(&a.storage, "storage_db_pool_max_size", &[]), 4.0);
    assert_eq!(
        sample(&a.storage, "storage_db_pool_in_use", &[]),
        0.0,
        "nothing is checked out between requests"
    );
    assert!(sample(&a.storage, "storage_db_pool_size", &[]) >= 1.0);
    // session: every authenticated request validated its cookie once.
    assert_eq!(
        delta(
            &b.session,
            &a.session,
            "session_sessions_validated_total",
            &[]
        ),
        6.0
    );
    assert_eq!(
        delta(
            &b.session,
            &a.session,
            "session_grpc_requests_total",
            &ok("ValidateSession")
        ),
        6.0
    );
    assert_eq!(
        delta(
            &b.session,
            &a.session,
            "session_sessions_created_total",
            &[]
        ),
        0.0
    );
    // api: 5 + 1 requests on the readings route, by status; the latency histogram counts them all.
    let route = |status| {
        [
            ("route", READINGS_ROUTE),
            ("method", "GET"),
            ("status", status),
        ]
    };
    assert_eq!(
        delta(&b.api, &a.api, "api_http_requests_total", &route("200")),
        5.0
    );
    assert_eq!(
        delta(&b.api, &a.api, "api_http_requests_total", &route("404")),
        1.0
    );
    assert_eq!(delta_total(&b.api, &a.api, "api_http_requests_total"), 6.0);
    assert_eq!(
        delta(
            &b.api,
            &a.api,
            "api_http_request_duration_seconds_count",
            &[("route", READINGS_ROUTE), ("method", "GET")]
        ),
        6.0
    );

    // Every metric the Grafana dashboard queries is exported by some service.
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../helm/iot-telemetry/dashboards/iot-telemetry.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut queried = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queried.extend(metric_names(target["expr"].as_str().unwrap_or_default()));
        }
    }
    assert!(queried.len() >= 20, "the dashboard queries {queried:?}");
    let exported: BTreeSet<String> = [&a.ingest, &a.storage, &a.session, &a.api]
        .into_iter()
        .flat_map(families)
        .collect();
    let missing: Vec<_> = queried.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics no service exports: {missing:?}"
    );
}
