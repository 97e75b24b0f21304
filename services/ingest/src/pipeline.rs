//! Parse, batch, write to storage, then acknowledge.

use std::{collections::HashSet, sync::Arc, time::Duration};

use iot_payload::Limits;
use iot_proto::storage::v1::{Reading, WriteReadingsRequest, storage_service_client::StorageServiceClient};
use iot_runtime::telemetry::{self, grpc::GrpcClientTrace, mqtt};
use tokio::{
    sync::{Semaphore, mpsc},
    task::JoinSet,
    time::Instant,
};
use tonic::transport::Channel;
use tracing::{Instrument as _, Span};

use crate::{
    acks::Acker,
    metrics::{Metrics, STORAGE_REJECTED},
    mqtt::{Delivery, now_us},
};

/// One message inside a batch: what is needed to ack it and to account for it afterwards.
struct Entry {
    acker: Arc<Acker>,
    generation: u64,
    seq: u64,
    publish: rumqttc::v5::mqttbytes::v5::Publish,
    device_id: String,
    first_ts_us: i64,
    readings: std::ops::Range<usize>,
    /// The message's process span (`Span::none()` with tracing off), ended when the message is
    /// acknowledged: it covers the message's whole stay in ingest.
    span: Span,
    /// Whether the publisher sent a trace context (the span continues the device's trace).
    traced: bool,
}

#[derive(Default)]
struct Batch {
    readings: Vec<Reading>,
    entries: Vec<Entry>,
}

/// The storage client: every call gets a client span and carries the trace context.
pub type StorageClient = StorageServiceClient<GrpcClientTrace<Channel>>;

pub struct Pipeline {
    pub storage: StorageClient,
    /// The subscription filter, for the spans' `messaging.destination.subscription.name`.
    pub subscription: String,
    pub metrics: Metrics,
    pub limits: Limits,
    pub batch_size: usize,
    pub linger: Duration,
    pub max_inflight_batches: usize,
    pub storage_timeout: Duration,
}

impl Pipeline {
    /// Runs until `rx` is closed and every batch has been written.
    pub async fn run(self, mut rx: mpsc::UnboundedReceiver<Delivery>) {
        let this = Arc::new(self);
        let permits = Arc::new(Semaphore::new(this.max_inflight_batches));
        let mut writers = JoinSet::new();
        let mut batch = Batch::default();
        let mut deadline: Option<Instant> = None;
        loop {
            let flush_now = tokio::select! {
                delivery = rx.recv() => match delivery {
                    Some(delivery) => {
                        if batch.entries.is_empty() {
                            deadline = Some(Instant::now() + this.linger);
                        }
                        this.accept(delivery, &mut batch);
                        batch.readings.len() >= this.batch_size || batch.entries.len() >= this.batch_size
                    }
                    None => break,
                },
                _ = sleep_until(deadline), if deadline.is_some() => true,
                Some(_) = writers.join_next(), if !writers.is_empty() => false,
            };
            if flush_now {
                deadline = None;
                if batch.entries.is_empty() {
                    continue;
                }
                let full = std::mem::take(&mut batch);
                // Waiting here is the pipeline's backpressure: deliveries queue in the channel,
                // which the broker's receive maximum bounds.
                let Ok(permit) = permits.clone().acquire_owned().await else { break };
                let writer = this.clone();
                writers.spawn(async move {
                    writer.write(full).await;
                    drop(permit);
                });
            }
        }
        if !batch.entries.is_empty() {
            let writer = this.clone();
            writers.spawn(async move { writer.write(batch).await });
        }
        while writers.join_next().await.is_some() {}
    }

    fn accept(&self, delivery: Delivery, batch: &mut Batch) {
        let topic = String::from_utf8_lossy(&delivery.publish.topic).into_owned();
        let properties: &[(String, String)] =
            delivery.publish.properties.as_ref().map(|p| p.user_properties.as_slice()).unwrap_or(&[]);
        // A process span per message: a child of the device's span when the message carries a
        // `traceparent` user property, else the root of a trace of its own. Off: nothing at all.
        let (span, traced) = if telemetry::is_enabled() {
            (
                mqtt::process_span(&topic, &self.subscription, properties, delivery.publish.payload.len()),
                mqtt::has_trace_context(properties),
            )
        } else {
            (Span::none(), false)
        };
        let parsed = span.in_scope(|| {
            iot_payload::parse_with(&topic, &delivery.publish.payload, delivery.received_at_us, &self.limits)
        });
        match parsed {
            Err(rejection) => {
                span.record("otel.status_code", "error");
                span.record("error.type", rejection.reason.label());
                let _in_span = span.enter(); // the log line names the trace; the span ends at the ack
                tracing::warn!(
                    topic = %iot_payload::truncate(&topic, 120),
                    reason = rejection.reason.label(),
                    detail = %rejection.detail,
                    "message rejected"
                );
                self.metrics.reject(rejection.reason.label());
                delivery.acker.done(delivery.generation, delivery.seq, delivery.publish);
            }
            Ok(parsed) => {
                for skipped in &parsed.skipped {
                    self.metrics.senml_records_skipped.with_label_values(&[skipped.reason.label()]).inc();
                }
                let start = batch.readings.len();
                let first_ts_us = parsed.readings.first().map(|r| r.ts_us).unwrap_or(delivery.received_at_us);
                batch.readings.extend(parsed.readings.into_iter().map(|r| Reading {
                    device_id: parsed.device_id.clone(),
                    metric: r.metric,
                    ts_us: r.ts_us,
                    value: r.value,
                }));
                batch.entries.push(Entry {
                    acker: delivery.acker,
                    generation: delivery.generation,
                    seq: delivery.seq,
                    publish: delivery.publish,
                    device_id: parsed.device_id,
                    first_ts_us,
                    readings: start..batch.readings.len(),
                    span,
                    traced,
                });
            }
        }
    }

    /// Writes a batch until storage commits it, then acknowledges its messages.
    async fn write(&self, batch: Batch) {
        self.metrics.inflight_batches.inc();
        let started = Instant::now();
        let span = self.batch_span(&batch.entries);
        let result = self.write_with_retry(&batch.readings).instrument(span.clone()).await;
        match result {
            WriteOutcome::Committed(unknown) => {
                self.metrics.batches.inc();
                self.metrics.batch_messages.observe(batch.entries.len() as f64);
                self.metrics.batch_readings.observe(batch.readings.len() as f64);
                self.metrics.batch_write_seconds.observe(started.elapsed().as_secs_f64());
                self.finish(batch.entries, &unknown);
            }
            WriteOutcome::Invalid(message) if batch.entries.len() > 1 => {
                span.record("otel.status_code", "error");
                span.record("error.type", STORAGE_REJECTED);
                drop(span);
                // One bad message must not hold the others back: write them one by one.
                tracing::warn!(error = %message, messages = batch.entries.len(), "storage refused a batch; retrying its messages one by one");
                for entry in batch.entries {
                    let readings = batch.readings[entry.readings.clone()].to_vec();
                    let single = Batch { readings, entries: vec![entry] };
                    Box::pin(self.write(single)).await;
                }
            }
            WriteOutcome::Invalid(message) => {
                span.record("otel.status_code", "error");
                span.record("error.type", STORAGE_REJECTED);
                for entry in batch.entries {
                    let span = entry.span.clone();
                    let _in_span = span.enter(); // ends the message's span at its acknowledgement
                    span.record("otel.status_code", "error");
                    span.record("error.type", STORAGE_REJECTED);
                    tracing::warn!(device_id = %entry.device_id, reason = STORAGE_REJECTED, detail = %message, "message rejected");
                    self.metrics.reject(STORAGE_REJECTED);
                    entry.acker.done(entry.generation, entry.seq, entry.publish);
                }
            }
        }
        self.metrics.inflight_batches.dec();
    }

    /// The batch's span: under the process span of its first message that continues a device's
    /// trace (else of its first message), linked to the process spans of the others.
    fn batch_span(&self, entries: &[Entry]) -> Span {
        let Some(first) = entries.iter().find(|e| e.traced).or_else(|| entries.first()) else {
            return Span::none();
        };
        if first.span.is_none() {
            return Span::none(); // tracing is off
        }
        mqtt::batch_span_of(&self.subscription, &first.span, entries.iter().map(|e| &e.span))
    }

    fn finish(&self, entries: Vec<Entry>, unknown: &HashSet<String>) {
        let now = now_us();
        for entry in entries {
            // The message's span ends when it was last entered: here, at the acknowledgement.
            let span = entry.span.clone();
            let _in_span = span.enter();
            if unknown.contains(&entry.device_id) {
                entry.span.record("otel.status_code", "error");
                entry.span.record("error.type", iot_payload::RejectReason::UnknownDevice.label());
                tracing::warn!(device_id = %entry.device_id, reason = "unknown_device", "message rejected: device is not registered");
                self.metrics.reject(iot_payload::RejectReason::UnknownDevice.label());
            } else {
                let lag_us = (now - entry.first_ts_us).max(0);
                self.metrics.lag_seconds.observe(lag_us as f64 / 1e6);
                self.metrics.messages_written.inc();
            }
            entry.acker.done(entry.generation, entry.seq, entry.publish);
        }
    }

    async fn write_with_retry(&self, readings: &[Reading]) -> WriteOutcome {
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut storage = self.storage.clone();
            let call = storage.write_readings(WriteReadingsRequest { readings: readings.to_vec() });
            let error = match tokio::time::timeout(self.storage_timeout, call).await {
                Ok(Ok(response)) => {
                    let response = response.into_inner();
                    self.metrics.readings_written.inc_by(response.inserted);
                    self.metrics.readings_duplicate.inc_by(response.duplicates);
                    return WriteOutcome::Committed(response.unknown_devices.into_iter().collect());
                }
                Ok(Err(status)) if status.code() == tonic::Code::InvalidArgument => {
                    return WriteOutcome::Invalid(status.message().to_string());
                }
                Ok(Err(status)) => format!("{}: {}", status.code(), status.message()),
                Err(_) => format!("no answer within {:?}", self.storage_timeout),
            };
            // Never acknowledge what is not stored: retry the same batch until it is.
            self.metrics.storage_errors.inc();
            tracing::warn!(error = %error, retry_in = ?backoff, readings = readings.len(), "WriteReadings failed");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

enum WriteOutcome {
    Committed(HashSet<String>),
    Invalid(String),
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
