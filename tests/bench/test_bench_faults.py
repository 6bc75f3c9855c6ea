"""bench/faults.py: its schedule and options, and a real 2-cycle campaign with short holds (a
link partition, then link delay through the NFQUEUE consumer; callers running throughout) that
must end complete with every invariant 0 and leave nothing behind (namespaces, state file,
mounts).  Process kills are left to tests/lab/test_nemesis.py and the campaign itself: a call
dropped by a kill after its tone is judged by the caller's BYE timing alone (lab.faultload)."""
from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "faults.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_faults", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_schedule_gives_every_kind_before_any_repeats(bench):
    kinds = ["x", "y", "z"]
    plan = bench.schedule(random.Random(5), kinds, 7)
    assert len(plan) == 7 and sorted(plan[:3]) == kinds and sorted(plan[3:6]) == kinds
    assert plan == bench.schedule(random.Random(5), kinds, 7)  # the seed decides it


def test_bad_options_are_refused(bench, capsys):
    for argv in (["--cycles", "0", "--seed", "1"], ["--cycles", "2", "--seed", "1", "--hold-max", "0.5"],
                 ["--cycles", "2"]):
        with pytest.raises(SystemExit) as e:
            bench.parse_args(argv)
        assert e.value.code == 2
    assert "--cycles" in capsys.readouterr().err


@pytest.mark.multiprocess
def test_a_two_cycle_campaign_ends_with_every_invariant_zero(tmp_path):
    assert os.geteuid() == 0, "the campaign needs root (ip netns, iptables, mount): run as root"
    out = tmp_path / "faults.json"
    p = subprocess.run([sys.executable, str(BENCH), "--cycles", "2", "--seed", "5", "--hold-max", "3",
                        "--quiet", "3", "--kinds", "partition_link,link_delay", "--out", str(out),
                        "--workdir", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.exists(), p.stdout[-3000:] + p.stderr[-3000:]
    r = json.loads(out.read_text())
    assert p.returncode == 0 and r["complete"] and r["error"] is None, (r["error"], p.stdout[-3000:])
    assert r["cycles"] == r["cycles_done"] == 2 and r["seed"] == 5
    assert r["faults"] == {"partition_link": 1, "link_delay": 1} and not r["skipped"]
    assert r["calls"] > 0 and r["check"]["answered"] > 0
    for key in ("lost", "duplicated", "lamp_mismatches", "same_term_actives", "outside_term"):
        assert r[key] == 0, (key, r["check"]["details"])
    assert r["check"]["final_active_ok"] and r["check"]["db_checksums_equal"], r["check"]
    assert set(r["unavailable_s"]) <= {"none", "partition_link", "link_delay"}
    # each fault was real: packets dropped, packets held and all released
    log = {f["kind"]: f for f in r["fault_log"]}
    assert log["partition_link"]["evidence"]["packets_matched"] > 0
    q = log["link_delay"]["evidence"]["queue"]
    assert q["received"] > 0 and q["released"] == q["received"]
    hist = Path(r["history"]) if Path(r["history"]).is_absolute() else ROOT / r["history"]
    history = [json.loads(line) for line in hist.read_text().splitlines()]
    assert {h["kind"] for h in history if h["type"] == "fault"} == {"partition_link", "link_delay"}
    hist.unlink()
    # nothing left behind
    run = p.stdout.split("run ", 1)[1].split(":", 1)[0]
    nets = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"vf{run}-" not in nets and not Path(f"/run/vmha-faultnet/{run}.json").exists()
    assert f" {tmp_path}" not in Path("/proc/mounts").read_text()
