#!/usr/bin/env python3
"""Samples CPU time and memory of the benchmark's processes from /proc until SIGTERM.

procmon.py PROCS_FILE OUT_JSONL [INTERVAL_S]

PROCS_FILE holds lines `name pid` (appended by scripts/bench as it starts things; re-read
every sample). A name ending in `+` counts the whole process tree (gunicorn and its workers).
Each sample is one JSON line: {"t": epoch_s, "p": {name: [cpu_ticks, rss_kib, hwm_kib]}}.
"""
import json
import os
import signal
import sys
import time

stop = False


def on_term(*_):
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_term)
signal.signal(signal.SIGINT, on_term)


def stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    rest = s[s.rindex(")") + 2:].split()
    # fields after comm: state(3) ppid(4) ... utime(14) stime(15) -> rest[11], rest[12]
    return int(rest[1]), int(rest[11]) + int(rest[12])


def mem(pid):
    rss = hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm


def children_map():
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid, _ = stat(d)
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    return kids


def tree(pid, kids):
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def main():
    procs_file, out_file = sys.argv[1], sys.argv[2]
    interval = float(sys.argv[3]) if len(sys.argv) > 3 else 0.5
    with open(out_file, "a") as out:
        while not stop:
            procs = []
            try:
                with open(procs_file) as f:
                    procs = [l.split() for l in f if len(l.split()) == 2]
            except OSError:
                pass
            kids = children_map() if any(n.endswith("+") for n, _ in procs) else {}
            sample = {}
            for name, pid in procs:
                pids = tree(int(pid), kids) if name.endswith("+") else [int(pid)]
                ticks = rss = hwm = 0
                alive = False
                for p in pids:
                    try:
                        ticks += stat(p)[1]
                        r, h = mem(p)
                        rss += r
                        hwm += h
                        alive = True
                    except (OSError, ValueError, IndexError):
                        pass
                if alive:
                    sample[name.rstrip("+")] = [ticks, rss, hwm]
            out.write(json.dumps({"t": time.time(), "p": sample}) + "\n")
            out.flush()
            time.sleep(interval)


if __name__ == "__main__":
    main()
