//! Timestamps at the HTTP edge: RFC 3339 or epoch milliseconds in, RFC 3339 out;
//! microseconds since the epoch inside (as in the protos).

use chrono::{DateTime, SecondsFormat, Utc};

use crate::error::ApiError;

/// Parses `value` as RFC 3339 (`2026-01-02T03:04:05Z`) or epoch milliseconds (`1767323045000`).
pub fn parse_to_us(name: &str, value: &str) -> Result<i64, ApiError> {
    let value = value.trim();
    if let Ok(ms) = value.parse::<i64>() {
        return ms
            .checked_mul(1000)
            .ok_or_else(|| ApiError::BadRequest(format!("`{name}` is out of range")));
    }
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc).timestamp_micros())
        .map_err(|_| {
            ApiError::BadRequest(format!("`{name}` must be an RFC 3339 timestamp or epoch milliseconds, got {value:?}"))
        })
}

pub fn parse_opt(name: &str, value: Option<&str>) -> Result<Option<i64>, ApiError> {
    value.filter(|v| !v.is_empty()).map(|v| parse_to_us(name, v)).transpose()
}

pub fn format_us(us: i64) -> String {
    match DateTime::<Utc>::from_timestamp_micros(us) {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        None => us.to_string(),
    }
}

/// Durations like `90s`, `5m`, `1h`, `1d` or plain seconds, for aggregate buckets.
pub fn parse_duration_us(name: &str, value: &str) -> Result<i64, ApiError> {
    let value = value.trim();
    let (number, unit) = match value.find(|c: char| !c.is_ascii_digit()) {
        Some(split) => value.split_at(split),
        None => (value, "s"),
    };
    let factor: i64 = match unit {
        "ms" => 1_000,
        "s" => 1_000_000,
        "m" => 60_000_000,
        "h" => 3_600_000_000,
        "d" => 86_400_000_000,
        _ => 0,
    };
    match number.parse::<i64>() {
        Ok(n) if n > 0 && factor > 0 => n
            .checked_mul(factor)
            .ok_or_else(|| ApiError::Unprocessable(format!("`{name}` is too large"))),
        _ => Err(ApiError::BadRequest(format!(
            "`{name}` must be a positive duration such as 30s, 5m, 1h, 1d, got {value:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn accepts_rfc3339_and_epoch_ms() {
        assert_eq!(parse_to_us("from", "1700000000000").unwrap(), 1_700_000_000_000_000);
        assert_eq!(parse_to_us("from", "2023-11-14T22:13:20Z").unwrap(), 1_700_000_000_000_000);
        assert_eq!(parse_to_us("from", "2023-11-14T23:13:20.5+01:00").unwrap(), 1_700_000_000_500_000);
        assert!(parse_to_us("from", "yesterday").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_us("bucket", "5m").unwrap(), 300_000_000);
        assert_eq!(parse_duration_us("bucket", "60").unwrap(), 60_000_000);
        assert!(parse_duration_us("bucket", "0s").is_err());
        assert!(parse_duration_us("bucket", "5y").is_err());
    }
}
