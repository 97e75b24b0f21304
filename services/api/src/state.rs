use std::{sync::Arc, time::Duration};

use iot_proto::{session::v1::session_service_client::SessionServiceClient, storage::v1::storage_service_client::StorageServiceClient};
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use iot_runtime::telemetry::grpc::{GrpcClientTrace, traced_channel};
use tonic::transport::{Channel, Endpoint};

use crate::{broker::BrokerAdmin, config::Config, live::LiveHub, session_cache::SessionCache};

/// Shared by every worker; cheap to clone (channels and Arcs).
#[derive(Clone)]
pub struct AppState {
    pub storage: StorageServiceClient<GrpcChannel>,
    pub session: SessionServiceClient<GrpcChannel>,
    /// Sessions validated in the last second or so (see `session_cache` for what that misses).
    pub sessions: Arc<SessionCache>,
    pub config: Arc<Config>,
    pub metrics: Metrics,
    pub live: LiveHub,
    /// Device credentials at the broker (dynamic security), or disabled.
    pub broker: BrokerAdmin,
    /// Ends live streams when the server shuts down (they would otherwise hold it open).
    pub shutdown: iot_runtime::CancellationToken,
}

/// A channel whose calls get client spans and carry the trace context to the server.
pub type GrpcChannel = GrpcClientTrace<Channel>;

/// A gRPC endpoint of the api (timeouts, no Nagle), checked once at start.
pub fn endpoint(url: &str) -> anyhow::Result<Endpoint> {
    Ok(Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(15))
        .tcp_nodelay(true))
}

/// A lazy channel: the api starts while storage/session are still down and reconnects by
/// itself. Its connection task runs on the runtime it is created on.
pub fn lazy_channel(endpoint: &Endpoint) -> GrpcChannel {
    traced_channel(endpoint.connect_lazy(), endpoint.uri())
}

impl AppState {
    /// The same state with channels of its own, for one HTTP worker. Called on the worker's
    /// thread, so the channels' connection tasks run there too: a request's gRPC calls then
    /// never hop to another thread and back, and each worker has its own HTTP/2 connection
    /// to storage and to session instead of all sharing one.
    pub fn for_worker(&self, storage: &Endpoint, session: &Endpoint) -> Self {
        Self {
            storage: StorageServiceClient::new(lazy_channel(storage)),
            session: SessionServiceClient::new(lazy_channel(session)),
            ..self.clone()
        }
    }
}

#[derive(Clone)]
pub struct Metrics {
    pub requests: IntCounterVec,
    pub latency: HistogramVec,
    pub sse_clients: IntGauge,
    pub live_messages: IntCounterVec,
    pub live_readings: IntCounter,
}

impl Metrics {
    pub fn register(registry: &Registry) -> anyhow::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new("api_http_requests_total", "HTTP requests by route pattern, method and status"),
            &["route", "method", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new("api_http_request_duration_seconds", "Time to the response head, by route and method")
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["route", "method"],
        )?;
        let sse_clients = IntGauge::new("api_sse_clients", "Live stream (SSE) clients connected now")?;
        let live_messages = IntCounterVec::new(
            Opts::new("api_live_messages_total", "MQTT messages seen by the live stream subscriber, by outcome"),
            &["outcome"],
        )?;
        // Every outcome exists from the start, so that rate() and the dashboard see a 0, not "no data".
        for outcome in ["ok", "rejected", "connection_error"] {
            live_messages.with_label_values(&[outcome]);
        }
        let live_readings = IntCounter::new("api_live_readings_total", "Readings fanned out to live stream clients")?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(sse_clients.clone()))?;
        registry.register(Box::new(live_messages.clone()))?;
        registry.register(Box::new(live_readings.clone()))?;
        Ok(Self { requests, latency, sse_clients, live_messages, live_readings })
    }
}
