//! Helpers for the chart tests: find the tools installed by `scripts/k8s-tools.sh`, render
//! `helm/iot-telemetry` with `helm template`, and walk the rendered objects.
//!
//! The tests need `helm`; when it is missing they print why and pass without checking
//! (`scripts/test.sh` installs it first, so in CI they always run).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Context as _, bail};
use serde::Deserialize as _;
use serde_json::Value;

/// Release name and namespace used for every render.
pub const RELEASE: &str = "iot";
pub const NAMESPACE: &str = "iot";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn chart_dir() -> PathBuf {
    repo_root().join("helm/iot-telemetry")
}

/// `.tools/` of scripts/k8s-tools.sh (or `K8S_TOOLS_DIR`).
pub fn tools_dir() -> PathBuf {
    std::env::var_os("K8S_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".tools"))
}

/// A tool from `.tools/bin`, else from `PATH`.
pub fn tool(name: &str) -> Option<PathBuf> {
    let local = tools_dir().join("bin").join(name);
    if local.is_file() {
        return Some(local);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// The helm binary, or `None` after printing why the calling test does not check anything.
pub fn helm_or_skip(test: &str) -> Option<PathBuf> {
    let helm = tool("helm");
    if helm.is_none() {
        println!("SKIPPED {test}: helm is not installed (run scripts/k8s-tools.sh)");
    }
    helm
}

/// One way of installing the chart: the default values or one `ci/*-values.yaml` file.
#[derive(Debug, Clone)]
pub struct ValueSet {
    pub name: String,
    pub file: Option<PathBuf>,
}

impl ValueSet {
    pub fn args(&self) -> Vec<String> {
        match &self.file {
            Some(file) => vec!["-f".into(), file.display().to_string()],
            None => Vec::new(),
        }
    }
}

/// The default values plus every `helm/iot-telemetry/ci/*-values.yaml`.
pub fn value_sets() -> anyhow::Result<Vec<ValueSet>> {
    let mut sets = vec![ValueSet {
        name: "default".into(),
        file: None,
    }];
    let ci = chart_dir().join("ci");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&ci)
        .with_context(|| format!("reading {}", ci.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with("-values.yaml"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no ci/*-values.yaml in {}", ci.display());
    }
    for file in files {
        let name = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("?")
            .to_string();
        sets.push(ValueSet {
            name,
            file: Some(file),
        });
    }
    Ok(sets)
}

pub fn run(program: &Path, args: &[String]) -> anyhow::Result<Output> {
    Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {}", program.display()))
}

/// `helm lint --strict` with extra arguments; returns (success, combined output).
pub fn lint(helm: &Path, extra: &[String]) -> anyhow::Result<(bool, String)> {
    let mut args = vec![
        "lint".to_string(),
        "--strict".into(),
        chart_dir().display().to_string(),
    ];
    args.extend_from_slice(extra);
    let out = run(helm, &args)?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// `helm template` output as text.
pub fn template_text(helm: &Path, extra: &[String]) -> anyhow::Result<String> {
    let mut args = vec![
        "template".to_string(),
        RELEASE.into(),
        chart_dir().display().to_string(),
        "--namespace".into(),
        NAMESPACE.into(),
    ];
    args.extend_from_slice(extra);
    let out = run(helm, &args)?;
    if !out.status.success() {
        bail!(
            "helm template {extra:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// The rendered objects of one install.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub name: String,
    pub objects: Vec<Value>,
}

pub fn render(helm: &Path, set: &ValueSet) -> anyhow::Result<Rendered> {
    render_with(helm, &set.name, &set.args())
}

pub fn render_with(helm: &Path, name: &str, extra: &[String]) -> anyhow::Result<Rendered> {
    let text = template_text(helm, extra)?;
    let mut objects = Vec::new();
    for doc in serde_norway::Deserializer::from_str(&text) {
        let value = Value::deserialize(doc)
            .with_context(|| format!("parsing helm template output ({name})"))?;
        if !value.is_null() {
            objects.push(value);
        }
    }
    Ok(Rendered {
        name: name.to_string(),
        objects,
    })
}

/// Every value set rendered, or `None` (skip) without helm.
pub fn render_all(test: &str) -> anyhow::Result<Option<Vec<Rendered>>> {
    let Some(helm) = helm_or_skip(test) else {
        return Ok(None);
    };
    value_sets()?
        .iter()
        .map(|set| render(&helm, set))
        .collect::<anyhow::Result<Vec<_>>>()
        .map(Some)
}

pub fn kind(obj: &Value) -> &str {
    obj["kind"].as_str().unwrap_or("")
}

pub fn name(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or("")
}

/// `app.kubernetes.io/component` of an object (or of a pod template's labels).
pub fn component(obj: &Value) -> &str {
    obj["metadata"]["labels"]["app.kubernetes.io/component"]
        .as_str()
        .unwrap_or("")
}

impl Rendered {
    pub fn of_kind<'a>(&'a self, kind_name: &str) -> impl Iterator<Item = &'a Value> + 'a {
        let kind_name = kind_name.to_string();
        self.objects.iter().filter(move |o| kind(o) == kind_name)
    }

    /// The object of `kind` whose component label is `component`.
    pub fn find(&self, kind_name: &str, component_name: &str) -> Option<&Value> {
        self.of_kind(kind_name)
            .find(|o| component(o) == component_name)
    }

    /// Objects that run pods, with their pod spec.
    pub fn workloads(&self) -> Vec<Workload<'_>> {
        self.objects
            .iter()
            .filter_map(|o| {
                let spec = match kind(o) {
                    "Deployment" | "StatefulSet" | "DaemonSet" | "Job" => {
                        &o["spec"]["template"]["spec"]
                    }
                    "CronJob" => &o["spec"]["jobTemplate"]["spec"]["template"]["spec"],
                    _ => return None,
                };
                Some(Workload {
                    object: o,
                    pod: spec,
                })
            })
            .collect()
    }

    /// Every `env` entry of every container, as (container name, env entry).
    pub fn env_entries(&self) -> Vec<(String, &Value)> {
        let mut out = Vec::new();
        for w in self.workloads() {
            for c in w.containers().into_iter().chain(w.init_containers()) {
                let cname = c["name"].as_str().unwrap_or("").to_string();
                for e in c["env"].as_array().into_iter().flatten() {
                    out.push((cname.clone(), e));
                }
            }
        }
        out
    }
}

pub struct Workload<'a> {
    pub object: &'a Value,
    pub pod: &'a Value,
}

impl<'a> Workload<'a> {
    pub fn label(&self) -> String {
        format!("{}/{}", kind(self.object), name(self.object))
    }

    /// Long-running containers (not init containers).
    pub fn containers(&self) -> Vec<&'a Value> {
        self.pod["containers"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default()
    }

    pub fn init_containers(&self) -> Vec<&'a Value> {
        self.pod["initContainers"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default()
    }

    pub fn is_job(&self) -> bool {
        matches!(kind(self.object), "Job" | "CronJob")
    }

    /// The container's value of a security setting, falling back to the pod's.
    pub fn security<'b>(&'b self, container: &'b Value, key: &str) -> &'b Value {
        let own = &container["securityContext"][key];
        if own.is_null() {
            &self.pod["securityContext"][key]
        } else {
            own
        }
    }
}

/// Every `env = "NAME"` declared in the Rust sources under `dir` (clap's env attributes).
pub fn declared_env_vars(dir: &Path) -> anyhow::Result<BTreeSet<String>> {
    let mut found = BTreeSet::new();
    for file in rust_files(dir)? {
        let text = std::fs::read_to_string(&file)?;
        let mut rest = text.as_str();
        while let Some(pos) = rest.find("env = \"") {
            rest = &rest[pos + 7..];
            if let Some(end) = rest.find('"') {
                found.insert(rest[..end].to_string());
                rest = &rest[end..];
            }
        }
    }
    Ok(found)
}

/// All `.rs` files below `dir`.
pub fn rust_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    Ok(out)
}
