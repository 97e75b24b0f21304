//! Configuration: every setting is a flag with a `SESSION_` environment variable.

use std::{net::SocketAddr, time::Duration};

use iot_runtime::logging::LogFormat;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "iot-session",
    about = "IoT telemetry session service: cookie sessions in Redis (gRPC)",
    after_help = "Durations are a number with a unit: ms, s, m, h or d (e.g. 500ms, 90s, 15m, 24h, 30d); \
                  a bare number means seconds."
)]
pub struct Config {
    /// Redis URL (redis://[user:password@]host:port[/db]).
    #[arg(long, env = "SESSION_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Prefix of every Redis key this service writes; lets several deployments (or tests) share one Redis.
    #[arg(long, env = "SESSION_KEY_PREFIX", default_value = "iot:sess:")]
    pub key_prefix: String,
    /// A session not validated for this long expires.
    #[arg(long, env = "SESSION_IDLE_TIMEOUT", default_value = "24h", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// A session expires this long after it was created, however active it is.
    #[arg(long, env = "SESSION_ABSOLUTE_LIFETIME", default_value = "30d", value_parser = parse_duration)]
    pub absolute_lifetime: Duration,
    /// Bound on one Redis operation, connecting included; past it the call fails with UNAVAILABLE.
    #[arg(long, env = "SESSION_REDIS_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub redis_timeout: Duration,
    /// gRPC listen address.
    #[arg(long, env = "SESSION_GRPC_ADDR", default_value = "127.0.0.1:50052")]
    pub grpc_addr: SocketAddr,
    /// Address of the ops endpoint (/healthz, /readyz, /metrics).
    #[arg(long, env = "SESSION_METRICS_ADDR", default_value = "127.0.0.1:9103")]
    pub metrics_addr: SocketAddr,
    /// Log format: text or json.
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--idle-timeout must be at least 1 second")]
    IdleTooShort,
    #[error("--absolute-lifetime ({absolute:?}) must not be shorter than --idle-timeout ({idle:?})")]
    AbsoluteShorterThanIdle { idle: Duration, absolute: Duration },
    #[error("--redis-timeout must be between 10ms and 60s")]
    RedisTimeout,
    #[error("--key-prefix must not be empty")]
    EmptyPrefix,
}

impl Config {
    /// A configuration with the defaults, for tests and embedding.
    pub fn with_defaults(redis_url: impl Into<String>, key_prefix: impl Into<String>) -> Self {
        Self {
            redis_url: redis_url.into(),
            key_prefix: key_prefix.into(),
            idle_timeout: Duration::from_secs(24 * 3600),
            absolute_lifetime: Duration::from_secs(30 * 24 * 3600),
            redis_timeout: Duration::from_secs(2),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log_format: LogFormat::Text,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.idle_timeout < Duration::from_secs(1) {
            return Err(ConfigError::IdleTooShort);
        }
        if self.absolute_lifetime < self.idle_timeout {
            return Err(ConfigError::AbsoluteShorterThanIdle {
                idle: self.idle_timeout,
                absolute: self.absolute_lifetime,
            });
        }
        if self.redis_timeout < Duration::from_millis(10) || self.redis_timeout > Duration::from_secs(60) {
            return Err(ConfigError::RedisTimeout);
        }
        if self.key_prefix.is_empty() {
            return Err(ConfigError::EmptyPrefix);
        }
        Ok(())
    }
}

pub use iot_runtime::duration::parse_duration;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("5 weeks").is_err());
        assert!(parse_duration("-5s").is_err());
    }

    #[test]
    fn defaults_are_valid_and_checked() {
        let mut config = Config::with_defaults("redis://127.0.0.1:6379", "p:");
        assert!(config.validate().is_ok());
        config.absolute_lifetime = Duration::from_secs(1);
        assert!(config.validate().is_err());
    }
}
