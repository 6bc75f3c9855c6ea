#!/usr/bin/env python3
"""Print the "Results" tables of docs/benchmarks.md ("Failover") from bench/bench_failover.py JSON
files, so the page quotes the files and nothing else.

    # a file of definitions version 2 (one --profile both run: runs, sip calls and soaks)
    python bench/report.py --both bench/results/failover-both.json
    # version-1 files (no definitions_version key): default runs, fast runs and soak
    python bench/report.py --runs bench/results/failover-runs.json --fast bench/results/failover-fast.json

The soak table says which definitions version its figures belong to (bench/bench_failover.py's
module docstring): version 1's ``false_failovers`` counted records, version 2's counts moves
of the active role and reports ``self_fences`` apart.
"""
from __future__ import annotations

import argparse
import json


def ms(v: float) -> str:
    return f"{v * 1000:.1f} ms"


def s(v: float) -> str:
    return f"{v:.3f} s"


def version(d: dict) -> int:
    return d.get("definitions_version", 1)


def row(d: dict, key: str, what: str, target: str, unit=ms) -> str | None:
    if f"{key}_p50_s" not in d or d[f"{key}_p50_s"] is None:
        failed = d.get(f"{key}_failed")
        return f"| {what} | `{key}_*` | not run{': ' + failed if failed else ''} | | | | {target} | |" \
            if failed else None
    cells = [unit(d[f"{key}_{p}_s"]) for p in ("p50", "p95", "p99", "max")]
    errors = d.get(f"{key}_errors", d.get(f"{key.replace('_heal', '')}_heal_errors", 0))
    return f"| {what} | `{key}_*` | " + " | ".join(cells) + f" | {target} | {errors} |"


def runs_table(r: dict, f: dict | None) -> None:
    print("| what | JSON keys | p50 | p95 | p99 | max | target | errors |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = [row(r, "crash", "(a) service crash → peer active, default", "p95 ≤ 0.5 s"),
            row(r, "link", "(b) link cut → peer active, default", "p95 ≤ 1.0 s", s),
            row(r, "link_heal", "(b) heal → primary alone active, default", "converges in 10 s", s),
            row(r, "call", "(c) call at the inactive node → answered, default", "p99 ≤ 50 ms"),
            row(r, "sip_call_at_inactive", "(d) SIP INVITE at the inactive node → 200 OK, default", "—")]
    if f is not None:
        rows += [row(f, "fast_crash", "(a) service crash, fast", "—"),
                 row(f, "fast_link", "(b) link cut, fast", "p95 ≤ 150 ms"),
                 row(f, "fast_call", "(c) call at the inactive node, fast", "—"),
                 row(f, "fast_sip_call_at_inactive", "(d) SIP INVITE at the inactive node, fast", "—")]
    for line in rows:
        if line:
            print(line)


PROFILES = (("default (0.1 s × 6)", "", 0.6), ("fast (0.02 s × 6, `SCHED_RR` 10)", "fast_", 0.12))


def soak_table(files: list[tuple[dict, str]]) -> None:
    """``files``: (result file, key prefix) per soak row."""
    print("| soak | definitions | false failovers | self-fences | stalls (longest) | calls answered "
          "| max heartbeat age | passed |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for x, p in files:
        name, timeout = next((n, t) for n, q, t in PROFILES if q == p)
        if x.get(p + "soak_calls_placed") is None:
            continue
        load = (f"{x.get('soak_s', 0) / 60:g} min"
                + (", `stress-ng --cpu 2`" if x.get("stress") else ", no load"))
        stall = x.get(p + "stalls", x.get(p + "soak_stalls", 0))
        longest = x.get(p + "max_stall_s", x.get(p + "soak_max_stall_s", 0.0)) or 0.0
        if version(x) >= 2:
            ff, fences = x[p + "false_failovers"], x[p + "self_fences"]
            passed = "yes" if x[p + "soak_passed"] else "**no**"
        else:
            ff, fences, passed = f"{x[p + 'false_failovers']} (records)", "—", "—"
        print(f"| {name}, {load} | v{version(x)} | {ff} | {fences} | {stall} ({s(longest)}) | "
              f"{x[p + 'soak_calls_answered']} / {x[p + 'soak_calls_placed']} | "
              f"{s(x[p + 'soak_max_heartbeat_age_s'])} (timeout {timeout} s) | {passed} |")


def breakdown(files: list[tuple[dict, str]]) -> None:
    for x, p in files:
        if x.get(f"{p}crash_detect_p50_s") is None:
            continue
        parts = ", ".join(f"{part} {ms(x[f'{p}crash_{part}_p50_s'])} / {ms(x[f'{p}crash_{part}_p95_s'])}"
                          for part in ("detect", "persist", "confirm"))
        print(f"Crash breakdown{' (fast)' if p else ''}, p50 / p95: {parts}.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--both", help="one --profile both file: everything from it")
    ap.add_argument("--runs", help="default-profile runs (crash, link, call)")
    ap.add_argument("--default-soak", help="default-profile soak")
    ap.add_argument("--fast", help="fast-profile runs and soak")
    a = ap.parse_args()
    if a.both:
        b = json.load(open(a.both))
        print(f"From `{a.both}` (definitions version {version(b)}, `{b.get('command')}`, "
              f"started {b.get('started')}, load average at start "
              f"{', '.join(f'{v:.2f}' for v in b['machine']['loadavg_start'])}).")
        print()
        runs_table(b, b if b.get("profile") == "both" else None)
        print()
        soak_table([(b, "")] + ([(b, "fast_")] if b.get("profile") == "both" else []))
        print()
        breakdown([(b, ""), (b, "fast_")])
        return
    if not a.runs:
        ap.error("give --both FILE or --runs FILE [--fast FILE] [--default-soak FILE]")
    r = json.load(open(a.runs))
    f = json.load(open(a.fast)) if a.fast else None
    runs_table(r, f)
    soaks = (([(json.load(open(a.default_soak)), "")] if a.default_soak else [])
             + ([(f, "fast_")] if f else []))
    if soaks:
        print()
        soak_table(soaks)
    print()
    breakdown([(r, "")] + ([(f, "fast_")] if f else []))


if __name__ == "__main__":
    main()
