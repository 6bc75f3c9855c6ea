#!/usr/bin/env python3
"""Idle cost of a real vmha pair (docs/benchmarks.md, "Idle node").

::

    python bench/bench_idle.py --json idle.json                  # 60 s measured, ~80 s in all
    python bench/bench_idle.py --seconds 120 --json idle.json

The pair is the one ``vmha configure`` makes (``lab.pair.Pair`` writes it with the wizard): the
default failover profile, only the loopback ports, replication on, the node link direct (no
relay).  No call is offered and no operator command is given.  The measurement starts once the
pair has converged (primary active, secondary inactive, each sees the other) and ``--settle``
seconds more have passed.

Key definitions, version 1 (every result file has ``definitions_version``: 1).  They are fixed
before a run; a result file is never edited afterwards; a new definition is a new key.

``idle_node_cpu_ms_per_s``
    For each node: the CPU time (utime + stime from ``/proc/PID/stat``) its node manager and
    every descendant of it (the messaging service and any worker it starts) used during the
    measured window, in ms per second of wall time (``time.monotonic()`` around the two
    readings).  The figure is the larger of the two nodes.  Per node:
    ``idle_node_cpu_ms_per_s_by_node``.
``idle_manager_cpu_ms_per_s``, ``idle_service_cpu_ms_per_s``
    The same for the node manager alone and for its messaging service (with the service's own
    descendants), per node (``{"a": .., "b": ..}``).
``idle_node_cpu_slices_ms_per_s``
    The window cut into ``--slice`` second slices; per slice the larger node's figure as above.
    ``idle_node_cpu_p50_ms_per_s``, ``_p95_``, ``_max_`` are over these slices (nearest rank).
``idle_rss_mb``
    VmRSS at the end of the window, per node and process (``manager``, ``service``).
``loadavg_start``, ``loadavg_end``
    The 1-minute load average before and after the window: the machine was shared.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_sip import children, cpu_s, rss_mb  # noqa: E402

from lab.pair import Pair  # noqa: E402

DEFINITIONS_VERSION = 1


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        for c in children(todo.pop()):
            out.append(c)
            todo.append(c)
    return out


def converged(pair: Pair) -> bool:
    a, b = pair.a.status(), pair.b.status()
    if not a or not b:
        return False
    return (a["node"]["state"] == "active" and b["node"]["state"] == "inactive"
            and a["peer"]["reachable"] and b["peer"]["reachable"]
            and a["node"]["service"] == "running" and b["node"]["service"] == "running")


def reading(pair: Pair) -> dict:
    """CPU seconds per node and process, now."""
    out = {}
    for name, node in (("a", pair.a), ("b", pair.b)):
        manager = node.pid
        service = node.service_pid()
        below = [service, *descendants(service)] if service else []
        out[name] = {"manager": cpu_s(manager) or 0.0,
                     "service": sum(cpu_s(p) or 0.0 for p in below),
                     "pids": {"manager": manager, "service": service}}
    out["t"] = time.monotonic()
    return out


def rate(r0: dict, r1: dict, name: str, part: str | None = None) -> float:
    dt = r1["t"] - r0["t"]
    parts = [part] if part else ["manager", "service"]
    return sum(r1[name][p] - r0[name][p] for p in parts) * 1000 / dt


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except OSError:
        return None


def run(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="vmha-idle-") as tmp, Pair(Path(tmp), relay=False) as pair:
        pair.start()
        pair.wait_for(lambda: converged(pair), timeout=60, poll=0.2, what="the pair converged")
        time.sleep(args.settle)
        load0 = os.getloadavg()[0]
        readings = [reading(pair)]
        end = readings[0]["t"] + args.seconds
        while time.monotonic() < end:
            time.sleep(min(args.slice, max(0.0, end - time.monotonic())))
            readings.append(reading(pair))
        first, last = readings[0], readings[-1]
        if not converged(pair):
            raise SystemExit("the pair did not stay converged during the window: nothing recorded")
        by_node = {n: round(rate(first, last, n), 3) for n in ("a", "b")}
        slices = [max(rate(r0, r1, "a"), rate(r0, r1, "b"))
                  for r0, r1 in zip(readings, readings[1:], strict=False) if r1["t"] - r0["t"] > 0.5]
        rss = {n: {"manager": rss_mb(last[n]["pids"]["manager"]),
                   "service": rss_mb(last[n]["pids"]["service"]) if last[n]["pids"]["service"] else None}
               for n in ("a", "b")}
        return {
            "definitions_version": DEFINITIONS_VERSION,
            "bench": "idle", "commit": commit(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "window_s": round(last["t"] - first["t"], 3),
            "settle_s": args.settle, "slice_s": args.slice,
            "idle_node_cpu_ms_per_s": max(by_node.values()),
            "idle_node_cpu_ms_per_s_by_node": by_node,
            "idle_manager_cpu_ms_per_s": {n: round(rate(first, last, n, "manager"), 3) for n in ("a", "b")},
            "idle_service_cpu_ms_per_s": {n: round(rate(first, last, n, "service"), 3) for n in ("a", "b")},
            "idle_node_cpu_slices_ms_per_s": [round(x, 3) for x in slices],
            "idle_node_cpu_p50_ms_per_s": round(pct(slices, 50), 3),
            "idle_node_cpu_p95_ms_per_s": round(pct(slices, 95), 3),
            "idle_node_cpu_max_ms_per_s": round(max(slices), 3),
            "idle_rss_mb": {n: {k: None if v is None else round(v, 1) for k, v in d.items()}
                            for n, d in rss.items()},
            "loadavg_start": load0, "loadavg_end": os.getloadavg()[0],
        }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="the measured window (at least 60)")
    ap.add_argument("--settle", type=float, default=10.0, help="seconds after convergence before it")
    ap.add_argument("--slice", type=float, default=5.0, help="slice length for the distribution")
    ap.add_argument("--json", metavar="FILE", help="write the result here")
    ap.add_argument("--allow-short", action="store_true", help="a window under 60 s (a smoke run)")
    args = ap.parse_args(argv)
    if args.seconds < 60 and not args.allow_short:
        ap.error("--seconds must be at least 60 (the figure's definition); --allow-short for a smoke run")
    out = run(args)
    text = json.dumps(out, indent=2) + "\n"
    if args.json:
        Path(args.json).write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
