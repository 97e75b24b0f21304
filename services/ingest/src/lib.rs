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
    shared: Arc<MqttShared>,
    acker: Arc<Acker>,
    client: rumqttc::v5::AsyncClient,
    eventloop_task: tokio::task::JoinHandle<()>,
    pipeline_task: tokio::task::JoinHandle<()>,
    hard_stop: CancellationToken,
    started: Instant,
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

        let (client, eventloop) = rumqttc::v5::AsyncClient::new(
            mqtt::options(&config, client_id.clone())?,
            usize::from(config.receive_maximum) * 2 + 64,
        );
        let acker = Arc::new(Acker::new(client.clone(), metrics.clone()));
        let shared = Arc::new(MqttShared::default());
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
                    trigger: shared.resubscribed.clone(),
                    stop: shutdown.clone(),
                }
                .run(),
            );
        }
        let pipeline = Pipeline {
            storage,
            subscription: config.subscription.clone(),
            acker: acker.clone(),
            metrics: metrics.clone(),
            limits: config.limits(),
            batch_size: config.batch_size,
            linger: config.batch_linger(),
            max_inflight_batches: config.max_inflight_batches,
            storage_timeout: Duration::from_millis(config.storage_timeout_ms),
        };
        let pipeline_task = tokio::spawn(pipeline.run(rx));
        let ack_retry = acker.clone();
        let ack_retry_stop = hard_stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            loop {
                tokio::select! {
                    _ = tick.tick() => ack_retry.flush(),
                    _ = ack_retry_stop.cancelled() => return,
                }
            }
        });
        let eventloop_task = tokio::spawn(
            EventLoopTask {
                eventloop,
                client: client.clone(),
                acker: acker.clone(),
                shared: shared.clone(),
                metrics,
                tx,
                subscription: config.subscription.clone(),
                started,
                hard_stop: hard_stop.clone(),
            }
            .run(),
        );
        tracing::info!(
            client_id = %client_id,
            broker = %format!("{}:{}", config.mqtt_host, config.mqtt_port),
            storage = %config.storage_url,
            ops = %ops.local_addr,
            "ingest started"
        );
        Ok(Self {
            ops_addr: ops.local_addr,
            client_id,
            config,
            shutdown,
            ops,
            shared,
            acker,
            client,
            eventloop_task,
            pipeline_task,
            hard_stop,
            started,
        })
    }

    /// Runs until `shutdown`, then drains: unsubscribe (the broker stops sending this replica
    /// new messages), keep receiving what was already queued for it, commit and acknowledge
    /// everything held, and disconnect, so that its session holds nothing.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self { config, shutdown, ops, shared, acker, client, mut eventloop_task, pipeline_task, hard_stop, started, .. } =
            self;
        tokio::select! {
            _ = shutdown.cancelled() => {}
            result = &mut eventloop_task => {
                result?;
                anyhow::bail!("MQTT event loop ended unexpectedly");
            }
        }
        tracing::info!(held = acker.held(), "shutting down: unsubscribing and draining");
        shared.draining.store(true, Ordering::SeqCst);
        if shared.connected.load(Ordering::SeqCst) {
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
            client.unsubscribe(config.subscription.clone()).await?;
        }
        let deadline = Instant::now() + Duration::from_secs(config.shutdown_timeout_secs);
        // After UNSUBACK the broker may still deliver what it had queued for this session;
        // a short quiet period catches those before disconnecting.
        let quiet = Duration::from_millis(500);
        let drained = loop {
            let last_publish = Duration::from_millis(shared.last_publish_ms.load(Ordering::SeqCst));
            let quiet_for = started.elapsed().saturating_sub(last_publish);
            if shared.unsubscribed.load(Ordering::SeqCst) && acker.idle() && quiet_for >= quiet {
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
            tracing::error!(
                held = acker.held(),
                connected = shared.connected.load(Ordering::SeqCst),
                "shutdown timeout: disconnecting with messages unacknowledged (the broker redelivers them)"
            );
        }
        shared.disconnecting.store(true, Ordering::SeqCst);
        if shared.connected.load(Ordering::SeqCst) {
            // Acks are queued before this request on the same channel, so they go out first.
            client.disconnect().await?;
        } else {
            hard_stop.cancel();
        }
        if tokio::time::timeout(Duration::from_secs(5), &mut eventloop_task).await.is_err() {
            hard_stop.cancel();
            eventloop_task.abort();
        }
        // The event loop owned the sender; with it gone the pipeline finishes its last batch.
        if tokio::time::timeout(Duration::from_secs(5), pipeline_task).await.is_err() {
            tracing::warn!("pipeline did not finish in time");
        }
        ops.task.await?;
        Ok(())
    }
}

fn readiness(shared: Arc<MqttShared>, channel: Channel) -> ReadinessCheck {
    ReadinessCheck::new(move || {
        let shared = shared.clone();
        let channel = channel.clone();
        async move {
            if !shared.connected.load(Ordering::SeqCst) {
                return Err("not connected to the MQTT broker".to_string());
            }
            if !shared.subscribed.load(Ordering::SeqCst) {
                return Err("not subscribed".to_string());
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
