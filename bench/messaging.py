#!/usr/bin/env python3
"""Voice-messaging benchmark (docs/benchmarks.md, "Messaging").

::

    python bench/messaging.py --json bench/results/messaging-run1.json

maildir   ``--messages`` voice messages (10 s of 8 kHz audio, ~160 KB each) delivered one after
          the other to a ``MaildirStore`` on the local disk (each write fsynced); messages/s.
imap      the same to a real Dovecot on 127.0.0.1 (started from tests/telephony/dovecot.py,
          stopped by PID), ``ImapStore`` with a connection per call; skipped (null) without
          Dovecot.
resync    10,000 subscribers in a real configuration database, MWI ledger in it, lamps all
          confirmed; then 1% of the mailboxes change their counts and the planner resyncs
          against the ledger (``telephony.mwi.MwiPlanner`` on ``telephony.ledgers.DbMwiLedger``);
          ``resync_10k_s`` is the time of that resync (read 10,000 ledger rows, plan, write the
          changed rows in one transaction), ``lamp_jobs_sent`` the jobs it produced (must be 100).

Clocks: ``time.perf_counter()`` in this process.  Everything runs on this machine; repeated
``--runs`` give a distribution.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

import trio  # noqa: E402

from failover._state import Role  # noqa: E402
from failover.configdb import ConfigDB  # noqa: E402
from telephony import media  # noqa: E402
from telephony.events import Reason  # noqa: E402
from telephony.ledgers import DbMwiLedger  # noqa: E402
from telephony.message import VoiceMessage, message_id_for  # noqa: E402
from telephony.mwi import MwiPlanner  # noqa: E402
from telephony.store import ImapStore, MaildirStore  # noqa: E402


def message(i: int, mailbox: str, audio: bytes) -> VoiceMessage:
    return VoiceMessage(message_id=message_id_for(f"bench-{i}", "a", 2), mailbox=mailbox,
                        extension="1001", caller="5550100", forwarding="1001", reason=Reason.BUSY,
                        duration_s=10.0, node="a", call_id=f"bench-{i}", term=2,
                        recorded_at="2026-11-25T12:00:00+00:00", audio=audio)


async def deliver_rate(store, mailboxes: list[str], n: int) -> float:
    audio = media.wav_bytes(media.tone(440, 10.0))
    t0 = time.perf_counter()
    for i in range(n):
        await store.deliver(message(i, mailboxes[i % len(mailboxes)], audio))
    return n / (time.perf_counter() - t0)


def resync(tmp: Path, subscribers: int, changed: int) -> tuple[float, int]:
    db = ConfigDB(tmp / "config.db", role=Role.PRIMARY)
    try:
        ops = [{"op": "put", "table": "subscribers", "row": {
            "extension": f"{10000 + i}", "name": f"S{i}", "mailbox": f"m{i}", "mwi_method": "sip",
            "notify": []}} for i in range(subscribers)]
        for k in range(0, len(ops), 1000):
            db.write(2, ops[k:k + 1000])
        planner = MwiPlanner(DbMwiLedger(db))
        planner.set_term(2)
        counts = {f"m{i}": (f"{10000 + i}", i % 3, 1) for i in range(subscribers)}
        for job in planner.resync(counts):  # first resync: every lamp, then all confirmed
            planner.confirm(job)
        for i in range(0, subscribers, subscribers // changed):  # 1% flip their lamp
            ext, new, old = counts[f"m{i}"]
            counts[f"m{i}"] = (ext, 0 if new else 1, old)
        t0 = time.perf_counter()
        jobs = planner.resync(counts)
        return time.perf_counter() - t0, len(jobs)
    finally:
        db.close()


async def main_async(args) -> dict:
    out: dict = {"benchmark": "messaging", "host": platform.node(), "cpus": os.cpu_count(),
                 "python": platform.python_version(), "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 "messages": args.messages}
    with tempfile.TemporaryDirectory(prefix="vmha-bench-msg-", dir="/tmp") as d:
        tmp = Path(d)
        (tmp / "store").mkdir()
        out["maildir_msgs_per_s"] = round(await deliver_rate(
            MaildirStore(tmp / "store"), [f"mb{n}" for n in range(1001, 1011)], args.messages), 1)
        print(f"maildir: {out['maildir_msgs_per_s']} msg/s", flush=True)
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "telephony"))
        import dovecot  # the test helper: a real Dovecot on 127.0.0.1, stopped by PID
        if dovecot.available() is None:
            with dovecot.DovecotServer(tmp / "dovecot") as server:
                store = ImapStore("127.0.0.1", server.port, credentials=server.credentials,
                                  mailboxes=server.mailboxes)
                out["imap_msgs_per_s"] = round(await deliver_rate(
                    store, server.mailboxes(), args.messages), 1)
                await store.aclose()
        else:
            out["imap_msgs_per_s"] = None
            out["imap_skipped"] = dovecot.available()
        print(f"imap: {out['imap_msgs_per_s']} msg/s", flush=True)
        runs = []
        jobs = None
        for r in range(args.runs):
            sub = tmp / f"resync{r}"
            sub.mkdir()
            s, jobs = resync(sub, 10_000, 100)
            runs.append(s)
        runs.sort()
        out.update({"resync_10k_s": round(runs[len(runs) // 2], 4), "resync_10k_max_s": round(runs[-1], 4),
                    "resync_runs": len(runs), "lamp_jobs_sent": jobs, "lamps_changed": 100})
        print(f"resync: {runs} jobs {jobs}", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json")
    ap.add_argument("--messages", type=int, default=300)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    out = trio.run(main_async, args)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
