#!/usr/bin/env python3
"""Print the "Results" tables of docs/benchmarks.md from bench/failover.py JSON files, so the
page quotes the files and nothing else.

    python bench/report.py --runs bench/results/failover-runs.json \
        --default-soak bench/results/failover-default.json --fast bench/results/failover-fast.json
"""
from __future__ import annotations

import argparse
import json


def ms(v: float) -> str:
    return f"{v * 1000:.1f} ms"


def s(v: float) -> str:
    return f"{v:.3f} s"


def row(d: dict, key: str, what: str, target: str, unit=ms) -> str:
    cells = [unit(d[f"{key}_{p}_s"]) for p in ("p50", "p95", "p99", "max")]
    errors = d.get(f"{key}_errors", d.get(f"{key.replace('_heal', '')}_heal_errors", 0))
    return f"| {what} | `{key}_*` | " + " | ".join(cells) + f" | {target} | {errors} |"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", required=True, help="default-profile runs (crash, link, call)")
    ap.add_argument("--default-soak", required=True)
    ap.add_argument("--fast", required=True, help="fast-profile runs and soak")
    a = ap.parse_args()
    r = json.load(open(a.runs))
    d = json.load(open(a.default_soak))
    f = json.load(open(a.fast))
    print("| what | JSON keys | p50 | p95 | p99 | max | target | errors |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print(row(r, "crash", "(a) service crash → peer active, default", "p95 ≤ 0.5 s"))
    print(row(r, "link", "(b) link cut → peer active, default", "p95 ≤ 1.0 s", s))
    print(row(r, "link_heal", "(b) heal → primary alone active, default", "converges in 10 s", s))
    print(row(r, "call", "(c) call at the inactive node → answered, default", "p99 ≤ 50 ms"))
    print(row(f, "fast_crash", "(a) service crash, fast", "—"))
    print(row(f, "fast_link", "(b) link cut, fast", "p95 ≤ 150 ms"))
    print(row(f, "fast_call", "(c) call at the inactive node, fast", "—"))
    print()
    print("| soak (10 min, `stress-ng --cpu 2`) | false failovers | stall warnings | calls answered | max heartbeat age |")
    print("| --- | --- | --- | --- | --- |")
    for name, x, p, timeout in (("default (0.1 s × 6)", d, "", 0.6), ("fast (0.02 s × 6, `SCHED_RR` 10)", f, "fast_", 0.12)):
        print(f"| {name} | {x[p + 'false_failovers']} | {x.get(p + 'soak_stalls', 0)} | "
              f"{x[p + 'soak_calls_answered']} / {x[p + 'soak_calls_placed']} | "
              f"{s(x[p + 'soak_max_heartbeat_age_s'])} (timeout {timeout} s) |")
    print()
    for p, x in (("", r), ("fast_", f)):
        parts = ", ".join(f"{part} {ms(x[f'{p}crash_{part}_p50_s'])} / {ms(x[f'{p}crash_{part}_p95_s'])}"
                          for part in ("detect", "persist", "confirm"))
        print(f"Crash breakdown{' (fast)' if p else ''}, p50 / p95: {parts}.")


if __name__ == "__main__":
    main()
