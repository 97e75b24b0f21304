//! Credentials: always through Secrets, never inlined; production values name existing
//! Secrets and contain nothing secret.

use iot_chart_tests::{chart_dir, kind, name, render_all};
use serde_json::Value;

fn is_credential(env_name: &str) -> bool {
    env_name.ends_with("PASSWORD")
        || env_name.ends_with("DATABASE_URL")
        || env_name.ends_with("REDIS_URL")
}

#[test]
fn credentials_reach_containers_only_through_secret_references() {
    let Some(sets) =
        render_all("credentials_reach_containers_only_through_secret_references").unwrap()
    else {
        return;
    };
    for r in &sets {
        let mut seen = 0;
        for (container, e) in r.env_entries() {
            let env_name = e["name"].as_str().unwrap();
            if is_credential(env_name) {
                seen += 1;
                assert!(
                    e["value"].is_null(),
                    "{}: {container} {env_name} is inlined",
                    r.name
                );
                let secret = &e["valueFrom"]["secretKeyRef"];
                assert!(
                    secret["name"].is_string() && secret["key"].is_string(),
                    "{}: {container} {env_name}: {e}",
                    r.name
                );
            }
        }
        // storage: database; session: redis; ingest, api: broker; mosquitto bootstrap: 3.
        assert!(
            seen >= 7,
            "{}: only {seen} credential variables found",
            r.name
        );
        // Nothing secret in ConfigMaps or in container arguments either.
        for o in r.objects.iter().filter(|o| kind(o) == "ConfigMap") {
            let text = o["data"].to_string();
            assert!(
                !text.contains("mysql://") && !text.contains("redis://"),
                "{}: ConfigMap {} holds a URL",
                r.name,
                name(o)
            );
        }
    }
}

#[test]
fn production_values_use_existing_secrets_and_inline_none() {
    let Some(sets) = render_all("production_values_use_existing_secrets_and_inline_none").unwrap()
    else {
        return;
    };
    let prod = sets
        .iter()
        .find(|r| r.name == "production-values")
        .expect("ci/production-values.yaml");
    let secrets: Vec<&str> = prod.of_kind("Secret").map(name).collect();
    assert!(
        secrets.is_empty(),
        "production values make the chart render Secrets: {secrets:?}"
    );
    let mut referenced = std::collections::BTreeSet::new();
    for (_, e) in prod.env_entries() {
        if let Some(secret) = e["valueFrom"]["secretKeyRef"]["name"].as_str() {
            referenced.insert(secret.to_string());
        }
    }
    let expected: std::collections::BTreeSet<String> =
        ["iot-database", "iot-redis", "iot-mqtt-accounts"]
            .into_iter()
            .map(String::from)
            .collect();
    assert_eq!(
        referenced, expected,
        "production pods read exactly the operator's Secrets"
    );
    // Production uses external stores, TLS at the edge and on the broker.
    assert!(
        prod.find("StatefulSet", "mariadb").is_none() && prod.find("Deployment", "redis").is_none()
    );
    let ingress = prod.of_kind("Ingress").next().expect("an Ingress");
    assert!(
        ingress["spec"]["tls"]
            .as_array()
            .is_some_and(|t| !t.is_empty()),
        "Ingress TLS"
    );
    let broker = prod.find("ConfigMap", "mosquitto").unwrap();
    assert!(
        broker["data"]["mosquitto.conf"]
            .as_str()
            .unwrap()
            .contains("listener 8883"),
        "broker TLS listener"
    );

    // The values file itself: no password, no URL with credentials.
    let text = std::fs::read_to_string(chart_dir().join("ci/production-values.yaml")).unwrap();
    let values: Value = serde_norway::from_str(&text).unwrap();
    fn walk(path: &str, v: &Value) {
        match v {
            Value::Object(map) => map
                .iter()
                .for_each(|(k, v)| walk(&format!("{path}.{k}"), v)),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .for_each(|(i, v)| walk(&format!("{path}[{i}]"), v)),
            Value::String(s) => {
                let key = path.rsplit('.').next().unwrap_or("").to_lowercase();
                assert!(
                    !key.contains("password") || s.is_empty(),
                    "{path} is set in production values"
                );
                assert!(
                    !(s.contains("://") && s.contains('@')),
                    "{path} holds a URL with credentials"
                );
            }
            _ => {}
        }
    }
    walk("", &values);
}

#[test]
fn trial_mode_generates_strong_passwords_into_secrets() {
    let Some(sets) = render_all("trial_mode_generates_strong_passwords_into_secrets").unwrap()
    else {
        return;
    };
    let default = sets.iter().find(|r| r.name == "default").unwrap();
    let mut checked = 0;
    for s in default.of_kind("Secret") {
        for (key, value) in s["data"].as_object().unwrap() {
            if key.ends_with("password") {
                let decoded = decode_base64(value.as_str().unwrap());
                assert!(
                    decoded.len() >= 24,
                    "{}/{key}: {} characters",
                    name(s),
                    decoded.len()
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 6,
        "mariadb (2), redis, broker admin/ingest/api passwords: {checked}"
    );
}

/// Standard base64 (helm's b64enc), without a dependency for it.
fn decode_base64(s: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c).expect("base64") as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    String::from_utf8(out).unwrap()
}
