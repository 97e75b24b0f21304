//! helm lint, kubernetes-validate and the values schema.

use iot_chart_tests::{helm_or_skip, lint, render, run, template_text, tool, value_sets};

#[test]
fn lint_strict_passes_for_every_value_set() {
    let Some(helm) = helm_or_skip("lint_strict_passes_for_every_value_set") else {
        return;
    };
    for set in value_sets().unwrap() {
        let (ok, output) = lint(&helm, &set.args()).unwrap();
        assert!(ok, "helm lint --strict failed for {}:\n{output}", set.name);
    }
}

#[test]
fn every_rendered_object_validates_against_kubernetes_schemas() {
    let Some(helm) = helm_or_skip("every_rendered_object_validates_against_kubernetes_schemas")
    else {
        return;
    };
    let validate = tool("kubernetes-validate")
        .expect("kubernetes-validate (scripts/k8s-tools.sh installs it with helm)");
    let dir = tempfile::tempdir().unwrap();
    for set in value_sets().unwrap() {
        let file = dir.path().join(format!("{}.yaml", set.name));
        std::fs::write(&file, template_text(&helm, &set.args()).unwrap()).unwrap();
        let objects = render(&helm, &set).unwrap().objects.len();
        for version in ["1.35.0", "1.37.0"] {
            let out = run(
                &validate,
                &[
                    "--strict".into(),
                    "-k".into(),
                    version.into(),
                    file.display().to_string(),
                ],
            )
            .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let problems: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("ERROR") || l.starts_with("WARN"))
                // The prometheus-operator CRD has no schema in kubernetes-validate.
                .filter(|l| {
                    !l.contains("kind ServiceMonitor with api version monitoring.coreos.com/v1")
                })
                .collect();
            assert!(
                out.status.success() && problems.is_empty(),
                "{} against {version}:\n{}",
                set.name,
                problems.join("\n")
            );
            let passed = text
                .lines()
                .filter(|l| l.contains("passed for resource"))
                .count();
            let monitors = text
                .lines()
                .filter(|l| l.contains("kind ServiceMonitor"))
                .count();
            assert_eq!(
                passed + monitors,
                objects,
                "{}: every object is validated (or is a ServiceMonitor)",
                set.name
            );
        }
    }
}

/// Values that must be refused by values.schema.json, with the path the error names.
#[test]
fn schema_rejects_bad_values() {
    let Some(helm) = helm_or_skip("schema_rejects_bad_values") else {
        return;
    };
    let cases = [
        ("logFormat=xml", "/logFormat"),
        ("ingest.replicas=3", "/ingest"), // misspelt key
        ("storage.grpcPort=grpc", "/storage/grpcPort"), // wrong type
        ("api.httpPort=70000", "/api/httpPort"), // out of range
        ("ingest.resources.limits=null", "/ingest/resources"), // limits are required
        ("api.cookieSecure=sometimes", "/api/cookieSecure"),
        ("api.sessionCacheTtl=soon", "/api/sessionCacheTtl"),
        ("storage.dbPoolSize=0", "/storage/dbPoolSize"),
        (
            "mosquitto.persistence.size=lots",
            "/mosquitto/persistence/size",
        ),
        ("tracing.samplerRatio=2", "/tracing/samplerRatio"),
        ("mariadb.enabled=false", "allOf"), // external database not configured
        ("mosquitto.tls.enabled=true", "allOf"), // TLS without a certificate Secret
        ("jaeger.enabled=true", "allOf"),   // Jaeger without the collector
    ];
    for (set, path) in cases {
        let (ok, output) = lint(&helm, &["--set".into(), set.into()]).unwrap();
        assert!(!ok, "--set {set} was accepted");
        assert!(
            output.contains("[ERROR] values.yaml: - at '") && output.contains(path),
            "--set {set} failed for another reason than the schema at {path}:\n{output}"
        );
    }
    // The same keys with good values pass, so the failures above are about the values.
    let good = [
        ("--set", "logFormat=text"),
        ("--set", "ingest.replicaCount=3"),
        ("--set", "api.httpPort=8081"),
        ("--set-json", "tracing.samplerRatio=0.5"),
        ("--set", "mariadb.enabled=false"),
        ("--set", "externalDatabase.host=db.example.com"),
        ("--set", "mosquitto.tls.enabled=true"),
        ("--set", "mosquitto.tls.existingSecret=mqtt-tls"),
    ];
    let args: Vec<String> = good
        .iter()
        .flat_map(|(flag, value)| [flag.to_string(), value.to_string()])
        .collect();
    let (ok, output) = lint(&helm, &args).unwrap();
    assert!(ok, "good values rejected:\n{output}");
}

/// values.yaml is documented key by key: every key has a comment right above it. A key
/// whose block starts without a comment is a default value (resources, probes, security
/// contexts) documented as a whole by the key's own comment.
#[test]
fn every_key_of_values_yaml_is_documented() {
    let text = std::fs::read_to_string(iot_chart_tests::chart_dir().join("values.yaml")).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let key_of = |line: &str| -> Option<(usize, String, bool)> {
        let trimmed = line.trim_start();
        if trimmed.starts_with('#') || trimmed.starts_with('-') {
            return None;
        }
        let (key, value) = trimmed.split_once(':')?;
        key.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
            .then(|| {
                (
                    line.len() - trimmed.len(),
                    key.to_string(),
                    value.trim().is_empty(),
                )
            })
    };
    let mut undocumented = Vec::new();
    let mut skip_deeper_than: Option<usize> = None;
    let mut keys = 0;
    for (i, line) in lines.iter().enumerate() {
        let Some((indent, key, block)) = key_of(line) else {
            continue;
        };
        if let Some(limit) = skip_deeper_than {
            if indent > limit {
                continue;
            }
            skip_deeper_than = None;
        }
        keys += 1;
        if i == 0 || !lines[i - 1].trim_start().starts_with('#') {
            undocumented.push(format!("{}{key}", " ".repeat(indent)));
        }
        let next_is_comment = lines
            .get(i + 1)
            .is_some_and(|n| n.trim_start().starts_with('#'));
        if block && !next_is_comment {
            skip_deeper_than = Some(indent);
        }
    }
    assert!(keys > 150, "only {keys} keys found");
    assert!(
        undocumented.is_empty(),
        "undocumented keys in values.yaml:\n{}",
        undocumented.join("\n")
    );
}
