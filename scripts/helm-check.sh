#!/usr/bin/env bash
# Checks the Helm chart and the container build with the real tools (installed into .tools/
# by scripts/k8s-tools.sh):
#   1. helm lint --strict for the default values and every helm/iot-telemetry/ci/*-values.yaml
#   2. helm template of each, validated object by object with kubernetes-validate --strict
#      against current Kubernetes versions (CRDs without a bundled schema, i.e. the
#      prometheus-operator ServiceMonitor, are the only objects allowed to go unchecked)
#   3. negative checks: values that values.schema.json must reject
#   4. values.schema.json and the Grafana dashboard match their generators
#   5. deploy/Dockerfile parses and has the expected shape (dockerfile-parse)
# The property tests of the rendered objects are Rust tests: cargo nextest run -p iot-chart-tests
# (scripts/test.sh runs them with the rest of the workspace). Pass --with-tests to run them here.
#
# Usage: scripts/helm-check.sh [--with-tests]   (env: KUBE_VERSIONS="1.35.0 1.37.0")
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHART="$ROOT/helm/iot-telemetry"
"$ROOT/scripts/k8s-tools.sh" >/dev/null
BIN="${K8S_TOOLS_DIR:-$ROOT/.tools}/bin"
HELM="$BIN/helm"
VALIDATE="$BIN/kubernetes-validate"
PY="${K8S_TOOLS_DIR:-$ROOT/.tools}/venv/bin/python"
KUBE_VERSIONS="${KUBE_VERSIONS:-1.35.0 1.37.0}"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT

failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }
pass() { echo "ok:   $*"; }

value_sets=("")
for f in "$CHART"/ci/*-values.yaml; do value_sets+=("$f"); done

for values in "${value_sets[@]}"; do
  name="${values:+$(basename "$values" .yaml)}"; name="${name:-default}"
  args=()
  [[ -n "$values" ]] && args=(-f "$values")

  if "$HELM" lint --strict "$CHART" "${args[@]}" >"$OUT/lint-$name.log" 2>&1; then
    pass "helm lint --strict ($name)"
  else
    cat "$OUT/lint-$name.log" >&2; fail "helm lint --strict ($name)"
  fi

  rendered="$OUT/$name.yaml"
  if ! "$HELM" template iot "$CHART" --namespace iot "${args[@]}" >"$rendered" 2>"$OUT/template-$name.log"; then
    cat "$OUT/template-$name.log" >&2; fail "helm template ($name)"; continue
  fi
  pass "helm template ($name): $(grep -c '^kind:' "$rendered") objects"

  for kv in $KUBE_VERSIONS; do
    log="$OUT/validate-$name-$kv.log"
    if "$VALIDATE" --strict -k "$kv" "$rendered" >"$log" 2>&1; then status=0; else status=$?; fi
    # Only CRD kinds may lack a schema; any other warning (or error) is a failure.
    unexpected="$(grep -E '^(WARN|ERROR)' "$log" | grep -v "Couldn't find schema for kind ServiceMonitor with api version monitoring.coreos.com/v1" || true)"
    if [[ "$status" -eq 0 && -z "$unexpected" ]]; then
      pass "kubernetes-validate --strict -k $kv ($name): $(grep -c 'passed for' "$log") objects"
    else
      echo "$unexpected" >&2; fail "kubernetes-validate --strict -k $kv ($name)"
    fi
  done
done

# Values the schema must reject (each must make `helm lint` fail with a schema error).
bad_values=(
  "logFormat=xml"
  "ingest.replicas=3"
  "storage.grpcPort=grpc"
  "ingest.resources.limits=null"
  "mariadb.enabled=false"
  "mosquitto.tls.enabled=true"
  "jaeger.enabled=true"
  "api.cookieSecure=sometimes"
  "ingest.autoscaling.targetCPUUtilizationPercentage=150"
  "ingest.mqttConnections=0"
)
for bad in "${bad_values[@]}"; do
  if "$HELM" lint --strict "$CHART" --set "$bad" >"$OUT/neg.log" 2>&1; then
    fail "schema accepted bad value --set $bad"
  elif grep -q "values don't meet the specifications of the schema\|at '/" "$OUT/neg.log"; then
    pass "schema rejects --set $bad: $(grep -m1 "at '" "$OUT/neg.log" | sed 's/^.*\(at .*\)$/\1/')"
  else
    cat "$OUT/neg.log" >&2; fail "--set $bad failed, but not because of the schema"
  fi
done

# Generated files are up to date with their generators.
"$PY" "$CHART/values.schema.gen.py" "$OUT/values.schema.json" >/dev/null
python3 "$CHART/dashboards/generate.py" "$OUT/iot-telemetry.json" >/dev/null
if cmp -s "$OUT/values.schema.json" "$CHART/values.schema.json" && cmp -s "$OUT/iot-telemetry.json" "$CHART/dashboards/iot-telemetry.json"; then
  pass "values.schema.json and the dashboard match their generators"
else
  fail "values.schema.json or dashboards/iot-telemetry.json is stale: re-run values.schema.gen.py / dashboards/generate.py"
fi

# deploy/Dockerfile: parses, one parameterised build, non-root numeric user, one binary.
if "$PY" - "$ROOT/deploy/Dockerfile" <<'PYEOF'
import sys
from dockerfile_parse import DockerfileParser

d = DockerfileParser(sys.argv[1])
ins = [(i["instruction"], i["value"]) for i in d.structure]
froms = [v for k, v in ins if k == "FROM"]
assert len(froms) == 2, f"expected a builder and a runtime stage, got {froms}"
assert any(k == "ARG" and v.startswith("SERVICE") for k, v in ins), "no ARG SERVICE"
users = [v for k, v in ins if k == "USER"]
assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0", f"USER {users}"
runtime = ins[[i for i, (k, _) in enumerate(ins) if k == "FROM"][-1]:]
copies = [v for k, v in runtime if k == "COPY"]
assert len(copies) == 1 and "--from=builder" in copies[0], f"runtime copies {copies}"
assert any(k == "RUN" and 'cargo build' in v and '--bin "iot-${SERVICE}"' in v for k, v in ins), "cargo build --bin iot-$SERVICE"
assert any(k == "ENTRYPOINT" for k, _ in runtime), "no ENTRYPOINT"
print(f"stages: {froms}; user {users[-1]}")
PYEOF
then pass "deploy/Dockerfile"; else fail "deploy/Dockerfile"; fi

if [[ "${1:-}" == "--with-tests" ]]; then
  (cd "$ROOT" && CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}" cargo nextest run -p iot-chart-tests) || fail "iot-chart-tests"
fi

if [[ "$failures" -gt 0 ]]; then
  echo "helm-check: $failures check(s) failed" >&2
  exit 1
fi
echo "helm-check: all checks passed"
