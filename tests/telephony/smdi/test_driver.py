"""The SMDI link driver on real ptys (socat pairs) and a real TCP socket (pyserial's
``socket://`` handler, the thread fallback).  The far end of each pty is the PBX here, read
and written with plain os calls.  Hang guards only; the one timing check (pacing) is a lower
bound that a slow machine can only make easier to pass."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import trio

from lab.smdi import LinkService, SocatPair
from telephony.core.mwi import MwiJob
from telephony.runtime.ports import PortRegistry
from telephony.smdi.core.codec import MwiFormat, encode_call_record, encode_mwi_failure
from telephony.smdi.driver import LINK_PORT, LinkDown, SmdiLink, TransmitRefused
from telephony.smdi.settings import SerialSettings, SmdiProfile
from tests.util import until

pytestmark = pytest.mark.skipif(
    shutil.which("socat") is None,
    reason="socat is not installed: it makes the SMDI pty pair (apt-get install socat)")

GUARD = 10.0


class Far:
    """The PBX end of a pty pair, non-blocking, in raw mode."""

    def __init__(self, path: Path) -> None:
        import termios
        import tty

        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd, termios.TCSANOW)
        self.got = bytearray()

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    async def read_until(self, n: int) -> bytes:
        with trio.fail_after(GUARD):
            while len(self.got) < n:
                await trio.lowlevel.wait_readable(self.fd)
                try:
                    self.got += os.read(self.fd, 4096)
                except BlockingIOError:
                    pass
        return bytes(self.got)

    def drain(self) -> bytes:
        try:
            while True:
                self.got += os.read(self.fd, 4096)
        except (BlockingIOError, OSError):
            pass
        return bytes(self.got)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@pytest.fixture
def ptys(tmp_path):
    pair = SocatPair(tmp_path / "node", tmp_path / "pbx")
    pair.start()
    far = Far(tmp_path / "pbx")
    yield pair, tmp_path / "node", far
    far.close()
    pair.stop()


def make_link(device, **profile) -> tuple[SmdiLink, PortRegistry, list]:
    prof = SmdiProfile(terminals=(1, 2, 3, 4), **profile)
    link = SmdiLink(serial=SerialSettings(str(device)), profile=prof, node="a",
                    reopen_min=0.05, reopen_max=0.2)
    reg = PortRegistry()
    link.register(reg)
    reports: list[tuple[str, str, str]] = []

    async def report(level, event, message):
        reports.append((level, event, message))

    link.report = report
    return link, reg, reports


def job(ext: str, on: bool, term: int = 4) -> MwiJob:
    return MwiJob(ext, f"mb{ext}", on, 1 if on else 0, 0, term, "deliver")


async def test_records_for_our_lines_are_matched_announced_and_rewritten(ptys):
    _, dev, far = ptys
    link, reg, _ = make_link(dev, keep_last=4)
    announced = []

    async def announce(call):
        announced.append(call)

    link.announce = announce
    async with trio.open_nursery() as n:
        await n.start(link.run, LinkService())
        await until(lambda: link.is_open, "open")
        assert reg.get(LINK_PORT).state == "idle"
        far.write(encode_call_record(3, "B", "5551002", "5551001"))  # ours: line loopback-3
        far.write(encode_call_record(7, "N", "5552000", "5551001"))  # the peer's terminal
        await until(lambda: link.counters["records"] == 2, "both records parsed")
        assert link.counters["peer_records"] == 1
        (call,) = announced  # inactive (gate None): the node manager is told at once
        assert (call.port, call.forwarding, call.calling, call.reason) == \
            ("loopback-3", "1002", "1001", "busy")
        arrival = await link.line_arrival("loopback-3", "ring-1", "a")
        assert (arrival.call_id, arrival.forwarding, arrival.reason, arrival.integration) == \
            ("ring-1", "1002", "busy", "serial-smdi")
        # no record for line 2: after ring_wait the call is a direct one with no numbers
        link.profile = SmdiProfile(terminals=(1, 2, 3, 4), ring_wait=0.05)
        lonely = await link.line_arrival("loopback-2", "ring-2", "a")
        assert (lonely.reason, lonely.calling, lonely.forwarding) == ("direct", "", "")
        assert link.counters["unmatched_rings"] == 1
        # active: records are not announced
        link.gate = lambda: 4
        far.write(encode_call_record(1, "A", "5551003", ""))
        await until(lambda: link.counters["records"] == 3, "third record")
        assert len(announced) == 1
        n.cancel_scope.cancel()


async def test_a_record_waits_record_wait_for_its_ring_and_then_expires(ptys):
    _, dev, far = ptys
    link, _, _ = make_link(dev, record_wait=0.2, ring_wait=0)
    async with trio.open_nursery() as n:
        await n.start(link.run, LinkService())
        await until(lambda: link.is_open, "open")
        far.write(encode_call_record(2, "N", "5551002", "5551001"))
        await until(lambda: link.matcher.pending() == 1, "queued")
        # to the record's own deadline (record_wait after it arrived), not a guessed sleep
        deadline = link.matcher.next_deadline()
        assert deadline is not None
        await trio.sleep_until(deadline)
        rec = await link.call_info("loopback-2")
        assert rec is None and link.matcher.expired == 1
        n.cancel_scope.cancel()


async def test_transmit_only_while_active_in_the_jobs_term(ptys):
    _, dev, far = ptys
    link, _, _ = make_link(dev)
    async with trio.open_nursery() as n:
        await n.start(link.run, LinkService())
        await until(lambda: link.is_open, "open")
        with pytest.raises(TransmitRefused):
            await link.send_mwi(job("1002", True))  # inactive
        link.gate = lambda: 6
        with pytest.raises(TransmitRefused):
            await link.send_mwi(job("1002", True, term=4))  # an older term's job
        await trio.sleep(0.2)
        assert far.drain() == b""  # not one byte on the line
        assert link.counters["mwi_refused"] == 2
        await link.send_mwi(job("1002", True, term=6))
        await link.send_mwi(job("1002", False, term=6))
        want = b"OP:MWI 1002!\x04RMV:MWI 1002!\x04"
        assert await far.read_until(len(want)) == want
        n.cancel_scope.cancel()


async def test_a_deactivation_during_the_wait_for_the_line_stops_the_command(ptys):
    """The gate is checked after the wait for the line, right before writing."""
    _, dev, far = ptys
    link, _, _ = make_link(dev)
    link.serial = SerialSettings(str(dev), baudrate=300)
    from telephony.smdi.core.link import LinePacer
    link.pacer = LinePacer(300, link.serial.bits_per_char)
    active = {"term": 2}
    link.gate = lambda: active["term"]
    async with trio.open_nursery() as n:
        await n.start(link.run, LinkService())
        await until(lambda: link.is_open, "open")
        await link.send_mwi(job("1001", True, term=2))  # ~0.5 s on the wire at 300 baud

        async def second():
            with pytest.raises(TransmitRefused):
                await link.send_mwi(job("1003", True, term=2))

        n.start_soon(second)
        await trio.sleep(0.1)
        active["term"] = None  # deactivated while the second command waits for the line
        await trio.sleep(0.8)
        assert far.drain() == b"OP:MWI 1001!\x04"
        n.cancel_scope.cancel()


async def test_commands_are_paced_at_the_line_rate_and_formats_come_from_the_profile(ptys):
    _, dev, far = ptys
    fmt = MwiFormat(pad_to=7)
    link, _, _ = make_link(dev, mwi=fmt, mwi_prefix="55")
    link.serial = SerialSettings(str(dev), baudrate=2400)
    from telephony.smdi.core.link import LinePacer
    link.pacer = LinePacer(2400, link.serial.bits_per_char)
    link.gate = lambda: 2
    async with trio.open_nursery() as n:
        await n.start(link.run, LinkService())
        await until(lambda: link.is_open, "open")
        t0 = trio.current_time()
        for i in range(20):
            await link.send_mwi(job(f"{1000 + i}", True, term=2))
        one = b"OP:MWI 0551000!\x04"  # prefix 55, zero-padded to 7 digits
        data = await far.read_until(20 * len(one))
        elapsed = trio.current_time() - t0
        assert data.startswith(one) and data.count(b"OP:MWI 055") == 20
        wire = 20 * len(one) * 10 / 2400  # 7E1: 10 bits a character
        # the 20th command may start only after 19 have left the wire
        assert elapsed >= 19 * len(one) * 10 / 2400, (elapsed, wire)
        n.cancel_scope.cancel()


async def test_mwi_failure_records_are_matched_to_the_job(ptys):
    _, dev, far = ptys
    link, _, reports = make_link(dev)
    link.gate = lambda: 2
    failed = []

    async def on_failure(j, why):
        failed.append((j, why))

    link.on_mwi_failure = on_failure
    async with trio.open_nursery() as n:
        await n.start(link.run, LinkService())
        await until(lambda: link.is_open, "open")
        j = job("1009", True, term=2)
        await link.send_mwi(j)
        far.write(encode_mwi_failure("1009", "INV"))
        far.write(encode_mwi_failure("4444", "BLK", space=True, bang=True))  # no such command
        await until(lambda: link.counters["mwi_failures_unmatched"] == 1, "both failures read")
        assert failed == [(j, "switch answered INV (invalid station)")]
        assert [r[1] for r in reports].count("smdi_mwi_failure") == 2
        n.cancel_scope.cancel()


async def test_garbage_on_the_line_changes_nothing(ptys):
    _, dev, far = ptys
    link, _, _ = make_link(dev)
    async with trio.open_nursery() as n:
        await n.start(link.run, LinkService())
        await until(lambda: link.is_open, "open")
        far.write(bytes(range(256)) * 4 + b"MD00x" + os.urandom(300).replace(b"M", b"m"))
        far.write(encode_call_record(4, "N", "5551002", "5551001"))
        await until(lambda: link.counters["records"] == 1, "the good record after the garbage")
        assert link.counters["protocol_errors"] >= 1 and link.is_open
        assert (await link.call_info("loopback-4")).forwarding == "5551002"
        n.cancel_scope.cancel()


async def test_a_pty_that_disappears_is_reopened_and_says_so(ptys, tmp_path):
    pair, dev, far = ptys
    link, reg, reports = make_link(dev)
    ups: list[int] = []
    link.on_up = lambda: ups.append(1)  # an active node resyncs lamps when the port is back
    async with trio.open_nursery() as n:
        await n.start(link.run, LinkService())
        await until(lambda: link.is_open, "open")
        far.close()
        pair.stop()  # the device is gone (a USB adapter pulled out)
        await until(lambda: not link.is_open, "link down")
        assert reg.get(LINK_PORT).state == "down"
        link.gate = lambda: 2
        with pytest.raises(LinkDown):
            await link.send_mwi(job("1002", True, term=2))
        await trio.sleep(0.3)  # several reopen attempts fail meanwhile
        pair.start()
        far2 = Far(tmp_path / "pbx")
        try:
            await until(lambda: link.is_open, "reopened")
            assert reg.get(LINK_PORT).state == "idle"
            far2.write(encode_call_record(1, "B", "5551002", "5551001"))
            await until(lambda: link.counters["records"] == 1, "records flow again")
            events = [r[1] for r in reports]
            assert events[0] == "smdi_up" and "smdi_down" in events and events[-1] == "smdi_up"
            assert link.counters["opens"] == 2
            assert ups == [1]  # inactive at the first open, active at the reopen
        finally:
            far2.close()
        n.cancel_scope.cancel()


async def test_a_pyserial_url_without_an_fd_uses_the_thread_fallback():
    """``socket://`` (a terminal server) has no fd: reads and writes go through a thread."""
    got = bytearray()
    conn_box: list[trio.SocketStream] = []
    async with trio.open_nursery() as n:
        listeners = await n.start(trio.serve_tcp, lambda s: _serve(s, conn_box), 0,
                                  )
        port = listeners[0].socket.getsockname()[1]
        link, _, _ = make_link(f"socket://127.0.0.1:{port}")
        link.gate = lambda: 2
        await n.start(link.run, LinkService())
        await until(lambda: link.is_open and conn_box, "connected")
        assert link._port is not None and link._port.stream is None  # the thread path
        await conn_box[0].send_all(encode_call_record(2, "A", "5551007", ""))
        await until(lambda: link.counters["records"] == 1, "record over the socket")
        await link.send_mwi(job("1007", True, term=2))
        with trio.fail_after(GUARD):
            while b"!\x04" not in got:
                got += await conn_box[0].receive_some(100)
        assert bytes(got) == b"OP:MWI 1007!\x04"
        n.cancel_scope.cancel()


async def _serve(stream, box):
    box.append(stream)
    await trio.sleep_forever()


# ---------------------------------------------------------------------- the priority lane

def resync_job(ext: str, on: bool = False, term: int = 2) -> MwiJob:
    return MwiJob(ext, f"mb{ext}", on, 1 if on else 0, 0, term, "resync")


async def queue(nursery, send, *args) -> None:
    """Start ``send(*args)`` and return once it has queued its job (Trio runs new tasks in
    any order: this keeps the order of the queue the order of the calls)."""
    async def run(*, task_status=trio.TASK_STATUS_IGNORED):
        task_status.started()
        await send(*args)  # queues before its first checkpoint

    await nursery.start(run)


@pytest.fixture
async def line(tmp_path):
    """A link at 9600 baud on one end of a pty pair, the PBX simulator (reading at 9600 baud,
    10 bits a character) on the other."""
    from lab.smdi_pbx import PbxSimulator

    pair = SocatPair(tmp_path / "node", tmp_path / "pbx")
    pair.start()
    try:
        link, _, _ = make_link(tmp_path / "node")
        link.gate = lambda: 2
        async with PbxSimulator(tmp_path / "pbx", baudrate=9600).running() as pbx:
            async with trio.open_nursery() as n:
                await n.start(link.run, LinkService())
                await until(lambda: link.is_open, "open")
                yield link, pbx, n
                n.cancel_scope.cancel()
    finally:
        pair.stop()


async def test_a_fresh_lamp_overtakes_a_queued_resync(line):
    """30 resync lamps queued at once, a fresh one (a message just left) queued once the
    first is on the wire: it goes out right after the command in flight, not after the
    other 29 (the line carries one command at a time, so it may follow one more)."""
    link, pbx, n = line
    for i in range(30):
        await queue(n, link.send_mwi, resync_job(f"{1000 + i}"))
    await pbx.wait_commands(1)
    ahead = link.counters["mwi_sent"]  # written; one more may be going out right now
    await link.send_mwi(job("2000", True, term=2))
    got = await pbx.wait_commands(31)
    order = [c.number for c in got]
    assert order[0] == "1000" and order.count("2000") == 1
    assert ahead < 29 and order.index("2000") <= ahead + 1, (ahead, order)
    assert sorted(order) == sorted([f"{1000 + i}" for i in range(30)] + ["2000"])
    assert [c.on for c in got if c.number == "2000"] == [True]


async def test_a_fresh_lamp_replaces_a_queued_resync_command_for_its_station(line):
    """No stale lamp after a fresh one: the resync's queued 'off' for 1005 is not sent after
    (or before) the fresh 'on'; both callers return, the one command being the fresh one."""
    link, pbx, n = line
    done: list[str] = []

    async def bulk(ext: str) -> None:
        await link.send_mwi(resync_job(ext))
        done.append(ext)

    for i in range(10):
        await queue(n, bulk, f"{1000 + i}")
    await pbx.wait_commands(1)
    await link.send_mwi(job("1005", True, term=2))
    await pbx.wait_commands(10)
    await until(lambda: len(done) == 10, "every resync caller returned")
    lamps = [(c.number, c.on) for c in (await pbx.wait_commands(10))]
    assert [x for x in lamps if x[0] == "1005"] == [("1005", True)], lamps
    assert pbx.lamps()["1005"] is True and len(lamps) == 10
    assert link.counters["mwi_superseded"] == 1 and link.counters["mwi_sent"] == 10


async def test_a_caller_cancelled_while_queued_sends_nothing(line):
    link, pbx, n = line
    cancel_me = trio.CancelScope()

    async def withdrawn() -> None:
        with cancel_me:
            await link.send_mwi(resync_job("1002"))

    await queue(n, link.send_mwi, resync_job("1000"))
    await queue(n, link.send_mwi, resync_job("1001"))
    await queue(n, withdrawn)
    await queue(n, link.send_mwi, resync_job("1003"))
    cancel_me.cancel()  # 1000 is on the wire, 1001 next: 1002 waits in the queue
    await link.send_mwi(resync_job("1004"))  # in the same lane: all before it have gone
    got = [c.number for c in await pbx.wait_commands(4)]
    assert got == ["1000", "1001", "1003", "1004"]


# ---------------------------------------------------------------------- a shared line, split pair


async def test_the_secondary_holds_its_lamps_while_the_peer_is_unreachable(ptys):
    """docs/smdi.md, "A shared line in a partition": not a byte while the peer is away; the
    held lamps are counted and reported once, dropped at the heal, and a secondary still
    active then asks for an ordinary resync."""
    from telephony.core.terms import Role
    from telephony.smdi.driver import LampHeld

    _, dev, far = ptys
    link, _, reports = make_link(dev)
    link.shared.role = Role.SECONDARY
    heals: list[bool] = []
    link.on_heal = heals.append
    link.gate = lambda: 3
    async with trio.open_nursery() as n:
        await n.start(link.run, LinkService())
        await until(lambda: link.is_open, "open")
        await link.peer_link(False)
        for ext, on in (("1002", True), ("1003", True), ("1002", False)):
            with pytest.raises(LampHeld):
                await link.send_mwi(job(ext, on, term=3))
        await trio.sleep(0.2)
        assert far.drain() == b""  # not one byte on the shared line
        c = link.counters
        assert (c["lamps_held"], c["lamps_held_waiting"], c["mwi_sent"], c["mwi_refused"]) == \
            (3, 2, 0, 0), c
        assert [lamp.job.on for lamp in link.shared.held().values()] == [True, False]
        assert [e for _, e, _ in reports].count("smdi_lamps_held") == 1
        await link.peer_link(True)  # still active: an ordinary resync, not a full one
        assert heals == [False]
        assert (link.counters["lamps_held_waiting"], link.counters["lamps_held_discarded"]) == (0, 2)
        assert any(e == "smdi_lamps_released" and "2 held" in m for _, e, m in reports)
        await link.send_mwi(job("1002", True, term=3))
        want = b"OP:MWI 1002!\x04"
        assert await far.read_until(len(want)) == want
        n.cancel_scope.cancel()


async def test_the_primary_transmits_in_a_partition_and_resyncs_every_lamp_after_it(ptys):
    from telephony.core.terms import Role

    _, dev, far = ptys
    link, _, _ = make_link(dev)
    link.shared.role = Role.PRIMARY
    heals: list[bool] = []
    link.on_heal = heals.append
    link.gate = lambda: 4
    async with trio.open_nursery() as n:
        await n.start(link.run, LinkService())
        await until(lambda: link.is_open, "open")
        await link.peer_link(True)
        await link.peer_link(False)
        await link.send_mwi(job("1002", True, term=4))
        want = b"OP:MWI 1002!\x04"
        assert await far.read_until(len(want)) == want
        assert heals == []
        await link.peer_link(True)
        assert heals == [True]  # full
        assert link.counters["lamps_held"] == 0
        n.cancel_scope.cancel()


def test_the_link_takes_its_role_and_shared_line_from_the_service():
    from telephony.core.terms import Role

    prof = SmdiProfile(terminals=(1,))
    link = SmdiLink(serial=SerialSettings("/dev/null"), profile=prof, node="b",
                    role=Role.SECONDARY, shared_line=False)
    assert not link.shared.applies and link.shared.may_transmit()
    link = SmdiLink(serial=SerialSettings("/dev/null"), profile=prof, node="b", role=Role.SECONDARY)
    assert link.shared.applies and not link.shared.may_transmit()
