#!/usr/bin/env python3
"""The fault campaign (docs/reliability.md): a real pair in network namespaces
(:mod:`lab.faultnet`), SIPp callers through kamailio and the SMDI lamp recorder
(:mod:`lab.faultload`), the nemesis (:mod:`lab.nemesis`) and the checker (:mod:`lab.faultcheck`).

::

    .venv/bin/python bench/faults.py --cycles 30 --seed 1                 # ~15 min
    .venv/bin/python bench/faults.py --cycles 2 --seed 3 --hold-max 3 --quiet 3 --kinds kill_service

One cycle: a fault kind (the kinds in a seeded shuffled order, all of them before any repeats),
its target node (the active one half of the time), its hold (uniform 1..``--hold-max`` s),
apply, hold, heal, then ``--quiet`` s of quiet.  The callers run throughout.  After the last
cycle: no new calls, the calls in progress end, the pair settles (exactly one node active, up to
``--settle`` s), a few seconds for the lamps, then the checker judges the history and the final
stores.  Root only (namespaces, iptables, tmpfs).

The JSON (``--out``; default ``bench/results/faults-<seed>-<cycles>c-<UTC time>.json``; the
history is copied next to it as ``.history.jsonl``) has ``cycles``, ``seed``, ``calls``,
``lost``, ``duplicated``, ``lamp_mismatches``, ``same_term_actives``, ``outside_term``,
``unavailable_s`` (per fault kind), ``faults`` (per kind: count), ``unavailable`` (kinds that
could not be built here, with the reason), ``skipped`` (cycles whose fault did not apply: the
target was not in a state for it), ``fault_log`` (every fault: target, parameters, window,
evidence), ``check`` (the checker's whole result), ``lost_evidence`` (per lost call: the node
log lines naming its Call-ID), ``history``, ``workdir``, ``complete``
(False: the run stopped early; ``error`` says why).  The JSON is rewritten after every cycle,
so an interrupted run leaves what it did.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab.faultcheck import DEFINITIONS_VERSION, INVARIANTS  # noqa: E402
from lab.faultload import Workload, subscriber_ops  # noqa: E402
from lab.faultnet import ADDR, Cluster  # noqa: E402
from lab.nemesis import KINDS, NETWORK_KINDS, Nemesis, NemesisError  # noqa: E402

MAILBOXES = ["1001", "1002", "1003"]
#: faults of the network between the nodes: the history's ``node`` is None
LINK_WIDE = ("partition_link", "link_loss", "link_delay", "link_duplicate", "link_reorder")


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _shown(path: Path) -> str:
    """A path inside the repository relative to it (result files name no machine's paths)."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def code_state() -> dict:
    """The commit the run used, and how many files differed from it (the tree may be dirty)."""
    import subprocess

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                  timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            return ""
    return {"commit": git("rev-parse", "HEAD").strip() or None,
            "modified_files": len([x for x in git("status", "--porcelain").splitlines() if x.strip()])}


def schedule(rng: random.Random, kinds: list[str], cycles: int) -> list[str]:
    """``cycles`` kinds: shuffled rounds of all ``kinds``, so each comes before any repeats."""
    out: list[str] = []
    while len(out) < cycles:
        batch = list(kinds)
        rng.shuffle(batch)
        out += batch
    return out[:cycles]


class Campaign:
    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.rng = random.Random(args.seed)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        name = f"faults-{args.seed}-{args.cycles}c-{stamp}.json"
        self.out = Path(args.out or ROOT / "bench" / "results" / name)
        self.workdir = Path(args.workdir or f"/var/tmp/vmha-faults/{stamp}-{args.seed}")
        self.result: dict = {
            "definitions": "docs/reliability.md", "definitions_version": DEFINITIONS_VERSION,
            "cycles": args.cycles, "cycles_done": 0, "seed": args.seed,
            "hold_max": args.hold_max, "quiet": args.quiet, "streams": args.streams,
            "started": utc_now(), "ended": None, "complete": False, "error": None,
            "calls": 0, **{k: None for k in INVARIANTS}, "unavailable_s": {}, "faults": {},
            "unavailable": {}, "skipped": [], "fault_log": [], "check": None,
            "history": _shown(self.out.with_suffix(".history.jsonl")), "workdir": str(self.workdir),
            "final_states": None, "code": code_state()}
        self.cluster: Cluster | None = None
        self.workload: Workload | None = None

    def save(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.result, indent=1, default=str) + "\n")
        os.replace(tmp, self.out)

    def say(self, text: str) -> None:
        print(f"{utc_now()} {text}", flush=True)

    # ------------------------------------------------------------------ the run

    def run(self) -> int:
        a = self.a
        kinds = [k.strip() for k in a.kinds.split(",")] if a.kinds else list(KINDS)
        unknown = [k for k in kinds if k not in KINDS]
        if unknown:
            raise SystemExit(f"unknown fault kinds: {', '.join(unknown)} (known: {', '.join(KINDS)})")
        plan = schedule(self.rng, kinds, a.cycles)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.save()
        try:
            self.cluster = cl = Cluster(self.workdir / "cluster", sip_count=a.sip_count, tmpfs_mb=a.tmpfs_mb)
            self.say(f"run {cl.net.run}: building the namespaces and starting the pair in {self.workdir}")
            cl.start()
            cl.db_write(subscriber_ops(MAILBOXES))
            assert cl.kamailio is not None and cl.serial is not None
            self.workload = wl = Workload(cl.net.exec_prefix("pbx"), cl.kamailio.address, MAILBOXES,
                                          self.workdir / "workload", a.seed, streams=a.streams,
                                          node_addrs={"a": ADDR["a"], "b": ADDR["b"]},
                                          pbx_tty=cl.serial.pbx_tty)
            wl.start()
            nem = Nemesis(cl, seed=self.rng.randrange(1 << 30))
            self.say(f"callers started; warm-up {a.quiet:g} s")
            time.sleep(a.quiet)
            for i, kind in enumerate(plan, start=1):
                self.cycle(nem, i, kind)
                self.result["cycles_done"] = i
                self.result["calls"] = len(wl.calls())
                self.save()
            self.finish()
            self.result["complete"] = True
            return 0
        except BaseException as e:
            self.result["error"] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
            return 1
        finally:
            self.result["ended"] = utc_now()
            self.stop()
            self.save()
            self.say(f"result: {self.out}")

    def cycle(self, nem: Nemesis, i: int, kind: str) -> None:
        a, cl = self.a, self.cluster
        assert cl is not None
        if kind in self.result["unavailable"]:
            self.result["skipped"].append({"cycle": i, "kind": kind, "why": "unavailable"})
            return
        hold = round(self.rng.uniform(1.0, a.hold_max), 2)
        before = cl.states()  # read before the fault: a stopped node's status would wait 5 s
        fault = None
        why = ""
        for target in ([None] if kind in LINK_WIDE else [None, "a", "b"]):
            try:
                fault = nem.apply(kind, target=target)
                break
            except (NemesisError, ProcessLookupError) as e:  # the target is not in a state for it
                why = f"{type(e).__name__}: {e}"
            except (RuntimeError, OSError) as e:
                if kind in NETWORK_KINDS:  # the kernel cannot build it
                    self.result["unavailable"][kind] = f"{type(e).__name__}: {e}"
                    self.say(f"cycle {i}: {kind} unavailable: {e}")
                    return
                why = f"{type(e).__name__}: {e}"  # recorded; the campaign goes on
        if fault is None:
            self.result["skipped"].append({"cycle": i, "kind": kind, "why": why})
            self.say(f"cycle {i}: {kind} skipped: {why}")
            time.sleep(a.quiet)
            return
        self.say(f"cycle {i}/{a.cycles}: {kind} on {fault.target} {fault.params} for {hold:g} s; "
                 f"states before {before}")
        time.sleep(hold)
        nem.heal(fault)
        assert self.workload is not None and fault.end is not None
        self.workload.history.add_fault(kind, fault.start, fault.end,
                                        node=None if kind in LINK_WIDE else fault.target,
                                        offset_s=fault.params.get("offset_s"))
        rec = {"cycle": i, "hold": hold, "states_before": before, **fault.record()}
        self.result["fault_log"].append(rec)
        self.result["faults"][kind] = self.result["faults"].get(kind, 0) + 1
        self.say(f"cycle {i}: healed; evidence {fault.evidence}; quiet {a.quiet:g} s")
        time.sleep(a.quiet)

    def finish(self) -> None:
        from lab.faultcheck import check

        a, cl, wl = self.a, self.cluster, self.workload
        assert cl is not None and wl is not None
        self.say("no new calls; waiting for the calls in progress")
        wl.stop_calls()
        self.say(f"settling (exactly one node active, up to {a.settle:g} s)")
        try:
            cl.wait(lambda: len(cl.active()) == 1 and None not in cl.states().values(), a.settle,
                    "exactly one node active")
        except TimeoutError as e:
            self.say(str(e))
        time.sleep(a.lamp_wait)  # the new active's lamp resync
        wl.stop()
        states = cl.states()
        self.result["final_states"] = states
        checksums: dict[str, str | Path] = {}
        for n, node in cl.nodes.items():  # the running node's own figure, else its database file
            st = node.status() or {}
            checksums[n] = (((st.get("replication") or {}).get("db") or {}).get("checksum")
                            or cl.data_dir(n) / "config.db")
        self.result["db_checksums"] = {n: str(v) for n, v in checksums.items()}
        h = wl.history
        events = {n: cl.data_dir(n) / "events.jsonl" for n in cl.nodes}
        for n, path in events.items():
            h.add_activations(n, path)
        assert cl.serial is not None
        h.add_splitter_log(cl.serial.log_path, nodes=list(cl.nodes))
        res = check(h, store_dir=cl.store_dir, node_dbs=checksums, node_events=events,
                    lamp_log=wl.lamp_log, final_states=states,
                    node_logs={n: node.log_path for n, node in cl.nodes.items()},
                    lamp_errors=wl.lamp_errors)
        self.result["check"] = res
        self.result["lost_evidence"] = self.log_lines(h, (res.get("details") or {}).get("lost") or [])
        for k in ("calls", *INVARIANTS, "unavailable_s"):
            if k in res:
                self.result[k] = res[k]
        self.say("check: " + ", ".join(f"{k}={self.result[k]}" for k in ("calls", *INVARIANTS)))

    def log_lines(self, h, ids: list) -> dict[str, list[str]]:
        """For each call id: the node log lines naming its Call-ID (at most 8), to tell a
        message lost after its acknowledgement from a call dropped before it."""
        cl = self.cluster
        assert cl is not None
        want = {c["sip_call_id"]: c["id"] for c in h.calls() if c["id"] in ids}
        out: dict[str, list[str]] = {str(i): [] for i in ids}
        for node in cl.nodes.values():
            try:
                text = node.log_path.read_text(errors="replace")
            except OSError:
                continue
            for line in text.splitlines():
                for call_id, i in want.items():
                    if call_id in line and len(out[str(i)]) < 8:
                        out[str(i)].append(f"{node.name}: {line.strip()[:300]}")
        return out

    def stop(self) -> None:
        if self.workload is not None:
            try:
                self.workload.stop(timeout=30)
            except Exception as e:  # noqa: BLE001 - the cluster must still be removed
                self.say(f"stopping the callers: {e}")
        if self.workload is not None and Path(self.workload.history.path).exists():
            shutil.copyfile(self.workload.history.path, self.out.with_suffix(".history.jsonl"))
        if self.cluster is not None:
            self.cluster.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cycles", type=int, required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--hold-max", type=float, default=30.0, help="longest hold of a fault, s (>= 1)")
    ap.add_argument("--quiet", type=float, default=10.0, help="quiet period after each heal, s")
    ap.add_argument("--out", help="result JSON path")
    ap.add_argument("--workdir", help="run directory (node files, logs, store); default under /var/tmp")
    ap.add_argument("--kinds", help="comma-separated fault kinds (default: all)")
    ap.add_argument("--streams", type=int, default=2, help="caller streams")
    ap.add_argument("--sip-count", type=int, default=4, help="SIP lines per node")
    ap.add_argument("--tmpfs-mb", type=int, default=64, help="each node's data_dir tmpfs, MiB")
    ap.add_argument("--settle", type=float, default=60.0,
                    help="longest wait for one active node at the end, s")
    ap.add_argument("--lamp-wait", type=float, default=8.0, help="wait for the lamps after settling, s")
    a = ap.parse_args(argv)
    if a.cycles < 1 or a.hold_max < 1 or a.quiet < 0 or a.settle <= 0 or a.streams < 1:
        ap.error("--cycles >= 1, --hold-max >= 1, --quiet >= 0, --settle > 0, --streams >= 1")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if os.geteuid() != 0:
        print("bench/faults.py needs root (ip netns, iptables, mount)", file=sys.stderr)
        return 2

    def on_term(signum, frame) -> None:  # SIGTERM: clean up as for Ctrl-C
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    return Campaign(a).run()


if __name__ == "__main__":
    sys.exit(main())
