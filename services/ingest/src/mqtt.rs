//! The MQTT side: one task owns the rumqttc event loop and does nothing but poll it and hand
//! messages on, so keepalive and acks are never held up by storage.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use rumqttc::v5::{
    AsyncClient, Event, EventLoop, MqttOptions,
    mqttbytes::{
        QoS,
        v5::{Packet, Publish},
    },
};
use tokio::sync::mpsc;

use crate::{Config, acks::Acker, metrics::Metrics};

/// A received message on its way through the pipeline.
pub struct Delivery {
    /// The acker of the connection that delivered it (only that connection may ack it).
    pub acker: Arc<Acker>,
    pub generation: u64,
    pub seq: u64,
    pub publish: Publish,
    pub received_at_us: i64,
}

/// State shared between the event loop, the shutdown controller and `/readyz`.
#[derive(Default)]
pub struct MqttShared {
    pub connected: AtomicBool,
    pub subscribed: AtomicBool,
    /// Set on shutdown: reconnects unsubscribe instead of subscribing.
    pub draining: AtomicBool,
    pub unsubscribed: AtomicBool,
    /// Set once DISCONNECT has been requested: the next connection error ends the loop.
    pub disconnecting: AtomicBool,
    /// Milliseconds since the loop started at which the last PUBLISH arrived.
    pub last_publish_ms: AtomicU64,
    /// Notified after every successful SUBACK: the restart guard may hold messages now.
    pub resubscribed: Arc<tokio::sync::Notify>,
}

pub fn options(config: &Config, client_id: String) -> Result<MqttOptions, crate::config::ConfigError> {
    let mut options = MqttOptions::new(client_id, config.mqtt_host.clone(), config.mqtt_port);
    options
        .set_keep_alive(Duration::from_secs(config.keep_alive_secs))
        .set_clean_start(false)
        .set_session_expiry_interval(Some(config.session_expiry_secs))
        .set_receive_maximum(Some(config.receive_maximum))
        .set_manual_acks(true)
        // Room for the acks of a whole window plus (un)subscribe and disconnect, so that
        // `try_ack` rarely finds the channel full (acks.rs retries when it does).
        .set_request_channel_capacity(usize::from(config.receive_maximum) * 2 + 64)
        // Announced to the broker, which then never sends more; without it rumqttc's 10 KiB
        // default would turn a larger message into a disconnect/redelivery loop.
        .set_max_packet_size(Some(config.mqtt_max_packet_bytes));
    if let Some(username) = &config.mqtt_username {
        options.set_credentials(username.clone(), config.mqtt_password.clone().unwrap_or_default());
    }
    if let Some(transport) = config.mqtt_tls().transport()? {
        options.set_transport(transport);
    }
    Ok(options)
}

pub fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

pub struct EventLoopTask {
    /// This connection's client id, for the logs.
    pub client_id: String,
    /// This connection's share of `ingest_messages_received_total`.
    pub received: prometheus::IntCounter,
    pub eventloop: EventLoop,
    pub client: AsyncClient,
    pub acker: Arc<Acker>,
    pub shared: Arc<MqttShared>,
    pub metrics: Metrics,
    pub tx: mpsc::UnboundedSender<Delivery>,
    pub subscription: String,
    pub started: Instant,
    /// Cancelled when the process must stop even while disconnected.
    pub hard_stop: iot_runtime::CancellationToken,
}

impl EventLoopTask {
    /// Runs until a requested DISCONNECT has gone out (or `hard_stop`).
    pub async fn run(mut self) {
        let mut generation = 0_u64;
        let mut seq = 0_u64;
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                    backoff = Duration::from_millis(100);
                    if !self.shared.connected.swap(true, Ordering::SeqCst) {
                        self.metrics.mqtt_connected.inc();
                    }
                    self.metrics.mqtt_connections.inc();
                    tracing::info!(client_id = %self.client_id, session_present = connack.session_present, "connected to the broker");
                    // Subscribing again when the session already has the subscription is
                    // harmless, and covers a broker that lost its sessions.
                    let request = if self.shared.draining.load(Ordering::SeqCst) {
                        self.client.try_unsubscribe(self.subscription.clone())
                    } else {
                        self.client.try_subscribe(self.subscription.clone(), QoS::AtLeastOnce)
                    };
                    if let Err(e) = request {
                        tracing::error!(error = %e, "cannot queue (un)subscribe");
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    self.metrics.messages_received.inc();
                    self.received.inc();
                    self.shared.last_publish_ms.store(self.started.elapsed().as_millis() as u64, Ordering::SeqCst);
                    self.acker.received();
                    let delivery =
                        Delivery { acker: self.acker.clone(), generation, seq, publish, received_at_us: now_us() };
                    seq += 1;
                    if self.tx.send(delivery).is_err() {
                        tracing::error!("pipeline is gone; message left unacknowledged for redelivery");
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(suback))) => {
                    let failed: Vec<_> = suback
                        .return_codes
                        .iter()
                        .filter(|code| !matches!(code, rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(_)))
                        .collect();
                    if failed.is_empty() {
                        self.shared.subscribed.store(true, Ordering::SeqCst);
                        tracing::info!(client_id = %self.client_id, filter = %self.subscription, "subscribed");
                        self.shared.resubscribed.notify_one();
                    } else {
                        self.shared.subscribed.store(false, Ordering::SeqCst);
                        tracing::error!(client_id = %self.client_id, filter = %self.subscription, codes = ?failed, "subscription refused by the broker");
                    }
                }
                Ok(Event::Incoming(Packet::UnsubAck(_))) => {
                    self.shared.subscribed.store(false, Ordering::SeqCst);
                    self.shared.unsubscribed.store(true, Ordering::SeqCst);
                    tracing::info!(filter = %self.subscription, "unsubscribed");
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                    tracing::info!("disconnected from the broker");
                    if self.shared.connected.swap(false, Ordering::SeqCst) {
                        self.metrics.mqtt_connected.dec();
                    }
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    // Order matters: bump the generation first, then clean again so that an
                    // ack queued between rumqttc's own clean and this point is dropped too.
                    generation = self.acker.new_generation();
                    seq = 0;
                    self.eventloop.clean();
                    let was_connected = self.shared.connected.swap(false, Ordering::SeqCst);
                    self.shared.subscribed.store(false, Ordering::SeqCst);
                    self.shared.unsubscribed.store(false, Ordering::SeqCst);
                    if was_connected {
                        self.metrics.mqtt_connected.dec();
                    }
                    if self.shared.disconnecting.load(Ordering::SeqCst) {
                        tracing::info!(error = %e, "connection closed during shutdown");
                        return;
                    }
                    if was_connected {
                        tracing::warn!(client_id = %self.client_id, error = %e, "connection to the broker lost; reconnecting");
                    } else {
                        tracing::warn!(client_id = %self.client_id, error = %e, retry_in = ?backoff, "cannot connect to the broker");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.hard_stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
