//! Timestamps and durations in query parameters: RFC 3339 or epoch milliseconds in,
//! RFC 3339 out; microseconds since the epoch inside (as in the protos).

use chrono::{DateTime, SecondsFormat, Utc};

use crate::{QueryError, Result};

/// 1970-01-01T00:00:00Z: readings are never older (storage refuses them).
pub const MIN_TIME_US: i64 = 0;
/// 9999-12-31T23:59:59.999999Z: the last instant RFC 3339 (four-digit years) can write, so
/// every accepted time can be given back as RFC 3339. Found by fuzz/ query_values: epoch
/// milliseconds `7000001707000001` were accepted and formatted as `+223791-03-23...`, which
/// nothing parses.
pub const MAX_TIME_US: i64 = 253_402_300_799_999_999;

/// Parses `value` as RFC 3339 (`2026-01-02T03:04:05Z`) or epoch milliseconds (`1767323045000`)
/// within [`MIN_TIME_US`]..=[`MAX_TIME_US`]; `name` is the parameter, for the error message.
pub fn parse_time(name: &str, value: &str) -> Result<i64> {
    let value = value.trim();
    let us = if let Ok(ms) = value.parse::<i64>() {
        ms.checked_mul(1000)
            .ok_or_else(|| QueryError::Invalid(format!("`{name}` is out of range")))?
    } else {
        DateTime::parse_from_rfc3339(value)
            .map(|t| t.with_timezone(&Utc).timestamp_micros())
            .map_err(|_| {
                QueryError::Malformed(format!(
                    "`{name}` must be an RFC 3339 timestamp or epoch milliseconds, got {value:?}"
                ))
            })?
    };
    if !(MIN_TIME_US..=MAX_TIME_US).contains(&us) {
        return Err(QueryError::Invalid(format!(
            "`{name}` must be between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z"
        )));
    }
    Ok(us)
}

/// As [`parse_time`]; absent or empty is `None`.
pub fn parse_opt(name: &str, value: Option<&str>) -> Result<Option<i64>> {
    value
        .filter(|v| !v.is_empty())
        .map(|v| parse_time(name, v))
        .transpose()
}

/// RFC 3339 in UTC with as many fractional digits as needed.
pub fn format_time(us: i64) -> String {
    match DateTime::<Utc>::from_timestamp_micros(us) {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        None => us.to_string(),
    }
}

/// Durations like `90s`, `5m`, `1h`, `1d`, `500ms` or plain seconds, for aggregate buckets.
pub fn parse_bucket(name: &str, value: &str) -> Result<i64> {
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
            .ok_or_else(|| QueryError::Invalid(format!("`{name}` is too large"))),
        _ => Err(QueryError::Malformed(format!(
            "`{name}` must be a positive duration such as 30s, 5m, 1h, 1d, got {value:?}"
        ))),
    }
}

/// A bucket as [`parse_bucket`] reads it back.
pub fn format_bucket(us: i64) -> String {
    format!("{}ms", us / 1000)
}
