//! The session service: cookie sessions in Redis behind a gRPC API (`iot.session.v1.SessionService`).
//!
//! Only a SHA-256 of each token is stored; sessions expire after an idle timeout (slid forward
//! by every validation) and, whatever happens, at the end of an absolute lifetime. When Redis is
//! unreachable calls fail fast with UNAVAILABLE, and work again as soon as Redis is back.

mod config;
mod metrics;
mod service;
mod store;
pub mod token;

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use iot_proto::session::v1::session_service_server::SessionServiceServer;
use iot_runtime::{CancellationToken, OpsServer, ReadinessCheck};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use iot_runtime::telemetry::grpc::TracedRouter;
use tonic_health::{ServingStatus, server::HealthReporter};

pub use config::{Config, ConfigError, parse_duration};
pub use service::{ServiceError, SessionGrpc};
pub use store::{NewSession, RevokeOutcome, SessionStore, StoreError, StoredSession};

/// How long in-flight calls may take to finish after shutdown has begun.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A built service: listeners bound (read the addresses back when binding port 0), not yet serving gRPC.
pub struct Application {
    grpc_listener: TcpListener,
    grpc_addr: SocketAddr,
    router: TracedRouter,
    health: HealthReporter,
    ops: OpsServer,
    /// Stops the ops endpoint; cancelled only once gRPC has drained, so that /metrics
    /// stays readable while the last calls finish.
    ops_shutdown: CancellationToken,
    /// Cancelled when shutdown begins: /readyz answers 503 from then on.
    draining: CancellationToken,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        let store = SessionStore::new(
            &config.redis_url,
            &config.key_prefix,
            config.idle_timeout,
            config.absolute_lifetime,
            config.redis_timeout,
        )?;
        let registry = prometheus::Registry::new();
        let metrics = metrics::Metrics::register(&registry)?;

        let draining = CancellationToken::new();
        let readiness = {
            let store = store.clone();
            let draining = draining.clone();
            ReadinessCheck::new(move || {
                let store = store.clone();
                let draining = draining.clone();
                async move {
                    if draining.is_cancelled() {
                        return Err("shutting down".to_string());
                    }
                    store.ping().await.map_err(|error| error.to_string())
                }
            })
        };
        let ops_shutdown = CancellationToken::new();
        let ops = OpsServer::start(config.metrics_addr, registry, readiness, ops_shutdown.clone())
            .await
            .with_context(|| format!("cannot bind the ops endpoint on {}", config.metrics_addr))?;

        let (health, health_service) = iot_runtime::grpc::health();
        health.set_serving::<SessionServiceServer<SessionGrpc>>().await;
        health.set_service_status("", ServingStatus::Serving).await;
        let (reflection_v1, reflection_v1alpha) = iot_runtime::grpc::reflection()?;
        // A server span per call (parent from the caller's `traceparent`); health and
        // reflection stay untraced.
        let router = iot_runtime::telemetry::grpc::traced_server()
            .tcp_nodelay(true)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(SessionServiceServer::new(SessionGrpc::new(store, metrics)));

        let grpc_listener = TcpListener::bind(config.grpc_addr)
            .await
            .with_context(|| format!("cannot bind the gRPC address {}", config.grpc_addr))?;
        let grpc_addr = grpc_listener.local_addr()?;
        Ok(Self { grpc_listener, grpc_addr, router, health, ops, ops_shutdown, draining })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.ops.local_addr
    }

    /// Serves until `shutdown` is cancelled, then reports NOT_SERVING, lets in-flight calls
    /// finish (bounded) and stops.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self { grpc_listener, grpc_addr, router, health, ops, ops_shutdown, draining } = self;
        tracing::info!(%grpc_addr, "session gRPC service listening");
        let (stop_grpc, grpc_stopped) = tokio::sync::oneshot::channel::<()>();
        let mut server =
            tokio::spawn(router.serve_with_incoming_shutdown(TcpListenerStream::new(grpc_listener), async {
                let _ = grpc_stopped.await;
            }));
        let served = tokio::select! {
            result = &mut server => Some(result),
            () = shutdown.cancelled() => None,
        };
        let result = match served {
            // The server ended on its own: an error worth reporting.
            Some(result) => result.context("gRPC server task failed")?.context("gRPC server failed"),
            None => {
                tracing::info!("shutting down: NOT_SERVING, draining in-flight calls");
                draining.cancel();
                health.set_service_status("", ServingStatus::NotServing).await;
                health.set_not_serving::<SessionServiceServer<SessionGrpc>>().await;
                let _ = stop_grpc.send(());
                match tokio::time::timeout(DRAIN_TIMEOUT, &mut server).await {
                    Ok(result) => result.context("gRPC server task failed")?.context("gRPC server failed"),
                    Err(_) => {
                        tracing::warn!(timeout = ?DRAIN_TIMEOUT, "calls still open after the drain timeout; closing them");
                        server.abort();
                        Ok(())
                    }
                }
            }
        };
        draining.cancel();
        ops_shutdown.cancel();
        ops.task.await.context("ops server task failed")?;
        tracing::info!("session service stopped");
        result
    }
}
