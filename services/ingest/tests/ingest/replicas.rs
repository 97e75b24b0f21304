use std::{collections::BTreeMap, time::Duration};

use crate::{delivery::eventually_metric, helpers::*};

/// Publishes `n` messages per device, paced, from index `*i` on.
async fn publish_stream(
    publisher: &mut Publisher,
    devices: &[String],
    expected: &mut BTreeMap<(String, String, i64), f64>,
    i: &mut u64,
    n: u64,
) {
    for _ in 0..n {
        for device in devices {
            let ts = BASE_MS + *i as i64;
            let (body, values) = payload(ts, *i);
            publisher.publish(&format!("devices/{device}/telemetry"), body).await;
            expect_rows(expected, device, ts, values);
        }
        *i += 1;
        if i.is_multiple_of(20) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test]
async fn one_replica_consumes_over_all_its_connections_and_stores_everything_once() {
    let devices = devices(4);
    let stack = Stack::start(&devices).await;
    let ingest = stack.ingest("ingest-conns").env("INGEST_MQTT_CONNECTIONS", 3).start().await;
    // Ready means every connection is up and subscribed.
    assert_eq!(ingest.metric("ingest_mqtt_connected").await, 3.0);
    let mut publisher = Publisher::connect(stack.broker.port).await;
    let mut expected = BTreeMap::new();
    let mut i = 0;
    publish_stream(&mut publisher, &devices, &mut expected, &mut i, 300).await;
    publisher.flush().await;
    stack.wait_for_rows(expected.len() as u64, Duration::from_secs(60)).await;
    assert_eq!(stack.rows().await, expected);
    // The broker spread the shared subscription over all three sessions of the replica.
    let metrics = ingest.metrics().await;
    let per_connection: Vec<f64> = (0..3)
        .map(|c| metrics.get(&format!(r#"ingest_connection_messages_received_total{{connection="{c}"}}"#)).copied().unwrap_or(0.0))
        .collect();
    assert!(per_connection.iter().all(|&n| n > 0.0), "a connection received nothing: {per_connection:?}");
    assert_eq!(per_connection.iter().sum::<f64>(), metrics["ingest_messages_received_total"]);
    let log = ingest.log_text();
    let subscribed: Vec<&str> = log.lines().filter(|line| line.contains(r#""message":"subscribed""#)).collect();
    for client_id in ["ingest-conns", "ingest-conns-c1", "ingest-conns-c2"] {
        let quoted = format!(r#""client_id":"{client_id}""#);
        assert!(subscribed.iter().any(|line| line.contains(&quoted)), "{client_id} did not subscribe:\n{log}");
    }
    eventually_metric(&ingest, "ingest_inflight_messages", 0.0).await;
}

#[tokio::test]
async fn two_replicas_share_the_load_and_a_killed_one_loses_nothing() {
    let devices = devices(4);
    let stack = Stack::start(&devices).await;
    // Slow batches (linger) keep messages in flight at the moment of the kill.
    let mut a = stack.ingest("ingest-a").env("INGEST_BATCH_LINGER_MS", 200).start().await;
    let b = stack.ingest("ingest-b").env("INGEST_BATCH_LINGER_MS", 200).start().await;
    let mut publisher = Publisher::connect(stack.broker.port).await;
    let mut expected = BTreeMap::new();
    let mut i = 0;
    publish_stream(&mut publisher, &devices, &mut expected, &mut i, 300).await;
    publisher.flush().await;
    // Both replicas get part of the load through the shared subscription.
    let a_before = a.metric("ingest_messages_received_total").await;
    let b_before = b.metric("ingest_messages_received_total").await;
    assert!(a_before > 0.0 && b_before > 0.0, "a={a_before} b={b_before}");

    publish_stream(&mut publisher, &devices, &mut expected, &mut i, 100).await;
    wait_until_holding(&a).await;
    a.child.kill(); // SIGKILL mid-stream: whatever it held is in its session at the broker
    publish_stream(&mut publisher, &devices, &mut expected, &mut i, 300).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    a.restart().await; // same client id: the broker redelivers to its session
    publish_stream(&mut publisher, &devices, &mut expected, &mut i, 200).await;
    publisher.flush().await;
    stack.wait_for_rows(expected.len() as u64, Duration::from_secs(90)).await;
    assert_eq!(stack.rows().await, expected);
    // The restarted replica picked up its session (redeliveries and queued messages).
    assert!(a.metric("ingest_messages_received_total").await > 0.0);
    assert!(a.log_text().contains(r#""session_present":true"#), "the restarted replica did not resume its session:\n{}", a.log_text());
    eventually_metric(&a, "ingest_inflight_messages", 0.0).await;
    eventually_metric(&b, "ingest_inflight_messages", 0.0).await;
}

#[tokio::test]
async fn sigterm_drains_acknowledges_and_leaves_nothing_in_the_session() {
    let devices = devices(4);
    let stack = Stack::start(&devices).await;
    let mut a = stack.ingest("ingest-term-a").env("INGEST_BATCH_LINGER_MS", 200).start().await;
    let b = stack.ingest("ingest-term-b").env("INGEST_BATCH_LINGER_MS", 200).start().await;
    let mut publisher = Publisher::connect(stack.broker.port).await;
    let mut expected = BTreeMap::new();
    let mut i = 0;
    publish_stream(&mut publisher, &devices, &mut expected, &mut i, 300).await;
    wait_until_holding(&a).await;
    // Scale-down while messages are flowing and some are held uncommitted.
    let stop_a = tokio::task::spawn_blocking({
        let mut child = std::mem::replace(&mut a.child, iot_testkit::ChildGuard(None));
        move || child.terminate(Duration::from_secs(30))
    });
    publish_stream(&mut publisher, &devices, &mut expected, &mut i, 300).await;
    assert!(stop_a.await.unwrap(), "ingest did not exit 0 after SIGTERM:\n{}", a.log_text());
    let log = a.log_text();
    assert!(log.contains("drained"), "no drain in the log:\n{log}");
    // After it left, everything published goes to the remaining replica: had the stopped
    // replica's session kept its subscription or messages, some would never arrive.
    let b_before = b.metric("ingest_messages_received_total").await;
    publish_stream(&mut publisher, &devices, &mut expected, &mut i, 300).await;
    publisher.flush().await;
    stack.wait_for_rows(expected.len() as u64, Duration::from_secs(90)).await;
    assert_eq!(stack.rows().await, expected);
    assert!(b.metric("ingest_messages_received_total").await >= b_before + 1200.0);
    eventually_metric(&b, "ingest_inflight_messages", 0.0).await;
}

/// Waits until the replica holds unacknowledged messages, so that stopping it now is a stop
/// mid-stream and not between bursts.
async fn wait_until_holding(ingest: &Ingest) {
    for _ in 0..200 {
        if ingest.metric("ingest_inflight_messages").await > 0.0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{} never held a message", ingest.client_id);
}
