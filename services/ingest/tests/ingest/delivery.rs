use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, atomic::AtomicUsize},
    time::Duration,
};

use crate::helpers::*;
use iot_testkit::mqtt::{DevicePublisher, DeviceSpec};

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
    assert_eq!(
        ingest.metric("ingest_messages_received_total").await,
        received,
        "received more while the window was full"
    );
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

/// Devices publishing continuously (one publisher per device, tracking PUBACKs).
fn start_devices(stack: &Stack, devices: &[String], rate: f64) -> (Vec<DevicePublisher>, Arc<AtomicUsize>) {
    let phase = Arc::new(AtomicUsize::new(0));
    let publishers = devices
        .iter()
        .map(|device| {
            DevicePublisher::spawn(
                DeviceSpec {
                    host: "127.0.0.1".into(),
                    port: stack.broker.port,
                    device: device.clone(),
                    credentials: None,
                    client_id: None,
                    rate_per_sec: rate,
                    first_ts_ms: BASE_MS,
                    max_inflight: 100,
                },
                phase.clone(),
            )
        })
        .collect();
    (publishers, phase)
}

/// Stops the devices (each gets its unacknowledged messages acknowledged first) and checks
/// that every message the broker acknowledged is in the table with its readings, and that
/// the table holds nothing else.
async fn finish_and_check(stack: &Stack, publishers: Vec<DevicePublisher>) -> (usize, u64) {
    let mut acked = BTreeSet::new();
    let mut published = 0;
    let mut republished = 0;
    for publisher in publishers {
        let ledger = publisher.finish(Duration::from_secs(60)).await;
        published += ledger.published.len();
        republished += ledger.republished;
        acked.extend(ledger.acked);
    }
    assert_eq!(acked.len(), published, "the broker did not acknowledge every message in time");
    let mut expected = BTreeMap::new();
    for key in &acked {
        for (metric, value) in iot_testkit::mqtt::readings(key.ts_ms) {
            expected.insert((key.device.clone(), metric.to_string(), key.ts_ms * 1000), value);
        }
    }
    stack.wait_for_rows(expected.len() as u64, Duration::from_secs(90)).await;
    assert_eq!(stack.rows().await, expected, "stored readings differ from the acknowledged messages");
    (published, republished)
}

#[tokio::test]
async fn broker_restart_under_load_loses_nothing_the_broker_acknowledged() {
    let devices = devices(2);
    let mut stack = Stack::start_guarded(&devices).await;
    let ingest = stack.ingest("ingest-broker-restart").env("INGEST_BATCH_LINGER_MS", 100).start().await;
    let (publishers, _) = start_devices(&stack, &devices, 200.0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let connects_before = ingest.metric("ingest_mqtt_connections_total").await;
    assert!(connects_before >= 1.0, "ingest never connected");
    // SIGTERM: Mosquitto writes its state (sessions, queued messages, plain subscriptions; not
    // the shared one) while ingest holds unacknowledged messages. Devices reconnect and go on
    // publishing as soon as the broker is back, before ingest has subscribed again: what they
    // publish in that window reaches ingest only through the restart guard session.
    stack.broker.restart().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (published, _) = finish_and_check(&stack, publishers).await;
    assert!(published > 1000, "only {published} messages published");
    // Every connection of the replica came back.
    assert!(
        ingest.metric("ingest_mqtt_connections_total").await >= 2.0 * connects_before,
        "ingest did not reconnect all its {connects_before} connections"
    );
    let log = ingest.log_text();
    assert!(log.contains(r#""session_present":true"#), "the session did not survive the restart:\n{log}");
    // Drained twice: the guard is armed at every broker start, the first one included.
    eventually_metric(&ingest, r#"ingest_restart_guard_checks_total{outcome="drained"}"#, 2.0).await;
    eventually_metric(&ingest, "ingest_inflight_messages", 0.0).await;
}

#[tokio::test]
async fn broker_restart_while_every_replica_is_down_loses_nothing() {
    let devices = devices(2);
    let mut stack = Stack::start_guarded(&devices).await;
    let mut a = stack.ingest("ingest-guard-a").start().await;
    let mut b = stack.ingest("ingest-guard-b").start().await;
    a.child.kill();
    b.child.kill();
    // Nothing subscribes to $share/ingest/... after this restart until a replica is back;
    // without the guard every message below would be acknowledged and dropped.
    stack.broker.restart().await;
    let (publishers, _) = start_devices(&stack, &devices, 300.0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Both replicas come back at once and race for the guard session.
    tokio::join!(a.restart(), b.restart());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (published, _) = finish_and_check(&stack, publishers).await;
    assert!(published > 800, "only {published} messages published");
    let drained = a.metric(r#"ingest_restart_guard_checks_total{outcome="drained"}"#).await
        + b.metric(r#"ingest_restart_guard_checks_total{outcome="drained"}"#).await;
    assert!(drained >= 1.0, "no replica drained the guard session\n{}\n{}", a.log_text(), b.log_text());
    let guard_messages =
        a.metric("ingest_restart_guard_messages_total").await + b.metric("ingest_restart_guard_messages_total").await;
    assert!(guard_messages >= 500.0, "the guard delivered only {guard_messages} messages");
}

#[tokio::test]
async fn the_last_replica_stopping_on_sigterm_loses_nothing_published_until_one_is_back() {
    let devices = devices(2);
    // No arming at broker start here: only the leaving replica's own arming is tested.
    let stack = Stack::start(&devices).await;
    let mut ingest = stack.ingest("ingest-scale-to-zero").start().await;
    let (publishers, _) = start_devices(&stack, &devices, 200.0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Scale to zero: the replica unsubscribes its shared subscription and leaves; without the
    // guard it armed first, nothing would match devices/+/telemetry for the next 2 s.
    assert!(ingest.child.terminate(Duration::from_secs(30)), "ingest did not stop cleanly:\n{}", ingest.log_text());
    assert!(ingest.log_text().contains("restart guard armed"), "{}", ingest.log_text());
    tokio::time::sleep(Duration::from_secs(2)).await;
    ingest.restart().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (published, _) = finish_and_check(&stack, publishers).await;
    assert!(published > 1000, "only {published} messages published");
    eventually_metric(&ingest, r#"ingest_restart_guard_checks_total{outcome="drained"}"#, 1.0).await;
}
