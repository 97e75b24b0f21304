//! Prometheus metrics of the storage service, registered in the service's own registry.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    core::{Collector, Desc},
    proto::MetricFamily,
};

use crate::db::DbPool;

pub struct Metrics {
    requests: IntCounterVec,
    latency: HistogramVec,
    pub readings_inserted: IntCounter,
    pub readings_duplicates: IntCounter,
    pub readings_unknown_device: IntCounter,
}

impl Metrics {
    pub fn register(registry: &Registry, pool: DbPool) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "storage_grpc_requests_total",
                "gRPC requests handled, by method and status code",
            ),
            &["method", "code"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "storage_grpc_request_duration_seconds",
                "gRPC request latency, by method and status code",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["method", "code"],
        )?;
        let readings_inserted = IntCounter::new(
            "storage_readings_inserted_total",
            "readings stored (new keys)",
        )?;
        let readings_duplicates = IntCounter::new(
            "storage_readings_duplicates_total",
            "readings skipped because their key was already stored",
        )?;
        let readings_unknown_device = IntCounter::new(
            "storage_readings_unknown_device_total",
            "readings skipped because their device is not registered",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(readings_inserted.clone()))?;
        registry.register(Box::new(readings_duplicates.clone()))?;
        registry.register(Box::new(readings_unknown_device.clone()))?;
        registry.register(Box::new(PoolCollector::new(pool)?))?;
        Ok(Self {
            requests,
            latency,
            readings_inserted,
            readings_duplicates,
            readings_unknown_device,
        })
    }

    pub fn observe(&self, method: &str, code: tonic::Code, seconds: f64) {
        let code = code_label(code);
        self.requests.with_label_values(&[method, code]).inc();
        self.latency
            .with_label_values(&[method, code])
            .observe(seconds);
    }
}

fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Reads the pool's state at scrape time rather than tracking it on every checkout.
struct PoolCollector {
    pool: DbPool,
    max: IntGauge,
    size: IntGauge,
    available: IntGauge,
    in_use: IntGauge,
    waiting: IntGauge,
}

impl PoolCollector {
    fn new(pool: DbPool) -> prometheus::Result<Self> {
        Ok(Self {
            pool,
            max: IntGauge::new(
                "storage_db_pool_max_size",
                "configured maximum of pooled database connections",
            )?,
            size: IntGauge::new(
                "storage_db_pool_size",
                "database connections currently open by the pool",
            )?,
            available: IntGauge::new(
                "storage_db_pool_available",
                "idle database connections in the pool",
            )?,
            in_use: IntGauge::new(
                "storage_db_pool_in_use",
                "database connections checked out by requests now",
            )?,
            waiting: IntGauge::new(
                "storage_db_pool_waiting",
                "requests waiting for a database connection",
            )?,
        })
    }
}

impl Collector for PoolCollector {
    fn desc(&self) -> Vec<&Desc> {
        [
            self.max.desc(),
            self.size.desc(),
            self.available.desc(),
            self.in_use.desc(),
            self.waiting.desc(),
        ]
        .concat()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let status = self.pool.status();
        let gauge = |g: &IntGauge, v: usize| g.set(i64::try_from(v).unwrap_or(i64::MAX));
        gauge(&self.max, status.max_size);
        gauge(&self.size, status.size);
        gauge(&self.available, status.available);
        gauge(&self.in_use, status.size.saturating_sub(status.available));
        gauge(&self.waiting, status.waiting);
        [
            self.max.collect(),
            self.size.collect(),
            self.available.collect(),
            self.in_use.collect(),
            self.waiting.collect(),
        ]
        .concat()
    }
}
