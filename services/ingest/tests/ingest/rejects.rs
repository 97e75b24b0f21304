use std::{collections::BTreeMap, time::Duration};

use crate::{delivery::eventually_metric, helpers::*};

#[tokio::test]
async fn malformed_messages_are_rejected_by_reason_and_never_block_valid_ones() {
    let devices = devices(2);
    let stack = Stack::start(&devices).await;
    let ingest = stack
        .ingest("ingest-rejects")
        .env("INGEST_MAX_PAYLOAD_BYTES", 2048)
        .env("INGEST_MAX_READINGS_PER_MESSAGE", 20)
        .start()
        .await;
    let dev = &devices[0];
    let topic = format!("devices/{dev}/telemetry");
    let too_many: String = (0..21).map(|i| format!("\"m{i}\":{i}")).collect::<Vec<_>>().join(",");
    let bad: Vec<(&str, String, String)> = vec![
        ("malformed_json", topic.clone(), r#"{"metrics":{"temperature":1"#.into()),
        ("malformed_json", topic.clone(), "not json at all".into()),
        ("malformed_json", topic.clone(), "\u{feff}{\"metrics\":{\"a\":1}}".into()),
        ("wrong_type", topic.clone(), r#"{"metrics":{"temperature":"21.5"}}"#.into()),
        ("wrong_type", topic.clone(), r#"{"metrics":[1,2]}"#.into()),
        ("wrong_type", topic.clone(), r#"{"temperature":21.5}"#.into()),
        ("wrong_type", topic.clone(), "42".into()),
        ("wrong_type", topic.clone(), r#"[{"n":"door","vb":true}]"#.into()),
        ("non_finite", topic.clone(), r#"{"metrics":{"temperature":1e999}}"#.into()),
        ("non_finite", topic.clone(), r#"{"metrics":{"temperature":NaN}}"#.into()),
        ("non_finite", topic.clone(), r#"[{"n":"t","v":-Infinity}]"#.into()),
        ("too_large", topic.clone(), format!(r#"{{"metrics":{{"a":1}},"pad":"{}"}}"#, "x".repeat(4000))),
        // Far above ingest's limit, below the broker's: must reach ingest and be counted.
        ("too_large", topic.clone(), format!(r#"{{"metrics":{{"a":1}},"pad":"{}"}}"#, "x".repeat(100_000))),
        ("too_many_metrics", topic.clone(), format!(r#"{{"metrics":{{{too_many}}}}}"#)),
        ("bad_metric_name", topic.clone(), r#"{"metrics":{"tempé rature":1}}"#.into()),
        ("bad_metric_name", topic.clone(), r#"{"metrics":{"":1}}"#.into()),
        ("bad_timestamp", topic.clone(), r#"{"ts":"yesterday","metrics":{"a":1}}"#.into()),
        ("bad_timestamp", topic.clone(), r#"{"ts":1700000000,"metrics":{"a":1}}"#.into()),
        ("empty", topic.clone(), String::new()),
        ("empty", topic.clone(), r#"{"metrics":{}}"#.into()),
        ("empty", topic.clone(), "[]".into()),
        ("bad_topic", "devices/not.valid/telemetry".into(), r#"{"metrics":{"a":1}}"#.into()),
        ("bad_topic", format!("devices/{}/telemetry", "x".repeat(65)), r#"{"metrics":{"a":1}}"#.into()),
        ("unknown_device", "devices/never-registered/telemetry".into(), r#"{"metrics":{"a":1}}"#.into()),
        ("unsupported_senml", topic.clone(), r#"[{"n":"a","v":1,"x_":2}]"#.into()),
    ];
    let mut publisher = Publisher::connect(stack.broker.port).await;
    let mut expected = BTreeMap::new();
    let mut want: BTreeMap<&str, f64> = BTreeMap::new();
    let mut i = 0_u64;
    // Every bad message sits between valid ones, from both devices, twice over.
    for round in 0..2 {
        for (reason, bad_topic, bad_payload) in &bad {
            for device in &devices {
                let ts = BASE_MS + i as i64;
                let (body, values) = payload(ts, i);
                publisher.publish(&format!("devices/{device}/telemetry"), body).await;
                expect_rows(&mut expected, device, ts, values);
                i += 1;
            }
            publisher.publish(bad_topic, bad_payload.clone()).await;
            *want.entry(reason).or_default() += 1.0;
        }
        // SenML with a non-numeric record: the numeric ones land, the others are counted.
        let t = (BASE_MS + 1_000_000 + round) as f64 / 1000.0;
        publisher
            .publish(&topic, format!(r#"[{{"bn":"urn:dev:ow:{dev}:","bt":{t},"n":"voltage","v":230.5}},{{"n":"door","vb":false}}]"#))
            .await;
        expected.insert((dev.clone(), "voltage".into(), ((t * 1e6).round()) as i64), 230.5);
    }
    publisher.flush().await;
    stack.wait_for_rows(expected.len() as u64, Duration::from_secs(60)).await;
    assert_eq!(stack.rows().await, expected);
    eventually_metric(&ingest, "ingest_messages_acked_total", publisher.published as f64).await;
    let m = ingest.metrics().await;
    for (reason, count) in &want {
        let key = format!("ingest_messages_rejected_total{{reason=\"{reason}\"}}");
        assert_eq!(m.get(&key).copied(), Some(*count), "{key}\n{}", ingest.log_text());
    }
    assert_eq!(m["ingest_senml_records_skipped_total{reason=\"non_numeric_value\"}"], 2.0);
    // Every rejection is logged with its reason.
    let log = ingest.log_text();
    for reason in want.keys() {
        assert!(log.contains(reason), "no log line with reason {reason}");
    }
}
