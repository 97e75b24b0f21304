use iot_payload::{RejectReason, SkipReason};
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, exponential_buckets,
};

/// Reject label for a message whose readings storage refused as invalid (a bug or a rule
/// storage checks and the parser does not); not one of [`RejectReason`]'s labels.
pub const STORAGE_REJECTED: &str = "storage_rejected";

/// Per-replica ingest metrics (every name starts with `ingest_`).
#[derive(Clone)]
pub struct Metrics {
    pub messages_received: IntCounter,
    /// By MQTT connection of the replica (`0`..`INGEST_MQTT_CONNECTIONS`-1): how the broker
    /// spreads the shared subscription over them.
    pub connection_messages_received: IntCounterVec,
    pub messages_acked: IntCounter,
    pub messages_rejected: IntCounterVec,
    pub senml_records_skipped: IntCounterVec,
    pub messages_written: IntCounter,
    pub readings_written: IntCounter,
    pub readings_duplicate: IntCounter,
    pub batches: IntCounter,
    pub batch_messages: Histogram,
    pub batch_readings: Histogram,
    pub batch_write_seconds: Histogram,
    pub lag_seconds: Histogram,
    pub inflight_messages: IntGauge,
    pub inflight_batches: IntGauge,
    pub storage_errors: IntCounter,
    pub mqtt_connected: IntGauge,
    pub mqtt_connections: IntCounter,
    pub restart_guard_checks: IntCounterVec,
    pub restart_guard_messages: IntCounter,
}

impl Metrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| -> prometheus::Result<Histogram> {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?;
            registry.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let messages_rejected = IntCounterVec::new(
            Opts::new("ingest_messages_rejected_total", "Messages rejected (and acknowledged), by reason"),
            &["reason"],
        )?;
        registry.register(Box::new(messages_rejected.clone()))?;
        // Every label exists from the start, so that rate() and alerts see a 0 and not "no data".
        for reason in RejectReason::ALL {
            messages_rejected.with_label_values(&[reason.label()]);
        }
        messages_rejected.with_label_values(&[STORAGE_REJECTED]);
        let senml_records_skipped = IntCounterVec::new(
            Opts::new("ingest_senml_records_skipped_total", "SenML records without a numeric value, by reason"),
            &["reason"],
        )?;
        registry.register(Box::new(senml_records_skipped.clone()))?;
        for reason in [SkipReason::NonNumericValue, SkipReason::SumOnly, SkipReason::NoValue] {
            senml_records_skipped.with_label_values(&[reason.label()]);
        }
        let connection_messages_received = IntCounterVec::new(
            Opts::new(
                "ingest_connection_messages_received_total",
                "MQTT PUBLISH packets received, by connection of this replica (the restart guard's not included)",
            ),
            &["connection"],
        )?;
        registry.register(Box::new(connection_messages_received.clone()))?;
        let restart_guard_checks = IntCounterVec::new(
            Opts::new(
                "ingest_restart_guard_checks_total",
                "Connections to the broker restart guard session, by outcome (no_session, drained, taken_over, failed)",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(restart_guard_checks.clone()))?;
        for outcome in ["no_session", "drained", "taken_over", "failed"] {
            restart_guard_checks.with_label_values(&[outcome]);
        }
        Ok(Self {
            connection_messages_received,
            messages_received: counter("ingest_messages_received_total", "MQTT PUBLISH packets received")?,
            messages_acked: counter("ingest_messages_acked_total", "PUBACKs sent (after commit or rejection)")?,
            messages_rejected,
            senml_records_skipped,
            messages_written: counter(
                "ingest_messages_written_total",
                "Messages whose readings storage committed (then acknowledged); a redelivery counts again",
            )?,
            readings_written: counter("ingest_readings_written_total", "Readings newly stored")?,
            readings_duplicate: counter(
                "ingest_readings_duplicate_total",
                "Readings storage already had (redeliveries, device retries)",
            )?,
            batches: counter("ingest_batches_total", "WriteReadings batches committed")?,
            batch_messages: histogram(
                "ingest_batch_messages",
                "Messages per committed batch",
                exponential_buckets(1.0, 2.0, 14)?,
            )?,
            batch_readings: histogram(
                "ingest_batch_readings",
                "Readings per committed batch",
                exponential_buckets(1.0, 2.0, 14)?,
            )?,
            batch_write_seconds: histogram(
                "ingest_batch_write_seconds",
                "WriteReadings duration of committed batches, including retries",
                exponential_buckets(0.001, 2.0, 16)?,
            )?,
            lag_seconds: histogram(
                "ingest_end_to_end_lag_seconds",
                "From the payload timestamp (or receive time) to the storage commit",
                exponential_buckets(0.001, 2.0, 20)?,
            )?,
            inflight_messages: gauge(
                "ingest_inflight_messages",
                "Messages received and not yet acknowledged (bounded by the receive maximum)",
            )?,
            inflight_batches: gauge("ingest_inflight_batches", "WriteReadings calls in progress")?,
            storage_errors: counter("ingest_storage_errors_total", "Failed WriteReadings attempts (retried)")?,
            mqtt_connected: gauge("ingest_mqtt_connected", "MQTT connections of this replica that are up (INGEST_MQTT_CONNECTIONS when all are)")?,
            mqtt_connections: counter("ingest_mqtt_connections_total", "Successful MQTT connections (CONNACK)")?,
            restart_guard_checks,
            restart_guard_messages: counter(
                "ingest_restart_guard_messages_total",
                "Messages received from the restart guard session (also counted in ingest_messages_received_total)",
            )?,
        })
    }

    pub fn reject(&self, label: &str) {
        self.messages_rejected.with_label_values(&[label]).inc();
    }
}
