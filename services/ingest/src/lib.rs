//! The ingest service: MQTT (shared subscription, persistent session, manual acks) ->
//! parse -> batch -> storage `WriteReadings` -> PUBACK, acknowledged only after commit.
//!
//! Flow control: the MQTT 5 Receive Maximum (`--receive-maximum`) caps how many
//! unacknowledged messages the broker sends this replica. When storage is slow or down,
//! batches retry, nothing is acknowledged, the window fills, and the broker queues the
//! rest for the session (sized in the broker configuration) instead of this process
//! growing. The event loop keeps being polled all along, so keepalive never lapses.

pub mod acks;
pub mod config;
pub mod guard;
pub mod metrics;
pub mod mqtt;
pub mod pipeline;

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use iot_proto::storage::v1::storage_service_client::StorageServiceClient;
use iot_runtime::{CancellationToken, OpsServer, ReadinessCheck};
use tonic::transport::{Channel, Endpoint};

pub use config::Config;

use crate::{
    acks::Acker,
    metrics::Metrics,
    mqtt::{EventLoopTask, MqttShared},
    pipeline::Pipeline,
};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("invalid storage URL {url:?}: {source}")]
    StorageUrl { url: String, source: tonic::transport::Error },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot bind the ops endpoint: {0}")]
    Ops(#[from] std::io::Error),
}

/// A started ingest replica; `ops_addr` is the bound ops address (port 0 works).
pub struct Application {
    pub ops_addr: SocketAddr,
    pub client_id: String,
    config: Config,
    shutdown: CancellationToken,
    ops: OpsServer,
    connections: Vec<Connection>,
    pipeline_task: tokio::task::JoinHandle<()>,
    hard_stop: CancellationToken,
    started: Instant,
}

/// One MQTT connection of the replica, in the shared subscription, with its own session and
/// acks; all of them feed the one pipeline.
struct Connection {
    client_id: String,
    shared: Arc<MqttShared>,
    acker: Arc<Acker>,
    client: rumqttc::v5::AsyncClient,
    eventloop_task: tokio::task::JoinHandle<()>,
}

impl Application {
    /// Starts the ops endpoint, the MQTT event loop and the pipeline. `shutdown` starts the
    /// drain (see [`Application::run_until_stopped`]).
    pub async fn build(config: Config, shutdown: CancellationToken) -> Result<Self, StartError> {
        config.validate()?;
        let client_id = config.resolved_client_id()?;
        let registry = prometheus::Registry::new();
        let metrics = Metrics::new(&registry)?;

        let endpoint = Endpoint::from_shared(config.storage_url.clone())
            .map_err(|source| StartError::StorageUrl { url: config.storage_url.clone(), source })?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true);
        let channel = endpoint.connect_lazy();
        // Client spans for WriteReadings, whose context storage continues (readiness pings use
        // the bare channel: probes are not traced).
        let traced = iot_runtime::telemetry::grpc::traced_channel(channel.clone(), endpoint.uri());
        let storage = StorageServiceClient::new(traced).max_decoding_message_size(16 * 1024 * 1024);

        let client_ids = config.connection_client_ids()?;
        // The restart guard is drained after connection 0 (re)subscribes: the connections
        // come back together after a broker restart, and one drain per event is enough (the
        // periodic re-check covers the rest).
        let shared: Vec<Arc<MqttShared>> = client_ids.iter().map(|_| Arc::new(MqttShared::default())).collect();
        let resubscribed = shared.first().map(|s| s.resubscribed.clone()).unwrap_or_default();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let hard_stop = CancellationToken::new();
        let started = Instant::now();

        let readiness = readiness(shared.clone(), channel);
        let ops = OpsServer::start(config.metrics_addr, registry, readiness, shutdown.clone()).await?;

        if !config.restart_guard_client_id.is_empty() {
            tokio::spawn(
                guard::Guard {
                    config: config.clone(),
                    client_id: config.restart_guard_client_id.clone(),
                    storage: storage.clone(),
                    metrics: metrics.clone(),
                    trigger: resubscribed,
                    stop: shutdown.clone(),
                }
                .run(),
            );
        }
        let pipeline = Pipeline {
            storage,
            subscription: config.subscription.clone(),
            metrics: metrics.clone(),
            limits: config.limits(),
            batch_size: config.batch_size,
            linger: config.batch_linger(),
            max_inflight_batches: config.max_inflight_batches,
            storage_timeout: Duration::from_millis(config.storage_timeout_ms),
        };
        let pipeline_task = tokio::spawn(pipeline.run(rx));
        let mut connections = Vec::with_capacity(client_ids.len());
        for (index, (client_id, shared)) in client_ids.into_iter().zip(shared).enumerate() {
            let (client, eventloop) = rumqttc::v5::AsyncClient::new(
                mqtt::options(&config, client_id.clone())?,
                usize::from(config.receive_maximum) * 2 + 64,
            );
            let acker = Arc::new(Acker::new(client.clone(), metrics.clone()));
            let eventloop_task = tokio::spawn(
                EventLoopTask {
                    client_id: client_id.clone(),
                    received: metrics.connection_messages_received.with_label_values(&[&index.to_string()]),
                    eventloop,
                    client: client.clone(),
                    acker: acker.clone(),
                    shared: shared.clone(),
                    metrics: metrics.clone(),
                    tx: tx.clone(),
                    subscription: config.subscription.clone(),
                    started,
                    hard_stop: hard_stop.clone(),
                }
                .run(),
            );
            connections.push(Connection { client_id, shared, acker, client, eventloop_task });
        }
        // The event loops hold the senders; once they are gone the pipeline ends.
        drop(tx);
        let ackers: Vec<Arc<Acker>> = connections.iter().map(|c| c.acker.clone()).collect();
        let ack_retry_stop = hard_stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            loop {
                tokio::select! {
                    _ = tick.tick() => ackers.iter().for_each(|acker| acker.flush()),
                    _ = ack_retry_stop.cancelled() => return,
                }
            }
        });
        tracing::info!(
            client_id = %client_id,
            broker = %format!("{}:{}", config.mqtt_host, config.mqtt_port),
            storage = %config.storage_url,
            ops = %ops.local_addr,
            mqtt_connections = connections.len(),
            "ingest started"
        );
        Ok(Self { ops_addr: ops.local_addr, client_id, config, shutdown, ops, connections, pipeline_task, hard_stop, started })
    }

    /// Runs until `shutdown`, then drains: unsubscribe (the broker stops sending this replica
    /// new messages), keep receiving what was already queued for it, commit and acknowledge
    /// everything held, and disconnect, so that its session holds nothing.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self { config, shutdown, ops, mut connections, pipeline_task, hard_stop, started, .. } = self;
        let any_loop_ended = async {
            let tasks = connections.iter_mut().map(|c| Box::pin(&mut c.eventloop_task));
            futures::future::select_all(tasks).await.0
        };
        tokio::select! {
            _ = shutdown.cancelled() => {}
            result = any_loop_ended => {
                result?;
                anyhow::bail!("MQTT event loop ended unexpectedly");
            }
        }
        let held = |connections: &[Connection]| connections.iter().map(|c| c.acker.held()).sum::<u64>();
        tracing::info!(held = held(&connections), "shutting down: unsubscribing and draining");
        for connection in &connections {
            connection.shared.draining.store(true, Ordering::SeqCst);
        }
        if connections.iter().any(|c| c.shared.connected.load(Ordering::SeqCst)) {
            // This may be the last replica: arm the restart guard before the shared
            // subscription goes, so that nothing published meanwhile is dropped (guard.rs).
            if !config.restart_guard_client_id.is_empty() {
                match guard::arm(&config, Duration::from_secs(5)).await {
                    Ok(()) => tracing::info!(guard = %config.restart_guard_client_id, "restart guard armed"),
                    Err(error) => tracing::error!(
                        guard = %config.restart_guard_client_id,
                        error = %error,
                        "cannot arm the restart guard: if no other replica runs, telemetry published until one is back is lost"
                    ),
                }
            }
        }
        for connection in connections.iter().filter(|c| c.shared.connected.load(Ordering::SeqCst)) {
            connection.client.unsubscribe(config.subscription.clone()).await?;
        }
        let deadline = Instant::now() + Duration::from_secs(config.shutdown_timeout_secs);
        // After UNSUBACK the broker may still deliver what it had queued for this session;
        // a short quiet period catches those before disconnecting.
        let quiet = Duration::from_millis(500);
        let drained = loop {
            let quiet_for = |c: &Connection| {
                started.elapsed().saturating_sub(Duration::from_millis(c.shared.last_publish_ms.load(Ordering::SeqCst)))
            };
            let all_done = connections.iter().all(|c| {
                c.shared.unsubscribed.load(Ordering::SeqCst) && c.acker.idle() && quiet_for(c) >= quiet
            });
            if all_done {
                break true;
            }
            if Instant::now() >= deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if drained {
            tracing::info!("drained: every received message is committed and acknowledged");
        } else {
            for connection in &connections {
                tracing::error!(
                    client_id = %connection.client_id,
                    held = connection.acker.held(),
                    connected = connection.shared.connected.load(Ordering::SeqCst),
                    "shutdown timeout: disconnecting with messages unacknowledged (the broker redelivers them)"
                );
            }
        }
        for connection in &connections {
            connection.shared.disconnecting.store(true, Ordering::SeqCst);
            if connection.shared.connected.load(Ordering::SeqCst) {
                // Acks are queued before this request on the same channel, so they go out first.
                connection.client.disconnect().await?;
            }
        }
        if connections.iter().any(|c| !c.shared.connected.load(Ordering::SeqCst)) {
            // A disconnected loop is retrying its connection: only the hard stop ends it.
            hard_stop.cancel();
        }
        for connection in &mut connections {
            if tokio::time::timeout(Duration::from_secs(5), &mut connection.eventloop_task).await.is_err() {
                hard_stop.cancel();
                connection.eventloop_task.abort();
            }
        }
        // The event loops owned the senders; with them gone the pipeline finishes its last batch.
        if tokio::time::timeout(Duration::from_secs(5), pipeline_task).await.is_err() {
            tracing::warn!("pipeline did not finish in time");
        }
        ops.task.await?;
        Ok(())
    }
}

fn readiness(connections: Vec<Arc<MqttShared>>, channel: Channel) -> ReadinessCheck {
    ReadinessCheck::new(move || {
        let connections = connections.clone();
        let channel = channel.clone();
        async move {
            let count = connections.len();
            let connected = connections.iter().filter(|c| c.connected.load(Ordering::SeqCst)).count();
            if connected < count {
                return Err(format!("{connected} of {count} MQTT connections to the broker are up"));
            }
            let subscribed = connections.iter().filter(|c| c.subscribed.load(Ordering::SeqCst)).count();
            if subscribed < count {
                return Err(format!("{subscribed} of {count} MQTT connections are subscribed"));
            }
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
            let request = tonic_health::pb::HealthCheckRequest { service: String::new() };
            match tokio::time::timeout(Duration::from_secs(2), health.check(request)).await {
                Ok(Ok(_)) => Ok(()),
                // Reachable, only without the health service: good enough to write.
                Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => Ok(()),
                Ok(Err(status)) => Err(format!("storage: {}", status.message())),
                Err(_) => Err("storage does not answer".to_string()),
            }
        }
    })
}

/// Convenience for `main`: build and run until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    Application::build(config, shutdown).await?.run_until_stopped().await
}
