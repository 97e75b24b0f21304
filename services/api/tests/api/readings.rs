use reqwest::{StatusCode, header};
use serde_json::Value;

use crate::helpers::{error_code, spawn_app, unique_device};

const MINUTE_US: i64 = 60_000_000;

#[tokio::test(flavor = "multi_thread")]
async fn readings_in_every_representation() {
    let app = spawn_app().await;
    let (admin, _) = app.admin().await;
    let id = unique_device();
    app.create_device(&admin, &id).await;
    // 30 minutes of two metrics, aligned to a whole hour two hours ago.
    let t0 = (chrono::Utc::now().timestamp_micros() / 3_600_000_000 - 2) * 3_600_000_000;
    let mut points = Vec::new();
    for i in 0..30 {
        points.push(("temperature", t0 + i * MINUTE_US, 20.0 + i as f64 / 10.0));
        points.push(("humidity", t0 + i * MINUTE_US, 50.0 - i as f64));
    }
    app.write_readings(&id, &points).await;
    let base = app.url(&format!("/api/v1/devices/{id}/readings"));

    // JSON is the default; pages with a cursor.
    let response = admin.get(format!("{base}?metric=temperature&limit=20")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("application/json"));
    let page: Value = response.json().await.unwrap();
    let readings = page["readings"].as_array().unwrap();
    assert_eq!(readings.len(), 20);
    assert_eq!(readings[0]["metric"], "temperature");
    assert_eq!(readings[0]["value"], 20.0);
    let first_ts = readings[0]["ts"].as_str().unwrap().to_string();
    assert!(chrono::DateTime::parse_from_rfc3339(&first_ts).is_ok(), "{first_ts}");
    let cursor = page["next_cursor"].as_str().expect("more pages").to_string();
    let page: Value =
        admin.get(format!("{base}?metric=temperature&limit=20&cursor={cursor}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(page["readings"].as_array().unwrap().len(), 10);
    assert!(page["next_cursor"].is_null());

    // from/to as epoch milliseconds and as RFC 3339 select the same window.
    let from_ms = (t0 + 10 * MINUTE_US) / 1000;
    let to_ms = (t0 + 15 * MINUTE_US) / 1000;
    let by_ms: Value =
        admin.get(format!("{base}?from={from_ms}&to={to_ms}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(by_ms["readings"].as_array().unwrap().len(), 10, "5 minutes x 2 metrics, `to` exclusive");
    let rfc = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).unwrap().to_rfc3339();
    let by_rfc: Value = admin
        .get(&base)
        .query(&[("from", rfc(from_ms)), ("to", rfc(to_ms))])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(by_rfc["readings"], by_ms["readings"]);
    let response = admin.get(format!("{base}?from={to_ms}&to={from_ms}")).send().await.unwrap();
    assert_eq!(error_code(response, StatusCode::UNPROCESSABLE_ENTITY).await, "unprocessable");

    // CSV: header row, then one row per reading.
    let response = admin.get(&base).header(header::ACCEPT, "text/csv").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/csv"));
    let csv = response.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "metric,ts,value");
    assert_eq!(lines.len(), 61, "{csv}");
    assert!(lines[1..].iter().all(|l| l.split(',').count() == 3));
    assert!(lines.iter().any(|l| l.starts_with("humidity,") && l.ends_with(",50")), "{csv}");

    // PNG of the requested size; q-values pick it over CSV.
    let response = admin
        .get(format!("{base}?width=640&height=300"))
        .header(header::ACCEPT, "text/csv;q=0.5, image/png")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "image/png");
    let bytes = response.bytes().await.unwrap();
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes.to_vec()));
    let reader = decoder.read_info().unwrap();
    assert_eq!((reader.info().width, reader.info().height), (640, 300));
    let response = admin.get(format!("{base}?width=100000")).header(header::ACCEPT, "image/png").send().await.unwrap();
    assert_eq!(error_code(response, StatusCode::UNPROCESSABLE_ENTITY).await, "unprocessable");

    // HTML for browsers.
    let response = admin
        .get(&base)
        .header(header::ACCEPT, "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
    let html = response.text().await.unwrap();
    assert!(html.contains("<table") && html.contains("temperature"), "{html}");

    // 406 and HEAD.
    let response = admin.get(&base).header(header::ACCEPT, "application/xml").send().await.unwrap();
    assert_eq!(error_code(response, StatusCode::NOT_ACCEPTABLE).await, "not_acceptable");
    let response = admin.head(&base).header(header::ACCEPT, "text/csv").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/csv"));
    assert!(response.bytes().await.unwrap().is_empty());

    // Latest: one per metric.
    let latest: Value =
        admin.get(app.url(&format!("/api/v1/devices/{id}/readings/latest"))).send().await.unwrap().json().await.unwrap();
    let latest = latest["readings"].as_array().unwrap();
    assert_eq!(latest.len(), 2);
    let temperature = latest.iter().find(|r| r["metric"] == "temperature").unwrap();
    assert!((temperature["value"].as_f64().unwrap() - 22.9).abs() < 1e-9);

    // Aggregate in 10-minute buckets.
    let response = admin
        .get(app.url(&format!("/api/v1/devices/{id}/readings/aggregate?metric=humidity&bucket=10m")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let aggregate: Value = response.json().await.unwrap();
    let buckets = aggregate["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 3, "{aggregate}");
    assert_eq!(buckets[0]["count"], 10);
    assert_eq!(buckets[0]["max"], 50.0);
    assert_eq!(buckets[0]["min"], 41.0);
    let response = admin.get(app.url(&format!("/api/v1/devices/{id}/readings/aggregate?bucket=10m"))).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY, "metric is required");
    let response =
        admin.get(app.url(&format!("/api/v1/devices/{id}/readings/aggregate?metric=humidity&bucket=soon"))).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    // Delete a window, then only the rest is left.
    let response = admin.delete(format!("{base}?metric=humidity&from={from_ms}&to={to_ms}")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let deleted: Value = response.json().await.unwrap();
    assert_eq!(deleted["deleted"], 5);
    let left: Value = admin.get(format!("{base}?metric=humidity")).send().await.unwrap().json().await.unwrap();
    assert_eq!(left["readings"].as_array().unwrap().len(), 25);
    let response = admin.delete(&base).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let left: Value = admin.get(&base).send().await.unwrap().json().await.unwrap();
    assert!(left["readings"].as_array().unwrap().is_empty());
}
