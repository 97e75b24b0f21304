use std::{net::SocketAddr, path::PathBuf, time::Duration};

use iot_runtime::{duration::parse_duration, logging::LogFormat};

/// When the `sid` cookie gets the `Secure` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CookieSecure {
    /// Secure when the request arrived over TLS or a proxy says so (`X-Forwarded-Proto: https`).
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "iot-api",
    about = "IoT telemetry api service: REST, HTML pages, charts, live stream",
    after_help = "Durations are a number with a unit: ms, s, m, h or d (e.g. 500ms, 90s, 15m); a bare number means seconds."
)]
pub struct Config {
    /// Address the HTTP server listens on.
    #[arg(long, env = "API_LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    pub listen_addr: SocketAddr,
    /// Address of the ops endpoint (/healthz, /readyz, /metrics).
    #[arg(long, env = "API_METRICS_ADDR", default_value = "127.0.0.1:9100")]
    pub metrics_addr: SocketAddr,
    /// gRPC endpoint of the storage service.
    #[arg(long, env = "API_STORAGE_URL", default_value = "http://127.0.0.1:50051")]
    pub storage_url: String,
    /// gRPC endpoint of the session service.
    #[arg(long, env = "API_SESSION_URL", default_value = "http://127.0.0.1:50052")]
    pub session_url: String,
    /// Broker the api subscribes to for the live stream.
    #[arg(long, env = "API_MQTT_HOST", default_value = "127.0.0.1")]
    pub mqtt_host: String,
    #[arg(long, env = "API_MQTT_PORT", default_value_t = 1883)]
    pub mqtt_port: u16,
    #[arg(long, env = "API_MQTT_USERNAME")]
    pub mqtt_username: Option<String>,
    #[arg(long, env = "API_MQTT_PASSWORD", hide_env_values = true)]
    pub mqtt_password: Option<String>,
    /// TLS to the broker, and device provisioning through its dynamic-security plugin.
    #[command(flatten)]
    pub broker: BrokerConfig,
    /// Broker host devices are told to connect to (what they can reach, not what the api uses).
    #[arg(long, env = "API_PUBLIC_MQTT_HOST", default_value = "127.0.0.1")]
    pub public_mqtt_host: String,
    #[arg(long, env = "API_PUBLIC_MQTT_PORT", default_value_t = 1883)]
    pub public_mqtt_port: u16,
    /// `Secure` attribute of the session cookie: auto, always or never.
    #[arg(long, env = "API_COOKIE_SECURE", value_enum, default_value = "auto")]
    pub cookie_secure: CookieSecure,
    /// Largest accepted request body.
    #[arg(long, env = "API_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,
    /// The head (request line and headers) of every request must arrive within this, or the
    /// api answers 408 and closes the connection (slowloris): for a connection's first request
    /// counted from the connection's start (actix), for later ones from their first byte
    /// (`src/request_deadline.rs`).
    #[arg(long, env = "API_CLIENT_REQUEST_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub client_request_timeout: Duration,
    /// A request body must have arrived completely this long after its head, or the api
    /// answers 408 and closes the connection (slow uploads).
    #[arg(long, env = "API_BODY_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub body_timeout: Duration,
    /// When the api closes a connection, how long the client has to close its side before the
    /// socket is dropped.
    #[arg(long, env = "API_CLIENT_DISCONNECT_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub client_disconnect_timeout: Duration,
    /// An idle keep-alive connection is closed after this.
    #[arg(long, env = "API_KEEP_ALIVE", default_value = "75s", value_parser = parse_duration)]
    pub keep_alive: Duration,
    /// How long a validated session is reused without asking the session service again
    /// (0 = ask on every request). A logout through this process takes effect at once; a
    /// revocation elsewhere (another replica, the session service) within this time.
    #[arg(long, env = "API_SESSION_CACHE_TTL", default_value = "1s", value_parser = parse_duration)]
    pub session_cache_ttl: Duration,
    /// Most sessions kept in that cache.
    #[arg(long, env = "API_SESSION_CACHE_CAPACITY", default_value_t = 10_000)]
    pub session_cache_capacity: usize,
    /// HTTP worker threads (0 = one per CPU).
    #[arg(long, env = "API_WORKERS", default_value_t = 0)]
    pub workers: usize,
    /// Log format: text or json.
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

/// How the api reaches the broker beyond the live-stream login: TLS, and the account that
/// provisions device credentials through Mosquitto's dynamic-security control topic.
#[derive(Debug, Clone, clap::Args)]
pub struct BrokerConfig {
    /// Connect to the broker over TLS (both the live stream and provisioning).
    #[arg(long, env = "API_MQTT_TLS")]
    pub mqtt_tls: bool,
    /// PEM CA certificate(s) the broker's certificate must chain to (default: system roots).
    #[arg(long, env = "API_MQTT_CA_FILE")]
    pub mqtt_ca_file: Option<PathBuf>,
    /// PEM client certificate, for a broker listener that requires one.
    #[arg(long, env = "API_MQTT_CLIENT_CERT")]
    pub mqtt_client_cert: Option<PathBuf>,
    #[arg(long, env = "API_MQTT_CLIENT_KEY")]
    pub mqtt_client_key: Option<PathBuf>,
    /// Broker account allowed on `$CONTROL/dynamic-security/#`: with it, creating a device
    /// provisions its broker login, rotating replaces it and deleting revokes it. Unset: the
    /// api hands out credentials the broker does not check (`"broker_enforced": false`).
    #[arg(long, env = "API_MQTT_ADMIN_USERNAME")]
    pub mqtt_admin_username: Option<String>,
    #[arg(long, env = "API_MQTT_ADMIN_PASSWORD", hide_env_values = true)]
    pub mqtt_admin_password: Option<String>,
    /// How long a provisioning request waits for the broker's answer, in milliseconds.
    #[arg(long, env = "API_MQTT_ADMIN_TIMEOUT_MS", default_value_t = 5000)]
    pub mqtt_admin_timeout_ms: u64,
}

impl Default for BrokerConfig {
    /// Plain MQTT, no provisioning (what a `Config` literal in a test usually wants).
    fn default() -> Self {
        Self {
            mqtt_tls: false,
            mqtt_ca_file: None,
            mqtt_client_cert: None,
            mqtt_client_key: None,
            mqtt_admin_username: None,
            mqtt_admin_password: None,
            mqtt_admin_timeout_ms: 5000,
        }
    }
}

impl BrokerConfig {
    pub fn tls(&self) -> iot_mqtt::TlsSettings {
        iot_mqtt::TlsSettings {
            enabled: self.mqtt_tls,
            ca_file: self.mqtt_ca_file.clone(),
            client_cert: self.mqtt_client_cert.clone(),
            client_key: self.mqtt_client_key.clone(),
        }
    }

    pub fn admin_timeout(&self) -> Duration {
        Duration::from_millis(self.mqtt_admin_timeout_ms.max(1))
    }
}
