//! Restart guard: drains what the broker queued for the guard session while ingest's shared
//! subscription was missing.
//!
//! Mosquitto 2.0.x persists sessions and plain subscriptions across a restart but not shared
//! ones, so after a restart nothing matches `$share/ingest/devices/+/telemetry` until a replica
//! subscribes again, and the broker acknowledges and drops what devices publish meanwhile.
//! `deploy/mosquitto/restart-guard.sh` runs before every broker start and gives the session
//! `INGEST_RESTART_GUARD_CLIENT_ID` a plain QoS 1 subscription to `devices/+/telemetry`, so
//! that those messages are queued for it instead.
//!
//! After each successful (re)subscription of its own, a replica connects as the guard with
//! clean start off:
//! - no session: nothing was queued (the broker did not restart, or someone drained it);
//!   disconnect.
//! - a session: UNSUBSCRIBE first (its own shared subscription is already back, so nothing
//!   falls between the two), receive what is queued through a pipeline of its own (commit,
//!   then PUBACK), and disconnect once the UNSUBACK has come, every message is acknowledged
//!   and none has arrived for `GUARD_QUIET`. The broker sends queued messages as long as the
//!   receive window has room, so an idle window that stays quiet means an empty queue.
//!   Messages also delivered through the shared subscription are stored twice and written
//!   once (readings are keyed by device, metric and ts).
//!
//! Replicas race for the id: a newer connection takes the session over, the older one sees
//! "session taken over" and retries later; unacknowledged messages of the older connection are
//! redelivered to the newer one, so a takeover loses nothing. The session keeps ingest's
//! session expiry throughout, so a replica dying mid-drain leaves the backlog for the next
//! attempt (each replica also re-checks every `INGEST_RESTART_GUARD_RECHECK_SECS`). The session
//! itself is left behind empty (no subscription, no messages): rumqttc cannot send the
//! DISCONNECT session-expiry property that would end it, and ending it with a clean-start
//! connection could discard a guard re-armed by a broker restart in between.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use iot_runtime::CancellationToken;
use rand::Rng;
use rumqttc::v5::{
    ConnectionError, Event, StateError,
    mqttbytes::v5::{DisconnectReasonCode, Packet},
};
use tokio::sync::{Notify, mpsc};

use crate::{
    Config,
    acks::Acker,
    metrics::Metrics,
    mqtt::{self, Delivery, now_us},
    pipeline::{Pipeline, StorageClient},
};

/// How long the guard session must stay quiet (with every message acknowledged) after the
/// UNSUBACK before its queue counts as drained.
const GUARD_QUIET: Duration = Duration::from_millis(500);

pub struct Guard {
    pub config: Config,
    pub client_id: String,
    pub storage: StorageClient,
    pub metrics: Metrics,
    /// Notified after each successful SUBACK of the replica's own subscription.
    pub trigger: Arc<Notify>,
    pub stop: CancellationToken,
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    NoSession,
    Drained { messages: u64 },
    TakenOver,
    Failed(String),
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Outcome::NoSession => "no_session",
            Outcome::Drained { .. } => "drained",
            Outcome::TakenOver => "taken_over",
            Outcome::Failed(_) => "failed",
        }
    }
}

/// Events the guard's event-loop task hands to the controller.
enum Control {
    ConnAck { session_present: bool },
    UnsubAck,
    Disconnected,
    Ended(Outcome),
}

/// Aborts the task when dropped (the controller may be cancelled by shutdown at any await).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Guard {
    pub async fn run(self) {
        let recheck = (self.config.restart_guard_recheck_secs > 0)
            .then(|| Duration::from_secs(self.config.restart_guard_recheck_secs));
        let mut retry = false;
        loop {
            if !retry {
                tokio::select! {
                    _ = self.trigger.notified() => {}
                    _ = sleep_opt(recheck) => {}
                    _ = self.stop.cancelled() => return,
                }
            }
            let outcome = tokio::select! {
                outcome = self.drain_once() => outcome,
                // Dropping the connection keeps the session (and what is unacknowledged in it).
                _ = self.stop.cancelled() => return,
            };
            self.metrics.restart_guard_checks.with_label_values(&[outcome.label()]).inc();
            retry = match &outcome {
                Outcome::NoSession => false,
                Outcome::Drained { messages } => {
                    tracing::info!(guard = %self.client_id, messages, "restart guard session drained");
                    false
                }
                Outcome::TakenOver => {
                    tracing::info!(guard = %self.client_id, "restart guard session taken over by another replica; checking again later");
                    true
                }
                Outcome::Failed(error) => {
                    tracing::warn!(guard = %self.client_id, error = %error, "restart guard check failed; retrying");
                    true
                }
            };
            if retry {
                // Spread the retries of racing replicas so that one of them finishes.
                let wait = Duration::from_millis(rand::rng().random_range(1_000..5_000));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = self.stop.cancelled() => return,
                }
            }
        }
    }

    async fn drain_once(&self) -> Outcome {
        // Same login and TLS as the replica's own connection (checked at start-up already).
        let options = match mqtt::options(&self.config, self.client_id.clone()) {
            Ok(options) => options,
            Err(error) => return Outcome::Failed(error.to_string()),
        };
        let (client, mut eventloop) =
            rumqttc::v5::AsyncClient::new(options, usize::from(self.config.receive_maximum) * 2 + 64);
        let acker = Arc::new(Acker::new(client.clone(), self.metrics.clone()));
        let (tx, rx) = mpsc::unbounded_channel();
        let pipeline = Pipeline {
            storage: self.storage.clone(),
            subscription: self.config.restart_guard_topic.clone(),
            metrics: self.metrics.clone(),
            limits: self.config.limits(),
            batch_size: self.config.batch_size,
            linger: self.config.batch_linger(),
            max_inflight_batches: self.config.max_inflight_batches,
            storage_timeout: Duration::from_millis(self.config.storage_timeout_ms),
        };
        let _pipeline = AbortOnDrop(tokio::spawn(pipeline.run(rx)));
        let (control_tx, mut control) = mpsc::unbounded_channel();
        let metrics = self.metrics.clone();
        let loop_acker = acker.clone();
        // One task polls the event loop and nothing else (as for the main connection), so
        // that keepalive and acks never wait for the controller.
        let _eventloop = AbortOnDrop(tokio::spawn(async move {
            let mut seq = 0_u64;
            loop {
                let control = match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        Control::ConnAck { session_present: ack.session_present }
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        metrics.messages_received.inc();
                        metrics.restart_guard_messages.inc();
                        loop_acker.received();
                        let delivery =
                            Delivery { acker: loop_acker.clone(), generation: 0, seq, publish, received_at_us: now_us() };
                        seq += 1;
                        if tx.send(delivery).is_err() {
                            return;
                        }
                        continue;
                    }
                    Ok(Event::Incoming(Packet::UnsubAck(_))) => Control::UnsubAck,
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => Control::Disconnected,
                    Ok(_) => continue,
                    Err(ConnectionError::MqttState(StateError::ServerDisconnect {
                        reason_code: DisconnectReasonCode::SessionTakenOver,
                        ..
                    })) => Control::Ended(Outcome::TakenOver),
                    Err(e) => Control::Ended(Outcome::Failed(e.to_string())),
                };
                let last = matches!(control, Control::Disconnected | Control::Ended(_));
                if control_tx.send(control).is_err() || last {
                    return;
                }
            }
        }));

        let mut session_present = None;
        let mut unsubscribed = false;
        let mut disconnecting = false;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let mut quiet_since = (Instant::now(), 0_u64);
        loop {
            tokio::select! {
                event = control.recv() => match event {
                    Some(Control::ConnAck { session_present: present }) => {
                        session_present = Some(present);
                        let request = if present {
                            tracing::info!(guard = %self.client_id, "restart guard session present: draining it");
                            client.try_unsubscribe(self.config.restart_guard_topic.clone())
                        } else {
                            disconnecting = true;
                            client.try_disconnect()
                        };
                        if let Err(e) = request {
                            return Outcome::Failed(format!("cannot queue a request: {e}"));
                        }
                    }
                    Some(Control::UnsubAck) => unsubscribed = true,
                    Some(Control::Disconnected) => {
                        return match session_present {
                            Some(true) => Outcome::Drained { messages: quiet_since.1 },
                            _ => Outcome::NoSession,
                        };
                    }
                    Some(Control::Ended(outcome)) => return outcome,
                    None => return Outcome::Failed("event loop ended".into()),
                },
                _ = tick.tick() => {
                    acker.flush();
                    let received = acker.received_total();
                    if received != quiet_since.1 {
                        quiet_since = (Instant::now(), received);
                    }
                    if unsubscribed && !disconnecting && acker.idle() && quiet_since.0.elapsed() >= GUARD_QUIET {
                        disconnecting = true;
                        if let Err(e) = client.try_disconnect() {
                            return Outcome::Failed(format!("cannot queue DISCONNECT: {e}"));
                        }
                    }
                }
            }
        }
    }
}

async fn sleep_opt(duration: Option<Duration>) {
    match duration {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Arms the guard from ingest's side: a plain QoS 1 subscription for the guard session, made
/// by a replica that is about to UNSUBSCRIBE its shared subscription on SIGTERM. If it was the
/// last replica (scale to zero, a one-replica rolling update), nothing else would match
/// `devices/+/telemetry` until a replica is back, and the broker would acknowledge and drop
/// what devices publish meanwhile; the guard session queues it instead. The next replica to
/// subscribe (or the periodic re-check of the others) drains it; when other replicas are still
/// running, the guard holds duplicates of what they store until then (written once).
/// Needs the broker to allow the ingest account a plain subscription to the topic.
pub async fn arm(config: &Config, timeout: Duration) -> Result<(), String> {
    let options = mqtt::options(config, config.restart_guard_client_id.clone()).map_err(|e| e.to_string())?;
    let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 16);
    let result = tokio::time::timeout(timeout, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    client
                        .try_subscribe(config.restart_guard_topic.clone(), rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
                        .map_err(|e| e.to_string())?;
                }
                Ok(Event::Incoming(Packet::SubAck(suback))) => {
                    let refused = suback
                        .return_codes
                        .iter()
                        .any(|c| !matches!(c, rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(_)));
                    if refused {
                        return Err(format!("subscription refused: {:?}", suback.return_codes));
                    }
                    client.try_disconnect().map_err(|e| e.to_string())?;
                }
                // Queued messages of a guard session that was already armed: leave them unacked
                // (they stay in the session for whoever drains it).
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await;
    result.unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}
