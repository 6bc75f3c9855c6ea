"""The SCCP ports' driver (telephony/sccp/driver.py, connection.py) in a real messaging service
(CallDesk, control channel) against the CallManager simulator (lab.callmanager, in-process
under Trio) over real TCP and RTP/UDP on 127.0.0.1, in real time: registration, a device
CallManager does not know, keepalives, CallManager's Reset, the loss of the first CallManager
and the return to it, a forwarded call answered by the real call flow with its audio both
ways, a call declined at the inactive node, lamps set, refused and timed out, and peers that
reset the connection or send garbage and oversized frames."""
from __future__ import annotations

import socket
import struct
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from lab.callmanager import CallManagerSim
from lab.pair import free_port, free_udp_block
from telephony.core import dsp, media
from telephony.core.events import Reason
from telephony.core.mwi import MwiJob, TransmitRefused
from telephony.core.settings import Address
from telephony.runtime.ports import PortState
from telephony.sccp.core.messages import MsgId, encode
from telephony.sccp.driver import SccpPorts
from telephony.sccp.settings import SccpSettings
from tests.telephony.core.test_callflow import FakeDirectory, FakeMailboxes, make_flow
from tests.telephony.helpers import running_service
from tests.util import until

PREFIX = "CiscoUM1-VI"
CALLER = media.tone(300, 3.0, 0.3)  # what the callers say


def devices(n: int) -> list[str]:
    return [f"{PREFIX}{i}" for i in range(1, n + 1)]


class Rig:
    sims: list[CallManagerSim]
    drv: SccpPorts
    svc: Any
    mgr: Any
    sink: Any
    flow: Any


@asynccontextmanager
async def rig(*, count: int = 2, known: int | None = None, servers: int = 1,
              running: tuple[bool, ...] | None = None, active: bool = True,
              flow: Any = "callflow", offer_hold: float = 2.0, sim: dict | None = None,
              **settings: Any):
    """CallManager simulators (``servers`` of them, the first preferred; those not
    ``running`` only have their address reserved), the driver with ``count`` ports registering
    with them, in a running service (active in term 2 unless ``active`` is False)."""
    r = Rig()
    running = running or (True,) * servers
    names = devices(count if known is None else known)
    r.sims = [CallManagerSim(names, keepalive=2, ring_timeout=5.0, **(sim or {}))
              for _ in range(servers)]
    r.ports = [free_port() for _ in range(servers)]
    base = free_udp_block(8 * count)
    s = SccpSettings(enabled=True, count=count,
                     servers=tuple(Address("127.0.0.1", p) for p in r.ports),
                     station_ip="127.0.0.1", rtp_host="127.0.0.1",
                     rtp_ports=(base, base + 8 * count - 1),
                     **{"mwi_retries": 0, "rehome_probe": 1.0, **settings})
    if flow == "callflow":
        r.flow, r.sink = make_flow(FakeDirectory(), FakeMailboxes())
        flow = r.flow.handle
    r.drv = SccpPorts(s, node="a", flow=flow, connect_timeout=2.0)
    async with trio.open_nursery() as nursery:
        r.nursery = nursery
        for i, on in enumerate(running):
            if on:
                await nursery.start(r.sims[i].run, "127.0.0.1", r.ports[i])
        async with running_service(drivers=[r.drv], offer_hold=offer_hold) as (svc, mgr, res):
            r.svc, r.mgr, r.result = svc, mgr, res
            r.drv.gate = svc.answering_term
            r.drv.report = svc.report
            if active:
                await mgr.send("activate", term=2, lease=600.0)
                await mgr.expect("activated", term=2)
            yield r
        nursery.cancel_scope.cancel()


def states(r: Rig) -> list[str]:
    return [p["state"] for p in r.svc.registry.status()]


def outcomes(r: Rig) -> list[str]:
    return [p["registration"] for p in r.drv.status()]


async def registered(r: Rig, n: int | None = None, sim: int = 0) -> None:
    want = [p for p in devices(n or r.drv.settings.count)]
    await r.sims[sim].wait_registered(want, timeout=20)
    await until(lambda: all(s == "registered" for s in outcomes(r)[:len(want)]),
                "the driver's ports registered")


def events(r: Rig, name: str) -> list[dict]:
    return [m for m in r.mgr.received if m["op"] == "event" and m["event"] == name]


async def drain(r: Rig) -> None:
    """Read what the service sent so far (the events land in ``r.mgr.received``)."""
    with trio.move_on_after(0.3):
        while True:
            await r.mgr.next()


# ============================================================================ registration


async def test_every_port_registers_and_is_idle_only_then():
    with trio.fail_after(60):
        async with rig(count=3) as r:
            await registered(r)
            await until(lambda: states(r) == ["idle"] * 3)
            st = r.drv.status()
            assert [p["device"] for p in st] == devices(3)
            assert {p["server"] for p in st} == {f"127.0.0.1:{r.ports[0]}"}
            # the health report carries each port's registration (shown by `vmha status`)
            assert [p["detail"] for p in r.svc.registry.status()] == [
                f"{d} registered with 127.0.0.1:{r.ports[0]}" for d in devices(3)]
            regs = await until(lambda: (lambda g: g if all(g[d].get("caps") for d in devices(3))
                                        else None)(r.sims[0].registrations()), "capabilities")
            assert all(regs[d]["state"] == "registered" for d in devices(3))
            assert regs[f"{PREFIX}1"]["caps"] == [[4, 20], [2, 20]]  # G.711 mu-law, A-law
            await drain(r)
            assert len(events(r, "sccp_registered")) == 3
            assert r.drv.counters["registered"] == 3
            # keepalives (every 2 s) keep them registered: no second registration
            await trio.sleep(5)
            assert all(regs["registrations"] == 1 for regs in r.sims[0].registrations().values())
            assert states(r) == ["idle"] * 3


async def test_a_device_callmanager_does_not_know_is_rejected_and_stays_down():
    with trio.fail_after(60):
        async with rig(count=2, known=1) as r:
            await registered(r, 1)
            await until(lambda: outcomes(r)[1].startswith("rejected: No Authority"),
                        "port 2 rejected")
            assert states(r) == ["idle", "down"]
            await trio.sleep(2)  # it keeps trying (back-off), reported once only
            await drain(r)
            rej = events(r, "sccp_rejected")
            assert len(rej) == 1 and "CiscoUM1-VI2" in rej[0]["message"], rej
            assert r.drv.counters["rejected_registrations"] >= 2
            assert states(r) == ["idle", "down"]


async def test_callmanager_reset_makes_the_port_register_again():
    with trio.fail_after(60):
        async with rig(count=1) as r:
            await registered(r)
            assert await r.sims[0].reset(f"{PREFIX}1", 1)
            await until(lambda: r.sims[0].registrations()[f"{PREFIX}1"]["registrations"] == 2,
                        "registered again")
            await until(lambda: states(r) == ["idle"])
            await drain(r)
            lost = events(r, "sccp_lost")
            assert lost and "reset" in lost[0]["message"], lost


async def test_keepalives_unanswered_lose_the_server():
    """A CallManager that registers the port and then answers nothing: after the keepalives
    go unanswered the port is down and tries again (the driver goes on)."""
    answered: list[int] = []

    async def mute_cm(stream: trio.SocketStream) -> None:
        data = await stream.receive_some(4096)
        if data:
            await stream.send_all(encode(MsgId.REGISTER_ACK, keepalive_interval=1))
            answered.append(1)
        with trio.move_on_after(30):
            while await stream.receive_some(4096):
                pass

    with trio.fail_after(60):
        async with rig(count=1, running=(False,), flow=None) as r:
            r.nursery.start_soon(trio.serve_tcp, mute_cm, r.ports[0])
            await until(lambda: answered and r.drv.counters["lost"] >= 1, "the server lost",
                        timeout=30)
            await drain(r)
            lost = events(r, "sccp_lost")
            assert any("keepalive" in e["message"] for e in lost), lost
            await until(lambda: len(answered) >= 2, "registering again")
            assert r.result["done"].is_set() is False


async def test_the_backup_takes_over_and_the_ports_go_back_to_the_first_when_idle():
    with trio.fail_after(90):
        async with rig(count=2, servers=2, running=(False, True)) as r:
            await registered(r, sim=1)  # the first cannot be reached: the backup
            assert {p["server"] for p in r.drv.status()} == {f"127.0.0.1:{r.ports[1]}"}
            await r.nursery.start(r.sims[0].run, "127.0.0.1", r.ports[0])
            await registered(r, sim=0)  # within rehome_probe (1 s) each port goes home
            await until(lambda: {p["server"] for p in r.drv.status()} == {f"127.0.0.1:{r.ports[0]}"})
            await until(lambda: r.sims[1].stats()["registered"] == [], "unregistered from the backup")
            assert r.sims[1].stats()["counts"].get("unregistered", 0) == 2
            await drain(r)
            assert len(events(r, "sccp_rehomed")) == 2
            # the first fails: back to the backup, and the calls go there
            r.sims[0].stop()
            await registered(r, sim=1)
            await until(lambda: states(r) == ["idle", "idle"])
            res = await r.sims[1].call("4021", hang_up_after=1.0)
            assert res["answered"] and res["device"] == f"{PREFIX}1"


# ============================================================================ calls


async def test_a_forwarded_call_is_answered_and_leaves_a_message_with_its_audio(tmp_path):
    wav = tmp_path / "caller.wav"
    wav.write_bytes(media.wav_bytes(media.silence(2.5) + CALLER))
    with trio.fail_after(60):
        async with rig(count=2) as r:
            await registered(r)
            res = await r.sims[0].call("4021", last_redirecting="4000", reason=2, wav=str(wav),
                                       hang_up_after=7.0)
            assert res["answered"] and res["port"] == "sccp-1" and res["ended_by"] == "caller"
            ended = await r.mgr.expect("call", event="ended")
            info = ended["call"]
            assert (info["port"], info["calling"], info["forwarding"], info["reason"],
                    info["integration"]) == ("sccp-1", "4021", "4000", "no_answer", "cucm-sccp")
            await until(lambda: r.sink.delivered, "the message delivered")
            msg = r.sink.delivered[0]
            assert msg.mailbox == "mb-4000" and msg.reason is Reason.NO_ANSWER
            rec = dsp.samples(media.pcm_of(msg.audio))
            assert dsp.goertzel_power(rec, 300, 8000) > 10 * dsp.goertzel_power(rec, 1000, 8000)
            # the caller heard the greeting of 4000 (300 Hz) and then the beep (1 kHz)
            heard = dsp.samples(media.pcm_of(open(res["wav"], "rb").read()))
            assert dsp.goertzel_power(heard, 300, 8000) > 0
            assert dsp.goertzel_power(heard, 1000, 8000) > 0
            # no silence suppression: the port sent all call long, silence while it recorded
            # (the greeting and the beep alone are about 58 packets; 7 s is about 350)
            assert res["rtp"]["received"] >= 200
            assert r.drv.counters["answered"] == 1
            await until(lambda: states(r) == ["idle", "idle"])
            assert len(r.drv.media_clock) == 0  # the call's endpoint left the shared clock


async def test_the_call_flow_hangs_up_and_the_station_goes_on_hook():
    async def short(arrival, port, term):
        await port.play(media.wav_bytes(media.tone(1000, 0.5)), interruptible=False)
        await port.hangup()

    with trio.fail_after(60):
        async with rig(count=1, flow=short) as r:
            await registered(r)
            res = await r.sims[0].call("4021", hang_up_after=10.0)
            assert res["answered"] and res["ended_by"] == "port"
            info = (await r.mgr.expect("call", event="ended"))["call"]
            assert info["reason"] == "direct" and info["forwarding"] == ""
            await until(lambda: states(r) == ["idle"])


async def test_a_deactivation_without_drain_hangs_the_call_up():
    with trio.fail_after(60):
        async with rig(count=1, flow=None) as r:  # no flow: the call is held until it ends
            await registered(r)
            async with trio.open_nursery() as n:
                box: dict = {}

                async def call() -> None:
                    box["res"] = await r.sims[0].call("4021", hang_up_after=30.0)

                n.start_soon(call)
                await r.mgr.expect("call", event="answered")
                await r.mgr.send("deactivate", term=2, drain=False)
                info = (await r.mgr.expect("call", event="dropped"))["call"]
                assert info["port"] == "sccp-1"
            assert box["res"]["answered"] and box["res"]["ended_by"] == "port"  # OnHook sent
            await until(lambda: states(r) == ["idle"])


async def test_callmanager_lost_in_a_call_ends_it_and_the_port_registers_again():
    with trio.fail_after(60):
        async with rig(count=1, flow=None) as r:
            await registered(r)
            async with trio.open_nursery() as n:
                box: dict = {}

                async def call() -> None:
                    box["res"] = await r.sims[0].call("4021", hang_up_after=30.0)

                n.start_soon(call)
                await r.mgr.expect("call", event="answered")
                await r.sims[0].inject(f"{PREFIX}1", struct.pack("<III", 99_999, 0, 0))  # fatal
                info = (await r.mgr.expect("call", event="dropped"))["call"]
                assert info["port"] == "sccp-1"
            assert box["res"]["ended_by"] == "lost"
            await until(lambda: r.sims[0].registrations()[f"{PREFIX}1"]["registrations"] == 2,
                        "registered again")
            await until(lambda: states(r) == ["idle"])


async def test_a_ring_at_the_inactive_node_starts_the_failover_and_is_declined():
    with trio.fail_after(60):
        async with rig(count=2, active=False, offer_hold=0.5) as r:
            await registered(r)
            res = await r.sims[0].call("4021", last_redirecting="4000", reason=1)
            await drain(r)
            offered = [m for m in r.mgr.received if m["op"] == "call_offered"]
            assert offered and offered[0]["call"]["reason"] == "busy"
            assert not res["answered"]
            assert [t[1] for t in res["tried"]] == ["declined", "declined"]
            assert r.drv.counters["rejected"] == 2 and r.drv.counters["offered"] == 2
            await until(lambda: states(r) == ["idle", "idle"])


async def test_with_smdi_call_information_the_record_names_the_call():
    """``call_info = "smdi"``: the service sets ``line_info`` (the SMDI link's); the answered
    call's numbers come from it, not from CallInfo."""
    from dataclasses import replace

    asked: list[tuple[str, str]] = []

    with trio.fail_after(60):
        async with rig(count=1, flow=None) as r:
            async def line_info(port: str, call_id: str, node: str):
                asked.append((port, node))
                base = next(iter(r.svc.desk.calls.values())).arrival
                return replace(base, calling="5551234", forwarding="4001", reason=Reason.ALL)

            r.drv.line_info = line_info
            await registered(r)
            res = await r.sims[0].call("4021", last_redirecting="4000", reason=1, hang_up_after=1.0)
            assert res["answered"]
            info = (await r.mgr.expect("call", event="ended"))["call"]
            assert (info["calling"], info["forwarding"], info["reason"]) == ("5551234", "4001", "all")
            assert asked == [("sccp-1", "a")]


# ============================================================================ lamps


@pytest.mark.parametrize("style", ["callmanager", "cme"])
async def test_lamps_on_and_off(style):
    with trio.fail_after(60):
        async with rig(count=2, mwi_style=style, sim={"extensions": ["1002"]}) as r:
            await registered(r)
            await r.drv.send_mwi(MwiJob("1002", "mb-1002", True, 1, 0, 2, "deliver"))
            assert r.sims[0].lamps() == {"1002": True}
            await r.drv.send_mwi(MwiJob("1002", "mb-1002", False, 0, 0, 2, "deliver"))
            assert r.sims[0].lamps() == {"1002": False}
            ev = r.sims[0].lamp_events
            assert [e["style"] for e in ev] == [style, style]
            assert {e["device"] for e in ev} == {f"{PREFIX}2"}  # the highest-numbered port
            assert r.drv.counters["mwi_sent"] == 2
            await until(lambda: states(r) == ["idle", "idle"])


async def test_a_lamp_callmanager_refuses_is_reported_and_not_retried():
    with trio.fail_after(60):
        async with rig(count=1, mwi_retries=2, sim={"extensions": ["1002"]}) as r:
            await registered(r)
            with pytest.raises(ConnectionError, match="reorder"):
                await r.drv.send_mwi(MwiJob("9999", "mb-9999", True, 1, 0, 2, "deliver"))
            ev = await r.mgr.expect("event", event="sccp_mwi_failed")
            assert "9999" in ev["message"]
            assert r.drv.counters["mwi_attempts"] == 1 and r.drv.counters["mwi_failed"] == 1
            assert r.sims[0].lamps() == {}


async def test_a_lamp_not_judged_in_time_is_retried_then_reported():
    # CME style without a known extension list: CallManager waits for its interdigit time (5 s),
    # longer than the port's mwi_timeout (1 s)
    with trio.fail_after(60):
        async with rig(count=1, mwi_style="cme", mwi_timeout=1.0, mwi_retries=1,
                       sim={"interdigit": 5.0}) as r:
            await registered(r)
            with pytest.raises(ConnectionError, match="timeout"):
                await r.drv.send_mwi(MwiJob("1002", "mb-1002", True, 1, 0, 2, "deliver"))
            assert r.drv.counters["mwi_attempts"] == 2
            await r.mgr.expect("event", event="sccp_mwi_failed")
            await until(lambda: states(r) == ["idle"])


async def test_no_lamp_is_called_unless_active_in_the_jobs_term():
    with trio.fail_after(60):
        async with rig(count=1, active=False) as r:
            await registered(r)
            with pytest.raises(TransmitRefused):
                await r.drv.send_mwi(MwiJob("1002", "mb-1002", True, 1, 0, 2, "deliver"))
            await r.mgr.send("activate", term=4, lease=600.0)
            await r.mgr.expect("activated", term=4)
            with pytest.raises(TransmitRefused):
                await r.drv.send_mwi(MwiJob("1002", "mb-1002", True, 1, 0, 2, "deliver"))
            assert r.sims[0].lamp_events == [] and r.drv.counters["mwi_refused"] == 2


async def test_no_registered_port_fails_the_lamp_at_once():
    with trio.fail_after(60):
        async with rig(count=1, running=(False,)) as r:
            with pytest.raises(ConnectionError, match="no registered idle SCCP port"):
                await r.drv.send_mwi(MwiJob("1002", "mb-1002", True, 1, 0, 2, "deliver"))


# ============================================================================ bad peers


async def test_garbage_and_oversized_frames_never_end_the_driver():
    with trio.fail_after(60):
        async with rig(count=2) as r:
            await registered(r)
            dev = f"{PREFIX}1"
            # a frame of an unknown message and one too short: counted, the port stays up
            await r.sims[0].inject(dev, struct.pack("<III", 4, 0, 0x7777)
                                   + struct.pack("<IIIH", 6, 0, int(MsgId.CALL_STATE), 5))
            await until(lambda: r.drv.counters["protocol_errors"] >= 1, "the bad frame counted")
            assert r.sims[0].registrations()[dev]["registrations"] == 1
            # an oversized frame: the stream cannot be trusted, the port reconnects
            await r.sims[0].inject(dev, struct.pack("<III", 100_000, 0, 0x008F) + b"\0" * 64)
            await until(lambda: r.sims[0].registrations()[dev]["registrations"] == 2,
                        "registered again after the bad frame")
            await until(lambda: states(r) == ["idle", "idle"])
            assert not r.result["done"].is_set()
            res = await r.sims[0].call("4021", hang_up_after=1.0)  # and it still takes calls
            assert res["answered"]
            assert "driver-sccp" not in r.svc.task_failures.counts


async def test_random_bytes_from_callmanager_never_end_the_driver():
    """Bursts of random bytes (some that parse as frames, most that do not) into a registered
    port's connection: whatever the station makes of them, the port registers again and the
    driver and the service go on."""
    import random

    rng = random.Random(20261207)
    with trio.fail_after(90):
        async with rig(count=1, flow=None) as r:
            dev = f"{PREFIX}1"
            for _ in range(12):
                await registered(r)
                burst = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 3000)))
                if rng.random() < 0.5:  # a plausible header in front of the noise
                    burst = struct.pack("<III", rng.randrange(4, 200), 0,
                                        rng.choice([m.value for m in MsgId])) + burst
                try:
                    await r.sims[0].inject(dev, burst)
                except ValueError:
                    pass  # the port was between two connections: the next burst goes in
            await registered(r)
            await until(lambda: states(r) == ["idle"])
            # the noise broke the stream more than once (a length beyond the frame limit)
            assert r.sims[0].registrations()[dev]["registrations"] > 1
            assert r.drv.counters["lost"] >= 1
            assert not r.result["done"].is_set()
            assert "driver-sccp" not in r.svc.task_failures.counts
            assert not any(t.startswith("sccp") for t in r.svc.task_failures.counts), \
                r.svc.task_failures.stats()


async def test_a_peer_that_resets_every_connection_never_ends_the_driver():
    accepted: list[int] = []

    async def rst(stream: trio.SocketStream) -> None:
        accepted.append(1)
        await stream.receive_some(4096)
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stream.socket.close()  # RST

    with trio.fail_after(60):
        async with rig(count=2, servers=2, running=(False, False), flow=None) as r:
            for port in r.ports:  # both CallManagers reset every connection
                r.nursery.start_soon(trio.serve_tcp, rst, port)
            await until(lambda: len(accepted) >= 12, "connections reset again and again")
            assert states(r) == ["down", "down"]
            assert all(o.startswith(("failed", "registering")) for o in outcomes(r)), outcomes(r)
            assert not r.result["done"].is_set()
            assert "driver-sccp" not in r.svc.task_failures.counts
            await drain(r)
            # reported once per port and server, not at every attempt
            lost = events(r, "sccp_lost")
            assert 1 <= len(lost) <= 2 * 2, lost


async def test_the_ports_are_down_in_the_registry_until_registered():
    with trio.fail_after(60):
        async with rig(count=2, running=(False,)) as r:
            await trio.sleep(1.0)
            assert states(r) == ["down", "down"]
            assert r.svc.registry.get("sccp-1").state is PortState.DOWN
            await r.nursery.start(r.sims[0].run, "127.0.0.1", r.ports[0])
            await registered(r)
            await until(lambda: states(r) == ["idle", "idle"])


# ============================================================================ the service process


async def test_the_service_process_wires_the_sccp_ports_from_its_file(tmp_path):
    """``python -m telephony.service --config`` with ``[ports.sccp]`` and the cucm-sccp
    profile: the ports in hello, registered with the simulator, a forwarded call through the
    real messaging core that leaves a message for subscriber 4000, whose lamp
    (``mwi_method = "sccp"``) a port then sets by calling CallManager's MWI number."""
    import sys
    from pathlib import Path

    import tomli_w

    from telephony.configdb import ConfigDB
    from telephony.core.terms import Role
    from tests.telephony.helpers import FakeManager

    (tmp_path / "store").mkdir()
    (tmp_path / "data").mkdir()
    db = ConfigDB(tmp_path / "data" / "config.db", role=Role.PRIMARY,
                  mwi_methods={"sccp": "sccp"})
    db.write(2, [{"op": "put", "table": "subscribers", "row": {
        "extension": "4000", "name": "S 4000", "mailbox": "mb4000", "mwi_method": "sccp",
        "notify": []}}])
    db.close()
    wav = tmp_path / "caller.wav"
    wav.write_bytes(media.wav_bytes(media.silence(2.0) + CALLER))
    sim = CallManagerSim(devices(2), keepalive=2, extensions=["4000"])
    cm_port = free_port()
    base = free_udp_block(16)
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run, "127.0.0.1", cm_port)
            doc = {"node": {"name": "a", "role": "primary", "data_dir": str(tmp_path / "data")},
                   "link": {"peer": "127.0.0.1:3999", "peer_name": "b"},
                   "ports": {"loopback": {"enabled": False},
                             "sccp": {"enabled": True, "count": 2, "device_prefix": PREFIX,
                                      "servers": [f"127.0.0.1:{cm_port}"],
                                      "station_ip": "127.0.0.1", "rtp_host": "127.0.0.1",
                                      "rtp_ports": f"{base}-{base + 15}"}},
                   "integration": {"profile": "cucm-sccp"},
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
                assert hello["ports"] == ["sccp-1", "sccp-2"]
                await sim.wait_registered(devices(2), timeout=20)
                while sum(m.get("event") == "sccp_registered" for m in mgr.received) < 2:
                    assert await mgr.next() is not None  # both registrations reported
                await mgr.send("activate", term=2, lease=600.0)
                await mgr.expect("activated", term=2)
                res = await sim.call("4021", last_redirecting="4000", reason=1, wav=str(wav),
                                     hang_up_after=6.0)
                assert res["answered"]
                info = (await mgr.expect("call", event="ended"))["call"]
                assert (info["port"], info["forwarding"], info["reason"], info["integration"]) \
                    == ("sccp-1", "4000", "busy", "cucm-sccp")
                await until(lambda: sim.lamps().get("4000"), "the lamp of 4000 set")
                assert sim.lamp_events[-1]["style"] == "callmanager"
                await mgr.send("shutdown")
                assert await proc.wait() == 0
            finally:
                if proc.returncode is None:
                    proc.kill()
                    with trio.CancelScope(shield=True):
                        await proc.wait()
                listener.close()
                nursery.cancel_scope.cancel()
