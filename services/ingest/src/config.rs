use std::{net::SocketAddr, path::PathBuf, time::Duration};

use iot_runtime::logging::LogFormat;

/// Ingest configuration: every flag also reads an `INGEST_*` environment variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "iot-ingest", about = "IoT telemetry ingest: MQTT -> storage, acknowledged after commit")]
pub struct Config {
    /// Address of the ops endpoint (/healthz, /readyz, /metrics).
    #[arg(long, env = "INGEST_METRICS_ADDR", default_value = "127.0.0.1:9101")]
    pub metrics_addr: SocketAddr,
    /// Log format: text or json.
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,

    #[arg(long, env = "INGEST_MQTT_HOST", default_value = "127.0.0.1")]
    pub mqtt_host: String,
    #[arg(long, env = "INGEST_MQTT_PORT", default_value_t = 1883)]
    pub mqtt_port: u16,
    #[arg(long, env = "INGEST_MQTT_USERNAME")]
    pub mqtt_username: Option<String>,
    #[arg(long, env = "INGEST_MQTT_PASSWORD", hide_env_values = true)]
    pub mqtt_password: Option<String>,
    /// Connect to the broker over TLS (its TLS listener, usually port 8883).
    #[arg(long, env = "INGEST_MQTT_TLS")]
    pub mqtt_tls: bool,
    /// PEM CA certificate(s) the broker's certificate must chain to (default: system roots).
    #[arg(long, env = "INGEST_MQTT_CA_FILE")]
    pub mqtt_ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for a broker listener that requires one.
    #[arg(long, env = "INGEST_MQTT_CLIENT_CERT")]
    pub mqtt_client_cert: Option<PathBuf>,
    #[arg(long, env = "INGEST_MQTT_CLIENT_KEY")]
    pub mqtt_client_key: Option<PathBuf>,
    /// MQTT client id. Must be stable across restarts of one replica (its persistent session
    /// holds the messages in flight when it died) and unique among replicas. Defaults to the
    /// host name, which in Kubernetes is the StatefulSet pod name (`iot-ingest-0`, ...).
    #[arg(long, env = "INGEST_CLIENT_ID")]
    pub client_id: Option<String>,
    /// MQTT connections of this replica, all in the shared subscription; connection 0 uses the
    /// client id, connection i > 0 the client id with `-c{i}` appended (each has its own
    /// persistent session and Receive Maximum). Mosquitto 2.0 reads one packet per connection
    /// per pass of its event loop, so a consumer's PUBACKs, and with them its deliveries, get
    /// one packet's share among all the devices' connections: with 1000 devices publishing
    /// flat out, one connection received ~1,000 msg/s while the broker accepted ~35,000 msg/s,
    /// and eight received ~8,000 msg/s (scripts/bench, docs/benchmarks.md).
    #[arg(long, env = "INGEST_MQTT_CONNECTIONS", default_value_t = 4)]
    pub mqtt_connections: usize,
    /// Topic filter; the `$share/ingest/` group spreads messages over all replicas.
    #[arg(long, env = "INGEST_SUBSCRIPTION", default_value = "$share/ingest/devices/+/telemetry")]
    pub subscription: String,
    /// How long the broker keeps this replica's session (subscription and unacknowledged
    /// messages) while it is disconnected, in seconds.
    #[arg(long, env = "INGEST_SESSION_EXPIRY_SECS", default_value_t = 86_400)]
    pub session_expiry_secs: u32,
    /// MQTT 5 Receive Maximum: how many unacknowledged messages the broker may have in flight
    /// to this replica. This is the backpressure bound: when storage is slow, the broker stops
    /// sending (and queues) instead of this process buffering without limit.
    #[arg(long, env = "INGEST_RECEIVE_MAXIMUM", default_value_t = 5000)]
    pub receive_maximum: u16,
    /// Largest MQTT packet this client accepts (announced to the broker in CONNECT). Keep it
    /// at or above the broker's `max_packet_size`: a broker silently discards messages larger
    /// than a client's maximum, so they would vanish instead of being counted as `too_large`.
    #[arg(long, env = "INGEST_MQTT_MAX_PACKET_BYTES", default_value_t = 512 * 1024)]
    pub mqtt_max_packet_bytes: u32,
    #[arg(long, env = "INGEST_KEEP_ALIVE_SECS", default_value_t = 30)]
    pub keep_alive_secs: u64,

    /// gRPC address of the storage service.
    #[arg(long, env = "INGEST_STORAGE_URL", default_value = "http://127.0.0.1:50051")]
    pub storage_url: String,
    /// Deadline of one WriteReadings call, in milliseconds; a timed-out batch is retried.
    #[arg(long, env = "INGEST_STORAGE_TIMEOUT_MS", default_value_t = 10_000)]
    pub storage_timeout_ms: u64,
    /// A batch is written once it holds this many readings...
    #[arg(long, env = "INGEST_BATCH_SIZE", default_value_t = 1000)]
    pub batch_size: usize,
    /// ...or this many milliseconds after its first message arrived. Short, because a batch's
    /// commit time grows with its size (MariaDB checks every row's key and foreign key): with
    /// 20 ms, a batch at ~18,000 msg/s held ~750 readings and took ~40 ms to commit; with 5 ms
    /// the publish-to-commit p50/p99 about halved at the same throughput (scripts/bench,
    /// docs/benchmarks.md).
    #[arg(long = "batch-linger", env = "INGEST_BATCH_LINGER_MS", default_value_t = 5)]
    pub batch_linger_ms: u64,
    /// How many WriteReadings calls may run at once (pipelining).
    #[arg(long, env = "INGEST_MAX_INFLIGHT_BATCHES", default_value_t = 4)]
    pub max_inflight_batches: usize,
    /// Larger payloads are rejected (`too_large`).
    #[arg(long, env = "INGEST_MAX_PAYLOAD_BYTES", default_value_t = 65_536)]
    pub max_payload_bytes: usize,
    /// Most readings one message may carry (`too_many_metrics`).
    #[arg(long, env = "INGEST_MAX_READINGS_PER_MESSAGE", default_value_t = 1000)]
    pub max_readings_per_message: usize,
    /// Client id of the broker's restart guard session (deploy/mosquitto/restart-guard.sh arms
    /// it before every broker start; keep both equal). After each (re)subscription ingest
    /// drains what the broker queued for it while no shared subscription existed. Empty: off.
    #[arg(long, env = "INGEST_RESTART_GUARD_CLIENT_ID", default_value = "ingest-restart-guard")]
    pub restart_guard_client_id: String,
    /// The plain topic filter the restart guard subscribes to (unsubscribed once drained).
    #[arg(long, env = "INGEST_RESTART_GUARD_TOPIC", default_value = "devices/+/telemetry")]
    pub restart_guard_topic: String,
    /// Also check the restart guard session this often (seconds; 0: only after reconnects), so
    /// that a guard armed by a replica that left (scale-down) or a drain it interrupted is
    /// finished by another.
    #[arg(long, env = "INGEST_RESTART_GUARD_RECHECK_SECS", default_value_t = 60)]
    pub restart_guard_recheck_secs: u64,
    /// On SIGTERM: how long to wait for held messages to be committed and acknowledged.
    #[arg(long, env = "INGEST_SHUTDOWN_TIMEOUT_SECS", default_value_t = 25)]
    pub shutdown_timeout_secs: u64,
}

/// More would mostly multiply sessions and in-flight windows on the broker.
pub const MAX_MQTT_CONNECTIONS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    #[error("no client id: set INGEST_CLIENT_ID (the host name could not be read)")]
    NoClientId,
    #[error("INGEST_MQTT_PASSWORD is set without INGEST_MQTT_USERNAME")]
    PasswordWithoutUsername,
    #[error("INGEST_RESTART_GUARD_CLIENT_ID must differ from the replica's own client ids ({0:?} is one)")]
    GuardIsClientId(String),
    #[error("INGEST_MQTT_CONNECTIONS is {0}; at most {MAX_MQTT_CONNECTIONS} are allowed")]
    TooManyConnections(usize),
    #[error("MQTT TLS (INGEST_MQTT_TLS, INGEST_MQTT_CA_FILE, ...): {0}")]
    Tls(#[from] iot_mqtt::TlsError),
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, value) in [
            ("batch size", self.batch_size),
            ("MQTT connections", self.mqtt_connections),
            ("max in-flight batches", self.max_inflight_batches),
            ("receive maximum", usize::from(self.receive_maximum)),
            ("max payload bytes", self.max_payload_bytes),
            ("max readings per message", self.max_readings_per_message),
            ("MQTT max packet bytes", self.mqtt_max_packet_bytes as usize),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.mqtt_password.is_some() && self.mqtt_username.is_none() {
            return Err(ConfigError::PasswordWithoutUsername);
        }
        // Reads the certificate files too: a bad path fails the start, not every reconnect.
        self.mqtt_tls().client_config()?;
        if self.mqtt_connections > MAX_MQTT_CONNECTIONS {
            return Err(ConfigError::TooManyConnections(self.mqtt_connections));
        }
        // The guard connection would take a connection's own session over, and back.
        for client_id in self.connection_client_ids()? {
            if client_id == self.restart_guard_client_id {
                return Err(ConfigError::GuardIsClientId(client_id));
            }
        }
        Ok(())
    }

    /// The client id of each MQTT connection of this replica (see `mqtt_connections`).
    pub fn connection_client_ids(&self) -> Result<Vec<String>, ConfigError> {
        let base = self.resolved_client_id()?;
        Ok((0..self.mqtt_connections.max(1))
            .map(|i| if i == 0 { base.clone() } else { format!("{base}-c{i}") })
            .collect())
    }

    pub fn mqtt_tls(&self) -> iot_mqtt::TlsSettings {
        iot_mqtt::TlsSettings {
            enabled: self.mqtt_tls,
            ca_file: self.mqtt_ca_file.clone(),
            client_cert: self.mqtt_client_cert.clone(),
            client_key: self.mqtt_client_key.clone(),
        }
    }

    pub fn resolved_client_id(&self) -> Result<String, ConfigError> {
        if let Some(id) = self.client_id.as_ref().filter(|id| !id.is_empty()) {
            return Ok(id.clone());
        }
        let from_env = std::env::var("HOSTNAME").ok();
        let from_kernel = || std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
        from_env
            .or_else(from_kernel)
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .ok_or(ConfigError::NoClientId)
    }

    pub fn batch_linger(&self) -> Duration {
        Duration::from_millis(self.batch_linger_ms)
    }

    pub fn limits(&self) -> iot_payload::Limits {
        iot_payload::Limits {
            max_payload_bytes: self.max_payload_bytes,
            max_readings: self.max_readings_per_message,
            ..iot_payload::Limits::default()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clap::Parser;

    use super::*;

    fn config(args: &[&str]) -> Config {
        Config::try_parse_from(["iot-ingest", "--client-id", "ingest-0"].iter().chain(args)).unwrap()
    }

    #[test]
    fn each_connection_has_its_own_client_id_and_the_first_keeps_the_replicas() {
        let ids = config(&["--mqtt-connections", "3"]).connection_client_ids().unwrap();
        assert_eq!(ids, ["ingest-0", "ingest-0-c1", "ingest-0-c2"]);
        assert_eq!(config(&["--mqtt-connections", "1"]).connection_client_ids().unwrap(), ["ingest-0"]);
    }

    #[test]
    fn a_guard_id_equal_to_any_connections_id_is_refused() {
        let clash = config(&["--mqtt-connections", "2", "--restart-guard-client-id", "ingest-0-c1"]);
        assert!(matches!(clash.validate(), Err(ConfigError::GuardIsClientId(id)) if id == "ingest-0-c1"));
        let fine = config(&["--mqtt-connections", "1", "--restart-guard-client-id", "ingest-0-c1"]);
        assert!(fine.validate().is_ok());
    }

    #[test]
    fn connection_count_is_bounded() {
        assert!(matches!(config(&["--mqtt-connections", "0"]).validate(), Err(ConfigError::Zero(_))));
        assert!(matches!(config(&["--mqtt-connections", "65"]).validate(), Err(ConfigError::TooManyConnections(65))));
        assert!(config(&["--mqtt-connections", "64"]).validate().is_ok());
    }
}
