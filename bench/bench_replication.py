#!/usr/bin/env python3
"""Replication benchmark of a real vmha pair on loopback (docs/benchmarks.md, "Replication").

::

    python bench/bench_replication.py --json bench/results/replication.json

One pair (``lab.pair.Pair``: two ``vmha node`` processes, node link and replication
channel through TCP relays on 127.0.0.1), the primary active.  Three measurements:

db       configuration changes written on the active node at ``--rate`` committed changes per
         second (default 1,000) for ``--seconds`` (default 10) by ``--writers`` client threads,
         each change one ``db_write`` admin request (one transaction, one change-log entry).
         Latency of one change = the moment the peer's database shows it (its applied position
         reaches the change's seq) minus the moment the request was sent (so it includes the
         commit on the active node: an upper bound of "committed -> visible").  The peer's
         position is read from its SQLite file (WAL, read-only) every 1 ms by the benchmark.
file     ``--files`` greetings of 200 KB written (temp file + rename) into the active node's
         ``streams`` directory, one at a time; latency = the moment the file is present on the
         peer with the right sha256 minus the moment of the rename.  The peer's file is polled
         every 1 ms.
catchup  the replication relays are cut (the node link stays up, so nobody fails over), 10,000
         changes are written on the active node, the relays are healed; time from the heal
         until the peer has applied all of them.
handover 2,000 changes written as fast as one admin connection allows, then at once
         ``failover``: the active node's ``handover_replicated`` event says how long it waited
         for the peer to acknowledge everything; ``handover_total_ms`` runs until the secondary
         reports itself active.

Clocks: ``time.monotonic()`` in the benchmark process only.  Percentiles: nearest rank.
Every process the benchmark starts is stopped by its PID (the Pair context manager).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path

import apsw  # noqa: E402

from failover.admin import AdminClient  # noqa: E402
from failover.config import load_config  # noqa: E402
from lab.pair import Pair  # noqa: E402


def percentile(samples: list[float], p: float) -> float | None:
    if not samples:
        return None
    s = sorted(samples)
    k = max(0, min(len(s) - 1, -(-len(s) * p // 100) - 1))
    return s[int(k)]


def dist(samples: list[float], scale: float = 1000.0, digits: int = 2) -> dict:
    return {"n": len(samples),
            **{f"p{p}": round(percentile(samples, p) * scale, digits) if samples else None
               for p in (50, 95, 99)},
            "max": round(max(samples) * scale, digits) if samples else None}


class PeerReader:
    """Reads the peer's applied position straight from its SQLite file (WAL reader)."""

    def __init__(self, path: Path):
        self.db = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
        self.db.setbusytimeout(1000)

    def applied(self) -> int:
        row = self.db.execute("select value from _vmha_meta where key = 'applied_seq'").fetchone()
        return int(row[0]) if row else 0


def sub(ext: str) -> dict:
    return {"extension": ext, "name": f"Bench {ext}", "mailbox": f"b{ext}", "mwi_method": "sip",
            "notify": []}


def bench_db(pair: Pair, rate: float, seconds: float, writers: int) -> tuple[list[float], dict]:
    reader = PeerReader(load_config(pair.b.config).database.path)
    sock = load_config(pair.a.config).admin.socket
    sent: dict[int, float] = {}
    lock = threading.Lock()
    errors = []
    total = int(rate * seconds)
    start = time.monotonic() + 0.2
    stop = threading.Event()

    def writer(k: int) -> None:
        client = AdminClient(sock)  # one admin connection per writer, one request per change
        for i in range(k, total, writers):
            t = start + i / rate
            delay = t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            t0 = time.monotonic()
            try:
                r = client.request({"op": "db_write", "ops": [{"op": "put", "table": "subscribers",
                                                              "row": sub(f"{i:07d}")}]})
            except OSError as e:
                r = {"ok": False, "error": str(e)}
            if not r or not r.get("ok"):
                errors.append(r)
                continue
            with lock:
                sent[r["seq"]] = t0
        client.close()

    seen: dict[int, float] = {}

    def observer() -> None:
        last = reader.applied()
        while not stop.is_set():
            pos = reader.applied()
            now = time.monotonic()
            for s in range(last + 1, pos + 1):
                seen[s] = now
            last = pos
            time.sleep(0.001)

    obs = threading.Thread(target=observer, daemon=True)
    obs.start()
    ths = [threading.Thread(target=writer, args=(k,), daemon=True) for k in range(writers)]
    t_begin = time.monotonic()
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    t_end = time.monotonic()
    pair.wait_for(lambda: sent and max(sent) in seen, 30)
    stop.set()
    obs.join()
    lat = [seen[s] - t0 for s, t0 in sent.items() if s in seen]
    achieved = len(sent) / max(t_end - start, 1e-9)
    return lat, {"db_changes": len(sent), "db_errors": len(errors),
                 "db_rate_achieved_per_s": round(achieved, 1),
                 "db_write_window_s": round(t_end - t_begin, 2)}


def bench_files(pair: Pair, count: int) -> list[float]:
    src = load_config(pair.a.config).replication.files_root / "streams" / "bench"
    dst = load_config(pair.b.config).replication.files_root / "streams" / "bench"
    src.mkdir(parents=True, exist_ok=True)
    lat = []
    for i in range(count):
        data = secrets.token_bytes(200 * 1024)
        want = hashlib.sha256(data).digest()
        tmp, final, target = src / f".g{i}.tmp", src / f"g{i}.wav", dst / f"g{i}.wav"
        tmp.write_bytes(data)
        t0 = time.monotonic()
        os.replace(tmp, final)
        while True:
            try:
                if (target.stat().st_size == len(data)
                        and hashlib.sha256(target.read_bytes()).digest() == want):
                    break
            except FileNotFoundError:
                pass
            if time.monotonic() - t0 > 30:
                raise TimeoutError(f"greeting {i} not replicated")
            time.sleep(0.001)
        lat.append(time.monotonic() - t0)
        time.sleep(0.02)
    return lat


def bench_catchup(pair: Pair, changes: int) -> dict:
    reader = PeerReader(load_config(pair.b.config).database.path)
    sock = load_config(pair.a.config).admin.socket
    repl_relays = pair.relays[2:]
    for r in repl_relays:
        r.cut()
    head = 0
    client = AdminClient(sock)
    t0 = time.monotonic()
    for i in range(changes):
        r = client.request({"op": "db_write", "ops": [{"op": "put", "table": "system_rules",
                                                      "row": {"key": f"catchup{i}", "value": i}}]})
        head = r["seq"]
    write_s = time.monotonic() - t0
    client.close()
    behind = head - reader.applied()
    t_heal = time.monotonic()
    for r in repl_relays:
        r.heal()
    pair.wait_for(lambda: reader.applied() >= head, 120, poll=0.001)
    return {"catchup_10k_s": round(time.monotonic() - t_heal, 3), "catchup_changes_behind": behind,
            "catchup_write_s": round(write_s, 2)}


def bench_handover(pair: Pair, changes: int) -> dict:
    """A burst of changes, then at once a planned failover: how long the active node waited
    for the peer to acknowledge everything (its ``handover_replicated`` event)."""
    sock = load_config(pair.a.config).admin.socket
    client = AdminClient(sock)
    for i in range(changes):
        client.request({"op": "db_write", "ops": [{"op": "put", "table": "system_rules",
                                                  "row": {"key": f"burst{i}", "value": i}}]})
    t0 = time.monotonic()
    r = client.request({"op": "failover"})
    client.close()
    if not r.get("ok"):
        return {"handover_error": r}
    pair.wait_for(lambda: pair.b.state() == "active", 30)
    total = time.monotonic() - t0
    ev = [e for e in pair.a.events() if e["event"] in ("handover_replicated", "handover_unreplicated")]
    last = ev[-1] if ev else {}
    return {"handover_burst_changes": changes, "handover_event": last.get("event"),
            "handover_wait_ms": round(last.get("fields", {}).get("wait_s", float("nan")) * 1000, 1),
            "handover_total_ms": round(total * 1000, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--writers", type=int, default=8)
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--catchup", type=int, default=10_000)
    ap.add_argument("--dir", help="working directory (default: a new temporary one)")
    args = ap.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="vmha-bench-repl-", dir="/tmp"))
    out: dict = {"benchmark": "replication", "host": platform.node(), "python": platform.python_version(),
                 "cpus": os.cpu_count(), "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 "rate": args.rate, "seconds": args.seconds, "writers": args.writers,
                 "percentile_method": "nearest rank"}
    with Pair(work) as pair:
        pair.start()
        pair.wait_for(lambda: pair.a.state() == "active" and pair.b.state() == "inactive", 30)
        pair.wait_for(lambda: (pair.b.status() or {}).get("replication", {}).get("db", {})
                      .get("peer_head_seq") is not None, 30)
        lat, extra = bench_db(pair, args.rate, args.seconds, args.writers)
        d = dist(lat)
        out.update({"db_p50_ms": d["p50"], "db_p95_ms": d["p95"], "db_p99_ms": d["p99"],
                    "db_max_ms": d["max"], **extra})
        print(f"db: {d}  {extra}", flush=True)
        flat = bench_files(pair, args.files)
        f = dist(flat)
        out.update({"file_p50_ms": f["p50"], "file_p95_ms": f["p95"], "file_p99_ms": f["p99"],
                    "file_max_ms": f["max"], "files": f["n"]})
        print(f"file: {f}", flush=True)
        c = bench_catchup(pair, args.catchup)
        out.update(c)
        print(f"catchup: {c}", flush=True)
        h = bench_handover(pair, 2000)
        out.update(h)
        print(f"handover: {h}", flush=True)
        st = pair.a.status()
        out["rss_node_manager_a_kb"] = _rss(pair.a.pid)
        out["final_lag_changes"] = st["replication"]["db"]["lag_changes"] if st else None
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


def _rss(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


if __name__ == "__main__":
    sys.exit(main())
