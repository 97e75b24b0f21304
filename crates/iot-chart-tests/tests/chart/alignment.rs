//! The chart against the rest of the repository: the environment variables the services
//! read, the storage migration flag, the metrics the dashboard queries, the broker tuning of
//! deploy/mosquitto, and the container build.

use std::collections::BTreeSet;

use iot_chart_tests::{
    component, declared_env_vars, helm_or_skip, render_all, render_with, repo_root, rust_files,
    value_sets,
};
use serde_json::Value;

/// Container name in the chart -> service directory whose Config reads its variables.
fn service_of(container: &str) -> Option<&'static str> {
    match container {
        "storage" | "migrate" => Some("storage"),
        "session" => Some("session"),
        "ingest" => Some("ingest"),
        "api" => Some("api"),
        _ => None,
    }
}

#[test]
fn every_variable_the_chart_sets_is_read_by_the_service() {
    let Some(sets) = render_all("every_variable_the_chart_sets_is_read_by_the_service").unwrap()
    else {
        return;
    };
    for r in &sets {
        let mut checked = 0;
        for (container, e) in r.env_entries() {
            let Some(service) = service_of(&container) else {
                continue;
            };
            let var = e["name"].as_str().unwrap();
            // OTEL_* are the standard OpenTelemetry variables; K8S_* only feed OTEL_RESOURCE_ATTRIBUTES.
            if var.starts_with("OTEL_") || var.starts_with("K8S_") {
                continue;
            }
            let declared =
                declared_env_vars(&repo_root().join("services").join(service).join("src")).unwrap();
            assert!(
                declared.contains(var),
                "{}: the chart sets {var} for {container}, but services/{service} does not read it",
                r.name
            );
            checked += 1;
        }
        assert!(
            checked >= 20,
            "{}: only {checked} variables checked",
            r.name
        );
    }
}

#[test]
fn the_migration_job_runs_a_flag_the_storage_binary_has() {
    let Some(sets) = render_all("the_migration_job_runs_a_flag_the_storage_binary_has").unwrap()
    else {
        return;
    };
    let sources: String = rust_files(&repo_root().join("services/storage/src"))
        .unwrap()
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    // A Job enabled by the shipped values must run a flag storage has, or the hook would
    // fail every install and upgrade.
    for r in &sets {
        for job in r.of_kind("Job") {
            let c = &job["spec"]["template"]["spec"]["containers"][0];
            for arg in c["args"].as_array().unwrap() {
                let flag = arg.as_str().unwrap().trim_start_matches("--");
                let field = flag.replace('-', "_");
                assert!(
                    sources.contains(&format!("\"{flag}\""))
                        || sources.contains(&format!(" {field}:")),
                    "{}: the Job passes --{flag}, which services/storage does not define (the hook would fail every upgrade)",
                    r.name
                );
            }
        }
    }
}

#[test]
fn the_migration_job_runs_once_per_install_and_upgrade_before_the_pods() {
    let Some(helm) =
        helm_or_skip("the_migration_job_runs_once_per_install_and_upgrade_before_the_pods")
    else {
        return;
    };
    let enable = [
        "--set".to_string(),
        "storage.migrations.enabled=true".to_string(),
    ];
    for set in value_sets().unwrap() {
        let mut args = set.args();
        args.extend_from_slice(&enable);
        let r = render_with(&helm, &set.name, &args).unwrap();
        let jobs: Vec<_> = r.of_kind("Job").collect();
        assert_eq!(jobs.len(), 1, "{}: one migration Job", r.name);
        let annotations = &jobs[0]["metadata"]["annotations"];
        let hooks = annotations["helm.sh/hook"]
            .as_str()
            .expect("the migration Job is a Helm hook");
        assert!(
            hooks.contains("pre-upgrade"),
            "{}: migrations run before the new pods of an upgrade",
            r.name
        );
        assert!(
            annotations["helm.sh/hook-delete-policy"]
                .as_str()
                .unwrap()
                .contains("before-hook-creation")
        );
        let bundled_db = r.find("StatefulSet", "mariadb").is_some();
        // Before install only when the database and its Secret exist before the release does.
        assert_eq!(
            hooks.contains("pre-install"),
            !bundled_db && r.of_kind("Secret").all(|s| component(s) != "storage"),
            "{}: {hooks}",
            r.name
        );
        let pod = &jobs[0]["spec"]["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Never");
        let c = &pod["containers"][0];
        assert!(
            c["image"].as_str().unwrap().contains("/storage:"),
            "{}: runs the storage image",
            r.name
        );
        assert!(
            c["env"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["name"] == "STORAGE_DATABASE_URL"),
            "{}",
            r.name
        );
    }
}

/// Metric names referenced by a PromQL expression (service-prefixed identifiers).
fn metric_names(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| {
            ["ingest_", "storage_", "session_", "api_"]
                .iter()
                .any(|p| t.starts_with(p))
        })
        .map(|t| {
            ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| t.strip_suffix(s))
                .unwrap_or(t)
                .to_string()
        })
        .collect()
}

#[test]
fn the_dashboard_queries_only_metrics_the_services_register() {
    let Some(sets) =
        render_all("the_dashboard_queries_only_metrics_the_services_register").unwrap()
    else {
        return;
    };
    let default = sets.iter().find(|r| r.name == "default").unwrap();
    let cm = default
        .find("ConfigMap", "dashboards")
        .expect("dashboard ConfigMap");
    assert_eq!(
        cm["metadata"]["labels"]["grafana_dashboard"], "1",
        "picked up by Grafana's sidecar"
    );
    let json = cm["data"]["iot-telemetry.json"].as_str().unwrap();
    let dashboard: Value = serde_json::from_str(json).expect("dashboard is valid JSON");
    let lower = json.to_lowercase();
    for word in ["todo", "placeholder", "fixme", "xxx"] {
        assert!(!lower.contains(word), "dashboard contains `{word}`");
    }
    let sources: String = rust_files(&repo_root().join("services"))
        .unwrap()
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    let mut ids = BTreeSet::new();
    let mut metrics = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "duplicate panel id"
        );
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap();
        assert!(
            panel["description"].as_str().is_some_and(|d| d.len() > 20),
            "panel {title} explains itself"
        );
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {title} has queries");
        for t in targets {
            let found = metric_names(t["expr"].as_str().unwrap());
            assert!(
                !found.is_empty(),
                "panel {title}: query names no service metric"
            );
            metrics.extend(found);
        }
    }
    for m in &metrics {
        assert!(
            sources.contains(&format!("\"{m}\"")),
            "the dashboard queries {m}, which no service registers"
        );
    }
    // What an operator watches (issue 7): in/rejected/written, batch size, lag, gRPC, HTTP.
    for needed in [
        "ingest_messages_received_total",
        "ingest_messages_rejected_total",
        "ingest_messages_written_total",
        "ingest_readings_written_total",
        "ingest_batch_readings",
        "ingest_end_to_end_lag_seconds",
        "storage_db_pool_in_use",
        "storage_grpc_requests_total",
        "storage_grpc_request_duration_seconds",
        "session_grpc_requests_total",
        "api_http_requests_total",
        "api_http_request_duration_seconds",
    ] {
        assert!(metrics.contains(needed), "no panel shows {needed}");
    }
}

/// `key value` lines of a mosquitto.conf (last one wins).
fn conf_settings(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            l.split_once(' ')
                .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        })
        .collect()
}

#[test]
fn the_chart_broker_is_tuned_like_deploy_mosquitto() {
    let Some(sets) = render_all("the_chart_broker_is_tuned_like_deploy_mosquitto").unwrap() else {
        return;
    };
    let default = sets.iter().find(|r| r.name == "default").unwrap();
    let chart = conf_settings(
        default.find("ConfigMap", "mosquitto").unwrap()["data"]["mosquitto.conf"]
            .as_str()
            .unwrap(),
    );
    let deploy = conf_settings(
        &std::fs::read_to_string(repo_root().join("deploy/mosquitto/mosquitto.conf")).unwrap(),
    );
    for key in [
        "per_listener_settings",
        "allow_anonymous",
        "persistence",
        "persistence_location",
        "autosave_interval",
        "max_inflight_messages",
        "max_queued_messages",
        "max_queued_bytes",
        "queue_qos0_messages",
        "max_packet_size",
        "persistent_client_expiration",
    ] {
        assert!(
            deploy.contains_key(key),
            "deploy/mosquitto/mosquitto.conf no longer sets {key}"
        );
        assert_eq!(
            chart.get(key),
            deploy.get(key),
            "{key}: chart and deploy/mosquitto disagree"
        );
    }
}

#[test]
fn the_dockerfile_builds_one_binary_per_service_as_a_non_root_user() {
    let text = std::fs::read_to_string(repo_root().join("deploy/Dockerfile")).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let froms: Vec<&&str> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(
        froms.len(),
        2,
        "a builder stage and a runtime stage: {froms:?}"
    );
    assert!(froms[0].ends_with(" AS builder"));
    assert!(
        lines.contains(&"ARG SERVICE=storage"),
        "one build parameterised by SERVICE"
    );
    assert!(text.contains("cargo build --locked --release --bin \"iot-${SERVICE}\""));
    assert!(
        text.contains("--mount=type=cache,target=/usr/local/cargo/registry"),
        "cargo registry cache"
    );
    let runtime_start = lines.iter().rposition(|l| l.starts_with("FROM ")).unwrap();
    let runtime = &lines[runtime_start..];
    let copies: Vec<&&str> = runtime.iter().filter(|l| l.starts_with("COPY ")).collect();
    assert_eq!(
        copies.len(),
        1,
        "the runtime image gets only the binary: {copies:?}"
    );
    assert!(copies[0].starts_with("COPY --from=builder"));
    let user = runtime
        .iter()
        .rev()
        .find(|l| l.starts_with("USER "))
        .expect("USER in the runtime stage");
    let uid = user.trim_start_matches("USER ").split(':').next().unwrap();
    assert!(
        uid.parse::<u32>().is_ok_and(|u| u > 0),
        "numeric non-root user: {user}"
    );
    // Every SERVICE the build accepts is a binary of the workspace, and the chart's images match.
    let accepted = text
        .split("case \"${SERVICE}\" in")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap()
        .trim();
    let services: Vec<&str> = accepted
        .split('|')
        .map(|s| s.trim_matches(|c: char| c == '\\' || c.is_whitespace()))
        .collect();
    assert_eq!(services, ["storage", "session", "ingest", "api", "sim"]);
    for service in services {
        let manifest = std::fs::read_to_string(
            repo_root()
                .join("services")
                .join(service)
                .join("Cargo.toml"),
        )
        .unwrap_or_else(|_| panic!("SERVICE={service} has no services/{service}"));
        assert!(
            manifest.contains(&format!("name = \"iot-{service}\"")),
            "services/{service} builds iot-{service}"
        );
    }
}

#[test]
fn the_chart_broker_starts_through_the_restart_guard_of_deploy_mosquitto() {
    // One script, two copies (Helm reads files only inside the chart): they must not drift.
    let deploy =
        std::fs::read_to_string(repo_root().join("deploy/mosquitto/restart-guard.sh")).unwrap();
    let chart = std::fs::read_to_string(
        repo_root().join("helm/iot-telemetry/files/mosquitto-restart-guard.sh"),
    )
    .unwrap();
    assert_eq!(
        chart, deploy,
        "helm/iot-telemetry/files/mosquitto-restart-guard.sh differs from deploy/mosquitto/restart-guard.sh"
    );
    let Some(sets) =
        render_all("the_chart_broker_starts_through_the_restart_guard_of_deploy_mosquitto")
            .unwrap()
    else {
        return;
    };
    for set in &sets {
        let Some(deployment) = set.find("Deployment", "mosquitto") else {
            continue;
        };
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        let command: Vec<&str> = container["command"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            command,
            [
                "/bin/sh",
                "/mosquitto/config/restart-guard.sh",
                "exec",
                "/mosquitto/config/mosquitto.conf"
            ],
            "{}: the broker must start through the restart guard",
            set.name
        );
        let cm = set.find("ConfigMap", "mosquitto").unwrap();
        assert_eq!(
            cm["data"]["restart-guard.sh"].as_str(),
            Some(deploy.as_str()),
            "{}",
            set.name
        );
        let guard_id = container["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "GUARD_CLIENT_ID")
            .and_then(|e| e["value"].as_str())
            .unwrap();
        // Ingest drains the session the broker arms: the same id on both sides.
        let ingest_id = set
            .env_entries()
            .into_iter()
            .find(|(c, e)| c == "ingest" && e["name"] == "INGEST_RESTART_GUARD_CLIENT_ID")
            .and_then(|(_, e)| e["value"].as_str().map(str::to_string))
            .unwrap();
        assert_eq!(ingest_id, guard_id, "{}", set.name);
    }
}
