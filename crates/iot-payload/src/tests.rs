#![allow(clippy::unwrap_used)]

use super::*;

const T: &str = "devices/dev-1/telemetry";
/// 2026-01-01T00:00:00Z
const NOW: i64 = 1_767_225_600_000_000;

fn ok(payload: &str) -> Parsed {
    parse(T, payload.as_bytes(), NOW).unwrap_or_else(|e| panic!("{payload}: {e}"))
}

fn reason(payload: &str) -> RejectReason {
    match parse(T, payload.as_bytes(), NOW) {
        Ok(p) => panic!("{payload} was accepted: {p:?}"),
        Err(e) => e.reason,
    }
}

fn r(metric: &str, ts_us: i64, value: f64) -> Reading {
    Reading { metric: metric.into(), ts_us, value }
}

#[test]
fn topics() {
    assert_eq!(parse_topic("devices/abc_DEF-09/telemetry").unwrap(), "abc_DEF-09");
    let long = "a".repeat(64);
    assert_eq!(parse_topic(&format!("devices/{long}/telemetry")).unwrap(), long);
    for bad in [
        "devices//telemetry",
        "devices/a b/telemetry",
        "devices/a.b/telemetry",
        "devices/ä/telemetry",
        "devices/+/telemetry",
        "devices/a/telemetry/x",
        "devices/a/commands",
        "device/a/telemetry",
        "/devices/a/telemetry",
        "devices/a",
        "",
        &format!("devices/{}/telemetry", "a".repeat(65)),
    ] {
        assert_eq!(parse_topic(bad).unwrap_err().reason, RejectReason::BadTopic, "{bad:?}");
        assert_eq!(parse(bad, br#"{"metrics":{"t":1}}"#, NOW).unwrap_err().reason, RejectReason::BadTopic);
    }
}

#[test]
fn json_form_with_epoch_ms() {
    let p = ok(r#"{"ts": 1767225600123, "metrics": {"temperature": 21.5, "humidity": 40}}"#);
    assert_eq!(p.device_id, "dev-1");
    assert_eq!(p.format, Format::Json);
    let mut readings = p.readings;
    readings.sort_by(|a, b| a.metric.cmp(&b.metric));
    assert_eq!(readings, vec![r("humidity", 1_767_225_600_123_000, 40.0), r("temperature", 1_767_225_600_123_000, 21.5)]);
}

#[test]
fn json_form_timestamps() {
    assert_eq!(ok(r#"{"ts":"2026-01-01T00:00:00.5Z","metrics":{"a":1}}"#).readings[0].ts_us, NOW + 500_000);
    assert_eq!(ok(r#"{"ts":"2026-01-01T01:00:00+01:00","metrics":{"a":1}}"#).readings[0].ts_us, NOW);
    assert_eq!(ok(r#"{"metrics":{"a":1}}"#).readings[0].ts_us, NOW);
    assert_eq!(ok(r#"{"ts":null,"metrics":{"a":1}}"#).readings[0].ts_us, NOW);
    assert_eq!(ok(r#"{"ts":1767225600000.25,"metrics":{"a":1}}"#).readings[0].ts_us, NOW + 250);
    assert_eq!(reason(r#"{"ts":"yesterday","metrics":{"a":1}}"#), RejectReason::BadTimestamp);
    assert_eq!(reason(r#"{"ts":"2026-01-01 00:00:00","metrics":{"a":1}}"#), RejectReason::BadTimestamp);
    // seconds instead of milliseconds
    assert_eq!(reason(r#"{"ts":1767225600,"metrics":{"a":1}}"#), RejectReason::BadTimestamp);
    assert_eq!(reason(r#"{"ts":-1,"metrics":{"a":1}}"#), RejectReason::BadTimestamp);
    assert_eq!(reason(r#"{"ts":1e300,"metrics":{"a":1}}"#), RejectReason::BadTimestamp);
    assert_eq!(reason(r#"{"ts":18446744073709551615,"metrics":{"a":1}}"#), RejectReason::BadTimestamp);
    // two days in the future
    assert_eq!(reason(r#"{"ts":1767398400000,"metrics":{"a":1}}"#), RejectReason::BadTimestamp);
    assert_eq!(reason(r#"{"ts":true,"metrics":{"a":1}}"#), RejectReason::WrongType);
    assert_eq!(reason(r#"{"ts":[1],"metrics":{"a":1}}"#), RejectReason::WrongType);
}

#[test]
fn json_form_shapes() {
    assert_eq!(reason(r#"{"metrics":{"a":"1"}}"#), RejectReason::WrongType);
    assert_eq!(reason(r#"{"metrics":{"a":true}}"#), RejectReason::WrongType);
    assert_eq!(reason(r#"{"metrics":{"a":null}}"#), RejectReason::WrongType);
    assert_eq!(reason(r#"{"metrics":{"a":{"v":1}}}"#), RejectReason::WrongType);
    assert_eq!(reason(r#"{"metrics":{"a":1, "b":"x"}}"#), RejectReason::WrongType);
    assert_eq!(reason(r#"{"metrics":[1,2]}"#), RejectReason::WrongType);
    assert_eq!(reason(r#"{"temperature":1}"#), RejectReason::WrongType);
    assert_eq!(reason(r#"{}"#), RejectReason::WrongType);
    assert_eq!(reason(r#"{"metrics":{}}"#), RejectReason::Empty);
    assert_eq!(reason("42"), RejectReason::WrongType);
    assert_eq!(reason(r#""hello""#), RejectReason::WrongType);
    assert_eq!(reason("null"), RejectReason::WrongType);
    assert_eq!(reason(""), RejectReason::Empty);
    assert_eq!(reason("  \n "), RejectReason::Empty);
    // unknown top-level keys are ignored
    assert_eq!(ok(r#"{"seq":7,"metrics":{"a":-1.5e3}}"#).readings, vec![r("a", NOW, -1500.0)]);
}

#[test]
fn metric_names() {
    assert_eq!(ok(r#"{"metrics":{"a.b:c/d-e_f9":1}}"#).readings[0].metric, "a.b:c/d-e_f9");
    assert_eq!(reason(r#"{"metrics":{"":1}}"#), RejectReason::BadMetricName);
    assert_eq!(reason(r#"{"metrics":{"a b":1}}"#), RejectReason::BadMetricName);
    assert_eq!(reason(r#"{"metrics":{"température":1}}"#), RejectReason::BadMetricName);
    assert_eq!(reason(r#"{"metrics":{"a\u0000":1}}"#), RejectReason::BadMetricName);
    let long = "m".repeat(65);
    assert_eq!(reason(&format!(r#"{{"metrics":{{"{long}":1}}}}"#)), RejectReason::BadMetricName);
    let max = "m".repeat(64);
    assert_eq!(ok(&format!(r#"{{"metrics":{{"{max}":1}}}}"#)).readings[0].metric, max);
}

#[test]
fn malformed_json() {
    for bad in [
        "{",
        "{\"metrics\":{\"a\":1}",
        "{\"metrics\":{\"a\":1,}}",
        "{metrics:{a:1}}",
        "{'metrics':{'a':1}}",
        "{\"metrics\":{\"a\":1}} trailing",
        "[",
        "hello",
        "{\"metrics\":{\"a\":01}}",
    ] {
        assert_eq!(reason(bad), RejectReason::MalformedJson, "{bad}");
    }
    assert_eq!(parse(T, b"{\"metrics\":{\"\xff\":1}}", NOW).unwrap_err().reason, RejectReason::MalformedJson);
    let deep = "[".repeat(10_000);
    assert_eq!(reason(&deep), RejectReason::MalformedJson);
    let deep_obj = "{\"a\":".repeat(1000) + "1" + &"}".repeat(1000);
    assert!(parse(T, deep_obj.as_bytes(), NOW).is_err());
}

#[test]
fn non_finite() {
    for bad in [
        r#"{"metrics":{"a":NaN}}"#,
        r#"{"metrics":{"a":Infinity}}"#,
        r#"{"metrics":{"a":-Infinity}}"#,
        r#"{"metrics":{"a":1e400}}"#,
        r#"{"metrics":{"a":-1e309}}"#,
        r#"{"metrics":{"b": 2, "a":   NaN}}"#,
        "{\"metrics\":\n{\"a\":\n  NaN}}",
        r#"[{"n":"a","v":1e999}]"#,
        r#"[{"n":"a","v":NaN}]"#,
        "NaN",
        "1e400",
    ] {
        assert_eq!(reason(bad), RejectReason::NonFinite, "{bad}");
    }
    // bv + v overflows although each is finite
    assert_eq!(reason(r#"[{"bv":1.7e308,"n":"a","v":1.7e308}]"#), RejectReason::NonFinite);
    // tiny numbers are fine (they round to 0 or a subnormal)
    assert_eq!(ok(r#"{"metrics":{"a":1e-400}}"#).readings[0].value, 0.0);
}

/// Regression (fuzz/ payload_json): serde_json's default float parser returned
/// 1.9999999999999998e-30 for `2e-030`, one ulp from the nearest double.
#[test]
fn numbers_parse_to_the_nearest_double() {
    assert_eq!(ok(r#"{"metrics":{"tM":2e-030},"seq":7}"#).readings[0].value, 2e-30);
    assert_eq!(ok(r#"[{"n":"a","v":2e-30}]"#).readings[0].value, 2e-30);
    for v in [2e-30, 0.1, 1.0 / 3.0, 123_456.789e-12, f64::MIN_POSITIVE, 1.7976931348623157e308] {
        let payload = serde_json::json!({"metrics": {"a": v}}).to_string();
        assert_eq!(ok(&payload).readings[0].value, v, "{payload}");
    }
}

#[test]
fn size_limits() {
    let limits = Limits { max_payload_bytes: 32, max_readings: 2, ..Limits::default() };
    let big = format!(r#"{{"metrics":{{"a":1}},"pad":"{}"}}"#, "x".repeat(40));
    assert_eq!(parse_with(T, big.as_bytes(), NOW, &limits).unwrap_err().reason, RejectReason::TooLarge);
    // size is checked before parsing: garbage that is too big is too_large, not malformed
    assert_eq!(parse_with(T, &[b'x'; 33], NOW, &limits).unwrap_err().reason, RejectReason::TooLarge);
    let three = r#"{"metrics":{"a":1,"b":2,"c":3}}"#;
    assert_eq!(parse_with(T, three.as_bytes(), NOW, &limits).unwrap_err().reason, RejectReason::TooManyMetrics);
    let senml = r#"[{"n":"a","v":1},{"n":"b","v":2},{"n":"c","v":3}]"#;
    let limits = Limits { max_readings: 2, ..Limits::default() };
    assert_eq!(parse_with(T, senml.as_bytes(), NOW, &limits).unwrap_err().reason, RejectReason::TooManyMetrics);
    assert_eq!(parse(T, &vec![b' '; 64 * 1024 + 1], NOW).unwrap_err().reason, RejectReason::TooLarge);
}

#[test]
fn senml_rfc_example_with_base_name_and_time() {
    // RFC 8428 section 5.1.2 (times shifted to 2026)
    let p = ok(r#"[
        {"bn":"urn:dev:ow:10e2073a01080063:","bt":1767225600,"bu":"A","bver":5,
         "n":"voltage","u":"V","v":120.1},
        {"n":"current","t":-5,"v":1.2},
        {"n":"current","t":-4,"v":1.3}
    ]"#);
    assert_eq!(p.format, Format::SenML);
    assert_eq!(
        p.readings,
        vec![r("voltage", NOW, 120.1), r("current", NOW - 5_000_000, 1.2), r("current", NOW - 4_000_000, 1.3)]
    );
    assert!(p.skipped.is_empty());
}

#[test]
fn senml_name_mapping() {
    let name = |payload: &str| ok(payload).readings[0].metric.clone();
    assert_eq!(name(r#"[{"bn":"dev-1/","n":"temp","v":1}]"#), "temp");
    assert_eq!(name(r#"[{"bn":"urn:dev:ow:10e2073a:temp","v":1}]"#), "temp");
    assert_eq!(name(r#"[{"bn":"urn:dev:mac:0024befffe804ff1:","n":"temp","v":1}]"#), "temp");
    assert_eq!(name(r#"[{"bn":"room1_","n":"temp","v":1}]"#), "room1_temp");
    assert_eq!(name(r#"[{"n":"a/b","v":1}]"#), "a/b");
    assert_eq!(name(r#"[{"n":"temperature","v":1}]"#), "temperature");
    assert_eq!(reason(r#"[{"bn":"dev-1/","v":1}]"#), RejectReason::BadMetricName);
    assert_eq!(reason(r#"[{"v":1}]"#), RejectReason::BadMetricName);
    assert_eq!(reason(r#"[{"n":"a b","v":1}]"#), RejectReason::BadMetricName);
    // bn carries forward and can change mid-pack
    let p = ok(r#"[{"bn":"x:","n":"a","v":1},{"n":"b","v":2},{"bn":"y_","n":"c","v":3}]"#);
    let names: Vec<_> = p.readings.iter().map(|r| r.metric.as_str()).collect();
    assert_eq!(names, ["a", "b", "y_c"]);
}

#[test]
fn senml_times_and_values() {
    // no time at all: now
    assert_eq!(ok(r#"[{"n":"a","v":1}]"#).readings[0].ts_us, NOW);
    // relative times (< 2^28 s) are relative to the receive time
    assert_eq!(ok(r#"[{"n":"a","v":1,"t":-10}]"#).readings[0].ts_us, NOW - 10_000_000);
    assert_eq!(ok(r#"[{"bt":-60,"n":"a","v":1,"t":30.5}]"#).readings[0].ts_us, NOW - 29_500_000);
    // absolute seconds with fractions
    assert_eq!(ok(r#"[{"n":"a","v":1,"t":1767225600.000001}]"#).readings[0].ts_us, NOW + 1);
    // base value
    assert_eq!(ok(r#"[{"bv":100,"n":"a","v":1.5}]"#).readings[0].value, 101.5);
    // absolute time before 2000 (but above 2^28 s, i.e. 1978)
    assert_eq!(reason(r#"[{"n":"a","v":1,"t":300000000}]"#), RejectReason::BadTimestamp);
    assert_eq!(reason(r#"[{"n":"a","v":1,"t":1e300}]"#), RejectReason::BadTimestamp);
    assert_eq!(reason(r#"[{"n":"a","v":1,"t":-1e300}]"#), RejectReason::BadTimestamp);
    assert_eq!(reason(r#"[{"n":"a","v":1,"t":"now"}]"#), RejectReason::WrongType);
}

#[test]
fn senml_non_numeric_records_are_skipped() {
    let p = ok(r#"[
        {"bn":"urn:dev:ow:1:","n":"door","vb":true},
        {"n":"label","vs":"kitchen"},
        {"n":"blob","vd":"aGVsbG8"},
        {"n":"energy","s":12.5},
        {"n":"nothing"},
        {"n":"temp","v":21.5}
    ]"#);
    assert_eq!(p.readings, vec![r("temp", NOW, 21.5)]);
    let reasons: Vec<_> = p.skipped.iter().map(|s| (s.index, s.reason.label())).collect();
    assert_eq!(
        reasons,
        [(0, "non_numeric_value"), (1, "non_numeric_value"), (2, "non_numeric_value"), (3, "sum_only"), (4, "no_value")]
    );
    assert_eq!(reason(r#"[{"n":"door","vb":true}]"#), RejectReason::WrongType);
    assert_eq!(reason(r#"[{"n":"energy","s":1}]"#), RejectReason::Empty);
    assert_eq!(reason(r#"[{"bn":"x:"}]"#), RejectReason::Empty);
    assert_eq!(reason("[]"), RejectReason::Empty);
}

#[test]
fn senml_wrong_types() {
    for bad in [
        r#"[{"n":"a","v":"1"}]"#,
        r#"[{"n":1,"v":1}]"#,
        r#"[{"bn":1,"n":"a","v":1}]"#,
        r#"[{"bt":"x","n":"a","v":1}]"#,
        r#"[{"bv":true,"n":"a","v":1}]"#,
        r#"[{"n":"a","vb":"yes"}]"#,
        r#"[{"n":"a","vs":1}]"#,
        r#"[{"n":"a","s":"1"}]"#,
        r#"[{"bver":"5","n":"a","v":1}]"#,
        r#"[1,2,3]"#,
        r#"[{"n":"a","v":1}, "x"]"#,
        r#"[[{"n":"a","v":1}]]"#,
    ] {
        assert_eq!(reason(bad), RejectReason::WrongType, "{bad}");
    }
    assert_eq!(reason(r#"[{"n":"a","v":1,"crit_":1}]"#), RejectReason::UnsupportedSenml);
    assert_eq!(reason(r#"[{"bver":11,"n":"a","v":1}]"#), RejectReason::UnsupportedSenml);
    // unknown fields without the must-understand suffix are ignored
    assert_eq!(ok(r#"[{"n":"a","v":1,"foo":"bar","ut":60,"u":"Cel"}]"#).readings.len(), 1);
}

#[test]
fn labels_are_stable_and_unique() {
    let labels: Vec<_> = RejectReason::ALL.iter().map(|r| r.label()).collect();
    assert_eq!(
        labels,
        [
            "bad_topic",
            "too_large",
            "empty",
            "malformed_json",
            "wrong_type",
            "non_finite",
            "bad_metric_name",
            "bad_timestamp",
            "too_many_metrics",
            "unsupported_senml",
            "unknown_device"
        ]
    );
    let rej = parse(T, b"{", NOW).unwrap_err();
    assert!(rej.to_string().starts_with("malformed_json: "), "{rej}");
}

/// A cheap deterministic fuzz: mutate valid payloads byte-wise and check nothing panics
/// and every accepted message obeys the invariants.
#[test]
fn never_panics_on_mutated_input() {
    let seeds: [&[u8]; 4] = [
        br#"{"ts": 1767225600123, "metrics": {"temperature": 21.5, "humidity": 40}}"#,
        br#"{"ts":"2026-01-01T00:00:00Z","metrics":{"a":1e10}}"#,
        br#"[{"bn":"urn:dev:ow:1:","bt":1767225600,"n":"v","v":1},{"n":"c","t":-5,"v":1.2,"vb":true}]"#,
        br#"[{"n":"a","v":-0.0,"t":-1e3},{"n":"s","s":2}]"#,
    ];
    let alphabet = b"{}[]\":,.-+eE0123456789 naNIfty\\u\xff\x00tvbs_";
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..20_000 {
        let seed = seeds[(next() % seeds.len() as u64) as usize];
        let mut buf = seed.to_vec();
        for _ in 0..(1 + next() % 4) {
            let pos = (next() % (buf.len() as u64 + 1)) as usize;
            let byte = alphabet[(next() % alphabet.len() as u64) as usize];
            match next() % 3 {
                0 if pos < buf.len() => buf[pos] = byte,
                1 if pos < buf.len() => {
                    buf.remove(pos);
                }
                _ => buf.insert(pos, byte),
            }
        }
        let received = (next() % (i64::MAX as u64)) as i64;
        for now in [NOW, received, i64::MAX, i64::MIN, 0] {
            if let Ok(p) = parse(T, &buf, now) {
                assert!(!p.readings.is_empty());
                for reading in &p.readings {
                    assert!(reading.value.is_finite());
                    assert!(is_valid_metric_name(&reading.metric));
                    assert!(reading.ts_us >= MIN_TS_US);
                }
            }
        }
    }
}
