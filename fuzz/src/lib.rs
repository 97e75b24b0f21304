//! Properties the fuzz targets check, beyond "does not panic". A violated property panics,
//! which libFuzzer reports as a crash and saves the input under `fuzz/artifacts/TARGET/`.
//!
//! Each failure found here gets a regression test in the crate's own test suite
//! (`crates/iot-payload/src/tests.rs`, `crates/iot-query/src/tests.rs`).

use iot_payload::{Format, Limits, Parsed, Reading, RejectReason, is_valid_device_id, is_valid_metric_name};
use serde_json::{Map, Value, json};

/// 2026-01-01T00:00:00Z: the receive time the payload targets parse with.
pub const RECEIVED_AT_US: i64 = 1_767_225_600_000_000;
pub const TOPIC: &str = "devices/dev-1/telemetry";

/// What every accepted message must satisfy, whatever its form (module docs of iot-payload).
pub fn check_parsed(topic: &str, payload: &[u8], received_at_us: i64, limits: &Limits, parsed: &Parsed) {
    assert_eq!(format!("devices/{}/telemetry", parsed.device_id), topic, "device id is not the topic's");
    assert!(is_valid_device_id(&parsed.device_id), "invalid device id accepted: {:?}", parsed.device_id);
    assert!(payload.len() <= limits.max_payload_bytes, "oversized payload accepted");
    assert!(!parsed.readings.is_empty(), "accepted without readings");
    assert!(parsed.readings.len() <= limits.max_readings, "{} readings accepted, limit {}", parsed.readings.len(), limits.max_readings);
    let first = payload.iter().find(|b| !b.is_ascii_whitespace());
    let expected = match first {
        Some(b'{') => Format::Json,
        Some(b'[') => Format::SenML,
        other => panic!("accepted a payload starting with {other:?}"),
    };
    assert_eq!(parsed.format, expected);
    for r in &parsed.readings {
        assert!(is_valid_metric_name(&r.metric), "invalid metric name accepted: {:?}", r.metric);
        assert!(r.value.is_finite(), "non-finite value accepted: {r:?}");
        assert!(r.ts_us >= iot_payload::MIN_TS_US, "timestamp before 2000 accepted: {r:?}");
        assert!(r.ts_us <= received_at_us.saturating_add(limits.max_future_us), "timestamp too far in the future accepted: {r:?}");
    }
    if parsed.format == Format::Json {
        assert!(parsed.skipped.is_empty(), "JSON form reports skipped records");
        let ts = parsed.readings[0].ts_us;
        assert!(parsed.readings.iter().all(|r| r.ts_us == ts), "JSON form readings with different times");
    }
}

fn sorted(mut readings: Vec<Reading>) -> Vec<Reading> {
    readings.sort_by(|a, b| (a.metric.as_str(), a.ts_us).cmp(&(b.metric.as_str(), b.ts_us)));
    readings
}

/// Readings written back as a JSON-form payload (times as RFC 3339 with microseconds).
pub fn to_json_form(readings: &[Reading]) -> Vec<u8> {
    let ts = chrono::DateTime::from_timestamp_micros(readings[0].ts_us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default();
    let metrics: Map<String, Value> = readings.iter().map(|r| (r.metric.clone(), json!(r.value))).collect();
    json!({"ts": ts, "metrics": metrics}).to_string().into_bytes()
}

/// Readings written back as a SenML pack: absolute times in seconds, no base fields.
pub fn to_senml(readings: &[Reading]) -> Vec<u8> {
    let records: Vec<Value> = readings
        .iter()
        .map(|r| json!({"n": r.metric, "t": r.ts_us as f64 / 1e6, "v": r.value}))
        .collect();
    Value::Array(records).to_string().into_bytes()
}

/// Parse, check, and for an accepted message serialize it again (in the form it came in) and
/// parse that: the readings must come back unchanged.
pub fn check_payload(payload: &[u8]) {
    let limits = Limits::default();
    let Ok(parsed) = iot_payload::parse_with(TOPIC, payload, RECEIVED_AT_US, &limits) else {
        return;
    };
    check_parsed(TOPIC, payload, RECEIVED_AT_US, &limits, &parsed);
    let again = match parsed.format {
        Format::Json => to_json_form(&parsed.readings),
        Format::SenML => to_senml(&parsed.readings),
    };
    let reparsed = iot_payload::parse_with(TOPIC, &again, RECEIVED_AT_US, &limits)
        .unwrap_or_else(|e| panic!("re-serialized message rejected: {e}\n{}", String::from_utf8_lossy(&again)));
    assert_eq!(
        sorted(reparsed.readings),
        sorted(parsed.readings),
        "round trip changed the readings\n{}",
        String::from_utf8_lossy(&again)
    );
}

/// The whole entry point: `topic\npayload`, parsed with the default limits and with tight
/// ones; the topic decides exactly when `bad_topic` is the answer.
pub fn check_message(data: &[u8]) {
    let (topic, payload) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(topic) = std::str::from_utf8(topic) else {
        return;
    };
    // The topic rule written out independently of parse_topic.
    let id = topic.strip_prefix("devices/").and_then(|rest| rest.strip_suffix("/telemetry"));
    let topic_ok = id.is_some_and(|id| {
        (1..=64).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    });
    let tight = Limits { max_payload_bytes: 256, max_readings: 3, max_future_us: 1_000_000 };
    for limits in [Limits::default(), tight] {
        match iot_payload::parse_with(topic, payload, RECEIVED_AT_US, &limits) {
            Ok(parsed) => {
                assert!(topic_ok, "accepted topic {topic:?}");
                check_parsed(topic, payload, RECEIVED_AT_US, &limits, &parsed);
            }
            Err(rejection) => {
                assert_eq!(rejection.reason == RejectReason::BadTopic, !topic_ok, "topic {topic:?}: {rejection}");
                assert_ne!(rejection.reason, RejectReason::UnknownDevice, "parse never says unknown_device");
                assert!(rejection.detail.len() < 1024, "rejection detail grows with the input: {} bytes", rejection.detail.len());
            }
        }
    }
}

/// Query strings: every parser either refuses or returns values within the documented bounds
/// that survive `to_query_string` and parsing again unchanged.
pub fn check_query(query: &str) {
    use iot_query::*;
    if let Ok(p) = ReadingsParams::parse(query) {
        check_range(&p.range);
        assert!((1..=MAX_LIMIT).contains(&p.limit), "limit {}", p.limit);
        assert!((MIN_CHART.0..=MAX_CHART.0).contains(&p.width), "width {}", p.width);
        assert!((MIN_CHART.1..=MAX_CHART.1).contains(&p.height), "height {}", p.height);
        assert!(p.cursor.as_deref() != Some(""), "empty cursor kept");
        let qs = p.to_query_string();
        assert_eq!(ReadingsParams::parse(&qs), Ok(p), "readings round trip via {qs:?}");
    }
    if let Ok(p) = AggregateParams::parse(query) {
        check_range(&p.range());
        assert!(p.bucket_us > 0, "bucket {}", p.bucket_us);
        let qs = p.to_query_string();
        assert_eq!(AggregateParams::parse(&qs), Ok(p), "aggregate round trip via {qs:?}");
    }
    if let Ok(p) = DeleteParams::parse(query) {
        check_range(&p.range);
        let qs = p.to_query_string();
        assert_eq!(DeleteParams::parse(&qs), Ok(p), "delete round trip via {qs:?}");
    }
    if let Ok(p) = DeviceListParams::parse(query) {
        assert!((1..=MAX_PAGE_SIZE).contains(&p.page_size), "page_size {}", p.page_size);
        let qs = p.to_query_string();
        assert_eq!(DeviceListParams::parse(&qs), Ok(p), "device list round trip via {qs:?}");
    }
}

fn check_range(range: &iot_query::Range) {
    if let Some(metric) = &range.metric {
        assert!(is_valid_metric_name(metric), "metric {metric:?}");
    }
    if let (Some(from), Some(to)) = (range.from_us, range.to_us) {
        assert!(to > from, "to {to} not after from {from}");
    }
    // Storage reads 0 as "no bound": a `to` the client gave must never turn into that.
    let (metric, _, to_us) = range.to_storage();
    assert_eq!(to_us == 0, range.to_us.is_none(), "to {:?} becomes storage to_us {to_us}", range.to_us);
    assert_eq!(metric.is_empty(), range.metric.is_none());
}

const OFFERED: &[&str] = &["application/json", "text/csv", "image/png", "text/html"];

/// Single values: times and buckets round-trip through their formatters; Accept negotiation
/// only ever picks something offered, and never a type the header gave q=0 alone.
pub fn check_values(text: &str) {
    if let Ok(us) = iot_query::parse_time("from", text) {
        let formatted = iot_query::format_time(us);
        assert_eq!(iot_query::parse_time("from", &formatted), Ok(us), "time {text:?} formats as {formatted:?}");
    }
    if let Ok(us) = iot_query::parse_bucket("bucket", text) {
        assert!(us > 0 && us % 1000 == 0, "bucket {us}");
        let formatted = iot_query::time::format_bucket(us);
        assert_eq!(iot_query::parse_bucket("bucket", &formatted), Ok(us), "bucket {text:?} formats as {formatted:?}");
    }
    for offered in [OFFERED, &OFFERED[1..2], &[][..]] {
        let chosen = iot_query::negotiate(Some(text), offered);
        if let Some(chosen) = chosen {
            assert!(offered.contains(&chosen), "{chosen} was not offered");
        }
        assert_eq!(iot_query::negotiate(Some(text), offered), chosen, "negotiation is not deterministic");
    }
    // No header and an empty one mean "anything": the server's first choice.
    assert_eq!(iot_query::negotiate(None, OFFERED), Some(OFFERED[0]));
}
