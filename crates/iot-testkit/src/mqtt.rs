//! A device that publishes telemetry at QoS 1 and records which messages the broker
//! acknowledged (PUBACK), for tests that must show that nothing acknowledged is lost.
//!
//! Like a real device it keeps every unacknowledged message and publishes it again on its
//! next connection (the same payload: storage stores it once). Each connection is a new MQTT
//! client (clean session), so a packet id only ever maps to a message sent on that connection.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

/// One message: device and timestamp (ms) identify it; `phase` is the test phase it was
/// first published in.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageKey {
    pub device: String,
    pub ts_ms: i64,
}

/// What a device published and what the broker acknowledged.
#[derive(Default, Debug, Clone)]
pub struct Ledger {
    /// Every distinct message, in order, with the phase it was first published in.
    pub published: Vec<(MessageKey, usize)>,
    pub acked: BTreeSet<MessageKey>,
    /// Messages published again on a new connection (their PUBACK had not come).
    pub republished: u64,
    pub connections: u64,
}

/// The readings a message carries: `(metric, value)`; values derive from the timestamp so
/// that a swapped or altered value shows up in a comparison.
pub fn readings(ts_ms: i64) -> [(&'static str, f64); 2] {
    let x = (ts_ms % 100_000) as f64;
    [("temperature", x / 4.0), ("humidity", -x / 8.0)]
}

fn payload(ts_ms: i64) -> String {
    let [(m1, v1), (m2, v2)] = readings(ts_ms);
    format!(r#"{{"ts":{ts_ms},"metrics":{{"{m1}":{v1},"{m2}":{v2}}}}}"#)
}

#[derive(Clone, Debug)]
pub struct DeviceSpec {
    pub host: String,
    pub port: u16,
    pub device: String,
    /// Username and password when the broker requires them.
    pub credentials: Option<(String, String)>,
    /// The client id the broker requires (a provisioned device login is bound to one);
    /// `None`: a new unique id per connection.
    pub client_id: Option<String>,
    pub rate_per_sec: f64,
    /// Timestamp (ms) of the first message; each next message is 1 ms later.
    pub first_ts_ms: i64,
    /// Most messages published and not yet acknowledged.
    pub max_inflight: usize,
}

pub struct DevicePublisher {
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
    task: tokio::task::JoinHandle<()>,
}

enum Ev {
    ConnAck,
    Sent(u16),
    Acked(u16),
    Down,
}

impl DevicePublisher {
    /// Starts publishing; `phase` is read for every new message.
    pub fn spawn(spec: DeviceSpec, phase: Arc<AtomicUsize>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let task = tokio::spawn(run(spec, phase, stop.clone(), ledger.clone()));
        Self { stop, ledger, task }
    }

    /// A copy of the ledger so far.
    pub fn ledger(&self) -> Ledger {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops publishing new messages, keeps publishing the unacknowledged ones until the
    /// broker has acknowledged them all or `timeout` passed, and returns the ledger.
    pub async fn finish(self, timeout: Duration) -> Ledger {
        self.stop.store(true, Ordering::SeqCst);
        let mut task = self.task;
        if tokio::time::timeout(timeout, &mut task).await.is_err() {
            task.abort();
        }
        self.ledger.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

async fn run(spec: DeviceSpec, phase: Arc<AtomicUsize>, stop: Arc<AtomicBool>, ledger: Arc<Mutex<Ledger>>) {
    let topic = format!("devices/{}/telemetry", spec.device);
    let period = Duration::from_secs_f64(1.0 / spec.rate_per_sec.max(0.001));
    let mut next_ts = spec.first_ts_ms;
    let mut retry: VecDeque<i64> = VecDeque::new();
    let mut connection = 0_u64;
    loop {
        connection += 1;
        let client_id = spec
            .client_id
            .clone()
            .unwrap_or_else(|| format!("{}-pub-{connection}-{}", spec.device, crate::unique_suffix()));
        let mut options = MqttOptions::new(client_id, &spec.host, spec.port);
        options.set_keep_alive(Duration::from_secs(5)).set_inflight(spec.max_inflight.clamp(1, 65_535) as u16);
        if let Some((user, password)) = &spec.credentials {
            options.set_credentials(user.clone(), password.clone());
        }
        let (client, mut eventloop) = AsyncClient::new(options, spec.max_inflight + 16);
        let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
        let poller = tokio::spawn(async move {
            loop {
                let ev = match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => Ev::ConnAck,
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Ev::Sent(pkid),
                    Ok(Event::Incoming(Packet::PubAck(ack))) => Ev::Acked(ack.pkid),
                    Ok(_) => continue,
                    Err(_) => Ev::Down,
                };
                let down = matches!(ev, Ev::Down);
                if tx.send(ev).is_err() || down {
                    return;
                }
            }
        });
        let mut connected = false;
        let mut requested: VecDeque<i64> = VecDeque::new();
        let mut sent: HashMap<u16, i64> = HashMap::new();
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(Ev::ConnAck) => {
                        connected = true;
                        ledger.lock().unwrap_or_else(|p| p.into_inner()).connections += 1;
                    }
                    Some(Ev::Sent(pkid)) => {
                        if let Some(ts) = requested.pop_front() {
                            sent.insert(pkid, ts);
                        }
                    }
                    Some(Ev::Acked(pkid)) => {
                        if let Some(ts) = sent.remove(&pkid) {
                            let key = MessageKey { device: spec.device.clone(), ts_ms: ts };
                            ledger.lock().unwrap_or_else(|p| p.into_inner()).acked.insert(key);
                        }
                    }
                    Some(Ev::Down) | None => break,
                },
                _ = tick.tick() => {
                    if stop.load(Ordering::SeqCst) && retry.is_empty() && requested.is_empty() && sent.is_empty() {
                        poller.abort();
                        let _ = client.try_disconnect();
                        return;
                    }
                    if !connected {
                        continue;
                    }
                    // Unacknowledged messages of earlier connections first, a burst at a time.
                    let mut budget = if retry.is_empty() { 1 } else { 50 };
                    while budget > 0 && requested.len() + sent.len() < spec.max_inflight {
                        budget -= 1;
                        let ts = if let Some(ts) = retry.pop_front() {
                            ledger.lock().unwrap_or_else(|p| p.into_inner()).republished += 1;
                            ts
                        } else if !stop.load(Ordering::SeqCst) {
                            let ts = next_ts;
                            next_ts += 1;
                            let key = MessageKey { device: spec.device.clone(), ts_ms: ts };
                            ledger.lock().unwrap_or_else(|p| p.into_inner()).published.push((key, phase.load(Ordering::SeqCst)));
                            ts
                        } else {
                            break;
                        };
                        if client.try_publish(topic.as_str(), QoS::AtLeastOnce, false, payload(ts)).is_err() {
                            retry.push_front(ts);
                            break;
                        }
                        requested.push_back(ts);
                    }
                }
            }
        }
        // The connection is gone: whatever it did not get acknowledged is published again.
        poller.abort();
        let mut unacked: Vec<i64> = sent.into_values().chain(requested).collect();
        unacked.sort_unstable();
        retry.extend(unacked);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
