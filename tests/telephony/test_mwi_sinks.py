"""Lamps go where the subscriber's ``mwi_method`` says, with the store's counts, and nowhere
else.  Real peers: SQLite configuration database, Maildir or Dovecot store, loopback trunks
with their monitor connections over TCP, a pjsua2 SIP worker sending NOTIFYs to a SIPp UAS.

* the node manager's database refuses a subscriber whose method no enabled driver serves
  (clear error, nothing written);
* a lamp job with no sink stays unconfirmed, is counted and reported; the others go to their
  own method's driver;
* a NOTIFY's ``Voice-Message: new/old`` follows the store, coalesced per mailbox;
* the IMAP store counts every mailbox on one login of its status account.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import trio

from failover.core.state import Role
from integrations.base import mwi_drivers
from lab import dovecot
from lab.dovecot_status import StatusDovecot
from telephony.configdb import ConfigDB, ConfigDBError
from telephony.loopback import LoopbackTrunk
from telephony.messaging import Messaging
from telephony.runtime.ports import PortRegistry
from telephony.sip.settings import SipProfile
from telephony.store import ImapStore, MaildirStore
from tests.telephony.messages import make_message
from tests.util import until

GUARD = 60  # seconds: hang guards only


def sub(ext: str, method: str) -> dict:
    return {"op": "put", "table": "subscribers", "row": {
        "extension": ext, "name": f"S {ext}", "mailbox": f"mb{ext}", "mwi_method": method,
        "notify": []}}


class NoCalls:
    """The service side a driver needs to run; these tests place no calls."""

    node = "a"

    async def offer(self, call):  # pragma: no cover - no call is placed
        raise AssertionError("no call expected")

    async def end_call(self, call, event="ended"):  # pragma: no cover
        raise AssertionError("no call expected")


# ============================================================================ configuration

def test_a_method_no_enabled_driver_serves_is_refused_and_nothing_is_written(tmp_path):
    served = mwi_drivers(sip=True, smdi=False, loopback=True)
    assert served == {"sip": "sip"}
    db = ConfigDB(tmp_path / "config.db", role=Role.PRIMARY, mwi_methods=served)
    db.write(2, [sub("1001", "sip"), sub("1002", "none")])
    before = db.state()
    for method in ("sccp", "dtmf", "smdi"):
        with pytest.raises(ConfigDBError) as e:
            db.write(2, [sub("1003", "sip"), sub("1004", method)])
        text = str(e.value)
        assert f"value {method!r} is not served on this pair" in text
        assert "methods served here: sip (sip), none" in text
        assert e.value.column == "mwi_method"
    with pytest.raises(ConfigDBError, match="'sccp' is not served"):  # changing a method too
        db.write(2, [{"op": "put", "table": "subscribers",
                      "row": {"extension": "1001", "mwi_method": "sccp"}}])
    assert db.get("subscribers", "1003") is None  # the whole write was refused
    assert db.get("subscribers", "1001")["mwi_method"] == "sip"
    assert db.state() == before
    db.close()


def test_which_driver_serves_which_method():
    assert mwi_drivers(sip=False, smdi=False, loopback=True) == {"sip": "loopback"}
    assert mwi_drivers(sip=False, smdi=True, loopback=True) == {"smdi": "smdi"}
    assert mwi_drivers(sip=True, smdi=False, loopback=False) == {"sip": "sip"}
    assert mwi_drivers(sip=False, smdi=False, loopback=False) == {}


# ============================================================================ sinks

class Monitor:
    """The simulated PBX's MWI side of one loopback trunk: a TCP connection that says
    ``monitor`` and collects the ``mwi`` lines."""

    def __init__(self) -> None:
        self.lamps: list[dict] = []

    async def run(self, address, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        stream = await trio.open_tcp_stream(*address)
        await stream.send_all(b'{"op":"monitor"}\n')
        buf = b""
        started = False
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                ev = json.loads(line)
                if ev["ev"] == "monitoring" and not started:
                    started = True
                    task_status.started()
                elif ev["ev"] == "mwi":
                    self.lamps.append(ev)


async def start_trunk(nursery, m: Messaging) -> tuple[LoopbackTrunk, Monitor]:
    trunk = LoopbackTrunk(host="127.0.0.1", port=0, count=1)
    trunk.register(PortRegistry())
    address = await nursery.start(trunk.run, NoCalls())
    trunk.gate = lambda: m.term
    monitor = Monitor()
    await nursery.start(monitor.run, address)
    return trunk, monitor


async def test_each_lamp_goes_to_its_methods_driver_and_one_without_a_sink_stays_unconfirmed(
        tmp_path):
    db = ConfigDB(tmp_path / "config.db", role=Role.PRIMARY)  # written before the check
    db.write(2, [sub("1001", "sip"), sub("1002", "smdi"), sub("1003", "sccp"),
                 sub("1004", "none")])
    (tmp_path / "store").mkdir()
    store = MaildirStore(tmp_path / "store")
    for n, ext in ((1, "1001"), (2, "1002"), (3, "1003"), (4, "1004")):
        await store.deliver(make_message(n, mailbox=f"mb{ext}", extension=ext))
    reports: list[tuple[str, str, str]] = []
    async with trio.open_nursery() as nursery:
        m = Messaging(node="a", db=db, store=store, spool_dir=tmp_path / "spool",
                      streams=tmp_path / "streams", sinks={})
        sip_trunk, sip_monitor = await start_trunk(nursery, m)
        smdi_trunk, smdi_monitor = await start_trunk(nursery, m)
        m.sinks = {"sip": sip_trunk, "smdi": smdi_trunk}

        async def report(level, event, message):
            reports.append((level, event, message))

        m.report = report
        await nursery.start(m.run)
        m.activated(2)
        with trio.fail_after(GUARD):
            await until(lambda: m.last_resync is not None, "the takeover resync")
        assert [(x["extension"], x["on"], x["new"]) for x in sip_monitor.lamps] == [("1001", True, 1)]
        assert [(x["extension"], x["on"], x["new"]) for x in smdi_monitor.lamps] == [("1002", True, 1)]
        r = m.last_resync
        assert (r["jobs"], r["sent"], r["no_sink"], r["failed"]) == (3, 2, 1, 0)
        stats = m.stats()
        assert stats["lamp_jobs_sent"] == 2 and stats["lamp_jobs_no_sink"] == 1
        assert stats["lamps_waiting_for_a_sink"] == 1 and stats["no_sink"] == {"mb1003": "sccp"}
        ledger = {row["mailbox"]: row["state"] for row in db.list("mwi_ledger")}
        assert ledger["mb1001"]["confirmed"] and ledger["mb1002"]["confirmed"]
        assert ledger["mb1003"]["confirmed"] is False and ledger["mb1003"]["on"] is True
        assert "mb1004" not in ledger
        [(level, event, message)] = reports
        assert (level, event) == ("warning", "mwi_no_sink")
        assert "mwi_method sccp" in message and "mb1003" in message
        assert "served here: sip, smdi" in message
        # a delivery lamp of that subscriber: again not sent and counted; within a minute of
        # the first report it is not reported again (each delivery would make one)
        await store.deliver(make_message(5, mailbox="mb1003", extension="1003"))
        await m.lamp("mb1003", "1003")
        with trio.fail_after(GUARD):
            await until(lambda: m.stats()["lamp_jobs_no_sink"] == 2, "the second no-sink job")
        assert len(reports) == 1 and db.get("mwi_ledger", "mb1003")["state"]["confirmed"] is False
        assert len(sip_monitor.lamps) == 1 and len(smdi_monitor.lamps) == 1
        # a minute later the next one is reported, with the count of those that were not
        m._no_sink_said["sccp"] = (m._no_sink_said["sccp"][0] - 60.0, m._no_sink_said["sccp"][1])
        await store.deliver(make_message(6, mailbox="mb1003", extension="1003"))
        await m.lamp("mb1003", "1003")
        with trio.fail_after(GUARD):
            await until(lambda: len(reports) == 2, "the next mwi_no_sink report")
        assert "1 more since the last report" in reports[1][2], reports[1]
        nursery.cancel_scope.cancel()
    db.close()


# ============================================================================ SIP NOTIFY counts

from lab.sip import free_udp_port, sipp  # noqa: E402
from tests.telephony.sip.test_worker import PJSUA2_MISSING  # noqa: E402

needs_sip = pytest.mark.skipif(PJSUA2_MISSING is not None or shutil.which("sipp") is None,
                               reason=PJSUA2_MISSING or "SIPp is not installed")


def notifies(cwd: Path) -> list[tuple[int, int]]:
    """(new, old) of every NOTIFY the SIPp UAS logged, in order."""
    text = "".join(p.read_text() for p in sorted(cwd.glob("*_logs.log")))
    return [(int(a), int(b)) for a, b in re.findall(r"new=(\d+) old=(\d+)", text)]


@needs_sip
@pytest.mark.multiprocess
async def test_notify_counts_follow_the_store_coalesced_per_mailbox(tmp_path):
    from telephony.sip.driver import SipPorts

    db = ConfigDB(tmp_path / "config.db", role=Role.PRIMARY)
    db.write(2, [sub("1001", "sip")])
    # the lamp is known to be off with no messages: the takeover resync sends nothing
    db.write(2, [{"op": "put", "table": "mwi_ledger", "row": {"mailbox": "mb1001", "extension": "1001",
                  "state": {"on": False, "new": 0, "old": 0, "confirmed": True, "term": 2}}}])
    (tmp_path / "store").mkdir()
    store = MaildirStore(tmp_path / "store")
    mwi_port = free_udp_port()
    cwd = tmp_path / "uas"
    cwd.mkdir()
    # the window is long against the few milliseconds a burst of deliveries takes, so the
    # burst is one window whatever the machine's load (the rule itself: test_mwi.py)
    window = 3.0
    async with sipp(cwd, "uas_mwi_200.xml", "-m", "3", "-trace_logs", port=mwi_port) as uas, \
            trio.open_nursery() as nursery:
        sip = SipPorts(profile=SipProfile(count=1, sip_port=free_udp_port(),
                                          mwi_target=f"sip:{{extension}}@127.0.0.1:{mwi_port}",
                                          mwi_account="sip:{extension}@vm.example"),
                       node="a", runtime_dir=tmp_path / "run", media_dir=tmp_path / "media")
        sip.register(PortRegistry())
        await nursery.start(sip.run, NoCalls())
        m = Messaging(node="a", db=db, store=store, spool_dir=tmp_path / "spool",
                      streams=tmp_path / "streams", sinks={"sip": sip}, mwi_coalesce=window)
        sip.gate = lambda: m.term
        with trio.fail_after(GUARD):  # the worker process is up (a slow start is no failure)
            await until(lambda: any(w.alive for w in sip.workers), "the SIP worker", timeout=GUARD)
        await nursery.start(m.run)
        m.activated(2)
        with trio.fail_after(GUARD):
            await until(lambda: m.last_resync is not None, "the takeover resync")
            assert (m.last_resync["jobs"], m.last_resync["sent"]) == (0, 0)
            # the first message: its NOTIFY goes out at once
            await store.deliver(make_message(1, mailbox="mb1001", extension="1001"))
            await m.lamp("mb1001", "1001")
            await until(lambda: notifies(cwd) == [(1, 0)], "a NOTIFY with 1 new")
            # a burst of 4 more, each followed by its lamp (as the call flow does)
            for n in range(2, 6):
                await store.deliver(make_message(n, mailbox="mb1001", extension="1001"))
                await m.lamp("mb1001", "1001")
            await until(lambda: notifies(cwd)[-1:] == [(5, 0)], "a NOTIFY with 5 new")
            # two messages heard: one more NOTIFY, 3 new and 2 old, as the store says
            for msg in (await store.list("mb1001", new_only=True))[:2]:
                await store.mark_heard("mb1001", msg.uid)
            await m.lamp("mb1001", "1001")
            await until(lambda: notifies(cwd)[-1:] == [(3, 2)], "a NOTIFY with 3/2")
            assert await uas.exit_code() == 0  # exactly 3 NOTIFYs answered (-m 3)
        # the first change went out at once; the four of the burst within the window became
        # one NOTIFY carrying the latest counts; the heard ones one more, after the window
        assert notifies(cwd) == [(1, 0), (5, 0), (3, 2)]
        assert await store.counts("mb1001") == (3, 2)
        # SIPp has answered the third NOTIFY; the worker's result reaches the core just after
        await until(lambda: m.stats()["lamp_jobs_sent"] == 3, "the third job confirmed")
        state = db.get("mwi_ledger", "mb1001")["state"]
        assert (state["new"], state["old"], state["confirmed"]) == (3, 2, True)
        nursery.cancel_scope.cancel()
    db.close()


# ============================================================================ IMAP counting

needs_dovecot = pytest.mark.skipif(dovecot.available() is not None,
                                   reason=dovecot.available() or "")


@needs_dovecot
async def test_imap_counts_every_mailbox_on_one_login_of_the_status_account(tmp_path):
    with StatusDovecot(tmp_path / "dovecot") as server:
        store = ImapStore(server.host, server.port, credentials=server.credentials,
                          mailboxes=server.mailboxes, status_account=server.status_account)
        await store.deliver(make_message(1, mailbox="mb1001"))
        await store.deliver(make_message(2, mailbox="mb1001"))
        await store.deliver(make_message(3, mailbox="mb1004", extension="1004"))
        [heard] = await store.list("mb1004")
        await store.mark_heard("mb1004", heard.uid)

        def logins() -> int:
            return server.log_tail(100_000).count("Login: user=")

        want = {"mb1001": (2, 0), "mb1004": (0, 1)}
        # 8 mailboxes never had mail: no INBOX the status account could see yet; each is
        # counted with its own login, which creates it
        before = logins()
        assert await store.all_counts() == want
        assert store.status_fallbacks == 8 and logins() - before == 1 + 8
        # from now on: one login for every mailbox
        before = logins()
        assert await store.all_counts() == want
        assert store.status_fallbacks == 0 and logins() - before == 1
        assert "Login: user=<vmha-status>" in server.log_tail(100_000)
        # an account without the rights sees no INBOX: the counts stay right (own logins),
        # never "no messages" for a mailbox it cannot read
        owner = ImapStore(server.host, server.port, credentials=server.credentials,
                          mailboxes=server.mailboxes, status_account=("mb1002", "secret-1002"))
        assert await owner.all_counts() == want
        assert owner.status_fallbacks == 10  # every one (its own is not under shared/ either)
