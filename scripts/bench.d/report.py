#!/usr/bin/env python3
"""Summarises a scripts/bench run directory: latest.json, a table on stdout, a PNG plot and
(optionally) the generated block of docs/benchmarks.md.

report.py RUN_DIR --out latest.json --plot latest.png [--docs docs/benchmarks.md --docs-plot docs/x.png]
"""
import argparse
import json
import os
import re
import shutil
import sys

CLK_TCK = os.sysconf("SC_CLK_TCK")


def load(run, name):
    path = os.path.join(run, name + ".json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        text = f.read().strip()
    return json.loads(text) if text else None


def jsonl(path):
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
    return out


def r2(v):
    return None if v is None else round(v, 2)


def proc_stats(samples, start, end):
    """CPU % (100 = one core) and peak RSS (MiB) of every sampled process within [start, end]."""
    window = [s for s in samples if start - 0.3 <= s["t"] <= end + 0.3]
    seen = {}
    for s in window:
        for name, (ticks, rss, hwm) in s["p"].items():
            seen.setdefault(name, []).append((s["t"], ticks, rss, hwm))
    out = {}
    for name, pts in seen.items():
        cpu = None
        if len(pts) >= 2 and pts[-1][0] > pts[0][0]:
            cpu = (pts[-1][1] - pts[0][1]) / CLK_TCK / (pts[-1][0] - pts[0][0]) * 100
        out[name] = {"cpu_pct": r2(cpu), "peak_rss_mib": r2(max(p[2] for p in pts) / 1024), "hwm_mib": r2(max(p[3] for p in pts) / 1024)}
    return out


def histogram(path):
    """Cumulative buckets of ingest_end_to_end_lag_seconds from a Prometheus text scrape."""
    buckets = {}
    if not os.path.exists(path):
        return buckets
    with open(path) as f:
        for line in f:
            m = re.match(r'ingest_end_to_end_lag_seconds_bucket\{le="([^"]+)"\} (\S+)', line)
            if m:
                buckets[float("inf") if m.group(1) == "+Inf" else float(m.group(1))] = float(m.group(2))
    return buckets


def hist_percentile(buckets, p):
    """Linear interpolation inside the bucket holding the p-th percentile, in ms."""
    if not buckets:
        return None
    les = sorted(buckets)
    total = buckets[les[-1]]
    if total <= 0:
        return None
    want = total * p / 100
    prev_le, prev_c = 0.0, 0.0
    for le in les:
        c = buckets[le]
        if c >= want:
            if le == float("inf"):
                return prev_le * 1000
            frac = (want - prev_c) / (c - prev_c) if c > prev_c else 1.0
            return (prev_le + (le - prev_le) * frac) * 1000
        prev_le, prev_c = le, c
    return None


def ingest_hist(run, label, before_label, replicas):
    total = {}
    for n in range(1, replicas + 1):
        after = histogram(os.path.join(run, f"metrics-{label}-ingest-{n}.txt"))
        before = histogram(os.path.join(run, f"metrics-{before_label}-ingest-{n}.txt"))
        for le, c in after.items():
            total[le] = total.get(le, 0) + c - before.get(le, 0)
    return {"p50_ms": r2(hist_percentile(total, 50)), "p99_ms": r2(hist_percentile(total, 99)),
            "count": int(total.get(float("inf"), 0))}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--out", required=True)
    ap.add_argument("--plot")
    ap.add_argument("--docs")
    ap.add_argument("--docs-plot")
    a = ap.parse_args()
    run = a.run
    meta = load(run, "meta") or {}
    phases = {p["phase"]: p for p in jsonl(os.path.join(run, "phases.jsonl"))}
    samples = jsonl(os.path.join(run, "procmon.jsonl"))
    procs = {name: proc_stats(samples, p["start"], p["end"]) for name, p in phases.items()}

    ceiling = load(run, "ceiling")
    broker = ceiling["committed_msgs_per_s"] if ceiling else None

    ingest = {}
    for r in (1, 2):
        full, half = load(run, f"ingest-r{r}"), load(run, f"ingest-r{r}-half")
        if not full and not half:
            continue
        full = full or {}  # --phases ingest-rN-half: the latency phase alone
        lat = (half or {}).get("latency") or {}
        flat = full.get("latency") or {}
        ps = procs.get(f"ingest-r{r}", {})
        ingest_rss = [v["peak_rss_mib"] for k, v in ps.items() if k.startswith("ingest-")]
        ingest[f"replicas_{r}"] = {
            # Everything stored over first publish to last commit (see docs/benchmarks.md).
            "committed_msgs_per_s": full.get("committed_msgs_per_s"),
            "committed_in_window_msgs_per_s": full.get("committed_in_window_msgs_per_s"),
            "last_commit_s": full.get("last_commit_s"),
            "acked_msgs_per_s": full.get("acked_msgs_per_s"),
            "published": full.get("published"), "acked": full.get("acked"), "stored": full.get("stored"),
            "lost": full.get("lost"),
            # Of `lost` (and of the other consumers' messages): dropped by the broker for a full queue.
            "broker_dropped": full.get("broker_dropped"),
            "drain_s": full.get("drain_s"),
            "drain_ended": full.get("drain_ended"),
            # Once the publishers stopped: the backlog's rate with the CPU they had used freed.
            "drain_msgs_per_s": full.get("drain_msgs_per_s"),
            # Latency at half the broker's ceiling (the target's condition); full speed below.
            "p50_ms": lat.get("p50_ms"), "p99_ms": lat.get("p99_ms"),
            "latency_rate_msgs_per_s": (half or {}).get("target_rate"),
            "latency_run": {k: (half or {}).get(k) for k in ("acked_msgs_per_s", "committed_msgs_per_s", "lost", "broker_dropped")},
            "latency_samples": lat.get("samples"),
            "histogram_at_half_rate": ingest_hist(run, f"ingest-r{r}-half", f"ingest-r{r}", r) if half else None,
            "full_speed_p50_ms": flat.get("p50_ms"), "full_speed_p99_ms": flat.get("p99_ms"),
            "histogram_full_speed": ingest_hist(run, f"ingest-r{r}", f"ingest-r{r}-before", r),
            "rss_mib": max(ingest_rss) if ingest_rss else None,
            "processes_full_speed": ps,
            "processes_half_rate": procs.get(f"ingest-r{r}-half", {}),
        }

    base_ing, base_api = load(run, "baseline-ingest"), load(run, "baseline-api")
    baseline = {
        "ingest_committed_msgs_per_s": base_ing["committed_msgs_per_s"] if base_ing else None,
        "ingest_lost": base_ing["lost"] if base_ing else None,
        "ingest_broker_dropped": base_ing.get("broker_dropped") if base_ing else None,
        "ingest_acked": base_ing["acked"] if base_ing else None,
        "ingest_stored": base_ing["stored"] if base_ing else None,
        "ingest_drain_s": base_ing["drain_s"] if base_ing else None,
        "ingest_committed_in_window_msgs_per_s": base_ing.get("committed_in_window_msgs_per_s") if base_ing else None,
        "ingest_last_commit_s": base_ing.get("last_commit_s") if base_ing else None,
        "ingest_drain_msgs_per_s": base_ing.get("drain_msgs_per_s") if base_ing else None,
        "ingest_p50_ms": ((base_ing or {}).get("latency") or {}).get("p50_ms"),
        "ingest_p99_ms": ((base_ing or {}).get("latency") or {}).get("p99_ms"),
        "ingest_processes": procs.get("baseline-ingest", {}),
        "api_rps": base_api["rps"] if base_api else None,
        "api_p50_ms": base_api["lat_p50_ms"] if base_api else None,
        "api_p99_ms": base_api["lat_p99_ms"] if base_api else None,
        "api_errors": (base_api["err_status"] + base_api["err_connect"] + base_api["err_read"] + base_api["err_write"] + base_api["err_timeout"]) if base_api else None,
        "api_processes": procs.get("baseline-api", {}),
    }

    def wrk_summary(w, phase):
        if not w:
            return None
        return {"rps": w["rps"], "p50_ms": w["lat_p50_ms"], "p90_ms": w["lat_p90_ms"], "p99_ms": w["lat_p99_ms"],
                "errors": w["err_status"] + w["err_connect"] + w["err_read"] + w["err_write"] + w["err_timeout"],
                "requests": w["requests"], "processes": procs.get(phase, {})}

    rng = wrk_summary(load(run, "api-range"), "api-range")
    api = dict(rng) if rng else {"rps": None, "p50_ms": None, "p99_ms": None, "errors": None}
    api["latest"] = wrk_summary(load(run, "api-latest"), "api-latest")
    api["aggregate_24h"] = wrk_summary(load(run, "api-aggregate"), "api-aggregate")
    api["range_no_session_cache"] = wrk_summary(load(run, "api-range-nocache"), "api-range-nocache")
    dbc = load(run, "db-ceiling")
    if dbc:
        dbc["processes"] = procs.get("db-ceiling", {})

    def ratio(x, y):
        return round(x / y, 3) if x is not None and y else None

    best = max((v["committed_msgs_per_s"] for v in ingest.values() if v["committed_msgs_per_s"] is not None), default=None)
    ratios = {
        "ingest_vs_broker": ratio(best, broker),
        "ingest_r1_vs_broker": ratio(ingest.get("replicas_1", {}).get("committed_msgs_per_s"), broker),
        "ingest_r2_vs_broker": ratio(ingest.get("replicas_2", {}).get("committed_msgs_per_s"), broker),
        "ingest_vs_baseline": ratio(best, baseline["ingest_committed_msgs_per_s"]),
        "api_vs_baseline": ratio(api["rps"], baseline["api_rps"]),
        "api_vs_db_ceiling": ratio(api["rps"], dbc["qps"] if dbc else None),
    }
    lost_all = [v["lost"] for v in ingest.values()] + [v["latency_run"]["lost"] for v in ingest.values() if v["latency_run"]["lost"] is not None]
    p99s = [v["p99_ms"] for v in ingest.values() if v["p99_ms"] is not None]
    targets = {
        "ingest_at_least_half_of_broker": None if ratios["ingest_vs_broker"] is None else ratios["ingest_vs_broker"] >= 0.5,
        "ingest_aim_60pct_of_broker": None if ratios["ingest_vs_broker"] is None else ratios["ingest_vs_broker"] >= 0.6,
        "ingest_zero_lost": None if not lost_all else all(l == 0 for l in lost_all),
        "ingest_p99_under_100ms_at_half_rate": None if not p99s else all(p < 100 for p in p99s),
        "api_at_least_half_of_db": None if ratios["api_vs_db_ceiling"] is None else ratios["api_vs_db_ceiling"] >= 0.5,
        "api_at_least_5x_baseline": None if ratios["api_vs_baseline"] is None else ratios["api_vs_baseline"] >= 5,
        "api_p99_under_25ms": None if api["p99_ms"] is None else api["p99_ms"] < 25,
    }
    result = {
        "machine": {k: meta.get(k) for k in ("cores", "cpu", "mem_mib", "kernel", "mariadb", "mariadb_settings", "mosquitto", "loadavg_at_start", "note")},
        "run": {k: meta.get(k) for k in ("stamp", "git", "quick", "duration_s", "api_duration_s", "devices", "connections", "inflight", "metrics", "api_connections", "consumer_connections", "broker_setup")},
        # Devices' broker accounts (secured broker): how long provisioning them took.
        "broker_provisioning": (load(run, "setup") or {}).get("broker"),
        "run_dir": os.path.relpath(run, os.path.dirname(os.path.abspath(a.out))),
        "ingest": ingest,
        "broker_ceiling_msgs_per_s": broker,
        "broker_ceiling": {k: ceiling.get(k) for k in ("acked_msgs_per_s", "committed_msgs_per_s", "committed_in_window_msgs_per_s", "last_commit_s", "duration_s", "acked", "stored", "lost", "broker_dropped", "drain_ended")} | {"processes": procs.get("ceiling", {})} if ceiling else None,
        "baseline": baseline,
        "api": api,
        "db_ceiling_qps": dbc["qps"] if dbc else None,
        "db_ceiling": dbc,
        "ratios": ratios,
        "targets": targets,
        "dataset_load_s": r2(phases["dataset-load"]["end"] - phases["dataset-load"]["start"]) if "dataset-load" in phases else None,
    }
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(run, "result.json"), "w") as f:
        json.dump(result, f, indent=2)
    table = render_table(result)
    print(table)
    if a.plot:
        plot(result, a.plot)
    if a.docs:
        if a.docs_plot and a.plot:
            shutil.copyfile(a.plot, a.docs_plot)
        write_docs(result, table, a.docs, os.path.basename(a.docs_plot) if a.docs_plot else None)


def fmt(v, unit="", digits=0):
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, (int, float)):
        return f"{v:,.{digits}f}{unit}"
    return str(v)


def top_cpu(processes, n=4):
    items = [(k, v["cpu_pct"]) for k, v in (processes or {}).items() if v.get("cpu_pct") is not None]
    items.sort(key=lambda kv: -kv[1])
    return ", ".join(f"{k} {v:.0f}%" for k, v in items[:n])


def broker_text(r):
    """Which broker setup ran, and its version."""
    m, setup = r["machine"], r["run"].get("broker_setup")
    if setup == "secured":
        what = "secured (dynamic-security plugin, one account and role per device, service accounts for ingest/api)"
    elif setup == "anonymous":
        what = "anonymous (DEVELOPMENT ONLY: dev/allow-anonymous.conf, no logins or ACLs)"
    else:
        what = "setup not recorded (before the secured default: anonymous)"
    return f"{what}; {m.get('mosquitto')}"


def lost_cell(lost, broker_dropped):
    """The lost count, and how many of them the broker itself dropped, when it did."""
    return fmt(lost) + (f" ({fmt(broker_dropped)} in broker)" if broker_dropped else "")


def render_table(r):
    rows = [("what", "throughput", "p50", "p99", "lost/errors", "CPU (100% = 1 core)")]
    bc = r.get("broker_ceiling")
    if bc:
        conns = r["run"].get("consumer_connections") or 1
        rows.append((f"broker ceiling (counting subscriber, {conns} conn.)", fmt(r["broker_ceiling_msgs_per_s"], " msg/s"), "", "", lost_cell(bc.get("lost"), bc.get("broker_dropped")), top_cpu(bc["processes"])))
    for key, label in (("replicas_1", "ingest, 1 replica"), ("replicas_2", "ingest, 2 replicas")):
        v = r["ingest"].get(key)
        if not v:
            continue
        if v["committed_msgs_per_s"] is not None:
            rows.append((label + ", full speed", fmt(v["committed_msgs_per_s"], " msg/s"), fmt(v["full_speed_p50_ms"], " ms", 1), fmt(v["full_speed_p99_ms"], " ms", 1), lost_cell(v["lost"], v.get("broker_dropped")), top_cpu(v["processes_full_speed"])))
        if v.get("latency_rate_msgs_per_s"):
            rows.append((label + f", at {v['latency_rate_msgs_per_s']:,.0f} msg/s", fmt(v["latency_run"]["committed_msgs_per_s"], " msg/s"), fmt(v["p50_ms"], " ms", 1), fmt(v["p99_ms"], " ms", 1), lost_cell(v["latency_run"]["lost"], v["latency_run"].get("broker_dropped")), top_cpu(v["processes_half_rate"])))
    b = r["baseline"]
    if b["ingest_committed_msgs_per_s"] is not None:
        rows.append(("baseline ingest.py, full speed", fmt(b["ingest_committed_msgs_per_s"], " msg/s"), fmt(b["ingest_p50_ms"], " ms", 1), fmt(b["ingest_p99_ms"], " ms", 1), lost_cell(b["ingest_lost"], b.get("ingest_broker_dropped")), top_cpu(b["ingest_processes"])))
    api = r["api"]
    if api.get("rps") is not None:
        rows.append(("api range (~120 rows)", fmt(api["rps"], " req/s"), fmt(api["p50_ms"], " ms", 2), fmt(api["p99_ms"], " ms", 2), fmt(api["errors"]), top_cpu(api.get("processes"))))
    for key, label in (("latest", "api latest"), ("aggregate_24h", "api 24 h aggregate"), ("range_no_session_cache", "api range, session cache off")):
        v = api.get(key)
        if v:
            rows.append((label, fmt(v["rps"], " req/s"), fmt(v["p50_ms"], " ms", 2), fmt(v["p99_ms"], " ms", 2), fmt(v["errors"]), top_cpu(v["processes"])))
    if b["api_rps"] is not None:
        rows.append(("baseline api (gunicorn -w 2)", fmt(b["api_rps"], " req/s"), fmt(b["api_p50_ms"], " ms", 2), fmt(b["api_p99_ms"], " ms", 2), fmt(b["api_errors"]), top_cpu(b["api_processes"])))
    d = r.get("db_ceiling")
    if d:
        rows.append(("MariaDB direct (same range query)", fmt(d["qps"], " q/s"), fmt(d["p50_ms"], " ms", 2), fmt(d["p99_ms"], " ms", 2), fmt(d["errors"]), top_cpu(d.get("processes"))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(widths[j]) if j in (0, 5) else c.rjust(widths[j]) for j, c in enumerate(row)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    tails = []
    if bc and bc.get("last_commit_s") is not None:
        tails.append(("broker ceiling", bc.get("committed_in_window_msgs_per_s"), bc["last_commit_s"]))
    for key, label in (("replicas_1", "ingest 1 replica"), ("replicas_2", "ingest 2 replicas")):
        v = r["ingest"].get(key)
        if v and v.get("last_commit_s") is not None:
            tails.append((label, v.get("committed_in_window_msgs_per_s"), v["last_commit_s"]))
    if b.get("ingest_last_commit_s") is not None:
        tails.append(("baseline", b.get("ingest_committed_in_window_msgs_per_s"), b["ingest_last_commit_s"]))
    if tails:
        # Throughput above is stored / (first publish .. last commit); what a broker delivers
        # only after its publishers stop is in it, and shows here.
        lines.append(f"full speed, {fmt(r['run'].get('duration_s'))} s of publishing: " + "; ".join(
            f"{name} {fmt(rate, ' msg/s')} committed while publishing, last commit at {fmt(last, ' s', 1)}" for name, rate, last in tails))
    cut_short = [name for name, phase in [("broker ceiling", bc)] + [(f"ingest {k}", v) for k, v in r["ingest"].items()]
                 if phase and phase.get("drain_ended") == "timeout"]
    if cut_short:
        lines.append("WARNING: still receiving when the drain timeout ended the wait: " + ", ".join(cut_short)
                     + " (their lost count includes messages still on their way; rerun with a longer drain)")
    dropped_in = [name for name, dropped in [("broker ceiling", (bc or {}).get("broker_dropped")), ("baseline", b.get("ingest_broker_dropped"))]
                  + [(f"ingest {k}", v.get("broker_dropped")) for k, v in r["ingest"].items()] if dropped]
    if dropped_in:
        lines.append("in broker: messages the broker acknowledged and then dropped because a consumer connection's queue was full "
                     "(max_queued_messages, deploy/mosquitto/mosquitto.conf), in: " + ", ".join(dropped_in))
    ra = r["ratios"]
    lines.append("ratios: " + ", ".join(f"{k}={fmt(v, '', 3)}" for k, v in ra.items()))
    lines.append("targets: " + ", ".join(f"{k}={fmt(v)}" for k, v in r["targets"].items()))
    rss = {}
    for v in r["ingest"].values():
        for k, p in v["processes_full_speed"].items():
            rss[k] = max(rss.get(k, 0), p["peak_rss_mib"] or 0)
    if rss:
        lines.append("peak RSS during ingest (MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(rss.items()) if not k.startswith("loadgen")))
    lines.append("broker: " + broker_text(r))
    m = r["machine"]
    lines.append(f"machine: {m.get('cores')} cores, {m.get('cpu')}; load at start {m.get('loadavg_at_start')}" + (f"; note: {m['note']}" if m.get("note") else ""))
    return "\n".join(lines)


def plot(r, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # The API panel has the most bars; its two-line labels overlapped at equal widths.
    fig, axes = plt.subplots(1, 3, figsize=(18, 5), gridspec_kw={"width_ratios": [4, 6, 5]})
    # Ingest throughput.
    names, vals, colors = [], [], []
    if r["broker_ceiling_msgs_per_s"]:
        names.append("broker\nceiling"); vals.append(r["broker_ceiling_msgs_per_s"]); colors.append("#999999")
    for key, label in (("replicas_1", "ingest\n1 replica"), ("replicas_2", "ingest\n2 replicas")):
        if r["ingest"].get(key, {}).get("committed_msgs_per_s") is not None:
            names.append(label); vals.append(r["ingest"][key]["committed_msgs_per_s"]); colors.append("#1f77b4")
    if r["baseline"]["ingest_committed_msgs_per_s"] is not None:
        names.append("baseline\ningest.py"); vals.append(r["baseline"]["ingest_committed_msgs_per_s"]); colors.append("#d62728")
    ax = axes[0]
    bars = ax.bar(names, vals, color=colors)
    ax.bar_label(bars, labels=[f"{v:,.0f}" for v in vals])
    ax.set_title("Ingest: messages/s committed in MariaDB\n(QoS 1, full speed)")
    ax.set_ylabel("messages/s")
    # API throughput.
    names, vals, colors = [], [], []
    if r.get("db_ceiling"):
        names.append("MariaDB\ndirect"); vals.append(r["db_ceiling"]["qps"]); colors.append("#999999")
    if r["api"].get("rps") is not None:
        names.append("api\nrange"); vals.append(r["api"]["rps"]); colors.append("#1f77b4")
    for key, label in (("latest", "api\nlatest"), ("aggregate_24h", "api\n24h agg"), ("range_no_session_cache", "api range\nno sess. cache")):
        if r["api"].get(key):
            names.append(label); vals.append(r["api"][key]["rps"]); colors.append("#6baed6")
    if r["baseline"]["api_rps"] is not None:
        names.append("baseline\nFlask"); vals.append(r["baseline"]["api_rps"]); colors.append("#d62728")
    ax = axes[1]
    bars = ax.bar(names, vals, color=colors)
    ax.bar_label(bars, labels=[f"{v:,.0f}" for v in vals])
    ax.set_title("API: requests/s, 32 connections")
    ax.set_ylabel("requests/s")
    # Latencies.
    names, p50, p99 = [], [], []
    for key, label in (("replicas_1", "ingest 1r\n@half"), ("replicas_2", "ingest 2r\n@half")):
        v = r["ingest"].get(key)
        if v and v["p99_ms"] is not None:
            names.append(label); p50.append(v["p50_ms"]); p99.append(v["p99_ms"])
    if r["api"].get("p99_ms") is not None:
        names.append("api\nrange"); p50.append(r["api"]["p50_ms"]); p99.append(r["api"]["p99_ms"])
    if r.get("db_ceiling"):
        names.append("MariaDB\ndirect"); p50.append(r["db_ceiling"]["p50_ms"]); p99.append(r["db_ceiling"]["p99_ms"])
    if r["baseline"]["api_p99_ms"] is not None:
        names.append("baseline\nFlask"); p50.append(r["baseline"]["api_p50_ms"]); p99.append(r["baseline"]["api_p99_ms"])
    ax = axes[2]
    x = list(range(len(names)))
    b1 = ax.bar([i - 0.2 for i in x], p50, width=0.4, label="p50")
    b2 = ax.bar([i + 0.2 for i in x], p99, width=0.4, label="p99")
    ax.bar_label(b1, labels=[f"{v:.1f}" for v in p50], fontsize=8)
    ax.bar_label(b2, labels=[f"{v:.1f}" for v in p99], fontsize=8)
    ax.set_xticks(x, names)
    ax.set_title("Latency (ms): ingest publish->commit at half\nthe broker ceiling; API/DB per request")
    if names:
        ax.set_ylabel("ms (log scale)")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        # Minor ticks labelled at 2 and 5 of each decade only: all eight crowd over a wide range.
        ax.yaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(
            lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
        ax.legend()
    else:
        # --phases without a latency phase or the API: an empty log axis cannot be drawn.
        ax.text(0.5, 0.5, "no latency measured in this run", ha="center", va="center", transform=ax.transAxes)
    m = r["machine"]
    fig.suptitle(f"scripts/bench{' --quick' if r['run'].get('quick') else ''} {r['run'].get('stamp')}: {r['run'].get('duration_s')} s ingest phases, "
                 f"{r['run'].get('api_duration_s')} s API phases; {r['run'].get('broker_setup') or '?'} broker; {m.get('cores')} cores ({m.get('cpu')})" + (" - see the run's note" if m.get("note") else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


BEGIN, END = "<!-- bench:begin (generated by scripts/bench --update-docs) -->", "<!-- bench:end -->"


def write_docs(r, table, path, plot_name):
    block = [BEGIN, "", f"Run `{r['run'].get('stamp')}` at commit `{r['run'].get('git')}`"
             f" ({'`--quick`' if r['run'].get('quick') else 'full'}: {r['run'].get('duration_s')} s per ingest phase, "
             f"{r['run'].get('api_duration_s')} s per API phase, {r['run'].get('devices')} devices, "
             f"{r['run'].get('metrics')} metrics per message, "
             f"{r['run'].get('consumer_connections') or 1} MQTT connections per consumer).", ""]
    m = r["machine"]
    block.append(f"Machine: {m.get('cores')} cores ({m.get('cpu')}), {m.get('mem_mib')} MiB, {m.get('mariadb')}, {m.get('mosquitto')}; "
                 f"load average at start {m.get('loadavg_at_start')}.")
    block += ["", f"Broker: {broker_text(r)}."]
    if m.get("note"):
        block += ["", f"**Note:** {m['note']}"]
    block += ["", "```", table, "```", ""]
    if plot_name:
        block += [f"![throughput and latency]({plot_name})", ""]
    block += ["Raw figures: `bench-results/latest.json` of that run (keys as listed above).", "", END]
    text = "\n".join(block)
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
        if BEGIN in old and END in old:
            text = old[: old.index(BEGIN)] + text + old[old.index(END) + len(END):]
        else:
            text = old.rstrip() + "\n\n" + text + "\n"
    else:
        text = "# Benchmarks\n\n" + text + "\n"
    with open(path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    sys.exit(main())
