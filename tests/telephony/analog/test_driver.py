"""The analog lines' driver (telephony/analog/driver.py, port.py, mwi.py) in a real messaging
service (CallDesk, control channel) on the voice-board simulator over its real Unix socket, in
real time: calls with DTMF integration digits through the real call flow, the caller hanging
up by loop drop or tone, a ring at the inactive node, lamps by dialling, a board that goes away
and comes back."""
from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from lab.voiceboard import open_voiceboard
from telephony.analog.driver import AnalogPorts
from telephony.analog.settings import AnalogSettings
from telephony.core import dsp, dtmf, media
from telephony.core.callerid import CallerId
from telephony.core.events import Reason
from telephony.core.mwi import MwiJob, TransmitRefused
from telephony.runtime.ports import PortState
from tests.telephony.core.test_callflow import FakeDirectory, FakeMailboxes, make_flow
from tests.telephony.helpers import running_service
from tests.util import until

CALLER = media.tone(300, 4.0, 0.3)  # what the callers say


@asynccontextmanager
async def rig(tmp_path, *, active: bool = True, flow: Any = "callflow", directory=None,
              mailboxes=None, **settings: Any):
    """The simulator (board "a", 4 lines), the driver on it in a running service (active in
    term 2 unless ``active`` is False).  Yields a namespace."""
    class Rig:
        pass

    r = Rig()
    async with open_voiceboard(tmp_path, {"a": 4}) as sim:
        s = AnalogSettings(enabled=True, socket=sim.socket_path("a"),
                           **{"rings": 1, "mwi_retries": 0, **settings})
        r.sim, r.settings = sim, s
        if flow == "callflow":
            r.flow, r.sink = make_flow(directory or FakeDirectory(), mailboxes or FakeMailboxes())
            flow = r.flow.handle
        r.drv = AnalogPorts(s, node="a", flow=flow)
        r.reports = []
        async with running_service(drivers=[r.drv], offer_hold=2.0) as (svc, mgr, _):
            r.svc, r.mgr = svc, mgr
            r.drv.gate = svc.answering_term
            r.drv.report = svc.report
            if active:
                await mgr.send("activate", term=2, lease=600.0)
                await mgr.expect("activated", term=2)
            yield r


async def ended(mgr) -> dict:
    return (await mgr.expect("call", event="ended"))["call"]


def states(r) -> list[str]:
    return [p["state"] for p in r.svc.registry.status()]


async def test_a_busy_call_with_its_digits_is_answered_after_two_rings_and_leaves_a_message(tmp_path):
    with trio.fail_after(60):
        async with rig(tmp_path, rings=2) as r:
            call = await r.sim.call(digits="#4000", audio=CALLER, hunt=("a",))
            assert call.answered and call.answer_after_rings == 2 and call.line == 1
            assert call.ended_by == "pbx"  # the caller hung up (loop drop)
            info = await ended(r.mgr)
            assert info["reason"] == "busy" and info["forwarding"] == "4000"
            assert info["port"] == "analog-1" and info["integration"] == "analog-dtmf"
            await until(lambda: r.sink.delivered)
            msg = r.sink.delivered[0]
            assert msg.mailbox == "mb-4000" and msg.reason is Reason.BUSY
            assert msg.duration_s > 1.0  # the caller's audio after the greeting and the beep
            rec = media.pcm_of(msg.audio)
            assert dsp.goertzel_power(dsp.samples(rec), 300, 8000) > \
                10 * dsp.goertzel_power(dsp.samples(rec), 1000, 8000)
            # the caller heard the greeting of 4000 (300 Hz), then the beep (1 kHz)
            heard = dsp.samples(call.heard)
            assert dsp.goertzel_power(heard, 1000, 8000) > 0
            assert r.drv.counters["hangup_loop_drop"] == 1
            assert r.drv.counters["digits_matched"] == 1
            await until(lambda: states(r) == ["idle"] * 4)


async def test_a_subscriber_calling_in_gets_mailbox_access(tmp_path):
    boxes = FakeMailboxes({"mb-4001": [("u1", media.wav_bytes(media.tone(600, 0.3)))]})
    with trio.fail_after(60):
        async with rig(tmp_path, mailboxes=boxes) as r:
            call = await r.sim.call(digits="##4001", audio=b"", hunt=("a",), hangup="none",
                                    rings_max=3)
            info = await ended(r.mgr)
            assert info["reason"] == "direct" and info["calling"] == "4001"
            assert boxes.heard == [("mb-4001", "u1")]  # played to the end
            assert call.ended_by == "host"  # the flow hung up after the goodbye


async def test_no_digits_is_a_direct_call_from_an_unknown_caller(tmp_path):
    with trio.fail_after(60):
        async with rig(tmp_path, digit_timeout=1.0) as r:
            await r.sim.call(digits="", audio=media.silence(3.0) + CALLER, hunt=("a",))
            info = await ended(r.mgr)
            assert (info["reason"], info["calling"], info["forwarding"]) == ("direct", "", "")
            assert r.drv.counters["digits_none"] == 1
            await until(lambda: r.sink.delivered)
            assert r.sink.delivered[0].mailbox == "mb-operator"  # the default mailbox


async def test_a_silent_line_is_hung_up_after_the_silence_limit(tmp_path):
    async def hold(arrival, port, term):  # waits for the caller, who never says anything
        await port.record(max_seconds=60, silence_seconds=60)

    with trio.fail_after(60):
        async with rig(tmp_path, flow=hold, silence_limit=2) as r:
            call = await r.sim.call(digits="#4000", audio=b"", hunt=("a",), hangup="none")
            assert call.answered and call.ended_by == "host"  # the port hung up
            await ended(r.mgr)
            assert r.drv.counters["hangup_silence"] == 1


async def test_the_caller_id_heard_between_the_rings_names_the_caller(tmp_path):
    with trio.fail_after(60):
        async with rig(tmp_path, rings=2) as r:
            call = await r.sim.call(digits="#4000", audio=CALLER, hunt=("a",),
                                    callerid=CallerId(number="5550123", name="A CALLER"))
            assert call.callerid_sent and call.answer_after_rings == 2
            info = await ended(r.mgr)
            assert (info["calling"], info["forwarding"], info["reason"]) == \
                ("5550123", "4000", "busy")


async def test_the_caller_hanging_up_with_reorder_tone(tmp_path):
    held = trio.Event()

    async def hold(arrival, port, term):  # a flow that waits for the caller to hang up
        await port.record(max_seconds=60, silence_seconds=60)
        held.set()

    with trio.fail_after(60):
        async with rig(tmp_path, flow=hold) as r:
            call = await r.sim.call(digits="*1234", audio=media.tone(500, 1.0), hunt=("a",),
                                    hangup="tone")
            info = await ended(r.mgr)
            assert info["reason"] == "no_answer" and info["forwarding"] == "1234"
            assert call.ended_by == "pbx" and call.host_onhook_at is not None
            assert r.drv.counters["hangup_tone"] == 1 and r.drv.counters["hangup_loop_drop"] == 0
            assert held.is_set()
            kinds = [e.kind for e in r.sim.events_of("a", 1)]
            assert kinds[-1] == "onhook"


async def test_the_port_collects_digits_and_refuses_a_transfer(tmp_path):
    got: dict[str, Any] = {}

    async def flow(arrival, port, term):
        got["transfer"] = await port.transfer("0")  # no hook flash on an analog line
        got["digits"] = await port.collect_digits(max_digits=8, timeout=3.0)
        with pytest.raises(ValueError):
            await port.transfer("x")
        got["played"] = await port.play(media.wav_bytes(media.tone(700, 0.4)),
                                        interruptible=False)
        await port.hangup()
        got["after"] = (await port.play(media.wav_bytes(media.tone(700, 0.4))),
                        await port.collect_digits(max_digits=1, timeout=1.0), port.hung_up)

    typed = media.silence(1.5) + dtmf.generate("42#", on_ms=80, off_ms=80)
    with trio.fail_after(60):
        async with rig(tmp_path, flow=flow) as r:
            call = await r.sim.call(digits="#4000", audio=typed + media.silence(3.0),
                                    hunt=("a",), hangup="none")
            assert got == {"transfer": False, "digits": "42", "played": None,
                           "after": (None, "", True)}
            assert call.ended_by == "host"
            heard = dsp.samples(call.heard)
            assert dsp.goertzel_power(heard, 700, 8000) > 0


async def test_a_ring_at_the_inactive_node_is_offered_at_once_and_refused(tmp_path):
    with trio.fail_after(60):
        async with rig(tmp_path, active=False, rings=2) as r:
            handle = r.sim.start_call(digits="#4000", hunt=("a",), rings_max=2)
            offered = await r.mgr.expect("call_offered")
            assert offered["call"]["port"] == "analog-1"
            await r.mgr.send("refuse_call", call_id=offered["call"]["call_id"], reason="peer")
            rejected = await r.mgr.expect("call", event="rejected")
            assert rejected["reason"] == "refused"
            assert states(r)[0] == "ringing"  # it rings on, unanswered: the PBX hunts on
            call = await handle.wait()
            assert not call.answered and call.ended_by == "no_answer"
            await until(lambda: states(r)[0] == "idle")
            assert r.drv.counters["offered"] == 1 and r.drv.counters["rejected"] == 1


async def test_a_ring_at_the_inactive_node_is_answered_once_it_is_activated(tmp_path):
    with trio.fail_after(60):
        async with rig(tmp_path, active=False) as r:
            handle = r.sim.start_call(digits="#4000", audio=CALLER, hunt=("a",))
            await r.mgr.expect("call_offered")
            await r.mgr.send("activate", term=3, lease=600.0)
            info = await ended(r.mgr)
            assert info["forwarding"] == "4000"
            assert (await handle.wait()).answered


async def test_lamps_on_and_off_by_dialling(tmp_path):
    with trio.fail_after(60):
        async with rig(tmp_path) as r:
            await r.drv.send_mwi(MwiJob("1002", "mb-1002", True, 1, 0, 2, "deliver"))
            assert r.sim.lamps == {"1002": True}
            assert r.sim.dialled[-1]["digits"] == "*911002#"
            assert r.sim.dialled[-1]["line"] == 4  # the last line: out of the hunt's way
            await r.drv.send_mwi(MwiJob("1002", "mb-1002", False, 0, 0, 2, "deliver"))
            assert r.sim.lamps == {"1002": False}
            assert r.drv.counters["mwi_sent"] == 2
            await until(lambda: states(r) == ["idle"] * 4)


async def test_a_refused_code_fails_and_is_reported(tmp_path):
    with trio.fail_after(60):
        async with rig(tmp_path, mwi_retries=2) as r:
            with pytest.raises(ConnectionError, match="reorder"):
                await r.drv.send_mwi(MwiJob("1", "mb-1", True, 1, 0, 2, "deliver"))
            ev = await r.mgr.expect("event", event="analog_mwi_failed")
            assert "reorder" in ev["message"] and "mb-1" in ev["message"]
            assert r.drv.counters["mwi_failed"] == 1
            assert r.drv.counters["mwi_attempts"] == 1  # a refusal is not retried
            assert r.sim.lamps == {}


async def test_no_lamp_is_dialled_unless_active_in_the_jobs_term(tmp_path):
    with trio.fail_after(30):
        async with rig(tmp_path, active=False) as r:
            with pytest.raises(TransmitRefused):
                await r.drv.send_mwi(MwiJob("1002", "mb-1002", True, 1, 0, 2, "deliver"))
            await r.mgr.send("activate", term=4, lease=600.0)
            await r.mgr.expect("activated", term=4)
            with pytest.raises(TransmitRefused):  # a job of another term
                await r.drv.send_mwi(MwiJob("1002", "mb-1002", True, 1, 0, 2, "deliver"))
            assert r.sim.dialled == [] and r.drv.counters["mwi_refused"] == 2


async def test_a_line_in_alarm_is_down_until_it_clears(tmp_path):
    with trio.fail_after(30):
        async with rig(tmp_path) as r:
            await until(lambda: states(r) == ["idle"] * 4)
            r.sim.set_alarm("a", 2, True)
            await until(lambda: states(r) == ["idle", "down", "idle", "idle"])
            r.sim.set_alarm("a", 2, False)
            await until(lambda: states(r) == ["idle"] * 4)


async def test_a_board_that_goes_away_and_comes_back(tmp_path):
    with trio.fail_after(60):
        async with open_voiceboard(tmp_path, {"a": 4}) as sim:
            s = AnalogSettings(enabled=True, socket=sim.socket_path("a"), rings=1)
            flow, sink = make_flow(FakeDirectory(), FakeMailboxes())
            drv = AnalogPorts(s, node="a", flow=flow.handle, reconnect_max=0.5)
            async with running_service(drivers=[drv]) as (svc, mgr, _):
                drv.report = svc.report
                await mgr.send("activate", term=2, lease=600.0)
                await mgr.expect("activated", term=2)
                await until(lambda: all(p["state"] == "idle" for p in svc.registry.status()))
                assert sim.drop_connection("a")  # a board reset
                ev = await mgr.expect("event", event="analog_down")
                assert "lost" in ev["message"]
                await until(lambda: all(p["state"] in ("down", "idle")
                                        for p in svc.registry.status()))
                await mgr.expect("event", event="analog_up")
                await until(lambda: all(p["state"] == "idle" for p in svc.registry.status()))
                assert drv.counters["board_opens"] == 2 and drv.counters["board_lost"] == 1
                call = await sim.call(digits="#4000", audio=CALLER, hunt=("a",))
                assert call.answered
                await until(lambda: sink.delivered)


async def test_a_board_that_cannot_be_opened_leaves_the_ports_down_and_retries(tmp_path):
    with trio.fail_after(30):
        s = AnalogSettings(enabled=True, socket=tmp_path / "board_a.sock", rings=1)
        drv = AnalogPorts(s, node="a", reconnect_max=0.3)
        async with running_service(drivers=[drv]) as (svc, mgr, _):
            drv.report = svc.report
            await until(lambda: drv.last_error)
            assert "cannot connect to the board simulator" in drv.last_error
            assert all(p["state"] == "down" for p in svc.registry.status())
            async with open_voiceboard(tmp_path, {"a": 2}) as sim:
                await mgr.expect("event", event="analog_up")
                # the board has 2 lines: ports 3 and 4 stay down
                await until(lambda: [p["state"] for p in svc.registry.status()]
                            == ["idle", "idle", "down", "down"])
                assert sim.connected("a")


def test_the_driver_is_a_port_driver():
    from telephony.runtime.ports import PortDriver, PortRegistry

    drv = AnalogPorts(AnalogSettings(enabled=True, socket="/nonexistent", count=3), node="a")
    assert isinstance(drv, PortDriver) and drv.kind == "analog"
    reg = PortRegistry()
    drv.register(reg)
    assert reg.names() == ["analog-1", "analog-2", "analog-3"]
    assert all(p.state is PortState.DOWN for p in reg)


async def test_the_service_process_wires_the_analog_lines_from_its_file(tmp_path):
    """``python -m telephony.service --config`` with ``[ports.analog]`` and the analog-dtmf
    profile: the ports in hello, a call through the real messaging core that leaves a message
    for subscriber 4000, whose lamp (``mwi_method = "dtmf"``) the lines then dial."""
    import sys
    from pathlib import Path

    import tomli_w

    from telephony.configdb import ConfigDB
    from telephony.core.terms import Role
    from tests.telephony.helpers import FakeManager

    (tmp_path / "store").mkdir()
    (tmp_path / "data").mkdir()
    db = ConfigDB(tmp_path / "data" / "config.db", role=Role.PRIMARY,
                  mwi_methods={"dtmf": "analog"})
    db.write(2, [{"op": "put", "table": "subscribers", "row": {
        "extension": "4000", "name": "S 4000", "mailbox": "mb4000", "mwi_method": "dtmf",
        "notify": []}}])
    db.close()
    with trio.fail_after(60):
        async with open_voiceboard(tmp_path, {"a": 2}) as sim:
            doc = {"node": {"name": "a", "role": "primary", "data_dir": str(tmp_path / "data")},
                   "link": {"peer": "127.0.0.1:3999", "peer_name": "b"},
                   "ports": {"loopback": {"enabled": False},
                             "analog": {"enabled": True, "socket": "board_a.sock", "count": 2,
                                        "rings": 1}},
                   "integration": {"profile": "analog-dtmf"},
                   "messaging": {"default_mailbox": "general"}}
            (tmp_path / "a.toml").write_text(tomli_w.dumps(doc))
            sock = str(tmp_path / "control.sock")
            listener = trio.socket.socket(trio.socket.AF_UNIX)
            await listener.bind(sock)
            listener.listen(1)
            root = Path(__file__).resolve().parents[3]
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "telephony.service", "--control", sock, "--config",
                 str(tmp_path / "a.toml")], cwd=root)
            try:
                conn, _ = await listener.accept()
                mgr = FakeManager(trio.SocketStream(conn))
                hello = await mgr.expect("hello")
                assert hello["ports"] == ["analog-1", "analog-2"]
                await mgr.send("activate", term=2, lease=600.0)
                await mgr.expect("activated", term=2)
                call = await sim.call(digits="#4000", audio=CALLER, hunt=("a",))
                assert call.answered
                info = (await mgr.expect("call", event="ended"))["call"]
                assert (info["port"], info["forwarding"], info["reason"], info["integration"]) \
                    == ("analog-1", "4000", "busy", "analog-dtmf")
                await until(lambda: sim.lamps.get("4000"), "the lamp of 4000 dialled")
                assert sim.dialled[-1]["digits"] == "*914000#"
                await mgr.send("shutdown")
                assert await proc.wait() == 0
            finally:
                if proc.returncode is None:
                    proc.kill()
                    with trio.CancelScope(shield=True):
                        await proc.wait()
                listener.close()


async def test_analog_lines_with_smdi_records_and_lamps(tmp_path):
    """The analog-smdi integration: the SMDI record for the line's terminal names the call
    (the service's wiring: ``line_info = link.line_arrival``), lamps go by SMDI."""
    from integrations.analog import ANALOG_SMDI
    from lab.smdi import SocatPair
    from lab.smdi_pbx import PbxSimulator
    from telephony.service import connect_call_info, line_names
    from telephony.settings import Integration
    from telephony.smdi.driver import SmdiLink
    from telephony.smdi.settings import SerialSettings, SmdiProfile

    pair = SocatPair(tmp_path / "node", tmp_path / "pbx")
    pair.start()
    try:
        with trio.fail_after(60):
            async with open_voiceboard(tmp_path, {"a": 2}) as sim, \
                    PbxSimulator(tmp_path / "pbx").running() as pbx:
                s = AnalogSettings(enabled=True, socket=sim.socket_path("a"), count=2, rings=1)
                flow, sink = make_flow(FakeDirectory(), FakeMailboxes())
                drv = AnalogPorts(s, node="a", profile=ANALOG_SMDI, flow=flow.handle)
                voice = [(drv, drv.port_names())]
                link = SmdiLink(serial=SerialSettings(str(tmp_path / "node")),
                                profile=SmdiProfile(terminals=(7, 8), lines=line_names(voice),
                                                    base=ANALOG_SMDI), node="a")
                connect_call_info(Integration("analog-smdi", ("analog",), "smdi", "smdi"), voice,
                                  link)
                assert drv.line_info == link.line_arrival
                async with running_service(drivers=[drv, link]) as (svc, mgr, _):
                    link.gate = drv.gate = svc.answering_term
                    await mgr.send("activate", term=2, lease=600.0)
                    await mgr.expect("activated", term=2)
                    await until(lambda: link.is_open and drv.counters["board_opens"])
                    await pbx.call_record(7, "B", forwarding="4000", calling="5550123")
                    call = await sim.call(digits="", audio=CALLER, hunt=("a",))
                    assert call.answered and call.line == 1
                    info = await ended(mgr)
                    assert (info["port"], info["forwarding"], info["calling"], info["reason"],
                            info["integration"]) == ("analog-1", "4000", "5550123", "busy",
                                                     "analog-smdi")
                    await until(lambda: sink.delivered)
                    assert sink.delivered[0].mailbox == "mb-4000"
                    await link.send_mwi(MwiJob("4000", "mb-4000", True, 1, 0, 2, "deliver"))
                    await pbx.wait_commands(1)
                    assert pbx.lamps() == {"4000": True}
    finally:
        pair.stop()
