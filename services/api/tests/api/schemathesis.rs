//! Property-based checks of the running api against its own `/openapi.json` with schemathesis
//! (PyPI, version pinned in scripts/lib/schemathesis.sh, installed by scripts/test.sh into the
//! git-ignored `.tools/schemathesis`). The api runs as in every other test here: real storage
//! (MariaDB) and session (Redis) processes; schemathesis sends the admin's session cookie.
//!
//! Environment: SCHEMATHESIS_BIN (the `st` executable; without it the test says SKIPPED, or
//! fails when IOT_REQUIRE_SCHEMATHESIS=1, as CI sets), SCHEMATHESIS_MAX_TIME (seconds, default
//! 45), SCHEMATHESIS_REPORT_DIR (where the JSON/JUnit reports go; default a temporary dir).

use std::{path::PathBuf, process::Stdio, time::Duration};

use reqwest::header;

use crate::helpers::{spawn_app, unique_device};

fn schemathesis_bin() -> Option<PathBuf> {
    let bin = std::env::var_os("SCHEMATHESIS_BIN").map(PathBuf::from)?;
    bin.exists().then_some(bin)
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_server_error_and_no_response_outside_the_schema() {
    let Some(st) = schemathesis_bin() else {
        assert!(
            std::env::var("IOT_REQUIRE_SCHEMATHESIS").is_err(),
            "IOT_REQUIRE_SCHEMATHESIS is set but SCHEMATHESIS_BIN is not an executable"
        );
        eprintln!("SKIPPED: set SCHEMATHESIS_BIN (scripts/test.sh installs schemathesis into .tools/schemathesis)");
        return;
    };
    let max_time: u64 = std::env::var("SCHEMATHESIS_MAX_TIME").ok().and_then(|s| s.parse().ok()).unwrap_or(45);
    let app = spawn_app().await;
    let (admin, username) = app.admin().await;
    // One real device with readings, used for every {device_id}, so that the readings
    // representations, aggregates and updates run on data rather than ending in 404.
    let device = unique_device();
    app.create_device(&admin, &device).await;
    let now = chrono::Utc::now().timestamp_micros();
    let points: Vec<(&str, i64, f64)> =
        (0..200).map(|i| (if i % 2 == 0 { "temperature" } else { "humidity" }, now - (i + 1) * 60_000_000, i as f64 / 7.0)).collect();
    app.write_readings(&device, &points).await;
    let sid = {
        // The cookie as the login handed it out (reqwest's cookie jar keeps it to itself).
        let response = crate::helpers::bare_client()
            .post(app.url("/api/v1/sessions"))
            .json(&serde_json::json!({"username": username, "password": crate::helpers::PASSWORD}))
            .send()
            .await
            .unwrap();
        response
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|c| c.strip_prefix("sid=").map(|rest| rest.split(';').next().unwrap_or("").to_string()))
            .expect("login sets sid")
    };

    let report_dir = match std::env::var_os("SCHEMATHESIS_REPORT_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::temp_dir().join(format!("schemathesis-{}", iot_testkit::unique_suffix())),
    };
    std::fs::create_dir_all(&report_dir).unwrap();
    let config = report_dir.join("schemathesis.toml");
    // The cookie goes through the document's own security scheme, so that schemathesis knows
    // it is the credential (and checks what happens without it).
    std::fs::write(
        &config,
        "[parameters]\ndevice_id = \"${ST_DEVICE_ID}\"\n\n[auth.openapi.sessionCookie]\napi_key = \"${ST_SID}\"\n",
    )
    .unwrap();
    let mut command = tokio::process::Command::new(&st);
    command
        .env("ST_DEVICE_ID", &device)
        .env("ST_SID", &sid)
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(app.url("/openapi.json"))
        // Every check on the api's answers. Left out: positive_data_acceptance and
        // negative_data_rejection judge how precisely the document describes inputs, and
        // some rules cannot be written in OpenAPI (`to` later than `from`, times within
        // 1970..9999); ensure_resource_availability, because every {device_id} is pinned to
        // the one device created above; use_after_free, because DELETE .../readings empties a
        // range of the collection and the collection rightly stays (200 with fewer readings).
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance,negative_data_rejection,ensure_resource_availability,use_after_free",
        ])
        .args(["--max-time", &max_time.to_string()])
        // One worker: CPython 3.11 can fail `ast.parse` in concurrent hypothesis threads
        // ("AST constructor recursion depth mismatch"), which schemathesis reports as an error.
        .args(["--workers", "1", "--request-timeout", "10", "--no-color", "--seed", "1"])
        // The live stream never ends; logging out would end the run's session.
        .args(["--exclude-path-regex", "/stream$"])
        .args(["--exclude-name", "DELETE /api/v1/sessions/current"])
        // Deleting the pinned device would turn the rest of the run into 404s (devices.rs
        // tests deletion).
        .args(["--exclude-name", "DELETE /api/v1/devices/{device_id}"])
        .args(["--report", "json,junit", "--report-dir"])
        .arg(&report_dir)
        // Its example cache (.schemathesis/) goes with the reports, not into the repository.
        .current_dir(&report_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(max_time + 120), command.output())
        .await
        .expect("schemathesis overran --max-time by two minutes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}\n{stderr}\nreports in {}", report_dir.display());

    // Independently of schemathesis' own verdict: what the api counted while it ran.
    let metrics = reqwest::get(format!("{}/metrics", app.ops)).await.unwrap().text().await.unwrap();
    let (mut requests, mut server_errors) = (0u64, 0u64);
    for line in metrics.lines().filter(|l| l.starts_with("api_http_requests_total{")) {
        let count: u64 = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) as u64;
        requests += count;
        if line.contains("status=\"5") {
            server_errors += count;
            println!("5xx: {line}");
        }
    }
    let report = std::fs::read_dir(&report_dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("json-") && n.ends_with(".json")))
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .unwrap_or_default();
    let summary = serde_json::json!({
        "version": report["schemathesis_version"],
        "seconds": max_time,
        "operations_tested": report["operations"]["tested"],
        "test_cases": report["test_cases"]["generated"],
        "failures": report["failures"].as_array().map(Vec::len),
        "requests_served": requests,
        "server_errors": server_errors,
        "exit_code": output.status.code(),
    });
    std::fs::write(report_dir.join("summary.json"), summary.to_string()).unwrap();
    println!("summary: {summary}");
    assert_eq!(server_errors, 0, "the api answered 5xx during the run");
    assert!(requests > 100, "schemathesis hardly reached the api: {requests} requests");
    assert!(output.status.success(), "schemathesis found failures (exit {:?}):\n{stdout}\n{stderr}", output.status.code());
}
