//! NetworkPolicies: every component is isolated, pod-to-pod traffic follows only the edges of
//! the design, and both ends of every edge agree (egress of one = ingress of the other).

use std::collections::BTreeSet;

use iot_chart_tests::{Rendered, component, render_all};
use serde_json::Value;

/// Edges of the design (client -> server). Nothing else may talk pod to pod.
const DESIGN: &[(&str, &str)] = &[
    ("ingest", "storage"),
    ("api", "storage"),
    ("api", "session"),
    ("ingest", "mosquitto"),
    ("api", "mosquitto"),
    ("storage", "mariadb"),
    ("migrations", "mariadb"),
    ("session", "redis"),
    ("storage", "otel-collector"),
    ("session", "otel-collector"),
    ("ingest", "otel-collector"),
    ("api", "otel-collector"),
    ("migrations", "otel-collector"),
    ("otel-collector", "jaeger"),
];

/// Ports open to any client (no `from`): the public faces.
const PUBLIC: &[(&str, &str)] = &[
    ("api", "http"),
    ("mosquitto", "mqtt"),
    ("mosquitto", "mqtts"),
    ("jaeger", "ui"),
];

fn policy_target(p: &Value) -> &str {
    p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        .as_str()
        .unwrap_or("")
}

fn peer_component(peer: &Value) -> Option<&str> {
    peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"].as_str()
}

fn ports(rule: &Value) -> Vec<u64> {
    rule["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["port"].as_u64())
        .collect()
}

/// Container port numbers of a component's pods, by name.
fn container_port(r: &Rendered, comp: &str, port_name: &str) -> Option<u64> {
    r.workloads()
        .into_iter()
        .filter(|w| component(&w.pod_labels_holder()) == comp)
        .flat_map(|w| w.containers())
        .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
        .find(|p| p["name"] == port_name)
        .and_then(|p| p["containerPort"].as_u64())
}

trait PodLabels {
    fn pod_labels_holder(&self) -> Value;
}

impl PodLabels for iot_chart_tests::Workload<'_> {
    fn pod_labels_holder(&self) -> Value {
        self.object["spec"]["template"].clone()
    }
}

#[test]
fn network_policies_allow_only_the_edges_of_the_design() {
    let Some(sets) = render_all("network_policies_allow_only_the_edges_of_the_design").unwrap()
    else {
        return;
    };
    let design: BTreeSet<(String, String)> = DESIGN
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    for r in &sets {
        let policies: Vec<&Value> = r.of_kind("NetworkPolicy").collect();
        assert!(!policies.is_empty(), "{}: no NetworkPolicies", r.name);

        // Every component that runs pods is selected by a policy restricting both directions.
        for w in r.workloads() {
            let comp = component(&w.pod_labels_holder()).to_string();
            let p = policies
                .iter()
                .find(|p| policy_target(p) == comp)
                .unwrap_or_else(|| panic!("{}: no policy for {comp}", r.name));
            assert_eq!(
                p["spec"]["policyTypes"],
                serde_json::json!(["Ingress", "Egress"]),
                "{}: {comp}",
                r.name
            );
        }

        let mut ingress_edges = BTreeSet::new();
        let mut egress_edges = BTreeSet::new();
        for p in &policies {
            let target = policy_target(p).to_string();
            for rule in p["spec"]["ingress"].as_array().into_iter().flatten() {
                let rule_ports = ports(rule);
                assert!(
                    !rule_ports.is_empty(),
                    "{}: {target} ingress rule without ports",
                    r.name
                );
                match rule["from"].as_array() {
                    None => {
                        // Open to anyone: only the public ports.
                        for port in rule_ports {
                            let public = PUBLIC.iter().any(|(c, n)| {
                                *c == target && container_port(r, c, n) == Some(port)
                            });
                            assert!(public, "{}: {target} port {port} is open to anyone", r.name);
                        }
                    }
                    Some(peers) => {
                        for peer in peers {
                            match peer_component(peer) {
                                Some(from) => {
                                    ingress_edges.insert((from.to_string(), target.clone()));
                                }
                                None => {
                                    // Namespace or address peers: only for metrics scraping,
                                    // the TLS device port, or operator-chosen peers.
                                    let metrics = rule_ports.iter().all(|port| {
                                        container_port(r, &target, "metrics") == Some(*port)
                                    });
                                    let devices = target == "mosquitto"
                                        || target == "api"
                                        || target == "jaeger";
                                    assert!(
                                        metrics || devices,
                                        "{}: {target} ports {rule_ports:?} open to {peer}",
                                        r.name
                                    );
                                }
                            }
                        }
                    }
                }
            }
            for rule in p["spec"]["egress"].as_array().into_iter().flatten() {
                match rule["to"].as_array() {
                    None => assert_eq!(
                        ports(rule),
                        vec![53, 53],
                        "{}: {target} egress to anywhere other than DNS",
                        r.name
                    ),
                    Some(peers) => {
                        for peer in peers {
                            if let Some(to) = peer_component(peer) {
                                egress_edges.insert((target.clone(), to.to_string()));
                            }
                        }
                    }
                }
            }
        }
        for edge in egress_edges.iter().chain(ingress_edges.iter()) {
            assert!(
                design.contains(edge),
                "{}: {} -> {} is not an edge of the design",
                r.name,
                edge.0,
                edge.1
            );
        }
        // Both ends agree: a client allowed out must be let in (unless the port is public).
        for (from, to) in &egress_edges {
            let open = policies.iter().filter(|p| policy_target(p) == to).any(|p| {
                p["spec"]["ingress"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|rule| rule["from"].is_null())
            });
            assert!(
                ingress_edges.contains(&(from.clone(), to.clone())) || open,
                "{}: {from} may send to {to}, but {to} does not accept it",
                r.name
            );
        }
        for (from, to) in &ingress_edges {
            assert!(
                egress_edges.contains(&(from.clone(), to.clone())),
                "{}: {to} accepts {from}, but {from} may not send",
                r.name
            );
        }
        // The essential paths are open.
        for (from, to) in [
            ("ingest", "storage"),
            ("api", "storage"),
            ("api", "session"),
            ("ingest", "mosquitto"),
            ("api", "mosquitto"),
        ] {
            assert!(
                egress_edges.contains(&(from.to_string(), to.to_string())),
                "{}: {from} -> {to} is blocked",
                r.name
            );
        }
    }
}

#[test]
fn production_broker_accepts_plain_mqtt_only_from_ingest_and_api() {
    let Some(sets) =
        render_all("production_broker_accepts_plain_mqtt_only_from_ingest_and_api").unwrap()
    else {
        return;
    };
    let prod = sets.iter().find(|r| r.name == "production-values").unwrap();
    let policy = prod
        .of_kind("NetworkPolicy")
        .find(|p| policy_target(p) == "mosquitto")
        .unwrap();
    let rules = policy["spec"]["ingress"].as_array().unwrap();
    let plain = rules.iter().find(|r| ports(r) == vec![1883]).unwrap();
    let from: BTreeSet<&str> = plain["from"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(peer_component)
        .collect();
    assert_eq!(from, BTreeSet::from(["ingest", "api"]));
    let tls = rules.iter().find(|r| ports(r) == vec![8883]).unwrap();
    assert!(tls["from"].is_null(), "devices anywhere reach the TLS port");
}
