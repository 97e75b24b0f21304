//! Prometheus metrics of the session service.

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

#[derive(Clone)]
pub struct Metrics {
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub created: IntCounter,
    pub validated: IntCounter,
    pub rejected: IntCounter,
    pub revoked: IntCounter,
}

impl Metrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new("session_grpc_requests_total", "gRPC requests handled, by method and status code"),
            &["method", "code"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "session_grpc_request_duration_seconds",
                "gRPC request latency, by method and status code",
            )
            .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            &["method", "code"],
        )?;
        let created = IntCounter::new("session_sessions_created_total", "Sessions created")?;
        let validated = IntCounter::new("session_sessions_validated_total", "Validations that found a live session")?;
        let rejected = IntCounter::new(
            "session_sessions_rejected_total",
            "Validations refused: unknown, malformed, expired or revoked token",
        )?;
        let revoked =
            IntCounter::new("session_sessions_revoked_total", "Sessions revoked (one by one or all of a user's)")?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(created.clone()))?;
        registry.register(Box::new(validated.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        registry.register(Box::new(revoked.clone()))?;
        Ok(Self { requests, duration, created, validated, rejected, revoked })
    }
}
