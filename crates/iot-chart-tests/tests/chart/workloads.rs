//! Pods: probes, limits, non-root, read-only root filesystem; ingest as a StatefulSet with
//! stable client ids, an HPA and a drain period; PDBs.

use iot_chart_tests::{component, kind, name, render_all};
use serde_json::Value;

#[test]
fn every_container_has_probes_limits_and_runs_as_non_root() {
    let Some(sets) = render_all("every_container_has_probes_limits_and_runs_as_non_root").unwrap()
    else {
        return;
    };
    for r in &sets {
        let workloads = r.workloads();
        assert!(
            workloads.len() >= 5,
            "{}: only {} workloads",
            r.name,
            workloads.len()
        );
        for w in &workloads {
            let all: Vec<(&Value, bool)> = w
                .containers()
                .into_iter()
                .map(|c| (c, true))
                .chain(w.init_containers().into_iter().map(|c| (c, false)))
                .collect();
            assert!(
                !all.is_empty(),
                "{}: {} has no containers",
                r.name,
                w.label()
            );
            for (c, long_running) in all {
                let at = format!("{}: {} container {}", r.name, w.label(), c["name"]);
                if long_running && !w.is_job() {
                    for probe in ["livenessProbe", "readinessProbe"] {
                        let p = &c[probe];
                        assert!(
                            p.get("httpGet")
                                .or(p.get("grpc"))
                                .or(p.get("tcpSocket"))
                                .or(p.get("exec"))
                                .is_some(),
                            "{at}: no {probe}"
                        );
                    }
                }
                for resource in ["cpu", "memory"] {
                    assert!(
                        c["resources"]["limits"][resource].is_string(),
                        "{at}: no {resource} limit"
                    );
                    assert!(
                        c["resources"]["requests"][resource].is_string(),
                        "{at}: no {resource} request"
                    );
                }
                assert_eq!(
                    w.security(c, "runAsNonRoot"),
                    &Value::Bool(true),
                    "{at}: runAsNonRoot"
                );
                let user = w.security(c, "runAsUser");
                assert!(
                    user.as_u64().is_some_and(|u| u > 0),
                    "{at}: runAsUser must be a non-zero number, got {user}"
                );
                assert_eq!(
                    c["securityContext"]["allowPrivilegeEscalation"],
                    Value::Bool(false),
                    "{at}"
                );
                assert_eq!(
                    c["securityContext"]["readOnlyRootFilesystem"],
                    Value::Bool(true),
                    "{at}"
                );
                assert_eq!(
                    c["securityContext"]["capabilities"]["drop"],
                    serde_json::json!(["ALL"]),
                    "{at}"
                );
                assert!(
                    c["securityContext"]["capabilities"]["add"].is_null(),
                    "{at}: adds capabilities"
                );
                assert!(
                    c["securityContext"]["privileged"] != Value::Bool(true),
                    "{at}: privileged"
                );
            }
            assert_eq!(
                w.pod["automountServiceAccountToken"],
                Value::Bool(false),
                "{}: {} mounts a service account token it does not need",
                r.name,
                w.label()
            );
            assert!(
                w.pod["hostNetwork"].is_null() && w.pod["hostPID"].is_null(),
                "{}: {}",
                r.name,
                w.label()
            );
        }
    }
}

#[test]
fn the_four_services_run_with_their_ports_and_health_endpoints() {
    let Some(sets) =
        render_all("the_four_services_run_with_their_ports_and_health_endpoints").unwrap()
    else {
        return;
    };
    for r in &sets {
        for (svc, workload_kind) in [
            ("storage", "Deployment"),
            ("session", "Deployment"),
            ("ingest", "StatefulSet"),
            ("api", "Deployment"),
        ] {
            let w = r
                .find(workload_kind, svc)
                .unwrap_or_else(|| panic!("{}: no {workload_kind} {svc}", r.name));
            let c = &w["spec"]["template"]["spec"]["containers"][0];
            assert_eq!(
                c["image"]
                    .as_str()
                    .unwrap()
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .split(':')
                    .next()
                    .unwrap(),
                svc,
                "{}: image of {svc}",
                r.name
            );
            assert_eq!(
                c["livenessProbe"]["httpGet"]["path"], "/healthz",
                "{}: {svc} liveness",
                r.name
            );
            let readiness = &c["readinessProbe"];
            if matches!(svc, "storage" | "session") {
                // gRPC health (tonic-health) turns NOT_SERVING on shutdown.
                let port = readiness["grpc"]["port"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{}: {svc} readiness is not gRPC", r.name));
                let ports = c["ports"].as_array().unwrap();
                assert!(
                    ports
                        .iter()
                        .any(|p| p["name"] == "grpc" && p["containerPort"].as_u64() == Some(port)),
                    "{}: {svc}",
                    r.name
                );
                assert_eq!(
                    c["startupProbe"]["httpGet"]["path"], "/readyz",
                    "{}: {svc}",
                    r.name
                );
                // The named service, which the server turns NOT_SERVING on shutdown.
                let capitalised = format!("{}{}", svc[..1].to_uppercase(), &svc[1..]);
                assert_eq!(
                    readiness["grpc"]["service"],
                    format!("iot.{svc}.v1.{capitalised}Service"),
                    "{}: {svc}",
                    r.name
                );
            } else {
                assert_eq!(
                    readiness["httpGet"]["path"], "/readyz",
                    "{}: {svc} readiness",
                    r.name
                );
            }
            let service = r
                .of_kind("Service")
                .find(|s| component(s) == svc)
                .unwrap_or_else(|| panic!("{}: no Service for {svc}", r.name));
            assert!(
                service["spec"]["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["name"] == "metrics"),
                "{}: {svc} metrics port",
                r.name
            );
        }
    }
}

#[test]
fn ingest_is_a_statefulset_with_stable_client_ids_an_hpa_and_time_to_drain() {
    let Some(sets) =
        render_all("ingest_is_a_statefulset_with_stable_client_ids_an_hpa_and_time_to_drain")
            .unwrap()
    else {
        return;
    };
    for r in &sets {
        assert!(
            r.find("Deployment", "ingest").is_none(),
            "{}: ingest must not be a Deployment",
            r.name
        );
        let sts = r
            .find("StatefulSet", "ingest")
            .unwrap_or_else(|| panic!("{}: no ingest StatefulSet", r.name));
        let pod = &sts["spec"]["template"]["spec"];
        let env = pod["containers"][0]["env"].as_array().unwrap();
        let client_id = env
            .iter()
            .find(|e| e["name"] == "INGEST_CLIENT_ID")
            .unwrap_or_else(|| panic!("{}: no INGEST_CLIENT_ID", r.name));
        assert_eq!(
            client_id["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name",
            "{}: client id = pod name",
            r.name
        );
        let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
        assert!(
            grace >= 60,
            "{}: ingest grace period {grace}s is too short to drain",
            r.name
        );
        let drain: u64 = env
            .iter()
            .find(|e| e["name"] == "INGEST_SHUTDOWN_TIMEOUT_SECS")
            .unwrap()["value"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            drain < grace,
            "{}: ingest drains for {drain}s but is killed after {grace}s",
            r.name
        );
        // The governing Service must exist and be headless.
        let svc_name = sts["spec"]["serviceName"].as_str().unwrap();
        let svc = r
            .of_kind("Service")
            .find(|s| name(s) == svc_name)
            .unwrap_or_else(|| panic!("{}: no Service {svc_name}", r.name));
        assert_eq!(svc["spec"]["clusterIP"], "None", "{}", r.name);

        let hpa = r
            .of_kind("HorizontalPodAutoscaler")
            .find(|h| component(h) == "ingest");
        let autoscaled = sts["spec"]["replicas"].is_null();
        if autoscaled {
            let hpa =
                hpa.unwrap_or_else(|| panic!("{}: ingest has no replicas and no HPA", r.name));
            assert_eq!(
                hpa["spec"]["scaleTargetRef"]["kind"], "StatefulSet",
                "{}",
                r.name
            );
            assert_eq!(
                hpa["spec"]["scaleTargetRef"]["name"], sts["metadata"]["name"],
                "{}",
                r.name
            );
            assert!(
                hpa["spec"]["minReplicas"].as_u64().unwrap() >= 2,
                "{}: ingest HPA min",
                r.name
            );
            assert!(
                hpa["spec"]["maxReplicas"].as_u64() > hpa["spec"]["minReplicas"].as_u64(),
                "{}",
                r.name
            );
        } else {
            assert!(hpa.is_none(), "{}: HPA and fixed replicas fight", r.name);
        }
        // The api has an HPA too when autoscaled.
        let api = r.find("Deployment", "api").unwrap();
        if api["spec"]["replicas"].is_null() {
            let hpa = r
                .of_kind("HorizontalPodAutoscaler")
                .find(|h| component(h) == "api")
                .unwrap();
            assert_eq!(
                hpa["spec"]["scaleTargetRef"]["kind"], "Deployment",
                "{}",
                r.name
            );
        }
    }
    // Default values autoscale ingest.
    let default = sets.iter().find(|r| r.name == "default").unwrap();
    assert!(
        default
            .of_kind("HorizontalPodAutoscaler")
            .any(|h| component(h) == "ingest"),
        "default values: ingest HPA"
    );
}

#[test]
fn disruption_budgets_cover_replicated_services_without_blocking_drains() {
    let Some(sets) =
        render_all("disruption_budgets_cover_replicated_services_without_blocking_drains").unwrap()
    else {
        return;
    };
    let mut budgets = 0;
    for r in &sets {
        for svc in ["storage", "session", "ingest", "api"] {
            let workload = r
                .find("Deployment", svc)
                .or_else(|| r.find("StatefulSet", svc))
                .unwrap();
            let replicas = workload["spec"]["replicas"].as_u64().unwrap_or_else(|| {
                let hpa = r
                    .of_kind("HorizontalPodAutoscaler")
                    .find(|h| component(h) == svc)
                    .unwrap();
                hpa["spec"]["minReplicas"].as_u64().unwrap()
            });
            match r.find("PodDisruptionBudget", svc) {
                Some(pdb) => {
                    budgets += 1;
                    assert_eq!(
                        pdb["spec"]["selector"]["matchLabels"],
                        workload["spec"]["selector"]["matchLabels"],
                        "{}: PDB {svc} selects its pods",
                        r.name
                    );
                    // A voluntary disruption must still be possible.
                    let min = pdb["spec"]["minAvailable"].as_u64();
                    let max_unavailable = pdb["spec"]["maxUnavailable"].as_u64();
                    assert!(
                        min.is_some_and(|m| m < replicas)
                            || max_unavailable.is_some_and(|m| m >= 1),
                        "{}: PDB {svc} blocks drains with {replicas} replicas",
                        r.name
                    );
                }
                None => assert!(
                    replicas < 2,
                    "{}: {svc} runs {replicas} replicas without a PodDisruptionBudget",
                    r.name
                ),
            }
        }
    }
    assert!(budgets >= 8, "only {budgets} budgets");
}

#[test]
fn the_broker_keeps_its_state_on_a_volume() {
    let Some(sets) = render_all("the_broker_keeps_its_state_on_a_volume").unwrap() else {
        return;
    };
    let default = sets.iter().find(|r| r.name == "default").unwrap();
    let broker = default.find("Deployment", "mosquitto").unwrap();
    assert_eq!(
        broker["spec"]["strategy"]["type"], "Recreate",
        "two brokers must not share the volume"
    );
    let volumes = broker["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    let data = volumes.iter().find(|v| v["name"] == "data").unwrap();
    let claim = data["persistentVolumeClaim"]["claimName"]
        .as_str()
        .expect("broker data on a PVC");
    let pvc = default
        .of_kind("PersistentVolumeClaim")
        .find(|p| name(p) == claim)
        .expect("the PVC is rendered");
    assert_eq!(
        pvc["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    let config = default.find("ConfigMap", "mosquitto").unwrap();
    let conf = config["data"]["mosquitto.conf"].as_str().unwrap();
    for line in [
        "persistence true",
        "persistence_location /mosquitto/data/",
        "allow_anonymous false",
    ] {
        assert!(
            conf.lines().any(|l| l.trim() == line),
            "mosquitto.conf lacks `{line}`"
        );
    }
    let mounts = broker["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m["name"] == "data" && m["mountPath"] == "/mosquitto/data")
    );
    assert_eq!(kind(pvc), "PersistentVolumeClaim");
}
