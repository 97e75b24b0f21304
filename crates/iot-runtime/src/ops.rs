//! The operations endpoint every service serves on its own port:
//! `/healthz` (the process is alive), `/readyz` (its dependencies answer), `/metrics`.

use std::{future::Future, net::SocketAddr, pin::Pin, sync::Arc};

use axum::{Router, extract::State, http::StatusCode, http::header, response::IntoResponse, routing::get};
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

type ReadinessFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Asks a service whether it can do its work now; `Err` carries the reason shown on `/readyz`.
#[derive(Clone)]
pub struct ReadinessCheck(Arc<dyn Fn() -> ReadinessFuture + Send + Sync>);

impl ReadinessCheck {
    pub fn new<F, Fut>(check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        Self(Arc::new(move || Box::pin(check())))
    }

    /// For a service with no dependency to check.
    pub fn always_ready() -> Self {
        Self::new(|| async { Ok(()) })
    }

    pub async fn check(&self) -> Result<(), String> {
        (self.0)().await
    }
}

#[derive(Clone)]
struct OpsState {
    registry: Registry,
    readiness: ReadinessCheck,
    shutting_down: CancellationToken,
}

/// A running ops server; `local_addr` is the bound address (useful with port 0).
pub struct OpsServer {
    pub local_addr: SocketAddr,
    pub task: JoinHandle<()>,
}

impl OpsServer {
    /// Binds `addr` and serves until `shutdown` is cancelled. Once shutdown has begun,
    /// `/readyz` answers 503 so that load balancers stop sending work.
    pub async fn start(
        addr: SocketAddr,
        registry: Registry,
        readiness: ReadinessCheck,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        // Process metrics (CPU, RSS, open fds) for every service; registering twice in one
        // process (tests) fails harmlessly.
        #[cfg(target_os = "linux")]
        let _ = registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()));
        let state = OpsState { registry, readiness, shutting_down: shutdown.clone() };
        let app = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(state);
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "ops server failed");
            }
        });
        tracing::info!(%local_addr, "ops endpoint (/healthz, /readyz, /metrics) listening");
        Ok(Self { local_addr, task })
    }
}

async fn readyz(State(state): State<OpsState>) -> impl IntoResponse {
    if state.shutting_down.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".to_string());
    }
    match state.readiness.check().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")),
    }
}

async fn metrics(State(state): State<OpsState>) -> impl IntoResponse {
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    match encoder.encode(&state.registry.gather(), &mut body) {
        Ok(()) => (StatusCode::OK, [(header::CONTENT_TYPE, encoder.format_type().to_string())], body),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain".to_string())],
            error.to_string().into_bytes(),
        ),
    }
}
