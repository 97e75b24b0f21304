use std::{collections::BTreeMap, time::Duration};

use crate::helpers::*;
use iot_testkit::eventually;

#[tokio::test]
async fn every_qos1_message_is_stored_exactly_once() {
    let devices = devices(3);
    let stack = Stack::start(&devices).await;
    let ingest = stack.ingest("ingest-exactly-once").start().await;
    let mut publisher = Publisher::connect(stack.broker.port).await;
    let mut expected = BTreeMap::new();
    let per_device = 700_u64;
    for i in 0..per_device {
        for device in &devices {
            let ts = BASE_MS + i as i64;
            let (body, values) = payload(ts, i);
            publisher.publish(&format!("devices/{device}/telemetry"), body).await;
            expect_rows(&mut expected, device, ts, values);
        }
    }
    publisher.flush().await;
    let messages = per_device * devices.len() as u64;
    stack.wait_for_rows(messages * 2, Duration::from_secs(60)).await;
    assert_eq!(stack.rows().await, expected, "stored readings differ from the published ones");

    let m = ingest.metrics().await;
    assert_eq!(m["ingest_messages_received_total"], messages as f64);
    assert_eq!(m["ingest_readings_written_total"], (messages * 2) as f64);
    assert!(m["ingest_batches_total"] >= 1.0);
    assert_eq!(m["ingest_batch_readings_sum"], (messages * 2) as f64);
    assert_eq!(m["ingest_end_to_end_lag_seconds_count"], messages as f64);
    let rejected: f64 = m.iter().filter(|(k, _)| k.starts_with("ingest_messages_rejected_total")).map(|(_, v)| v).sum();
    assert_eq!(rejected, 0.0);
    // Everything committed is acknowledged: nothing left in flight.
    eventually_metric(&ingest, "ingest_messages_acked_total", messages as f64).await;
    eventually_metric(&ingest, "ingest_inflight_messages", 0.0).await;
}

#[tokio::test]
async fn the_same_message_delivered_twice_is_stored_once() {
    let devices = devices(1);
    let stack = Stack::start(&devices).await;
    let ingest = stack.ingest("ingest-dup").start().await;
    let mut publisher = Publisher::connect(stack.broker.port).await;
    let topic = format!("devices/{}/telemetry", devices[0]);
    let (body, values) = payload(BASE_MS, 7);
    // A device retrying after a lost PUBACK sends the same payload again.
    publisher.publish(&topic, body.clone()).await;
    publisher.publish(&topic, body.clone()).await;
    publisher.flush().await;
    eventually_metric(&ingest, "ingest_messages_acked_total", 2.0).await;
    // And once more after the first copy is surely committed.
    publisher.publish(&topic, body).await;
    publisher.flush().await;
    eventually_metric(&ingest, "ingest_messages_acked_total", 3.0).await;
    let mut expected = BTreeMap::new();
    expect_rows(&mut expected, &devices[0], BASE_MS, values);
    assert_eq!(stack.rows().await, expected);
    let m = ingest.metrics().await;
    assert_eq!(m["ingest_readings_written_total"], 2.0);
    assert_eq!(m["ingest_readings_duplicate_total"], 4.0);
}

#[tokio::test]
async fn storage_down_for_seconds_mid_stream_loses_nothing() {
    let devices = devices(2);
    let mut stack = Stack::start(&devices).await;
    // A small window, so that most of the backlog has to wait in the broker's queue.
    let ingest = stack.ingest("ingest-outage").env("INGEST_RECEIVE_MAXIMUM", 200).start().await;
    let mut publisher = Publisher::connect(stack.broker.port).await;
    let mut expected = BTreeMap::new();
    let mut i = 0_u64;
    let mut publish_some = async |publisher: &mut Publisher, expected: &mut BTreeMap<_, _>, n: u64| {
        for _ in 0..n {
            for device in &devices {
                let ts = BASE_MS + i as i64;
                let (body, values) = payload(ts, i);
                publisher.publish(&format!("devices/{device}/telemetry"), body).await;
                expect_rows(expected, device, ts, values);
            }
            i += 1;
            if i.is_multiple_of(50) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    publish_some(&mut publisher, &mut expected, 500).await;
    stack.storage.stop();
    // Still publishing while storage is down: these wait in ingest (unacknowledged) and in
    // the broker's queue for ingest's session.
    publish_some(&mut publisher, &mut expected, 1500).await;
    publisher.flush().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(ingest.metric("ingest_storage_errors_total").await >= 1.0, "the outage was not noticed");
    let held = ingest.metric("ingest_inflight_messages").await;
    let received = ingest.metric("ingest_messages_received_total").await;
    assert!(held >= 200.0, "the receive window is not full: {held} held");
    // Backpressure: with the window full the broker sends nothing more, however much is
    // published; the backlog waits in the broker's queue for this session. (Mosquitto 2.0
    // can overshoot the receive maximum during a burst, so the bound is checked as "stops
    // growing" rather than as an exact number.)
    publish_some(&mut publisher, &mut expected, 1000).await;
    publisher.flush().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(ingest.metric("ingest_messages_received_total").await, received, "received more while the window was full");
    assert_eq!(ingest.metric("ingest_inflight_messages").await, held);
    assert!(held < 2000.0, "{held} held: the window did not bound what ingest took\n{}", ingest.log_text());
    stack.storage.restart().await;
    publish_some(&mut publisher, &mut expected, 500).await;
    publisher.flush().await;
    stack.wait_for_rows(expected.len() as u64, Duration::from_secs(90)).await;
    assert_eq!(stack.rows().await, expected);
    eventually_metric(&ingest, "ingest_inflight_messages", 0.0).await;
}

pub async fn eventually_metric(ingest: &Ingest, name: &str, want: f64) {
    let mut last = f64::NAN;
    for _ in 0..300 {
        last = ingest.metric(name).await;
        if last == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{name} is {last}, expected {want}\n{}", ingest.log_text());
}

#[tokio::test]
async fn broker_restart_mid_stream_loses_nothing() {
    let devices = devices(2);
    let mut stack = Stack::start(&devices).await;
    let ingest = stack.ingest("ingest-broker-restart").env("INGEST_BATCH_LINGER_MS", 300).start().await;
    let mut publisher = Publisher::connect(stack.broker.port).await;
    let mut expected = BTreeMap::new();
    let messages = |from: u64, to: u64, expected: &mut BTreeMap<_, _>| {
        let mut batch = Vec::new();
        for i in from..to {
            for device in &devices {
                let ts = BASE_MS + i as i64;
                let (body, values) = payload(ts, i);
                expect_rows(expected, device, ts, values);
                batch.push((format!("devices/{device}/telemetry"), body));
            }
        }
        batch
    };
    for (topic, body) in messages(0, 1000, &mut expected) {
        publisher.publish(&topic, body).await;
    }
    // The broker owns every message before it goes down (a publisher's own unacknowledged
    // publishes are not what this test is about).
    publisher.flush().await;
    // Restart (SIGTERM: Mosquitto writes its persistence file) while ingest holds messages.
    stack.broker.restart().await;
    // Mosquitto 2.0.x persists a session and its queued/in-flight messages but not its
    // *shared* subscriptions (only plain ones are written to mosquitto.db): until ingest's
    // reconnect re-sends `$share/ingest/...`, nothing matches and the broker drops (after
    // acknowledging) whatever devices publish. That window is a deployment limitation
    // (see README, "Broker restart"), not what this test is about: it checks that what the
    // broker held across the restart reaches the table. So publish again only once ingest
    // is connected and subscribed again, as a device reconnecting would, with a new
    // connection (the old client's publishes written into the dying socket are not the
    // broker's yet).
    let ops = ingest.ops_addr;
    eventually("ingest reconnected and subscribed again", Duration::from_secs(30), || async move {
        let text = reqwest::get(format!("http://{ops}/metrics")).await.ok()?.text().await.ok()?;
        let reconnected = parse_metrics(&text).get("ingest_mqtt_connections_total").copied().unwrap_or(0.0) >= 2.0;
        let ready = reqwest::get(format!("http://{ops}/readyz")).await.ok()?.status().is_success();
        (reconnected && ready).then_some(())
    })
    .await;
    drop(publisher);
    let mut publisher = Publisher::connect(stack.broker.port).await;
    for (topic, body) in messages(1000, 1500, &mut expected) {
        publisher.publish(&topic, body).await;
    }
    publisher.flush().await;
    stack.wait_for_rows(expected.len() as u64, Duration::from_secs(90)).await;
    assert_eq!(stack.rows().await, expected);
    assert!(ingest.metric("ingest_mqtt_connections_total").await >= 2.0, "ingest never reconnected");
    let log = ingest.log_text();
    assert!(log.contains(r#""session_present":true"#), "the session did not survive the restart:\n{log}");
    eventually_metric(&ingest, "ingest_inflight_messages", 0.0).await;
}
