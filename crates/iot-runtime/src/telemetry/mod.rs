//! OpenTelemetry tracing: the OTLP exporter behind [`crate::logging::init`], W3C trace-context
//! propagation over gRPC metadata, HTTP headers and MQTT v5 user properties, and the
//! semantic-convention attribute names.
//!
//! Tracing is off unless `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`
//! is set (and `OTEL_SDK_DISABLED` is not `true`, `OTEL_TRACES_EXPORTER` not `none`). The SDK
//! reads the other standard variables itself: `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES`
//! (the service name given to `logging::init` is used when neither names the service),
//! `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`, `OTEL_EXPORTER_OTLP_TIMEOUT`,
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_*`, `OTEL_SPAN_*_LIMIT`. Only OTLP over gRPC is built in.
//!
//! Spans are ordinary `tracing` spans; the fields `otel.name`, `otel.kind` and
//! `otel.status_code` are understood by `tracing-opentelemetry`. A span must be at a level the
//! log filter lets through (`info` by default) to be exported.

pub mod grpc;
pub mod http;
pub mod mqtt;
pub mod semconv;

use std::sync::{LazyLock, Mutex};

use opentelemetry::{
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{SpanContext, TraceContextExt, TracerProvider as _},
};
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    resource::{EnvResourceDetector, ResourceDetector},
    trace::SdkTracerProvider,
};
use tracing::{Subscriber, level_filters::LevelFilter};
use tracing_subscriber::{Layer, filter::Targets, registry::LookupSpan};

pub use opentelemetry::Context;
pub use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The installed provider, kept so that [`shutdown`] can flush it.
static PROVIDER: Mutex<Option<SdkTracerProvider>> = Mutex::new(None);

/// W3C TraceContext is the project's wire format everywhere (DESIGN.md); the helpers use it
/// directly so that they behave the same whether or not a global propagator was installed.
static PROPAGATOR: LazyLock<TraceContextPropagator> = LazyLock::new(TraceContextPropagator::new);

/// Crates whose own spans must never be exported: the exporter speaks gRPC through them, so
/// exporting their spans would trace the exporter itself (and feed back with `RUST_LOG=trace`).
const NOT_EXPORTED: &[&str] = &["h2", "hyper", "tonic", "tower", "opentelemetry", "reqwest", "rustls", "mio"];

/// What [`otel_layer`] decided, logged once the subscriber is installed.
pub(crate) enum Status {
    Off,
    On { endpoint: String, service_name: String },
    Failed(String),
}

/// The trace endpoint the exporter will use, if tracing is switched on by the environment.
pub fn configured_endpoint() -> Option<String> {
    let var = |name: &str| std::env::var(name).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return None;
    }
    if var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none")) {
        return None;
    }
    var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
}

/// True once `logging::init` has installed an exporter (and [`shutdown`] has not run).
pub fn is_enabled() -> bool {
    PROVIDER.lock().map(|p| p.is_some()).unwrap_or(false)
}

/// Builds the OpenTelemetry layer when the environment asks for it. The tonic exporter needs
/// a Tokio runtime (its channel's worker task is spawned on it), so outside one tracing stays off.
pub(crate) fn otel_layer<S>(service: &str) -> (Option<Box<dyn Layer<S> + Send + Sync>>, Status)
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    let Some(endpoint) = configured_endpoint() else { return (None, Status::Off) };
    if tokio::runtime::Handle::try_current().is_err() {
        return (None, Status::Failed("logging::init was called outside a Tokio runtime".to_string()));
    }
    let exporter = match opentelemetry_otlp::SpanExporter::builder().with_tonic().build() {
        Ok(exporter) => exporter,
        Err(error) => return (None, Status::Failed(format!("cannot build the OTLP exporter for {endpoint}: {error}"))),
    };
    let named_by_env = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.trim().is_empty())
        || EnvResourceDetector::new().detect().get(&opentelemetry::Key::new(semconv::SERVICE_NAME)).is_some();
    let mut resource = Resource::builder();
    if !named_by_env {
        resource = resource.with_service_name(service.to_string());
    }
    let resource = resource.build();
    let service_name = resource
        .get(&opentelemetry::Key::new(semconv::SERVICE_NAME))
        .map_or_else(|| service.to_string(), |v| v.to_string());
    // The sampler comes from OTEL_TRACES_SAMPLER through the SDK's default config.
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
    let tracer = provider.tracer("iot-runtime");
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());
    if let Ok(mut slot) = PROVIDER.lock() {
        *slot = Some(provider);
    }
    let not_exported = Targets::new()
        .with_default(LevelFilter::INFO)
        .with_targets(NOT_EXPORTED.iter().map(|target| (*target, LevelFilter::OFF)));
    let layer = tracing_opentelemetry::layer().with_tracer(tracer).with_filter(not_exported);
    (Some(Box::new(layer)), Status::On { endpoint, service_name })
}

/// Flushes the spans not yet exported and stops the exporter. Call it once at the end of
/// `main` (still inside the Tokio runtime: the export runs on it); a no-op when tracing is off
/// or it already ran. On a current-thread runtime the flush cannot make progress while this
/// blocks, so there it only waits for the SDK's own timeout: use a multi-thread runtime.
pub fn shutdown() {
    let provider = PROVIDER.lock().ok().and_then(|mut slot| slot.take());
    let Some(provider) = provider else { return };
    let stop = move || {
        if let Err(error) = provider.shutdown() {
            tracing::warn!(%error, "OpenTelemetry exporter did not shut down cleanly");
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(stop);
        }
        _ => stop(),
    }
}

/// Calls [`shutdown`] when dropped; hold it in `main` for the whole run.
#[must_use = "dropping the guard flushes and stops tracing at once"]
#[derive(Debug, Default)]
pub struct TelemetryGuard {
    _private: (),
}

impl TelemetryGuard {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        shutdown();
    }
}

/// The OpenTelemetry context of `span` (empty when tracing is off).
pub fn context_of(span: &tracing::Span) -> Context {
    span.context()
}

/// The current span's OpenTelemetry context.
pub fn current_context() -> Context {
    tracing::Span::current().context()
}

/// Makes `cx` the parent of `span`. Call it right after creating the span, before it is
/// entered or has children; later it has no effect (logged at debug). A context without a
/// valid remote span is ignored, so the span stays a root (or keeps its local parent).
pub fn set_parent(span: &tracing::Span, cx: Context) {
    if !cx.span().span_context().is_valid() {
        return;
    }
    if let Err(error) = span.set_parent(cx) {
        tracing::debug!(%error, "trace parent not set");
    }
}

/// Trace id of `span` as 32 lowercase hex digits, when it is recorded by OpenTelemetry.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let span_ref = cx.span();
    let sc = span_ref.span_context();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// Fills the `trace_id` field of an entry span (server, consumer) so that log lines inside it
/// name the trace. Starts the OpenTelemetry span: call it after the parent is set.
pub(crate) fn record_trace_id(span: &tracing::Span) {
    if let Some(id) = trace_id(span) {
        span.record("trace_id", id);
    }
}

/// Writes `cx` as `traceparent` (and `tracestate`) through any carrier.
pub fn inject_with(cx: &Context, carrier: &mut dyn Injector) {
    if cx.span().span_context().is_valid() {
        PROPAGATOR.inject_context(cx, &mut SkipEmpty(carrier));
    }
}

/// The propagator writes an empty `tracestate` when there is none; leave it out instead.
struct SkipEmpty<'a>(&'a mut dyn Injector);

impl Injector for SkipEmpty<'_> {
    fn set(&mut self, key: &str, value: String) {
        if !value.is_empty() {
            self.0.set(key, value);
        }
    }
}

/// Reads a context from any carrier; empty (not valid) when it carries no valid `traceparent`.
pub fn extract_with(carrier: &dyn Extractor) -> Context {
    PROPAGATOR.extract(carrier)
}

/// `traceparent`/`tracestate` of `cx` as name/value pairs (empty when `cx` has no valid span).
pub fn inject_pairs(cx: &Context) -> Vec<(String, String)> {
    let mut pairs = PairsCarrier(Vec::new());
    inject_with(cx, &mut pairs);
    pairs.0
}

/// A context from name/value pairs (names compared case-insensitively). `None` when the pairs
/// hold no valid `traceparent`.
pub fn extract_pairs<'a, I>(pairs: I) -> Option<Context>
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let carrier = PairsCarrier(
        pairs
            .into_iter()
            .filter(|(name, _)| is_propagation_field(name))
            .map(|(name, value)| (name.to_ascii_lowercase(), value.to_string()))
            .collect(),
    );
    let cx = extract_with(&carrier);
    remote_span_context(&cx).is_some().then_some(cx)
}

/// The remote span a context carries, if valid: for span links (a batch span linking the
/// traces of the messages it holds).
pub fn remote_span_context(cx: &Context) -> Option<SpanContext> {
    let span_ref = cx.span();
    let sc = span_ref.span_context();
    sc.is_valid().then(|| sc.clone())
}

fn is_propagation_field(name: &str) -> bool {
    PROPAGATOR.fields().any(|field| field.eq_ignore_ascii_case(name))
}

struct PairsCarrier(Vec<(String, String)>);

impl Injector for PairsCarrier {
    fn set(&mut self, key: &str, value: String) {
        self.0.retain(|(name, _)| !name.eq_ignore_ascii_case(key));
        self.0.push((key.to_string(), value));
    }
}

impl Extractor for PairsCarrier {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(name, _)| name.eq_ignore_ascii_case(key)).map(|(_, value)| value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn pairs_round_trip_a_remote_context() {
        let cx = extract_pairs([("TraceParent", PARENT), ("content-type", "x")]).expect("valid traceparent");
        let sc = remote_span_context(&cx).expect("remote span");
        assert_eq!(sc.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_remote() && sc.is_sampled());
        assert_eq!(inject_pairs(&cx), vec![("traceparent".to_string(), PARENT.to_string())]);
    }

    #[test]
    fn invalid_or_missing_traceparent_gives_none() {
        assert!(extract_pairs([("traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01")]).is_none());
        assert!(extract_pairs([("traceparent", "garbage")]).is_none());
        assert!(extract_pairs(std::iter::empty()).is_none());
        assert!(inject_pairs(&Context::new()).is_empty());
    }
}
