//! Live readings: ONE MQTT subscription per api process, fanned out in-process to every
//! SSE client. Each client filters by device; no client ever polls the database.

use std::{sync::Arc, time::Duration};

use iot_runtime::CancellationToken;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde::Serialize;
use tokio::sync::broadcast;

use crate::{config::Config, state::Metrics};

/// The filter the api subscribes to. Deliberately NOT a `$share/...` subscription: every
/// api replica needs every message, since its SSE clients may watch any device.
pub const TELEMETRY_FILTER: &str = "devices/+/telemetry";

#[derive(Debug, Clone, Serialize)]
pub struct LiveReading {
    #[serde(skip)]
    pub device_id: String,
    pub metric: String,
    /// RFC 3339, as in the JSON readings API.
    pub ts: String,
    pub ts_us: i64,
    pub value: f64,
}

#[derive(Clone)]
pub struct LiveHub {
    sender: broadcast::Sender<Arc<LiveReading>>,
}

impl LiveHub {
    pub fn new() -> Self {
        // A slow client that falls this far behind skips readings (it is told via `lagged`),
        // rather than holding memory for everyone.
        let (sender, _) = broadcast::channel(4096);
        Self { sender }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LiveReading>> {
        self.sender.subscribe()
    }

    pub fn publish(&self, reading: LiveReading) {
        // No receiver is not an error: nobody is watching right now.
        let _ = self.sender.send(Arc::new(reading));
    }
}

impl Default for LiveHub {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs the subscriber until `shutdown`; reconnects forever with a short back-off.
pub fn spawn_subscriber(
    config: &Config,
    hub: LiveHub,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let client_id = format!("iot-api-live-{}", crate::random_token(6));
    let mut options = MqttOptions::new(client_id, config.mqtt_host.clone(), config.mqtt_port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_session(true);
    options.set_max_packet_size(256 * 1024, 64 * 1024);
    if let Some(username) = &config.mqtt_username {
        options.set_credentials(username.clone(), config.mqtt_password.clone().unwrap_or_default());
    }
    config.broker.tls().apply(&mut options)?;
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    Ok(tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => break,
                event = eventloop.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    // Clean session: the subscription must be renewed after every reconnect.
                    // try_subscribe: awaiting here would block the loop that drains the queue.
                    if let Err(error) = client.try_subscribe(TELEMETRY_FILTER, QoS::AtMostOnce) {
                        tracing::warn!(%error, "live stream: subscribe failed");
                    } else {
                        tracing::info!(filter = TELEMETRY_FILTER, "live stream: subscribed");
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let received_at_us = chrono::Utc::now().timestamp_micros();
                    match iot_payload::parse(&publish.topic, &publish.payload, received_at_us) {
                        Ok(parsed) => {
                            metrics.live_messages.with_label_values(&["ok"]).inc();
                            for reading in parsed.readings {
                                metrics.live_readings.inc();
                                hub.publish(LiveReading {
                                    device_id: parsed.device_id.clone(),
                                    ts: crate::time::format_us(reading.ts_us),
                                    ts_us: reading.ts_us,
                                    metric: reading.metric,
                                    value: reading.value,
                                });
                            }
                        }
                        Err(rejection) => {
                            // Ingest logs and counts rejections authoritatively; here it is only
                            // a reading nobody will see live.
                            metrics.live_messages.with_label_values(&["rejected"]).inc();
                            tracing::debug!(topic = %publish.topic, reason = %rejection, "live stream: message ignored");
                        }
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    metrics.live_messages.with_label_values(&["connection_error"]).inc();
                    tracing::warn!(%error, "live stream: MQTT connection error; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
        let _ = client.try_disconnect();
    }))
}
