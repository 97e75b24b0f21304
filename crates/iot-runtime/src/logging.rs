use tracing_subscriber::{EnvFilter, fmt, prelude::*};

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

/// Installs the global subscriber. `RUST_LOG` overrides the default filter.
/// Calling it twice (tests that start several services in one process) is harmless.
pub fn init(service: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,h2=warn,hyper=warn,tower=warn,rumqttc=warn"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Text => registry.with(fmt::layer().with_target(true)).try_init(),
        LogFormat::Json => registry
            .with(fmt::layer().json().flatten_event(true).with_current_span(false))
            .try_init(),
    };
    if result.is_ok() {
        tracing::debug!(service, "logging initialised");
    }
}
