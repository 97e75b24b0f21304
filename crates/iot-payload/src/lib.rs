//! Device telemetry: MQTT topic and payload parsing into readings.
//!
//! Pure functions, no I/O, no panics on any input (see the property-style tests at the end),
//! so that ingest and the api's live stream agree on what a message means.
//!
//! # Topic
//! `devices/{device_id}/telemetry` with `device_id` matching `[A-Za-z0-9_-]{1,64}`.
//!
//! # Payload forms
//! The first non-whitespace byte decides: `{` is the JSON form, `[` is SenML.
//!
//! **JSON form**: `{"ts": <RFC 3339 string | epoch milliseconds>, "metrics": {"name": number, ...}}`.
//! `ts` is optional (the receive time is used). Every metric value must be a finite JSON number;
//! any other value (string, bool, null, object) rejects the whole message as `wrong_type`,
//! because a half-stored JSON message is harder to reason about than a rejected one.
//! Unknown top-level keys are ignored (forward compatibility, e.g. a sequence number).
//!
//! **SenML JSON** (RFC 8428): an array of records; base fields (`bn`, `bt`, `bv`) carry
//! forward to later records. Resolved name = `bn + n`, resolved time = `bt + t` in seconds
//! (times below 2^28 are relative to the receive time, as the RFC says), value = `bv + v`.
//! - **Name to metric**: the device is always the topic's device (brokers authorise by topic),
//!   so an identifier in the name is dropped: the prefix of the *base name* up to and including
//!   its last `:` or `/` is removed from the resolved name. `bn:"urn:dev:ow:10e2073a:"`,
//!   `n:"temp"` -> `temp`; `bn:"dev-1/"`, `n:"temp"` -> `temp`; `bn:"urn:dev:ow:10e2073a:temp"`
//!   alone -> `temp`; `bn:"room1_"`, `n:"temp"` -> `room1_temp`; no `bn`, `n:"a/b"` -> `a/b`.
//!   The result must match `[A-Za-z0-9_.:/-]{1,64}` or the message is rejected (`bad_metric_name`).
//! - **Values**: only numeric `v` (plus `bv`) becomes a reading. Records carrying `vs`, `vb`,
//!   `vd`, only a sum `s`, or no value are *skipped* and listed in [`Parsed::skipped`] with a
//!   reason; the rest of the pack is kept, because SenML packs legitimately mix value types.
//!   If nothing numeric remains the message is rejected (`wrong_type` when something was skipped
//!   for its value type, `empty` otherwise). A field ending in `_` (RFC 8428 "must understand")
//!   rejects the message (`unsupported_senml`); other unknown fields are ignored.
//!   Wrongly typed known fields (`"v":"1"`, `"n":1`) reject the message (`wrong_type`).
//!
//! # Timestamps
//! Resolved to microseconds since the epoch. Rejected (`bad_timestamp`) when unparsable, before
//! 2000-01-01 (an epoch-milliseconds value that small is almost always seconds sent by mistake),
//! or later than `received_at + limits.max_future_us` (a device clock far in the future would
//! otherwise write rows nobody can overwrite).
//!
//! # Numbers
//! Parsed to the nearest f64 (serde_json's `float_roundtrip`), so that a value written back
//! with Rust's shortest representation parses to the same reading.
//!
//! # Non-finite numbers
//! JSON has no NaN/Infinity; `NaN`, `Infinity` literals and numbers whose exponent overflows an
//! f64 (`1e400`) are reported as `non_finite` rather than `malformed_json` so that the counter
//! says what the device did wrong.

use std::fmt;

use serde_json::{Map, Value};

/// A reading extracted from a message (the device comes from the topic).
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub metric: String,
    pub ts_us: i64,
    pub value: f64,
}

/// Which payload form a message used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    SenML,
}

/// A SenML record that was not turned into a reading, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Index of the record in the SenML array.
    pub index: usize,
    pub reason: SkipReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// `vs`, `vb` or `vd`: not a number.
    NonNumericValue,
    /// Only a sum (`s`): integrated values are not readings.
    SumOnly,
    /// No value at all (e.g. a record carrying base fields only).
    NoValue,
}

impl SkipReason {
    pub fn label(self) -> &'static str {
        match self {
            SkipReason::NonNumericValue => "non_numeric_value",
            SkipReason::SumOnly => "sum_only",
            SkipReason::NoValue => "no_value",
        }
    }
}

/// A successfully parsed message.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub device_id: String,
    pub format: Format,
    pub readings: Vec<Reading>,
    pub skipped: Vec<Skipped>,
}

/// Why a message was rejected. [`RejectReason::label`] is stable: it is a Prometheus label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// Topic is not `devices/{id}/telemetry` or the id does not match `[A-Za-z0-9_-]{1,64}`.
    BadTopic,
    /// Payload larger than the configured limit.
    TooLarge,
    /// Empty payload, no metrics, empty SenML array, or nothing left after skipping.
    Empty,
    /// Not valid JSON (including invalid UTF-8 and nesting deeper than serde_json allows).
    MalformedJson,
    /// Valid JSON of the wrong shape or with wrongly typed fields.
    WrongType,
    /// NaN, Infinity, or a number that overflows f64 (also after adding `bv`).
    NonFinite,
    /// Metric name empty, too long or with characters outside `[A-Za-z0-9_.:/-]`.
    BadMetricName,
    /// Timestamp unparsable or outside the accepted window.
    BadTimestamp,
    /// More readings in one message than the configured limit.
    TooManyMetrics,
    /// SenML field the RFC says we must understand (name ending in `_`) or an unsupported `bver`.
    UnsupportedSenml,
    /// Never produced by [`parse`]: storage reported the device as not registered.
    UnknownDevice,
}

impl RejectReason {
    /// Every reason, so that counters can be created at zero for each label.
    pub const ALL: [RejectReason; 11] = [
        RejectReason::BadTopic,
        RejectReason::TooLarge,
        RejectReason::Empty,
        RejectReason::MalformedJson,
        RejectReason::WrongType,
        RejectReason::NonFinite,
        RejectReason::BadMetricName,
        RejectReason::BadTimestamp,
        RejectReason::TooManyMetrics,
        RejectReason::UnsupportedSenml,
        RejectReason::UnknownDevice,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RejectReason::BadTopic => "bad_topic",
            RejectReason::TooLarge => "too_large",
            RejectReason::Empty => "empty",
            RejectReason::MalformedJson => "malformed_json",
            RejectReason::WrongType => "wrong_type",
            RejectReason::NonFinite => "non_finite",
            RejectReason::BadMetricName => "bad_metric_name",
            RejectReason::BadTimestamp => "bad_timestamp",
            RejectReason::TooManyMetrics => "too_many_metrics",
            RejectReason::UnsupportedSenml => "unsupported_senml",
            RejectReason::UnknownDevice => "unknown_device",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// A rejected message: a reason for the counter and a detail for the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
}

impl Rejection {
    fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Self { reason, detail: detail.into() }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason.label(), self.detail)
    }
}

impl std::error::Error for Rejection {}

/// Limits applied by [`parse_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_payload_bytes: usize,
    pub max_readings: usize,
    /// How far past the receive time a timestamp may lie.
    pub max_future_us: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_payload_bytes: 64 * 1024, max_readings: 1000, max_future_us: 24 * 3600 * 1_000_000 }
    }
}

/// 2000-01-01T00:00:00Z in microseconds.
pub const MIN_TS_US: i64 = 946_684_800_000_000;
/// SenML: times below 2^28 seconds are relative to "now" (RFC 8428 section 4.5.3).
const SENML_RELATIVE_LIMIT_S: f64 = 268_435_456.0;
pub const MAX_ID_LEN: usize = 64;
pub const MAX_METRIC_LEN: usize = 64;

/// Whether `id` is a valid device id: `[A-Za-z0-9_-]{1,64}`.
pub fn is_valid_device_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether `name` is a valid metric name: `[A-Za-z0-9_.:/-]{1,64}`.
pub fn is_valid_metric_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_METRIC_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'/' | b'-'))
}

/// The device id of a telemetry topic `devices/{id}/telemetry`.
pub fn parse_topic(topic: &str) -> Result<&str, Rejection> {
    let mut parts = topic.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("devices"), Some(id), Some("telemetry"), None) if is_valid_device_id(id) => Ok(id),
        (Some("devices"), Some(_), Some("telemetry"), None) => Err(Rejection::new(
            RejectReason::BadTopic,
            format!("device id in topic {:?} does not match [A-Za-z0-9_-]{{1,64}}", truncate(topic, 100)),
        )),
        _ => Err(Rejection::new(
            RejectReason::BadTopic,
            format!("topic {:?} is not devices/{{id}}/telemetry", truncate(topic, 100)),
        )),
    }
}

/// Parses a message with the default [`Limits`]. `received_at_us` is the receive time in
/// microseconds since the epoch (used when a payload has no time, and for SenML relative times).
pub fn parse(topic: &str, payload: &[u8], received_at_us: i64) -> Result<Parsed, Rejection> {
    parse_with(topic, payload, received_at_us, &Limits::default())
}

/// Parses a message. Never panics.
pub fn parse_with(topic: &str, payload: &[u8], received_at_us: i64, limits: &Limits) -> Result<Parsed, Rejection> {
    let device_id = parse_topic(topic)?.to_string();
    if payload.len() > limits.max_payload_bytes {
        return Err(Rejection::new(
            RejectReason::TooLarge,
            format!("payload is {} bytes, limit {}", payload.len(), limits.max_payload_bytes),
        ));
    }
    let first = payload.iter().find(|b| !b.is_ascii_whitespace());
    let Some(first) = first else {
        return Err(Rejection::new(RejectReason::Empty, "empty payload"));
    };
    if !matches!(first, b'{' | b'[') {
        // Still run it through the JSON parser so that `NaN`, `1e999` etc. get a precise reason.
        return match serde_json::from_slice::<Value>(payload) {
            Ok(v) => Err(Rejection::new(
                RejectReason::WrongType,
                format!("payload is a JSON {}, expected an object or a SenML array", kind(&v)),
            )),
            Err(e) => Err(json_error(payload, &e)),
        };
    }
    let value: Value = serde_json::from_slice(payload).map_err(|e| json_error(payload, &e))?;
    let ctx = Ctx { received_at_us, limits };
    let (format, readings, skipped) = match value {
        Value::Object(obj) => (Format::Json, ctx.json_form(&obj)?, Vec::new()),
        Value::Array(records) => {
            let (readings, skipped) = ctx.senml(&records)?;
            (Format::SenML, readings, skipped)
        }
        // Unreachable given the first byte check, but cheap to answer properly.
        other => {
            return Err(Rejection::new(RejectReason::WrongType, format!("payload is a JSON {}", kind(&other))));
        }
    };
    if readings.len() > limits.max_readings {
        return Err(Rejection::new(
            RejectReason::TooManyMetrics,
            format!("{} readings in one message, limit {}", readings.len(), limits.max_readings),
        ));
    }
    Ok(Parsed { device_id, format, readings, skipped })
}

struct Ctx<'a> {
    received_at_us: i64,
    limits: &'a Limits,
}

impl Ctx<'_> {
    fn json_form(&self, obj: &Map<String, Value>) -> Result<Vec<Reading>, Rejection> {
        let ts_us = match obj.get("ts") {
            None | Some(Value::Null) => self.received_at_us,
            Some(Value::String(s)) => {
                let dt = chrono::DateTime::parse_from_rfc3339(s).map_err(|e| {
                    Rejection::new(RejectReason::BadTimestamp, format!("ts {:?} is not RFC 3339: {e}", truncate(s, 64)))
                })?;
                dt.timestamp_micros()
            }
            Some(Value::Number(n)) => {
                let ms = n.as_f64().unwrap_or(f64::NAN);
                ms_to_us(ms).ok_or_else(|| {
                    Rejection::new(RejectReason::BadTimestamp, format!("ts {n} is not a valid epoch millisecond value"))
                })?
            }
            Some(other) => {
                return Err(Rejection::new(
                    RejectReason::WrongType,
                    format!("ts is a {}, expected an RFC 3339 string or epoch milliseconds", kind(other)),
                ));
            }
        };
        self.check_ts(ts_us)?;
        let metrics = match obj.get("metrics") {
            Some(Value::Object(m)) => m,
            Some(other) => {
                return Err(Rejection::new(
                    RejectReason::WrongType,
                    format!("metrics is a {}, expected an object", kind(other)),
                ));
            }
            None => return Err(Rejection::new(RejectReason::WrongType, "object without a \"metrics\" field")),
        };
        if metrics.is_empty() {
            return Err(Rejection::new(RejectReason::Empty, "metrics object is empty"));
        }
        if metrics.len() > self.limits.max_readings {
            return Err(Rejection::new(
                RejectReason::TooManyMetrics,
                format!("{} metrics in one message, limit {}", metrics.len(), self.limits.max_readings),
            ));
        }
        let mut readings = Vec::with_capacity(metrics.len());
        for (name, value) in metrics {
            check_metric_name(name)?;
            let value = match value {
                Value::Number(n) => finite(n.as_f64(), name)?,
                other => {
                    return Err(Rejection::new(
                        RejectReason::WrongType,
                        format!("metric {name:?} is a {}, expected a number", kind(other)),
                    ));
                }
            };
            readings.push(Reading { metric: name.clone(), ts_us, value });
        }
        Ok(readings)
    }

    fn senml(&self, records: &[Value]) -> Result<(Vec<Reading>, Vec<Skipped>), Rejection> {
        if records.is_empty() {
            return Err(Rejection::new(RejectReason::Empty, "empty SenML array"));
        }
        // Checked before the loop so a huge pack costs no per-record work.
        if records.len() > self.limits.max_readings {
            return Err(Rejection::new(
                RejectReason::TooManyMetrics,
                format!("{} SenML records in one message, limit {}", records.len(), self.limits.max_readings),
            ));
        }
        let mut base_name = String::new();
        let mut base_time = 0.0_f64;
        let mut base_value = 0.0_f64;
        let mut readings = Vec::new();
        let mut skipped = Vec::new();
        for (index, record) in records.iter().enumerate() {
            let Value::Object(rec) = record else {
                return Err(Rejection::new(
                    RejectReason::WrongType,
                    format!("SenML record {index} is a {}, expected an object", kind(record)),
                ));
            };
            for key in rec.keys() {
                if key.ends_with('_') {
                    return Err(Rejection::new(
                        RejectReason::UnsupportedSenml,
                        format!("SenML record {index} has must-understand field {:?}", truncate(key, 32)),
                    ));
                }
            }
            if let Some(v) = rec.get("bver") {
                let ver = v.as_u64().ok_or_else(|| wrong_field(index, "bver", v, "an integer"))?;
                if ver > 10 {
                    return Err(Rejection::new(RejectReason::UnsupportedSenml, format!("SenML version {ver}")));
                }
            }
            if let Some(v) = rec.get("bn") {
                base_name = v.as_str().ok_or_else(|| wrong_field(index, "bn", v, "a string"))?.to_string();
            }
            if let Some(v) = rec.get("bt") {
                base_time = number_field(index, "bt", v)?;
            }
            if let Some(v) = rec.get("bv") {
                base_value = number_field(index, "bv", v)?;
            }
            // `bu`, `bs`, `u`, `ut` are understood and deliberately not stored.
            let name = match rec.get("n") {
                Some(v) => v.as_str().ok_or_else(|| wrong_field(index, "n", v, "a string"))?,
                None => "",
            };
            let t = match rec.get("t") {
                Some(v) => number_field(index, "t", v)?,
                None => 0.0,
            };
            for (field, expect) in [("vs", "a string"), ("vd", "a string")] {
                if let Some(v) = rec.get(field)
                    && !v.is_string()
                {
                    return Err(wrong_field(index, field, v, expect));
                }
            }
            if let Some(v) = rec.get("vb")
                && !v.is_boolean()
            {
                return Err(wrong_field(index, "vb", v, "a boolean"));
            }
            if let Some(v) = rec.get("s") {
                number_field(index, "s", v)?;
            }
            let value = match rec.get("v") {
                Some(v) => number_field(index, "v", v)?,
                None => {
                    let reason = if ["vs", "vb", "vd"].iter().any(|f| rec.contains_key(*f)) {
                        SkipReason::NonNumericValue
                    } else if rec.contains_key("s") {
                        SkipReason::SumOnly
                    } else {
                        SkipReason::NoValue
                    };
                    skipped.push(Skipped { index, reason });
                    continue;
                }
            };
            let value = base_value + value;
            if !value.is_finite() {
                return Err(Rejection::new(
                    RejectReason::NonFinite,
                    format!("SenML record {index}: bv + v is not finite"),
                ));
            }
            let metric = senml_metric(&base_name, name);
            check_metric_name(&metric)?;
            let ts_us = self.senml_time(index, base_time + t)?;
            readings.push(Reading { metric, ts_us, value });
        }
        if readings.is_empty() {
            let non_numeric = skipped.iter().any(|s| s.reason == SkipReason::NonNumericValue);
            return Err(if non_numeric {
                Rejection::new(RejectReason::WrongType, "SenML pack has no numeric values")
            } else {
                Rejection::new(RejectReason::Empty, "SenML pack has no values")
            });
        }
        Ok((readings, skipped))
    }

    fn senml_time(&self, index: usize, seconds: f64) -> Result<i64, Rejection> {
        let bad = || Rejection::new(RejectReason::BadTimestamp, format!("SenML record {index}: time {seconds} s"));
        if !seconds.is_finite() {
            return Err(bad());
        }
        let ts_us = if seconds < SENML_RELATIVE_LIMIT_S {
            // Relative: may be negative ("10 s ago"); bounded, so the cast cannot saturate wrongly.
            let delta = (seconds * 1e6).round();
            if delta.abs() > 1e15 {
                return Err(bad());
            }
            self.received_at_us.checked_add(delta as i64).ok_or_else(bad)?
        } else {
            let us = (seconds * 1e6).round();
            if us >= i64::MAX as f64 {
                return Err(bad());
            }
            us as i64
        };
        self.check_ts(ts_us)?;
        Ok(ts_us)
    }

    fn check_ts(&self, ts_us: i64) -> Result<(), Rejection> {
        if ts_us < MIN_TS_US {
            return Err(Rejection::new(
                RejectReason::BadTimestamp,
                format!("timestamp {ts_us} us is before 2000-01-01 (seconds instead of milliseconds?)"),
            ));
        }
        let max = self.received_at_us.saturating_add(self.limits.max_future_us);
        if ts_us > max {
            return Err(Rejection::new(
                RejectReason::BadTimestamp,
                format!("timestamp {ts_us} us is more than {} s in the future", self.limits.max_future_us / 1_000_000),
            ));
        }
        Ok(())
    }
}

/// Name mapping documented at the top of the crate.
fn senml_metric(base_name: &str, name: &str) -> String {
    let full = format!("{base_name}{name}");
    let strip = base_name.rfind([':', '/']).map(|i| i + 1).unwrap_or(0);
    full[strip..].to_string()
}

fn ms_to_us(ms: f64) -> Option<i64> {
    if !ms.is_finite() {
        return None;
    }
    let us = (ms * 1000.0).round();
    // Compared as f64: i64::MAX is not exactly representable, and `as` saturates.
    if us <= i64::MIN as f64 || us >= i64::MAX as f64 {
        return None;
    }
    Some(us as i64)
}

fn check_metric_name(name: &str) -> Result<(), Rejection> {
    if is_valid_metric_name(name) {
        Ok(())
    } else {
        Err(Rejection::new(
            RejectReason::BadMetricName,
            format!("metric name {:?} does not match [A-Za-z0-9_.:/-]{{1,64}}", truncate(name, 80)),
        ))
    }
}

fn finite(v: Option<f64>, name: &str) -> Result<f64, Rejection> {
    match v {
        Some(v) if v.is_finite() => Ok(v),
        _ => Err(Rejection::new(RejectReason::NonFinite, format!("metric {name:?} is not a finite number"))),
    }
}

fn number_field(index: usize, field: &str, v: &Value) -> Result<f64, Rejection> {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.is_finite() => Ok(f),
            _ => Err(Rejection::new(RejectReason::NonFinite, format!("SenML record {index}: {field} is not finite"))),
        },
        other => Err(wrong_field(index, field, other, "a number")),
    }
}

fn wrong_field(index: usize, field: &str, v: &Value, expected: &str) -> Rejection {
    Rejection::new(
        RejectReason::WrongType,
        format!("SenML record {index}: {field} is a {}, expected {expected}", kind(v)),
    )
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Classifies a serde_json error: overflowing numbers and NaN/Infinity literals are `non_finite`.
fn json_error(payload: &[u8], e: &serde_json::Error) -> Rejection {
    let msg = e.to_string();
    if msg.starts_with("number out of range") {
        return Rejection::new(RejectReason::NonFinite, format!("number overflows f64 ({msg})"));
    }
    if e.is_syntax()
        && let Some(offset) = byte_offset(payload, e.line(), e.column())
    {
        // serde_json reports the column of the offending character (1-based) or just past it.
        let lo = offset.saturating_sub(2);
        let window = &payload[lo..payload.len().min(offset + 9)];
        let window = String::from_utf8_lossy(window);
        if window.contains("NaN") || window.contains("Infinity") {
            return Rejection::new(RejectReason::NonFinite, format!("NaN/Infinity is not a JSON number ({msg})"));
        }
    }
    if e.is_eof() && payload.iter().all(|b| b.is_ascii_whitespace()) {
        return Rejection::new(RejectReason::Empty, "empty payload");
    }
    Rejection::new(RejectReason::MalformedJson, msg)
}

fn byte_offset(payload: &[u8], line: usize, column: usize) -> Option<usize> {
    if line == 0 {
        return None;
    }
    let mut start = 0;
    for _ in 1..line {
        start += payload.get(start..)?.iter().position(|&b| b == b'\n')? + 1;
    }
    Some((start + column.saturating_sub(1)).min(payload.len()))
}

/// At most `max` bytes of `s`, cut on a character boundary: for quoting untrusted text
/// (topics, fields) in logs and rejection details without letting it grow them unbounded.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests;
