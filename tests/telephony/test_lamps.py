"""The messaging core's lamps run beside the calls: ``Messaging.lamp`` returns at once, a
slow MWI target holds only its own lamp, and a subscriber with ``mwi_method = "none"`` gets no
lamp job.  Real SQLite configuration database and Maildir store; the sink is a test double
that can hold a job as long as the test wants (a NOTIFY being retried)."""
from __future__ import annotations

import trio

from failover.core.state import Role
from telephony.configdb import ConfigDB
from telephony.messaging import Messaging
from telephony.store import MaildirStore
from tests.telephony.messages import make_message
from tests.util import until


class HoldingSink:
    """Records every job; a job for an extension in ``hold`` waits until it is released."""

    def __init__(self, hold: set[str]) -> None:
        self.hold = hold
        self.started: list = []
        self.done: list = []
        self.release = trio.Event()

    async def send_mwi(self, job) -> None:
        self.started.append(job)
        if job.extension in self.hold:
            await self.release.wait()
        self.done.append(job)


def sub(ext: str, method: str) -> dict:
    return {"op": "put", "table": "subscribers", "row": {
        "extension": ext, "name": f"S {ext}", "mailbox": f"mb{ext}", "mwi_method": method,
        "notify": []}}


async def test_a_lamp_never_holds_the_call_and_none_means_no_lamp(tmp_path):
    db = ConfigDB(tmp_path / "config.db", role=Role.PRIMARY)
    db.write(2, [sub("1001", "sip"), sub("1002", "none"), sub("1003", "sip")])
    (tmp_path / "store").mkdir()  # the shared store is mounted
    store = MaildirStore(tmp_path / "store")
    sink = HoldingSink(hold=set())
    # mwi_coalesce=0: every change goes out at once (the window would hold 1001's lamp for a
    # second after the takeover's job; coalescing has its own tests in test_mwi.py)
    m = Messaging(node="a", db=db, store=store, spool_dir=tmp_path / "spool",
                  streams=tmp_path / "streams", sink=sink, mwi_coalesce=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(m.run)
        m.activated(2)
        await until(lambda: m.last_resync is not None, "the takeover resync")
        # no lamp state known yet: the new active node sets every lamp it owns (off), but
        # never one of a subscriber without MWI
        assert sorted(j.extension for j in sink.done) == ["1001", "1003"]
        assert not any(j.on for j in sink.done)
        sink.started.clear()
        sink.done.clear()
        sink.hold.add("1001")
        for n, box, ext in ((1, "mb1001", "1001"), (2, "mb1002", "1002"), (3, "mb1003", "1003")):
            await store.deliver(make_message(n, mailbox=box, extension=ext))
        # 1001's NOTIFY hangs (held by the sink): the call's lamp() must not wait for it
        with trio.fail_after(10):  # a hang guard: a lamp() that waited would never return
            await m.lamp("mb1001", "1001")
            await m.lamp("mb1002", "1002")
            await m.lamp("mb1003", "1003")
        await until(lambda: [j.extension for j in sink.done] == ["1003"], "1003's lamp")
        # both started (in parallel: in either order), never 1002 (none)
        await until(lambda: len(sink.started) == 2, "1001's lamp started")
        assert sorted(j.extension for j in sink.started) == ["1001", "1003"]
        held = next(j for j in sink.started if j.extension == "1001")
        assert held.on and held.term == 2
        # 1001 changes again while its lamp is in flight: looked at once more afterwards
        await m.lamp("mb1001", "1001")
        sink.release.set()
        await until(lambda: [j.extension for j in sink.done] == ["1003", "1001"], "1001's lamp")
        await trio.sleep(0.1)
        # the second look found the lamp already on: no second job
        assert sorted(j.extension for j in sink.started) == ["1001", "1003"]
        assert m.stats()["lamp_jobs_sent"] == 4  # 2 offs at the takeover, 2 ons
        nursery.cancel_scope.cancel()
    db.close()


async def test_a_full_resync_sets_every_lamp_again_an_ordinary_one_only_the_differences(tmp_path):
    """``request_resync(full=True)`` (the primary after a partition of a shared SMDI line,
    docs/smdi.md): the ledger's confirmations are not trusted, every lamp is sent."""
    db = ConfigDB(tmp_path / "config.db", role=Role.PRIMARY)
    db.write(2, [sub("1001", "smdi"), sub("1002", "smdi"), sub("1003", "none")])
    (tmp_path / "store").mkdir()
    store = MaildirStore(tmp_path / "store")
    sink = HoldingSink(hold=set())
    m = Messaging(node="a", db=db, store=store, spool_dir=tmp_path / "spool",
                  streams=tmp_path / "streams", sink=sink, mwi_coalesce=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(m.run)
        m.activated(2)
        await until(lambda: m.last_resync is not None, "the takeover resync")
        await store.deliver(make_message(1, mailbox="mb1001", extension="1001"))
        await m.lamp("mb1001", "1001")
        await until(lambda: len(sink.done) == 3, "1001's lamp on")
        m.request_resync()  # everything confirmed and equal to the store: nothing to send
        await until(lambda: m.stats()["resyncs"] == 2, "the ordinary resync")
        assert len(sink.done) == 3 and m.last_resync["full"] is False
        sink.done.clear()
        m.request_resync(full=True)
        await until(lambda: m.stats()["resyncs"] == 3, "the full resync")
        assert sorted((j.extension, j.on, j.reason) for j in sink.done) == [
            ("1001", True, "resync"), ("1002", False, "resync")]
        assert (m.last_resync["full"], m.last_resync["why"], m.last_resync["sent"]) == \
            (True, "partition healed", 2)
        rows = {r["mailbox"]: r["state"] for r in db.list("mwi_ledger")}
        assert all(s["confirmed"] for s in rows.values()) and set(rows) == {"mb1001", "mb1002"}
        m.request_resync()  # and the ledger is settled again
        await until(lambda: m.stats()["resyncs"] == 4, "the next resync")
        assert len(sink.done) == 2
        m.deactivated()
        m.request_resync(full=True)  # not active: nothing is asked for
        await trio.sleep(0.1)
        assert m.stats()["resyncs"] == 4
        nursery.cancel_scope.cancel()
