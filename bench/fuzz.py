#!/usr/bin/env python3
"""Long coverage-guided fuzzing runs of every parser harness (tests/fuzz; docs/reliability.md,
"Fuzzing").

::

    python bench/fuzz.py --minutes 10 --label run1                 # every harness, 10 min each
    python bench/fuzz.py --minutes 30 --only smdi --only sccp      # some of them
    python bench/fuzz.py --minutes 20 --runs 1000000 --jobs 1      # stop each at 10^6 inputs

Each harness runs in its own process (``python -m tests.fuzz.run NAME``, atheris/libFuzzer)
for ``--minutes`` (or until ``--runs`` inputs), starting from its seed corpus
(the ``seed-*`` files of tests/fuzz/corpus/NAME: the known ``crash-*`` reproducers are the
test suite's); ``--jobs`` of them at a time (default: half the CPUs, at least one).  libFuzzer
stops at a finding: the harness is then started again from its grown corpus for the time left
(``--max-restarts``, 5), so one shallow bug does not end its run.  New inputs go to a scratch
corpus (``--corpus-dir`` keeps it).  A crashing input is copied
next to the JSON (``bench/results/fuzz-LABEL-crashes/NAME/``) and listed in the JSON with its
bytes (hex) and the harness's traceback; add it to tests/fuzz/corpus/NAME/ as
``crash-<what>`` once understood.

The JSON (``bench/results/fuzz-LABEL.json``, or ``--json PATH``), per harness:

``executions``   inputs run (libFuzzer's ``number_of_executed_units``, summed over ``runs``)
``exec_per_s``   executions / wall seconds
``coverage``     libFuzzer's ``cov`` (instrumented edges reached) and ``features`` (``ft``) at
                 the end, and the corpus size (``corpus_inputs``)
``crashes``      a list of {file, size, hex, signature, error, fails_uninstrumented} (and
                 ``distinct_findings``, the signatures); empty when nothing
                 was found (``fails_uninstrumented`` false: only atheris's instrumented code
                 failed, an instrumentation artefact, see tests/fuzz/run.py)
``seconds``      wall time; ``exit_code`` of the run (0: no finding)

and ``load_start``/``load_end`` (the load average), ``nproc``, ``jobs``, ``minutes``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fuzz.common import CORPUS, HARNESSES  # noqa: E402 - needs the repository on the path

SHM = "/dev/shm" if os.path.isdir("/dev/shm") else None  # the harnesses' scratch files
_STATUS = re.compile(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/")


def parse_log(log: str) -> dict:
    stats = dict(re.findall(r"stat::(\w+):\s+(\d+)", log))
    last = _STATUS.findall(log)
    out = {"executions": int(stats.get("number_of_executed_units", 0)),
           "exec_per_s": int(stats.get("average_exec_per_sec", 0)),
           "peak_rss_mb": int(stats.get("peak_rss_mb", 0)),
           "new_units": int(stats.get("new_units_added", 0))}
    if last:
        n, cov, ft, corp = (int(x) for x in last[-1])
        out["coverage"] = {"cov": cov, "features": ft, "corpus_inputs": corp}
        out["executions"] = max(out["executions"], n)
    return out


def error_of(log: str) -> str:
    at = log.find("=== Uncaught Python exception")
    if at < 0:
        at = max(log.find("==ERROR"), 0)
    return relative(log[at:at + 4000])


def relative(text: str) -> str:
    """``text`` with the checkout's own path cut from file names (results name no machine
    paths)."""
    return text.replace(str(ROOT) + os.sep, "")


def signature(log: str) -> str:
    """The exception and the innermost frame of a finding (to tell findings apart)."""
    err = error_of(log)
    frames = re.findall(r'File "([^"]+)", line (\d+)', err)
    first = err.splitlines()[1] if err.count("\n") > 1 else err[:200]
    return f"{first.split(':')[0]} at {frames[-1][0].split('/')[-1]}:{frames[-1][1]}" \
        if frames else first[:200]


def run_one(name: str, args: argparse.Namespace, work: Path, crash_root: Path) -> dict:
    corpus, seeds = work / name / "corpus", work / name / "seeds"
    corpus.mkdir(parents=True, exist_ok=True)
    seeds.mkdir(parents=True, exist_ok=True)
    for path in (CORPUS / name).glob("seed-*"):  # known reproducers: the test suite's job
        shutil.copy(path, seeds / path.name)
    for old in (work / name).glob("out-*"):  # a kept --corpus-dir from an earlier run
        shutil.rmtree(old)
    budget, started = args.minutes * 60, time.monotonic()
    result: dict = {"executions": 0, "runs": 0, "crashes": [], "exit_code": 0}
    print(f"[{time.strftime('%H:%M:%S')}] {name}: start", flush=True)
    while result["runs"] <= args.max_restarts:
        left = budget - (time.monotonic() - started)
        runs_left = args.runs - result["executions"] if args.runs else 0
        if left < 5 or (args.runs and runs_left <= 0):
            break
        out = work / name / f"out-{result['runs']}"
        out.mkdir()
        cmd = [sys.executable, "-m", "tests.fuzz.run", name, f"-max_total_time={int(left)}",
               "-print_final_stats=1", f"-timeout={args.timeout}", f"-artifact_prefix={out}/"]
        if runs_left:
            cmd.append(f"-runs={runs_left}")
        cmd += [str(corpus), str(seeds)]
        scratch = tempfile.mkdtemp(prefix="vmha-fuzz-", dir=SHM)
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                                  errors="replace", env={**os.environ, "VMHA_FUZZ_SCRATCH": scratch})
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        log = proc.stdout + proc.stderr
        (work / name / f"log-{result['runs']}.txt").write_text(log)
        stats = parse_log(log)
        result["runs"] += 1
        result["executions"] += stats.pop("executions")
        result.update(stats)  # the last run's coverage, rate and memory
        result["exit_code"] = result["exit_code"] or proc.returncode
        for path in sorted(out.iterdir()):
            data = path.read_bytes()
            dest = crash_root / name
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, dest / path.name)
            scratch = tempfile.mkdtemp(prefix="vmha-fuzz-", dir=SHM)
            try:
                replay = subprocess.run([sys.executable, "-m", "tests.fuzz.run", name,
                                         "--replay", str(path)], cwd=ROOT, capture_output=True,
                                        text=True, errors="replace",
                                        env={**os.environ, "VMHA_FUZZ_SCRATCH": scratch})
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            result["crashes"].append({"file": relative(str(dest / path.name)), "size": len(data),
                                      "hex": data[:4096].hex(), "signature": signature(log),
                                      "error": error_of(log),
                                      "fails_uninstrumented": replay.returncode != 0})
        if proc.returncode and not any(out.iterdir()):
            result["error"] = relative(log[-4000:])
            break
        if not proc.returncode:
            break  # the time (or the runs) ran out without a finding
    result["seconds"] = round(time.monotonic() - started, 1)
    result["exec_per_s"] = round(result["executions"] / max(result["seconds"], 1), 1)
    result["distinct_findings"] = sorted({c["signature"] for c in result["crashes"]})
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {result['executions']} executions, "
          f"{result['exec_per_s']}/s, cov {result.get('coverage', {}).get('cov')}, "
          f"{len(result['crashes'])} crash(es) in {result['runs']} run(s)", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, required=True, help="time per harness")
    ap.add_argument("--only", action="append", choices=HARNESSES, metavar="NAME",
                    help=f"a harness to run (repeatable; default all: {', '.join(HARNESSES)})")
    ap.add_argument("--runs", type=int, default=0, help="stop a harness after this many inputs")
    ap.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                    help="harnesses at once (default: half the CPUs)")
    ap.add_argument("--timeout", type=int, default=30, help="seconds one input may take")
    ap.add_argument("--max-restarts", type=int, default=5,
                    help="after a finding, start again (from the grown corpus) this many times")
    ap.add_argument("--label", default=time.strftime("%Y%m%d-%H%M"))
    ap.add_argument("--json", type=Path, help="default bench/results/fuzz-LABEL.json")
    ap.add_argument("--corpus-dir", type=Path, help="keep the grown corpora here")
    args = ap.parse_args(argv)
    names = args.only or list(HARNESSES)
    out_json = args.json or ROOT / "bench" / "results" / f"fuzz-{args.label}.json"
    crash_root = out_json.with_name(out_json.stem + "-crashes")
    work = args.corpus_dir or Path(tempfile.mkdtemp(prefix="vmha-fuzz-"))
    load_start = os.getloadavg()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {n: pool.submit(run_one, n, args, work, crash_root) for n in names}
        parsers = {n: f.result() for n, f in futures.items()}
    report = {"label": args.label, "started": started,
              "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "minutes": args.minutes, "runs_cap": args.runs or None, "jobs": args.jobs,
              "nproc": os.cpu_count(), "load_start": load_start, "load_end": os.getloadavg(),
              "python": sys.version.split()[0], "parsers": parsers,
              "total_executions": sum(p["executions"] for p in parsers.values()),
              "crashes": sum(len(p["crashes"]) for p in parsers.values())}
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(report, indent=2) + "\n")
    if args.corpus_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {out_json}: {report['total_executions']} executions, {report['crashes']} "
          "crash(es)")
    return 1 if report["crashes"] or any(p["exit_code"] for p in parsers.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
