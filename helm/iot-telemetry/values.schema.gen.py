#!/usr/bin/env python3
"""Generates values.schema.json from values.yaml plus the constraints below.

Every key in values.yaml becomes a property of the type of its default; objects with keys are
closed (additionalProperties: false), so a misspelt key fails `helm lint`/`install`.
Free-form blocks (labels, annotations, resources, probes, scheduling) stay open.
Run: .tools/venv/bin/python helm/iot-telemetry/values.schema.gen.py [OUTPUT]
"""
import json
import pathlib
import sys

import yaml

HERE = pathlib.Path(__file__).parent
values = yaml.safe_load((HERE / "values.yaml").read_text())

PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
REPLICAS = {"type": "integer", "minimum": 0}
QUANTITY = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"}
INT_OR_PERCENT = {"oneOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": r"^[0-9]+%$"}]}
FREE_OBJECT = {"type": "object"}
PEERS = {"type": "array", "items": {"type": "object"}}
PROBE = {
    "type": "object",
    "description": "A Kubernetes probe (httpGet, grpc, tcpSocket or exec plus timings).",
    "minProperties": 1,
}
RESOURCES = {
    "type": "object",
    "properties": {"requests": FREE_OBJECT, "limits": {"type": "object", "minProperties": 1}},
    "required": ["limits"],
    "additionalProperties": False,
}

# Constraints by dotted path ("*" matches any key at that level).
OVERRIDES = {
    "logFormat": {"type": "string", "enum": ["json", "text"]},
    "image.pullPolicy": {"type": "string", "enum": ["Always", "IfNotPresent", "Never"]},
    "*.image.pullPolicy": {"type": "string", "enum": ["Always", "IfNotPresent", "Never"]},
    "imagePullSecrets": {"type": "array", "items": {"type": "object", "required": ["name"]}},
    "*.replicaCount": REPLICAS,
    "*.grpcPort": PORT,
    "*.metricsPort": PORT,
    "*.httpPort": PORT,
    "*.service.port": PORT,
    "*.service.tlsPort": PORT,
    "*.service.type": {"type": "string", "enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
    "externalDatabase.port": PORT,
    "externalRedis.port": PORT,
    "externalRedis.db": {"type": "integer", "minimum": 0},
    "*.persistence.size": QUANTITY,
    "*.resources": RESOURCES,
    "*.livenessProbe": PROBE,
    "*.readinessProbe": PROBE,
    "*.startupProbe": PROBE,
    "*.terminationGracePeriodSeconds": {"type": "integer", "minimum": 1},
    "*.autoscaling.minReplicas": {"type": "integer", "minimum": 1},
    "*.autoscaling.maxReplicas": {"type": "integer", "minimum": 1},
    "*.autoscaling.targetCPUUtilizationPercentage": {"type": "integer", "minimum": 1, "maximum": 100},
    "*.autoscaling.scaleDownStabilizationSeconds": {"type": "integer", "minimum": 0},
    "*.pdb.minAvailable": INT_OR_PERCENT,
    "*.pdb.maxUnavailable": INT_OR_PERCENT,
    "storage.dbPoolSize": {"type": "integer", "minimum": 1},
    "storage.maxConcurrentWrites": {"type": "integer", "minimum": 1},
    "storage.migrations.args": {"type": "array", "items": {"type": "string"}},
    "storage.migrations.backoffLimit": {"type": "integer", "minimum": 0},
    "storage.migrations.activeDeadlineSeconds": {"type": "integer", "minimum": 1},
    "api.publicMqttPort": {"oneOf": [PORT, {"type": "string", "pattern": r"^([0-9]{1,5})?$"}]},
    "api.cookieSecure": {"type": "string", "enum": ["auto", "always", "never"]},
    "api.sessionCacheTtl": {"type": "string", "pattern": r"^[0-9]+(ms|s|m|h|d)?$"},
    "api.sessionCacheCapacity": {"type": "integer", "minimum": 1},
    "ingest.mqttConnections": {"type": "integer", "minimum": 1, "maximum": 64},
    "api.ingress.hosts": {"type": "array", "items": {
        "type": "object", "required": ["host", "paths"], "additionalProperties": False,
        "properties": {"host": {"type": "string"}, "paths": {"type": "array", "items": {
            "type": "object", "required": ["path", "pathType"], "additionalProperties": False,
            "properties": {"path": {"type": "string"},
                           "pathType": {"enum": ["Prefix", "Exact", "ImplementationSpecific"]}}}}}}},
    "api.ingress.tls": {"type": "array", "items": {"type": "object"}},
    "mosquitto.config.maxInflightMessages": {"type": "integer", "minimum": 0, "maximum": 65535},
    "mosquitto.config.maxQueuedMessages": {"type": "integer", "minimum": 0},
    "mosquitto.config.maxQueuedBytes": {"type": "integer", "minimum": 0},
    "mosquitto.config.maxPacketSize": {"type": "integer", "minimum": 20, "maximum": 268435455},
    "mosquitto.config.autosaveInterval": {"type": "integer", "minimum": 0},
    "mosquitto.config.persistentClientExpiration": {"type": "string", "pattern": r"^[0-9]+[hdwmy]$"},
    "tracing.samplerRatio": {"type": "number", "minimum": 0, "maximum": 1},
    "tracing.otlpEndpoint": {"type": "string", "pattern": r"^(https?://.+)?$"},
    "metrics.serviceMonitor.interval": {"type": "string", "pattern": r"^[0-9]+(ms|s|m|h)$"},
}
FREE_KEYS = {"commonLabels", "annotations", "podAnnotations", "nodeSelector", "affinity", "labels",
             "podSecurityContext", "containerSecurityContext"}
ARRAY_KEYS = {"tolerations": {"type": "array", "items": {"type": "object"}},
              "topologySpreadConstraints": {"type": "array", "items": {"type": "object"}},
              "extraEnv": {"type": "array", "items": {"type": "object", "required": ["name"]}},
              "apiFrom": PEERS, "brokerFrom": PEERS, "metricsFrom": PEERS, "uiFrom": PEERS,
              "externalDatabaseTo": PEERS, "externalRedisTo": PEERS, "externalOtlpTo": PEERS}


def override(path):
    parts = path.split(".")
    for pattern, schema in OVERRIDES.items():
        p = pattern.split(".")
        if len(p) == len(parts) and all(a in ("*", b) for a, b in zip(p, parts)):
            return schema
    return None


def schema_for(path, key, value):
    found = override(path)
    if found is not None:
        return found
    if key in FREE_KEYS:
        return FREE_OBJECT
    if key in ARRAY_KEYS:
        return ARRAY_KEYS[key]
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "integer"}
    if isinstance(value, float):
        return {"type": "number"}
    if isinstance(value, str):
        return {"type": "string"}
    if isinstance(value, list):
        return {"type": "array"}
    if isinstance(value, dict):
        if not value:
            return FREE_OBJECT
        return {"type": "object", "additionalProperties": False,
                "properties": {k: schema_for(f"{path}.{k}" if path else k, k, v) for k, v in value.items()}}
    raise ValueError(f"{path}: unsupported default {value!r}")


root = schema_for("", "", values)
# ingest and api PDBs: one of minAvailable / maxUnavailable.
for component in ("storage", "session", "ingest", "api"):
    root["properties"][component]["properties"]["pdb"]["properties"].update(
        {"minAvailable": INT_OR_PERCENT, "maxUnavailable": INT_OR_PERCENT})
root["properties"]["global"] = FREE_OBJECT  # set by Helm for parent charts


def non_empty(*path):
    """Schema requiring the string at path (below root) to be non-empty."""
    node = {"type": "string", "minLength": 1}
    for key in reversed(path):
        node = {"type": "object", "required": [key], "properties": {key: node}}
    return node


def when_false(flag):
    return {"properties": {flag: {"properties": {"enabled": {"const": False}}, "required": ["enabled"]}}}


def when_true(*path):
    node = {"const": True}
    for key in reversed(path):
        node = {"properties": {key: node}, "required": [key]}
    return node


root.update({
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "iot-telemetry chart values",
    "allOf": [
        {"if": when_false("mariadb"),
         "then": {"anyOf": [non_empty("externalDatabase", "host"), non_empty("externalDatabase", "existingSecret")]}},
        {"if": when_false("redis"),
         "then": {"anyOf": [non_empty("externalRedis", "host"), non_empty("externalRedis", "existingSecret")]}},
        {"if": when_true("mosquitto", "tls", "enabled"),
         "then": non_empty("mosquitto", "tls", "existingSecret")},
        {"if": when_true("jaeger", "enabled"), "then": when_true("otelCollector", "enabled")},
    ],
})
out = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "values.schema.json"
out.write_text(json.dumps(root, indent=2) + "\n")
print(f"wrote {out}")
