#!/usr/bin/env python3
"""Writes iot-telemetry.json, the Grafana dashboard shipped by the chart.

The dashboard is generated so that every panel has the same shape; edit this file and
re-run it (python3 generate.py) rather than editing the JSON. Metric names are the ones the
services register (services/*/src/metrics.rs, services/api/src/state.rs); the chart tests
check that every metric the dashboard queries exists in the services' code.
"""
import json
import pathlib
import sys

SEL = 'namespace=~"$namespace"'
RATE = "$__rate_interval"

panels = []
_next_id = [1]
_y = [0]


def row(title):
    panels.append({"type": "row", "title": title, "id": _next_id[0], "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": _y[0]}, "panels": []})
    _next_id[0] += 1
    _y[0] += 1


def ts(title, description, targets, unit="short", x=0, w=8, h=8, newline=False):
    panels.append({
        "type": "timeseries",
        "id": _next_id[0],
        "title": title,
        "description": description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": h, "w": w, "x": x, "y": _y[0]},
        "fieldConfig": {"defaults": {"unit": unit, "custom": {"fillOpacity": 10, "lineWidth": 1}},
                        "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": [{"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend,
                     "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                    for i, (expr, legend) in enumerate(targets)],
    })
    _next_id[0] += 1
    if x + w >= 24:
        _y[0] += h


def quantiles(metric, by="", qs=(0.5, 0.95, 0.99)):
    group = f"le{', ' + by if by else ''}"
    legend_by = f"{{{{{by}}}}} " if by else ""
    return [(f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{SEL}}}[{RATE}])))",
             f"{legend_by}p{int(q * 100)}") for q in qs]


row("Ingest: MQTT to database")
ts("Messages in / written / acknowledged", "MQTT PUBLISH packets received, messages whose readings storage committed, "
   "and PUBACKs sent per second, per ingest replica (ingest_messages_received_total, ingest_messages_written_total, "
   "ingest_messages_acked_total). A PUBACK follows the database commit or a rejection, so in = acked in steady state "
   "and in - written = rejected.",
   [(f"sum by (pod) (rate(ingest_messages_received_total{{{SEL}}}[{RATE}]))", "in {{pod}}"),
    (f"sum by (pod) (rate(ingest_messages_written_total{{{SEL}}}[{RATE}]))", "written {{pod}}"),
    (f"sum by (pod) (rate(ingest_messages_acked_total{{{SEL}}}[{RATE}]))", "acked {{pod}}")], "ops", x=0)
ts("Messages rejected", "Messages refused by validation (malformed JSON or SenML, wrong types, non-finite numbers, "
   "oversized, unknown device, bad topic) per second, by reason (ingest_messages_rejected_total). They are acknowledged "
   "and logged with the reason, never redelivered.",
   [(f"sum by (reason) (rate(ingest_messages_rejected_total{{{SEL}}}[{RATE}]))", "{{reason}}")], "ops", x=8)
ts("Readings written", "Readings newly stored per second as counted by ingest (ingest_readings_written_total) and by "
   "storage (storage_readings_inserted_total), and redeliveries that storage already had "
   "(ingest_readings_duplicate_total).",
   [(f"sum(rate(ingest_readings_written_total{{{SEL}}}[{RATE}]))", "written (ingest)"),
    (f"sum(rate(storage_readings_inserted_total{{{SEL}}}[{RATE}]))", "inserted (storage)"),
    (f"sum(rate(ingest_readings_duplicate_total{{{SEL}}}[{RATE}]))", "duplicates")], "ops", x=16)
ts("Batch size", "Readings and messages per committed WriteReadings batch (ingest_batch_readings, "
   "ingest_batch_messages), median and 95th percentile: large batches mean ingest is keeping up under load, batches "
   "of one mean a light stream.",
   [(e, "readings " + l) for e, l in quantiles("ingest_batch_readings", qs=(0.5, 0.95))]
   + [(e, "messages " + l) for e, l in quantiles("ingest_batch_messages", qs=(0.5, 0.95))], "short", x=0)
ts("Ingest lag (publish to commit)", "Time from the payload timestamp (or broker receive time) to the storage "
   "commit (ingest_end_to_end_lag_seconds). Growing lag means ingest or storage cannot keep up: scale ingest.",
   quantiles("ingest_end_to_end_lag_seconds"), "s", x=8)
ts("Batch write latency", "Duration of WriteReadings calls for committed batches, including retries "
   "(ingest_batch_write_seconds).", quantiles("ingest_batch_write_seconds"), "s", x=16)
ts("In flight", "Messages received and not yet acknowledged and WriteReadings calls in progress, per replica "
   "(ingest_inflight_messages, ingest_inflight_batches). Flat at the maximum means backpressure from storage.",
   [(f"sum by (pod) (ingest_inflight_messages{{{SEL}}})", "messages {{pod}}"),
    (f"sum by (pod) (ingest_inflight_batches{{{SEL}}})", "batches {{pod}}")], "short", x=0)
ts("Storage errors and broker connection", "Failed (retried) WriteReadings attempts per second "
   "(ingest_storage_errors_total) and replicas connected to the broker (ingest_mqtt_connected).",
   [(f"sum(rate(ingest_storage_errors_total{{{SEL}}}[{RATE}]))", "storage errors/s"),
    (f"sum(ingest_mqtt_connected{{{SEL}}})", "replicas connected")], "short", x=8)
ts("Storage database pool", "Connections of storage's database pool: in use by requests, open, idle, configured "
   "maximum and requests waiting for a connection (storage_db_pool_*). In use near the maximum and waiting above "
   "zero mean the pool is the bottleneck.",
   [(f"sum(storage_db_pool_in_use{{{SEL}}})", "in use"),
    (f"sum(storage_db_pool_size{{{SEL}}})", "open"),
    (f"sum(storage_db_pool_available{{{SEL}}})", "idle"),
    (f"sum(storage_db_pool_max_size{{{SEL}}})", "max"),
    (f"sum(storage_db_pool_waiting{{{SEL}}})", "waiting")], "short", x=16)

row("gRPC: storage and session")
grpc_sum = " or ".join(f"label_replace(sum by (method) (rate({s}_grpc_requests_total{{{SEL}}}[{RATE}])), \"service\", \"{s}\", \"\", \"\")"
                       for s in ("storage", "session"))
ts("gRPC requests", "Requests per second handled by storage and session, by method "
   "(storage_grpc_requests_total, session_grpc_requests_total).",
   [(grpc_sum, "{{service}} {{method}}")], "reqps", x=0)
ts("gRPC errors", "Requests per second that ended with a status other than OK, by service, method and status code.",
   [(f"sum by (method, code) (rate(storage_grpc_requests_total{{{SEL}, code!=\"OK\"}}[{RATE}]))", "storage {{method}} {{code}}"),
    (f"sum by (method, code) (rate(session_grpc_requests_total{{{SEL}, code!=\"OK\"}}[{RATE}]))", "session {{method}} {{code}}")],
   "reqps", x=8)
ts("gRPC latency (p95)", "95th percentile of request latency by method (storage_grpc_request_duration_seconds, "
   "session_grpc_request_duration_seconds).",
   [(f"histogram_quantile(0.95, sum by (le, method) (rate(storage_grpc_request_duration_seconds_bucket{{{SEL}}}[{RATE}])))", "storage {{method}}"),
    (f"histogram_quantile(0.95, sum by (le, method) (rate(session_grpc_request_duration_seconds_bucket{{{SEL}}}[{RATE}])))", "session {{method}}")],
   "s", x=16)

row("HTTP: api")
ts("HTTP requests", "Requests per second by route pattern and method (api_http_requests_total).",
   [(f"sum by (route, method) (rate(api_http_requests_total{{{SEL}}}[{RATE}]))", "{{method}} {{route}}")], "reqps", x=0)
ts("HTTP errors", "Responses per second with a 5xx status (server errors) and with a 4xx status (client errors), by route.",
   [(f"sum by (route) (rate(api_http_requests_total{{{SEL}, status=~\"5..\"}}[{RATE}]))", "5xx {{route}}"),
    (f"sum by (route) (rate(api_http_requests_total{{{SEL}, status=~\"4..\"}}[{RATE}]))", "4xx {{route}}")], "reqps", x=8)
ts("HTTP latency (p95)", "95th percentile of the time to the response head, by route (api_http_request_duration_seconds).",
   [(f"histogram_quantile(0.95, sum by (le, route) (rate(api_http_request_duration_seconds_bucket{{{SEL}}}[{RATE}])))", "{{route}}")],
   "s", x=16)
ts("Sessions", "Session operations per second: created, validated (live session found), rejected (unknown, expired or "
   "revoked token) and revoked (session_sessions_*_total).",
   [(f"sum(rate(session_sessions_{k}_total{{{SEL}}}[{RATE}]))", k) for k in ("created", "validated", "rejected", "revoked")],
   "ops", x=0, w=12)
ts("Live streams", "Live stream (SSE) clients connected (api_sse_clients) and MQTT messages seen by the live stream "
   "subscriber per second by outcome (api_live_messages_total).",
   [(f"sum(api_sse_clients{{{SEL}}})", "clients"),
    (f"sum by (outcome) (rate(api_live_messages_total{{{SEL}}}[{RATE}]))", "messages {{outcome}}")], "short", x=12, w=12)

dashboard = {
    "uid": "iot-telemetry",
    "title": "IoT telemetry",
    "description": "Ingest throughput, rejects, batch sizes and lag; gRPC and HTTP rates, errors and latencies; "
                   "database pool and sessions of the iot-telemetry services.",
    "tags": ["iot", "mqtt", "telemetry"],
    "editable": True,
    "graphTooltip": 1,
    "schemaVersion": 39,
    "version": 1,
    "refresh": "30s",
    "time": {"from": "now-1h", "to": "now"},
    "timezone": "",
    "annotations": {"list": []},
    "links": [],
    "templating": {"list": [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0, "refresh": 1, "options": []},
        {"name": "namespace", "label": "Namespace", "type": "query",
         "datasource": {"type": "prometheus", "uid": "${datasource}"},
         "query": {"query": "label_values(ingest_messages_received_total, namespace)", "refId": "namespace"},
         "definition": "label_values(ingest_messages_received_total, namespace)",
         "includeAll": True, "multi": True, "allValue": ".*", "current": {}, "hide": 0, "refresh": 2,
         "options": [], "sort": 1},
    ]},
    "panels": panels,
}

out = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else pathlib.Path(__file__).with_name("iot-telemetry.json")
out.write_text(json.dumps(dashboard, indent=2) + "\n")
print(f"wrote {out} ({len(panels)} panels)")
