"""The SIP port driver (:mod:`telephony.sip.driver`) without worker processes: the test plays
the workers on in-memory streams (the worker's end of each socket is a second
:class:`WorkerChannel`) and the messaging service is a real :class:`CallDesk`.

Here: the worker channel's framing (bad lines skipped, an over-long line breaks the
connection), the line a call is on and where its information comes from (the ``line_info``
hook, the SMDI link's ``line_arrival``), the call at an inactive node with that information,
and the sweep of media files a killed service left."""
from __future__ import annotations

import stat
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from telephony.core.events import CallArrival
from telephony.runtime.ports import CallDesk, PortRegistry, PortState
from telephony.sip.driver import KIND, SipPorts, WorkerChannel, media_dir_for, sweep_media
from telephony.sip.settings import SipProfile
from telephony.smdi.core.codec import SmdiReader, encode_call_record
from telephony.smdi.driver import SmdiLink
from telephony.smdi.settings import SerialSettings, SmdiProfile
from tests.util import until

# the INVITE's own information, which a call on a numbered line must NOT use
DIVERSION = "Diversion: <sip:1002@gw>;reason=unconditional;counter=1"


class Desk(CallDesk):
    """The messaging service as a port driver sees it: offers, holds, answers."""

    node = "a"

    def __init__(self, registry: PortRegistry, term: int | None = 4) -> None:
        self.term = term
        self.sent: list[dict] = []
        super().__init__(registry=registry, answering=lambda: self.term,
                         notify=self._record, offer_hold=30.0)

    async def _record(self, msg: dict) -> None:
        self.sent.append(msg)

    def events(self, op: str, event: str | None = None) -> list[dict]:
        return [m for m in self.sent if m.get("op") == op
                and (event is None or m.get("event") == event)]


def make_ports(tmp_path: Path, **profile) -> tuple[SipPorts, Desk, PortRegistry]:
    sip = SipPorts(profile=SipProfile(count=8, **profile), node="a", runtime_dir=tmp_path,
                   media_dir=tmp_path)
    reg = PortRegistry()
    sip.register(reg)
    reg.set_state(KIND, PortState.IDLE)
    return sip, Desk(reg), reg


@asynccontextmanager
async def playing_worker(sip: SipPorts, desk: Desk, index: int):
    """Worker ``index`` served by the driver; yields the worker's end of its socket."""
    w = sip.workers[index]
    ours, theirs = trio.testing.memory_stream_pair()
    w.channel = WorkerChannel(ours)
    w.ready.set()
    async with trio.open_nursery() as n:
        n.start_soon(sip._serve, w, desk)
        yield WorkerChannel(theirs)
        n.cancel_scope.cancel()


def incoming(wid: str, user: str, *, account: str = "a-w2", extra: str = DIVERSION) -> dict:
    ruri = f"sip:{user}@127.0.0.1:5062"
    raw = (f"INVITE {ruri} SIP/2.0\r\nFrom: <sip:0301234567@gw>;tag=1\r\n"
           f"To: <sip:{user}@vm>\r\n{extra}\r\n\r\n")
    return {"ev": "incoming", "call": wid, "sip_call_id": f"{wid}@gw",
            "from": "<sip:0301234567@gw>;tag=1", "to": f"<sip:{user}@vm>",
            "request_uri": ruri, "raw": raw, "remote": "127.0.0.1:5060", "account": account}


async def next_op(far: WorkerChannel) -> dict:
    with trio.fail_after(10):  # a hang guard
        op = await far.read()
    assert op is not None
    return op


def smdi_arrival(port: str, call_id: str, node: str) -> CallArrival:
    return CallArrival(node=node, port=port, call_id=call_id, calling="9876", called="",
                       forwarding="1001", reason="busy", integration="gateway-smdi")


# ============================================================================ the channel


async def test_the_channel_skips_bad_lines_and_reads_on(caplog):
    ours, theirs = trio.testing.memory_stream_pair()
    ch = WorkerChannel(ours)
    await theirs.send_all(b'not json\n[1, 2]\n\xff\xfe\n{"ev": "ready"}\n{"ev": "x", "n": 1')
    assert await ch.read() == {"ev": "ready"}
    assert caplog.text.count("bad line from a SIP worker") == 3
    await theirs.send_all(b"}\n")
    assert await ch.read() == {"ev": "x", "n": 1}
    await theirs.send_all(b'{"ev": "cut by the end"')
    await theirs.aclose()
    assert await ch.read() is None  # an unfinished last line is dropped


async def test_an_over_long_line_breaks_the_connection():
    from telephony.sip.driver import MAX_LINE

    ours, theirs = trio.testing.memory_stream_pair()
    ch = WorkerChannel(ours)
    await theirs.send_all(b'{"ev": "ready"}\n' + b"x" * (MAX_LINE + 10))
    assert await ch.read() == {"ev": "ready"}
    with pytest.raises(trio.BrokenResourceError, match="over-long"):
        await ch.read()


async def test_the_channel_sends_one_json_line_per_op():
    ours, theirs = trio.testing.memory_stream_pair()
    await WorkerChannel(ours).send(op="answer", call="w1-1")
    assert await theirs.receive_some(100) == b'{"op":"answer","call":"w1-1"}\n'


# ============================================================================ lines


def test_the_line_of_a_call():
    sip = SipPorts(profile=SipProfile(count=8), node="a", runtime_dir=Path("/"),
                   media_dir=Path("/"))
    assert sip.line_of(incoming("c", "vm-6")) == "sip-6"          # trunk: the Request-URI
    assert sip.line_of(incoming("c", "vm-12")) == "sip-12"        # (no such line: refused)
    assert sip.line_of(incoming("c", "5000")) is None
    assert sip.line_of(incoming("c", "vm-x")) is None
    reg = SipPorts(profile=SipProfile(count=8, mode="register", registrar="sip:127.0.0.1",
                                      user="line"),
                   node="a", runtime_dir=Path("/"), media_dir=Path("/"))
    # register mode: the account the call reached, whatever the Request-URI says
    assert reg.line_of(incoming("c", "vm-6", account="line-3")) == "sip-3"
    assert reg.line_of(incoming("c", "line-3", account="a-w1")) is None


async def test_a_numbered_line_takes_its_information_from_line_info(tmp_path):
    sip, desk, reg = make_ports(tmp_path)
    asked: list[tuple[str, str, str]] = []
    record = trio.Event()

    async def line_info(port: str, call_id: str, node: str) -> CallArrival:
        asked.append((port, call_id, node))
        await record.wait()  # the record comes after the ring
        return smdi_arrival(port, call_id, node)

    sip.line_info = line_info
    async with playing_worker(sip, desk, 1) as far:  # worker w2: sip-5 .. sip-8
        await far.send(**incoming("w2-1", "vm-6"))
        await until(lambda: asked, "the driver asks for the line's information")
        assert asked == [("sip-6", "w2-1@gw", "a")]  # that very line, not the first idle one
        assert reg.get("sip-6").state is PortState.RINGING and not desk.sent
        record.set()
        assert await next_op(far) == {"op": "answer", "call": "w2-1"}
        answered, = desk.events("call", "answered")
        call = answered["call"]
        assert (call["port"], call["forwarding"], call["reason"], call["calling"]) == \
            ("sip-6", "1001", "busy", "9876")  # the data link's, not Diversion's 1002
        assert reg.get("sip-6").state is PortState.IN_CALL
        await far.send(ev="disconnected", call="w2-1", code=200, by="remote")
        await until(lambda: desk.events("call", "ended"), "the call's end")
        assert reg.get("sip-6").state is PortState.IDLE


async def test_a_busy_or_foreign_line_is_refused_and_an_unnumbered_call_uses_its_headers(tmp_path):
    sip, desk, reg = make_ports(tmp_path)
    sip.line_info = lambda port, call_id, node: pytest.fail("no line to ask about")
    reg.claim_port("sip-6")  # in a call already
    async with playing_worker(sip, desk, 1) as far:
        await far.send(**incoming("w2-1", "vm-6"))
        assert await next_op(far) == {"op": "reject", "call": "w2-1", "code": 486}
        await far.send(**incoming("w2-2", "vm-2"))   # worker w1's line
        assert await next_op(far) == {"op": "reject", "call": "w2-2", "code": 404}
        await far.send(**incoming("w2-3", "vm-12"))  # no such line
        assert await next_op(far) == {"op": "reject", "call": "w2-3", "code": 404}
        # no line named: the SIP headers, as without the hook, on any idle port
        await far.send(**incoming("w2-4", "5000"))
        assert await next_op(far) == {"op": "answer", "call": "w2-4"}
        call = desk.events("call", "answered")[0]["call"]
        assert (call["port"], call["forwarding"], call["reason"], call["called"]) == \
            ("sip-5", "1002", "all", "5000")
    assert all(reg.get(p).state is not PortState.RINGING for p in ("sip-5", "sip-7", "sip-8"))


async def test_without_the_hook_a_numbered_call_uses_its_headers_as_before(tmp_path):
    sip, desk, reg = make_ports(tmp_path)
    async with playing_worker(sip, desk, 1) as far:
        await far.send(**incoming("w2-1", "vm-6"))
        assert await next_op(far) == {"op": "answer", "call": "w2-1"}
        call = desk.events("call", "answered")[0]["call"]
        assert (call["port"], call["forwarding"], call["reason"], call["called"]) == \
            ("sip-5", "1002", "all", "vm6")


async def test_a_caller_who_gives_up_while_the_line_waits_is_not_offered(tmp_path):
    sip, desk, reg = make_ports(tmp_path)
    asked = trio.Event()

    async def line_info(port: str, call_id: str, node: str) -> CallArrival:
        asked.set()
        await trio.sleep(0.2)  # ring_wait: no record came
        return smdi_arrival(port, call_id, node)

    sip.line_info = line_info
    async with playing_worker(sip, desk, 1) as far:
        await far.send(**incoming("w2-1", "vm-7"))
        await asked.wait()
        await far.send(ev="disconnected", call="w2-1", code=487, by="remote")  # CANCEL
        await until(lambda: reg.get("sip-7").state is PortState.IDLE, "the line free again")
        assert desk.sent == []


async def test_a_record_and_call_at_the_inactive_node_is_held_and_answered_after_takeover(tmp_path):
    """The SMDI link's own ``line_arrival`` as the hook: the record filed for terminal 6
    (line sip-6); the service is inactive, so the call is held and offered to the node
    manager with the record's numbers, then answered once the service is active."""
    sip, desk, reg = make_ports(tmp_path)
    desk.term = None
    lines = tuple(f"sip-{i}" for i in range(1, 9))
    link = SmdiLink(serial=SerialSettings("/dev/null"), node="a",
                    profile=SmdiProfile(terminals=tuple(range(1, 9)), keep_last=4, lines=lines))
    (rec,) = SmdiReader().feed(encode_call_record(6, "N", "5551001", "5559876"))
    assert link.matcher.add(rec, trio.current_time()).port == "sip-6"
    sip.line_info = link.line_arrival
    async with playing_worker(sip, desk, 1) as far:
        await far.send(**incoming("w2-1", "vm-6"))
        offered = await until(lambda: desk.events("call_offered"), "the call offered")
        call = offered[0]["call"]
        assert (call["port"], call["forwarding"], call["reason"], call["calling"]) == \
            ("sip-6", "1001", "no_answer", "9876")
        desk.term = 5  # the node manager failed over: the service is active
        desk.wake()
        assert await next_op(far) == {"op": "answer", "call": "w2-1"}
        answered = desk.events("call", "answered")[0]
        assert answered["term"] == 5 and answered["call"] == call
    assert link.counters["matched"] == 1


# ============================================================================ media files


def test_media_files_left_by_a_killed_service_are_swept(tmp_path):
    left = ["w1-3-rec-2.wav", "w12-40-play-1.wav", "w1-3-play-17.wav"]
    kept = ["greeting.wav", "w1-3-rec-2.wav.json", "notes.txt", "w1-rec-.wav"]
    for name in left + kept:
        (tmp_path / name).write_bytes(b"RIFF")
    (tmp_path / "x-rec-1.wav.d").mkdir()
    assert sweep_media(tmp_path) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + ["x-rec-1.wav.d"])
    assert sweep_media(tmp_path) == 0


def test_media_files_go_to_a_private_directory_on_the_ram_file_system(tmp_path):
    """Greetings and recordings are written where a full data_dir disk cannot cut them short;
    a name taken by something that is not our private directory is never used."""
    ram = tmp_path / "shm"
    ram.mkdir()
    data = tmp_path / "data"
    d = media_dir_for(data, "a", ram=ram)
    assert d.parent == ram and d.name.startswith("vmha-a-") and d.is_dir()
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert media_dir_for(data, "a", ram=ram) == d  # the same node finds it again
    assert media_dir_for(tmp_path / "other", "a", ram=ram) != d  # another node's data_dir
    # a directory others may enter, or a symlink planted under the name: the fallback
    d.chmod(0o755)
    assert media_dir_for(data, "a", ram=ram) == data / "sip-media"
    d.rmdir()
    d.symlink_to(tmp_path)
    assert media_dir_for(data, "a", ram=ram) == data / "sip-media"
    # no RAM file system at all
    assert media_dir_for(data, "a", ram=tmp_path / "none") == data / "sip-media"


def test_workers_take_contiguous_rtp_ranges():
    """Worker i's RTP ports start at rtp_port + 4 * per_worker * i (no gap): the driver's
    command lines, the port-collision check's binds and the fit check agree."""
    from telephony.sip import settings as sip_settings

    p = SipProfile(count=10, per_worker=4, rtp_port=30000)
    sip = SipPorts(profile=p, node="a", runtime_dir=Path("/"), media_dir=Path("/"))
    starts = [int(sip._argv(w, Path("s"))[sip._argv(w, Path("s")).index("--rtp-port") + 1])
              for w in sip.workers]
    assert starts == [30000, 30016, 30032] == [p.worker_rtp(i) for i in range(3)]
    assert sip_settings.rtp_span(30000, 4, 10) == (30000, 30039)     # the last worker has 2
    section = sip_settings.section({**{k: sip_settings.KEYS[k].default for k in sip_settings.KEYS},
                                    "enabled": True, "count": 10, "rtp_port": 30000,
                                    "password_file": None})
    assert [(lo, hi) for s, _p, _h, lo, hi in sip_settings.binds(section)
            if s.endswith("rtp_port")] == [(30000, 30015), (30016, 30031), (30032, 30039)]
    # 144 ports now fit from the default rtp_port (the old layout allowed 55 workers)
    assert SipProfile(count=144).workers == 36
    SipProfile(count=1024, rtp_port=60000)  # 4096 ports: 60000..64095
    with pytest.raises(ValueError, match=r"RTP ports 62000\.\.66095 for 1024 SIP ports"):
        SipProfile(count=1024, rtp_port=62000)
