use tracing_subscriber::{EnvFilter, Layer, Registry, fmt, prelude::*};

/// Log output format, chosen per deployment: text for a terminal, JSON for a log pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format {other:?} (expected text or json)")),
        }
    }
}

/// Default filter of the log output (`RUST_LOG` replaces it). It does not limit what is
/// traced: the OpenTelemetry layer has its own filter (spans at `info` and above, never the
/// exporter's own gRPC stack).
const DEFAULT_LOG_FILTER: &str = "info,h2=warn,hyper=warn,tower=warn,rumqttc=warn,opentelemetry=warn";

/// Installs the global subscriber. `RUST_LOG` overrides the default filter.
/// Calling it twice (tests that start several services in one process) is harmless.
///
/// When `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, spans
/// are also exported over OTLP/gRPC with `service` as the service name unless
/// `OTEL_SERVICE_NAME` says otherwise (see [`crate::telemetry`]). Call it inside the Tokio
/// runtime, and call [`shutdown`] (or hold [`init_with_guard`]'s guard) at the end of `main`
/// so that the last spans are sent.
pub fn init(service: &str, format: LogFormat) {
    if tracing::dispatcher::has_been_set() {
        return;
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let output: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Text => fmt::layer().with_target(true).with_filter(filter).boxed(),
        LogFormat::Json => {
            fmt::layer().json().flatten_event(true).with_current_span(false).with_filter(filter).boxed()
        }
    };
    let (otel, status) = crate::telemetry::otel_layer::<Registry>(service);
    let mut layers = vec![output];
    layers.extend(otel);
    let result = tracing_subscriber::registry().with(layers).try_init();
    if result.is_err() {
        // Someone else won the race to install a subscriber: nothing would feed our exporter.
        crate::telemetry::shutdown();
        return;
    }
    tracing::debug!(service, "logging initialised");
    match status {
        crate::telemetry::Status::Off => {}
        crate::telemetry::Status::On { endpoint, service_name } => {
            tracing::info!(%endpoint, %service_name, "OpenTelemetry tracing on (OTLP/gRPC)");
        }
        crate::telemetry::Status::Failed(reason) => tracing::warn!(%reason, "OpenTelemetry tracing off"),
    }
}

/// [`init`], returning a guard that flushes and stops the trace exporter when dropped.
/// Hold it in `main` until the service has stopped.
pub fn init_with_guard(service: &str, format: LogFormat) -> crate::telemetry::TelemetryGuard {
    init(service, format);
    crate::telemetry::TelemetryGuard::new()
}

/// Sends the spans not exported yet and stops the exporter (no-op when tracing is off).
/// Call it at the end of `main`, inside the runtime.
pub fn shutdown() {
    crate::telemetry::shutdown();
}
