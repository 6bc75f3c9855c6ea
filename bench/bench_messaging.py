#!/usr/bin/env python3
"""Voice-messaging benchmark (docs/benchmarks.md, "Messaging").

::

    python bench/bench_messaging.py --json bench/results/messaging-run1.json

maildir   ``--messages`` voice messages (10 s of 8 kHz audio, ~160 KB each) delivered one after
          the other to a ``MaildirStore`` on the local disk (each write fsynced); messages/s.
imap      the same to a real Dovecot on 127.0.0.1 (started from lab/dovecot.py,
          stopped by PID), ``ImapStore`` with a connection per call; skipped (null) without
          Dovecot.
resync    (definitions version 2) the whole takeover resync of ``Messaging.resync()``:
          10,000 subscribers (``mwi_method = "sip"``) in a real configuration database, their
          mailboxes on a real Dovecot (10,000 accounts, about 12,500 messages written into
          their Maildirs before the start), the MWI ledger confirmed with every mailbox's
          counts; then one new message in each of 100 mailboxes (1%) and the resync:
          count all 10,000 mailboxes on Dovecot (``ImapStore`` with a status account: one
          IMAP login, pipelined ``STATUS``), plan against the ledger, and send the changed
          lamps as SIP NOTIFYs through a pjsua2 worker (``telephony.sip.driver.SipPorts``) to
          a SIPp UAS that answers 200, confirming each in the ledger.

          ``resync_10k_s``: median seconds of that whole resync (count + plan + send);
          ``resync_10k_max_s`` the slowest; ``resync_count_s``, ``resync_plan_s``,
          ``resync_send_s`` the medians of its three parts; ``lamps_changed`` the lamps whose
          counts were changed (100); ``lamps_sent`` the NOTIFYs of one resync that were
          transmitted and answered 2xx (``last_resync["sent"]``, the smallest of the runs:
          must equal ``lamps_changed``); ``notifies_received`` what SIPp logged over all runs
          (must be 100 x runs); ``status_logins`` the status account's IMAP logins in
          Dovecot's log over all ``store_counts`` counts (the cold one and the runs: 10 each,
          one per ``telephony.store.STATUS_PER_LOGIN`` mailboxes), ``status_fallbacks`` the
          mailboxes the last count had to log in to one by one (0).  ``store_count_cold_s``:
          one count before the runs, while Dovecot builds the index of each mailbox for the
          first time (not part of a resync).

          Definitions version 1 (``bench/results/messaging-run1..4.json``, no
          ``definitions_version`` key): ``resync_10k_s`` was the planner alone against the
          ledger (no store, no sending) and ``lamp_jobs_sent`` the jobs it planned.

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

import trio  # noqa: E402

from failover.core.state import Role  # noqa: E402
from telephony.configdb import ConfigDB  # noqa: E402
from telephony.core import media  # noqa: E402
from telephony.core.events import Reason  # noqa: E402
from telephony.core.message import VoiceMessage, message_id_for  # noqa: E402
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


SUBSCRIBERS = 10_000
CHANGED = 100


def _counts0(i: int) -> tuple[int, int]:
    """(new, heard) of mailbox m<i> before the runs."""
    return i % 3, 1 if i % 4 == 0 else 0


async def resync_on_dovecot(tmp: Path, runs: int) -> dict:
    """The definitions-version-2 resync (see the module docstring)."""
    from lab.dovecot_status import StatusDovecot
    from lab.sip import free_udp_port, sipp
    from telephony.messaging import Messaging
    from telephony.runtime.ports import PortRegistry
    from telephony.sip.driver import SipPorts
    from telephony.sip.settings import SipProfile
    from telephony.store import build_mime

    users = {f"m{i}": f"pw{i}" for i in range(SUBSCRIBERS)}
    small = build_mime(message(0, "m0", media.wav_bytes(media.tone(440, 0.1))))
    db = ConfigDB(tmp / "config.db", role=Role.PRIMARY)
    ops = [{"op": "put", "table": "subscribers", "row": {
        "extension": f"{10000 + i}", "name": f"S{i}", "mailbox": f"m{i}", "mwi_method": "sip",
        "notify": []}} for i in range(SUBSCRIBERS)]
    ledger = []
    for i in range(SUBSCRIBERS):
        new, old = _counts0(i)
        ledger.append({"op": "put", "table": "mwi_ledger", "row": {
            "mailbox": f"m{i}", "extension": f"{10000 + i}",
            "state": {"on": new > 0, "new": new, "old": old, "confirmed": True, "term": 2}}})
    for k in range(0, SUBSCRIBERS, 1000):
        db.write(2, ops[k:k + 1000])
        db.write(2, ledger[k:k + 1000])
    out: dict = {}
    with StatusDovecot(tmp / "dovecot", users=users) as server:
        for i in range(SUBSCRIBERS):
            new, old = _counts0(i)
            for n in range(new + old):
                server.deliver_file(f"m{i}", f"{i}.{n}.bench", small, seen=n >= new)
            if new + old == 0:
                server.deliver_file(f"m{i}", "x", small)  # the Maildir exists ...
                (server.mail_dir / f"m{i}" / "Maildir" / "new" / "x").unlink()  # ... empty
        server.chown_mail()
        store = ImapStore("127.0.0.1", server.port, credentials=server.credentials,
                          mailboxes=server.mailboxes, status_account=server.status_account,
                          timeout=60)
        t0 = time.perf_counter()
        await store.all_counts()
        out["store_count_cold_s"] = round(time.perf_counter() - t0, 4)
        mwi_port = free_udp_port()
        uas_dir = tmp / "uas"
        uas_dir.mkdir()
        results = []
        async with sipp(uas_dir, "uas_mwi_200.xml", "-m", str(CHANGED * runs), "-trace_logs",
                        port=mwi_port) as uas, trio.open_nursery() as nursery:
            sip = SipPorts(profile=SipProfile(count=1, sip_port=free_udp_port(),
                                              mwi_target=f"sip:{{extension}}@127.0.0.1:{mwi_port}",
                                              mwi_account="sip:{extension}@vm.example"),
                           node="a", runtime_dir=tmp / "run", media_dir=tmp / "media")
            sip.register(PortRegistry())
            await nursery.start(sip.run, _NoCalls())
            m = Messaging(node="a", db=db, store=store, spool_dir=tmp / "spool",
                          streams=tmp / "streams", sinks={"sip": sip})
            m.term = 2
            sip.gate = lambda: m.term
            with trio.fail_after(60):
                while not any(w.alive for w in sip.workers):
                    await trio.sleep(0.01)
            for r in range(runs):
                for i in range(r, SUBSCRIBERS, SUBSCRIBERS // CHANGED):  # 1%: one more message
                    server.deliver_file(f"m{i}", f"run{r}.bench", small)
                server.chown_mail()
                res = await m.resync("takeover")
                results.append(res)
                print(f"resync run {r}: {res}", flush=True)
            code = await uas.exit_code(60)
            nursery.cancel_scope.cancel()
        text = "".join(p.read_text() for p in uas_dir.glob("*_logs.log"))
        status_logins = server.log_path.read_text(errors="replace").count(
            f"Login: user=<{server.status_account[0]}>")
        await store.aclose()
    db.close()

    def med(key: str) -> float:
        v = sorted(x[key] for x in results)
        return round(v[len(v) // 2], 4)

    out.update({"resync_10k_s": med("seconds"),
                "resync_10k_max_s": round(max(x["seconds"] for x in results), 4),
                "resync_count_s": med("count_seconds"), "resync_plan_s": med("plan_seconds"),
                "resync_send_s": med("send_seconds"), "resync_runs": runs,
                "lamps_changed": CHANGED, "lamps_sent": min(x["sent"] for x in results),
                "lamp_jobs_planned": max(x["jobs"] for x in results),
                "lamp_jobs_failed": sum(x["failed"] for x in results),
                "notifies_received": text.count("MWI From="), "sipp_exit": code,
                "status_logins": status_logins, "store_counts": runs + 1,
                "status_fallbacks": store.status_fallbacks})
    return out


class _NoCalls:
    node = "a"

    async def offer(self, call):
        raise RuntimeError("the benchmark places no calls")

    async def end_call(self, call, event="ended"):
        raise RuntimeError("the benchmark places no calls")


async def main_async(args) -> dict:
    out: dict = {"benchmark": "messaging", "definitions_version": 2,
                 "host": platform.node(), "cpus": os.cpu_count(),
                 "python": platform.python_version(), "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 "messages": args.messages}
    with tempfile.TemporaryDirectory(prefix="vmha-bench-msg-", dir="/tmp") as d:
        tmp = Path(d)
        (tmp / "store").mkdir()
        out["maildir_msgs_per_s"] = round(await deliver_rate(
            MaildirStore(tmp / "store"), [f"mb{n}" for n in range(1001, 1011)], args.messages), 1)
        print(f"maildir: {out['maildir_msgs_per_s']} msg/s", flush=True)
        from lab import dovecot  # a real Dovecot on 127.0.0.1, stopped by PID
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
        if dovecot.available() is None:
            (tmp / "resync").mkdir()
            out.update(await resync_on_dovecot(tmp / "resync", args.runs))
        else:
            out["resync_skipped"] = dovecot.available()
        print(f"resync: {out.get('resync_10k_s')} s, lamps sent {out.get('lamps_sent')}",
              flush=True)
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
