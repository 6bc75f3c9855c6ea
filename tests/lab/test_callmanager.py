"""The CallManager simulator (lab.callmanager), driven by a station scripted here over real TCP
with the project's SCCP codec and a real UDP socket for RTP: registration, hunting, CallInfo of
a forwarded call, media both ways, MWI in both styles, raw injection, the pcap, and the process
form with its sync client."""
from __future__ import annotations

import json
import socket
import struct
from collections import Counter
from contextlib import asynccontextmanager

import numpy as np
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from lab.callmanager import (
    CallManagerClient,
    CallManagerError,
    CallManagerSim,
    parse_args,
    parse_devices,
    port_name,
    start_callmanager,
    stop_callmanager,
)
from lab.callmanager_dialplan import mwi_verdict
from lab.rtp_peer import RtpPeer
from lab.skinny_check import check_pcap, tshark_pdus
from telephony.core import dsp, dtmf, g711, media
from telephony.core.rtp import DtmfEvent, RtpPacket, parse_dtmf_event, parse_rtp
from telephony.sccp.core.messages import (
    CallState,
    CallType,
    Compression,
    Framer,
    LampMode,
    Message,
    MsgId,
    ProtocolError,
    RingMode,
    Stimulus,
    Tone,
    button_of,
    decode,
    encode,
)

DEVICES = ["CiscoUM1-VI1", "CiscoUM1-VI2", "CiscoUM2-VI1", "CiscoUM2-VI2"]
WAIT = 10.0  # hang guard for one expected message (not a speed limit)


class Station:
    """A voice-mail port scripted by the test: every message it sent and received, in order."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.framer = Framer()
        self.pending: list[Message | ProtocolError] = []
        self.log: list[Message] = []  # what went over the wire, in the order this side saw it
        self.raw = bytearray()

    @classmethod
    async def connect(cls, port: int) -> Station:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def send(self, msg_id: MsgId, **fields) -> None:
        frame = encode(msg_id, **fields)
        self.log.append(decode(frame))
        await self.stream.send_all(frame)

    async def recv(self, timeout: float = WAIT, *, skip_keepalive: bool = True) -> Message | None:
        """The next message (None: the simulator closed the connection)."""
        with trio.fail_after(timeout):
            while True:
                while self.pending:
                    item = self.pending.pop(0)
                    assert isinstance(item, Message), item
                    self.log.append(item)
                    if skip_keepalive and item.id == MsgId.KEEPALIVE_ACK:
                        continue
                    return item
                data = await self.stream.receive_some(65536)
                if not data:
                    return None
                self.raw += data
                self.pending += self.framer.feed(data)

    async def expect(self, *ids: MsgId) -> list[Message]:
        out = []
        for want in ids:
            msg = await self.recv()
            assert msg is not None, f"connection closed, expected {want.name}"
            assert msg.id == want, f"got {msg.name} {dict(msg.fields)}, expected {want.name}"
            out.append(msg)
        return out

    async def closed(self, timeout: float = WAIT) -> bool:
        """True once the simulator closed the connection (messages before that are dropped)."""
        with trio.fail_after(timeout):
            while True:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return True
                if not data:
                    return True

    async def register(self, name: str, *, protocol_ver: int = 11) -> Message:
        await self.send(MsgId.REGISTER_REQ, device_name=name, station_ip="127.0.0.1", device_type=7,
                        max_streams=2, protocol_ver=protocol_ver, instance=1)
        ack, _ = await self.expect(MsgId.REGISTER_ACK, MsgId.CAPABILITIES_REQ)
        await self.send(MsgId.CAPABILITIES_RES, caps=((Compression.G711_ULAW, 1), (Compression.G711_ALAW, 1)))
        return ack

    async def dial(self, digits: str) -> None:
        for d in digits:
            await self.send(MsgId.KEYPAD_BUTTON, button=button_of(d), line_instance=1, call_reference=0)

    async def aclose(self) -> None:
        await self.stream.aclose()


@asynccontextmanager
async def running(**kw):
    kw.setdefault("devices", DEVICES)
    sim = CallManagerSim(**kw)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(sim.run, "127.0.0.1", 0)
        yield sim, port
        nursery.cancel_scope.cancel()


async def registered(port: int, name: str) -> Station:
    st_ = await Station.connect(port)
    await st_.register(name)
    return st_


# ------------------------------------------------------------------------------ registration


async def test_registration_answers_capabilities_buttons_and_line_status(tmp_path):
    devices = {"CiscoUM1-VI1": "5001", "CiscoUM1-VI2": ""}
    async with running(devices=devices, keepalive=17) as (sim, port):
        s = await Station.connect(port)
        ack = await s.register("CiscoUM1-VI1")
        assert ack["keepalive_interval"] == 17
        assert ack["max_protocol_ver"] == 11
        await s.send(MsgId.BUTTON_TEMPLATE_REQ)
        (tmpl,) = await s.expect(MsgId.BUTTON_TEMPLATE_RES)
        assert (tmpl["button_count"], tmpl["total_button_count"]) == (1, 1)
        assert tuple(tmpl["buttons"]) == ((1, 0x09),)
        await s.send(MsgId.LINE_STAT_REQ, line_number=1)
        (ls,) = await s.expect(MsgId.LINE_STAT_RES)
        assert (ls["line_number"], ls["dir_number"], ls["display_name"]) == (1, "5001", "CiscoUM1-VI1")
        await s.send(MsgId.KEEPALIVE_REQ)
        assert (await s.recv(skip_keepalive=False)).id == MsgId.KEEPALIVE_ACK
        regs = await sim.wait_registered(["CiscoUM1-VI1"], timeout=WAIT)
        r = regs["CiscoUM1-VI1"]
        assert (r["state"], r["registrations"], r["protocol_ver"]) == ("registered", 1, 11)
        assert r["caps"] == [[4, 1], [2, 1]]
        assert regs["CiscoUM1-VI2"]["state"] == "never"
        with pytest.raises(TimeoutError, match="CiscoUM1-VI2"):
            await sim.wait_registered(["CiscoUM1-VI2"], timeout=0.2)
        with pytest.raises(ValueError, match="unknown device"):
            await sim.wait_registered(["SEPNOBODY"], timeout=0.2)


async def test_unknown_device_is_rejected_and_closed():
    async with running() as (sim, port):
        s = await Station.connect(port)
        await s.send(MsgId.REGISTER_REQ, device_name="SEP00112233", station_ip="127.0.0.1")
        (rej,) = await s.expect(MsgId.REGISTER_REJECT)
        assert rej["text"] == "No Authority: SEP00112233"
        assert await s.recv() is None  # closed
        s = await Station.connect(port)  # a name that is not ASCII
        frame = bytearray(encode(MsgId.REGISTER_REQ, device_name="SEPAB", station_ip="127.0.0.1"))
        frame[12 + 3] = 0xFF
        await s.stream.send_all(bytes(frame))
        (rej,) = await s.expect(MsgId.REGISTER_REJECT)
        assert rej["text"] == "No Authority: SEP?B"
        assert await s.recv() is None
        assert sim.stats()["counts"]["rejected"] == 2
        assert sim.stats()["registered"] == []
        s = await registered(port, "CiscoUM1-VI1")  # then another name on the same connection
        await s.send(MsgId.REGISTER_REQ, device_name="CiscoUM1-VI2", station_ip="127.0.0.1")
        await s.send(MsgId.KEEPALIVE_REQ)
        assert (await s.recv(skip_keepalive=False)).id == MsgId.KEEPALIVE_ACK
        assert sim.stats()["registered"] == ["CiscoUM1-VI1"]


async def test_before_registering_only_keepalive_and_alarm_are_taken():
    async with running() as (sim, port):
        s = await Station.connect(port)
        await s.send(MsgId.OFF_HOOK)
        await s.send(MsgId.LINE_STAT_REQ, line_number=1)
        await s.send(MsgId.ALARM, severity=2, text="hello")
        await s.send(MsgId.KEEPALIVE_REQ)
        first = await s.recv(skip_keepalive=False)
        assert first.id == MsgId.KEEPALIVE_ACK  # nothing answered the OffHook or LineStatReq
        await s.register("CiscoUM1-VI1")
        counts = sim.stats()["counts"]
        assert (counts["ignored_before_register"], counts["alarms"]) == (2, 1)


async def test_keepalives_keep_a_station_registered_and_silence_drops_it():
    async with running(keepalive=1) as (sim, port):
        s = await registered(port, "CiscoUM1-VI1")
        for _ in range(5):  # 2.5 s of keepalives, past the 3 s limit counted from registration
            await s.send(MsgId.KEEPALIVE_REQ)
            assert (await s.recv(skip_keepalive=False)).id == MsgId.KEEPALIVE_ACK
            await trio.sleep(0.5)
        assert sim.registrations()["CiscoUM1-VI1"]["state"] == "registered"
        assert await s.closed(timeout=WAIT)  # silent: dropped after 3 intervals
        r = sim.registrations()["CiscoUM1-VI1"]
        assert (r["state"], r["last_outcome"]) == ("unregistered", "keepalive timeout")
        assert sim.stats()["counts"]["keepalive_timeouts"] == 1


async def test_unregister_is_acknowledged_and_closed():
    async with running() as (sim, port):
        s = await registered(port, "CiscoUM1-VI2")
        await s.send(MsgId.UNREGISTER_REQ)
        (ack,) = await s.expect(MsgId.UNREGISTER_ACK)
        assert ack["status"] == 0
        assert await s.recv() is None
        r = sim.registrations()["CiscoUM1-VI2"]
        assert (r["state"], r["last_outcome"]) == ("unregistered", "unregistered")


async def test_registering_again_replaces_the_old_session():
    async with running() as (sim, port):
        old = await registered(port, "CiscoUM1-VI1")
        new = await registered(port, "CiscoUM1-VI1")
        assert await old.closed()
        await new.send(MsgId.KEEPALIVE_REQ)
        assert (await new.recv(skip_keepalive=False)).id == MsgId.KEEPALIVE_ACK
        r = sim.registrations()["CiscoUM1-VI1"]
        assert (r["state"], r["registrations"]) == ("registered", 2)
        assert sim.stats()["counts"]["replaced"] == 1


async def test_garbage_closes_only_that_station():
    async with running() as (sim, port):
        bad = await registered(port, "CiscoUM1-VI1")
        good = await registered(port, "CiscoUM1-VI2")
        # an unknown message id is reported and skipped: the session stays
        await bad.stream.send_all(struct.pack("<III", 4, 0, 0x7777))
        await bad.send(MsgId.KEEPALIVE_REQ)
        assert (await bad.recv(skip_keepalive=False)).id == MsgId.KEEPALIVE_ACK
        # a length the framing cannot trust: that connection is closed
        await bad.stream.send_all(struct.pack("<III", 0xFFFF_FFF0, 0, 0) + b"\xff" * 40)
        assert await bad.closed()
        await good.send(MsgId.KEEPALIVE_REQ)
        assert (await good.recv(skip_keepalive=False)).id == MsgId.KEEPALIVE_ACK
        assert sim.stats()["registered"] == ["CiscoUM1-VI2"]
        assert sim.stats()["counts"]["protocol_errors"] == 2
        assert sim.registrations()["CiscoUM1-VI1"]["last_outcome"].startswith("protocol error")


# ------------------------------------------------------------------------------ calls


async def ring_messages(s: Station) -> list[Message]:
    return await s.expect(MsgId.SET_RINGER, MsgId.CALL_STATE, MsgId.CALL_INFO, MsgId.SET_LAMP,
                          MsgId.ACTIVATE_CALL_PLANE)


async def expect_cleared(s: Station, *, media: bool) -> list[Message]:
    ids = ([MsgId.CLOSE_RECEIVE_CHANNEL, MsgId.STOP_MEDIA_TRANSMISSION] if media else [MsgId.SET_RINGER])
    msgs = await s.expect(*ids, MsgId.CALL_STATE, MsgId.SET_LAMP)
    assert msgs[-2]["call_state"] == CallState.ON_HOOK
    assert (msgs[-1]["stimulus"], msgs[-1]["lamp_mode"]) == (Stimulus.LINE, LampMode.OFF)
    return msgs


async def answer_without_media(s: Station) -> None:
    """Answer, refuse the receive channel (status 1), and see the call cleared."""
    await s.send(MsgId.OFF_HOOK, line_instance=1)
    *_, orc, _, _ = await s.expect(MsgId.SET_RINGER, MsgId.CALL_STATE, MsgId.OPEN_RECEIVE_CHANNEL,
                                   MsgId.STOP_TONE, MsgId.CALL_STATE)
    await s.send(MsgId.OPEN_RECEIVE_CHANNEL_ACK, status=1, ip="127.0.0.1", port=0,
                 pass_through_party_id=orc["pass_through_party_id"], call_reference=orc["call_reference"])
    await expect_cleared(s, media=True)


async def test_hunt_skips_unregistered_busy_declining_and_silent_ports():
    async with running(ring_timeout=10) as (sim, port):
        busy = await registered(port, "CiscoUM1-VI2")  # VI1 never registers
        declining = await registered(port, "CiscoUM2-VI1")
        answering = await registered(port, "CiscoUM2-VI2")
        await busy.send(MsgId.OFF_HOOK)  # off hook dialling: busy
        await busy.expect(MsgId.CALL_STATE, MsgId.START_TONE)
        result = {}

        async def place():
            result.update(await sim.call("4021"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(place)
            await ring_messages(declining)
            await declining.send(MsgId.ON_HOOK, line_instance=1)
            await expect_cleared(declining, media=False)
            await ring_messages(answering)
            await answer_without_media(answering)
        assert result["tried"] == [["CiscoUM1-VI1", "unregistered"], ["CiscoUM1-VI2", "busy"],
                                   ["CiscoUM2-VI1", "declined"], ["CiscoUM2-VI2", "answered"]]
        assert (result["device"], result["port"], result["answered"]) == ("CiscoUM2-VI2", "sccp-2", True)
        assert result["ended_by"] == "media refused (status 1)"

        sim.ring_timeout = 0.3
        async with trio.open_nursery() as nursery:  # nobody answers: every idle port rings out
            nursery.start_soon(place)
            for s in (declining, answering):
                await ring_messages(s)
                (ringer, state, lamp) = await s.expect(MsgId.SET_RINGER, MsgId.CALL_STATE, MsgId.SET_LAMP)
                assert (ringer["ring_mode"], state["call_state"]) == (RingMode.OFF, CallState.ON_HOOK)
        assert result["result"] == "no port" and not result["answered"]
        assert [o for _, o in result["tried"]] == ["unregistered", "busy", "no answer", "no answer"]
        # a late answer to the call that rang out is not taken for an MWI call (no dial tone)
        await answering.send(MsgId.OFF_HOOK, line_instance=1, call_reference=state["call_reference"])
        await answering.send(MsgId.KEEPALIVE_REQ)
        assert (await answering.recv(skip_keepalive=False)).id == MsgId.KEEPALIVE_ACK
        assert sim.stats()["counts"]["stale"] == 1

        async with trio.open_nursery() as nursery:  # a call at a chosen device
            nursery.start_soon(lambda: place_at(sim, result, "CiscoUM2-VI1"))
            await ring_messages(declining)
            await answer_without_media(declining)
        assert (result["device"], result["tried"]) == ("CiscoUM2-VI1", [["CiscoUM2-VI1", "answered"]])
        assert len(sim.calls()) == 3
        with pytest.raises(ValueError, match="unknown device"):
            await sim.call("1", device="SEPX")


async def test_two_calls_at_once_take_two_ports():
    async with running() as (sim, port):
        a = await registered(port, "CiscoUM1-VI1")
        b = await registered(port, "CiscoUM1-VI2")
        results = []

        async def place(calling):
            results.append(await sim.call(calling))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(place, "4021")
            await ring_messages(a)
            nursery.start_soon(place, "4022")  # VI1 is ringing: busy for this one
            (_, _, info, _, _) = await ring_messages(b)
            assert info["calling_party"] == "4022"
            await answer_without_media(b)
            await answer_without_media(a)
        by_caller = {r["calling"]: r for r in results}
        assert by_caller["4021"]["device"] == "CiscoUM1-VI1"
        assert by_caller["4022"]["tried"] == [["CiscoUM1-VI1", "busy"], ["CiscoUM1-VI2", "answered"]]


async def place_at(sim, result, device):
    result.clear()
    result.update(await sim.call("4021", device=device))


async def test_direct_and_forwarded_call_info():
    async with running(pilot="5000", ring_timeout=5) as (sim, port):
        s = await registered(port, "CiscoUM1-VI1")
        infos = []
        for kw in ({"calling_name": "Alice"},
                   {"original_called": "1001", "last_redirecting": "1002", "reason": 2,
                    "original_reason": 15},
                   {"last_redirecting": "1003", "reason": 1}):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda kw=kw: sim.call("4021", **kw))
                ringer, state, info, lamp, plane = await ring_messages(s)
                assert (ringer["ring_mode"], state["call_state"]) == (RingMode.INSIDE, CallState.RING_IN)
                assert (lamp["stimulus"], lamp["lamp_mode"]) == (Stimulus.LINE, LampMode.BLINK)
                assert info["call_reference"] == state["call_reference"] == ringer["call_reference"]
                assert plane["line_instance"] == 1 == info["line_instance"]
                infos.append(info)
                await s.send(MsgId.ON_HOOK, line_instance=1, call_reference=info["call_reference"])
                await expect_cleared(s, media=False)
        direct, fwd, one_hop = infos
        assert (direct["call_type"], direct["calling_party"], direct["calling_party_name"],
                direct["called_party"], direct["last_redirecting_party"]) == (
            CallType.INBOUND, "4021", "Alice", "5000", "")
        assert (fwd["call_type"], fwd["original_called_party"], fwd["last_redirecting_party"],
                fwd["original_cdpn_redirect_reason"], fwd["last_redirecting_reason"]) == (
            CallType.FORWARD, "1001", "1002", 15, 2)
        assert (one_hop["call_type"], one_hop["original_called_party"], one_hop["last_redirecting_party"],
                one_hop["original_cdpn_redirect_reason"], one_hop["last_redirecting_reason"]) == (
            CallType.FORWARD, "1003", "1003", 1, 1)
        assert len({i["call_reference"] for i in infos}) == 3


def tone_power_at(pcm: bytes, freq: float) -> float:
    """Share of the signal's power at ``freq`` (1.0: a pure tone there)."""
    x = dsp.samples(pcm).astype(float)
    return float(dsp.goertzel_power(x, freq)) / float(np.mean(x * x))


async def port_media(s: Station, law: str, pcm_out: bytes, heard: bytearray, events: list,
                     digit: int | None = None) -> None:
    """The port's side once answered: open an RTP socket, Ack, then send ``pcm_out`` paced at
    20 ms to where StartMediaTransmission says, while recording what arrives."""
    *_, orc, _, conn = await s.expect(MsgId.SET_RINGER, MsgId.CALL_STATE, MsgId.OPEN_RECEIVE_CHANNEL,
                                      MsgId.STOP_TONE, MsgId.CALL_STATE)
    assert conn["call_state"] == CallState.CONNECTED
    want = Compression.G711_ULAW if law == "ulaw" else Compression.G711_ALAW
    assert (orc["packet_ms"], orc["compression_type"], orc["rfc2833_payload_type"]) == (20, want, 101)
    udp = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await udp.bind(("127.0.0.1", 0))
    await s.send(MsgId.OPEN_RECEIVE_CHANNEL_ACK, status=0, ip="127.0.0.1", port=udp.getsockname()[1],
                 pass_through_party_id=orc["pass_through_party_id"], call_reference=orc["call_reference"])
    (smt,) = await s.expect(MsgId.START_MEDIA_TRANSMISSION)
    assert (smt["packet_ms"], smt["compression_type"], smt["remote_ip"]) == (20, want, "127.0.0.1")
    assert smt["pass_through_party_id"] == orc["pass_through_party_id"]
    assert smt["remote_port"] % 2 == 0
    # a receiver report (RFC 3550 empty RR) to RTP + 1, where the simulator keeps its RTCP sink
    await udp.sendto(struct.pack("!BBHI", 0x80, 201, 1, 0x1234), ("127.0.0.1", smt["remote_port"] + 1))
    pt = 0 if law == "ulaw" else 8

    async def receive():
        while True:
            data = await udp.recv(2048)
            pkt = parse_rtp(data)
            if pkt.payload_type == 101:
                events.append((pkt.timestamp, parse_dtmf_event(pkt.payload)))
            else:
                assert pkt.payload_type == pt
                heard.extend(g711.decode(law, pkt.payload))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        t0 = trio.current_time()
        for i, frame in enumerate(media.frames(pcm_out, 320)):
            await trio.sleep_until(t0 + 0.02 * i)
            await udp.sendto(RtpPacket(payload_type=pt, seq=i, timestamp=160 * i, ssrc=0x1234,
                                       marker=i == 0, payload=g711.encode(law, frame)).encode(),
                             ("127.0.0.1", smt["remote_port"]))
        if digit is not None:  # an RFC 4733 event from the port: four updates, three end packets
            n = len(pcm_out) // 320
            for i, k in enumerate((1, 2, 3, 4, 5, 5, 5)):  # one timestamp: the event's start
                ev = DtmfEvent(event=digit, end=k == 5, duration=160 * k).encode()
                pkt = RtpPacket(payload_type=101, seq=n + i, timestamp=160 * n, ssrc=0x1234, marker=k == 1,
                                payload=ev)
                await udp.sendto(pkt.encode(), ("127.0.0.1", smt["remote_port"]))
        await trio.sleep(0.5)  # the caller's last packets
        nursery.cancel_scope.cancel()
    udp.close()


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
async def test_media_both_ways_port_hangs_up(tmp_path, law):
    caller = dsp.tone(440, 1500, -12) + dtmf.generate("5", on_ms=100, off_ms=400)
    (tmp_path / "caller.wav").write_bytes(media.wav_bytes(caller))
    greeting = dsp.tone(1000, 1600, -10)
    async with running(record_dir=tmp_path / "rec") as (sim, port):
        s = await registered(port, "CiscoUM1-VI1")
        heard, events, result = bytearray(), [], {}

        async def place():
            result.update(await sim.call("4021", wav=tmp_path / "caller.wav", codec=law, digits="7",
                                         digits_at=1.0, record_s=10))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(place)
            await ring_messages(s)
            await s.send(MsgId.OFF_HOOK, line_instance=1)
            await port_media(s, law, greeting, heard, events)
            await s.send(MsgId.ON_HOOK, line_instance=1)
            await expect_cleared(s, media=True)
        assert result["ended_by"] == "port"
        # what the caller sent reached the port: the 440 Hz tone, the in-band digits
        assert tone_power_at(bytes(heard[:8000]), 440) > 0.9
        assert dsp.level_dbm0(bytes(heard[1600:8000])) == pytest.approx(-12, abs=1)
        assert dtmf.detect(bytes(heard)) == "75"  # the added digit at 1 s, the WAV's own after
        assert events == []
        # what the port sent came back in the WAV, at its level and frequency
        assert result["wav"].startswith(str(tmp_path / "rec"))
        rec = media.pcm_of(open(result["wav"], "rb").read())
        assert media.duration(rec) == pytest.approx(1.6, abs=0.03)
        assert tone_power_at(rec[:16000], 1000) > 0.95
        assert dsp.level_dbm0(rec) == pytest.approx(-10, abs=0.5)
        rtp = result["rtp"]
        assert rtp["audio_packets"] == 80 and rtp["lost"] == 0 and rtp["bad"] == 0
        assert rtp["deviation_ms"]["n"] == 79
        assert 0 <= rtp["deviation_ms"]["p50"] <= rtp["deviation_ms"]["p99"] <= rtp["deviation_ms"]["max"]
        assert len(rtp["deviations_ms"]) == 79 and max(rtp["deviations_ms"]) == rtp["deviation_ms"]["max"]
        assert rtp["jitter_ms"] >= 0 and rtp["payload_types"] == [0 if law == "ulaw" else 8]
        assert rtp["sent"] > 0 and rtp["sent_events"] == 0 and rtp["rtcp_received"] == 1


async def test_rfc2833_digits_and_the_caller_hanging_up(tmp_path):
    async with running(record_dir=tmp_path) as (sim, port):
        s = await registered(port, "CiscoUM1-VI1")
        heard, events, result = bytearray(), [], {}

        async def place():
            result.update(await sim.call("4021", digits="1#", digits_at=[0.2, 0.6], rfc2833=True,
                                         hang_up_after=2.0))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(place)
            await ring_messages(s)
            await s.send(MsgId.OFF_HOOK, line_instance=1)
            await port_media(s, "ulaw", dsp.tone(600, 600, -15), heard, events, digit=9)
            await expect_cleared(s, media=True)  # the caller hung up
        assert result["ended_by"] == "caller"
        ends = {}
        for ts, ev in events:
            if ev.end:
                ends.setdefault(ts, ev)
        assert [ev.event for _, ev in sorted(ends.items())] == [1, 11]
        assert all(ev.duration == 800 for ev in ends.values())
        assert sum(1 for _, ev in events if ev.end) == 6  # three end packets each
        assert dtmf.detect(bytes(heard)) == ""  # no tones in the audio
        assert result["rtp"]["sent_events"] == 14  # 4 + 3 end packets per digit
        assert result["rtp"]["digits"] == "9"  # the port's event, once


async def test_a_station_lost_mid_call_ends_the_call():
    async with running() as (sim, port):
        s = await registered(port, "CiscoUM1-VI1")
        result = {}

        async def place():
            result.update(await sim.call("4021", hang_up_after=30))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(place)
            await ring_messages(s)
            await s.send(MsgId.OFF_HOOK, line_instance=1)
            *_, orc, _, _ = await s.expect(MsgId.SET_RINGER, MsgId.CALL_STATE, MsgId.OPEN_RECEIVE_CHANNEL,
                                           MsgId.STOP_TONE, MsgId.CALL_STATE)
            await s.send(MsgId.OPEN_RECEIVE_CHANNEL_ACK, status=0, ip="127.0.0.1", port=9,
                         pass_through_party_id=orc["pass_through_party_id"],
                         call_reference=orc["call_reference"])
            await s.expect(MsgId.START_MEDIA_TRANSMISSION)
            await s.aclose()
        assert (result["answered"], result["ended_by"]) == (True, "lost")
        assert sim.registrations()["CiscoUM1-VI1"]["state"] == "unregistered"
        assert sim.stats()["counts"]["dropped"] == 1


# ------------------------------------------------------------------------------ MWI


async def test_mwi_cme_style_sets_lamps_and_refuses_unknown_codes():
    async with running(extensions=["6001", "60012", "6002"], interdigit=2.0) as (sim, port):
        s = await registered(port, "CiscoUM1-VI1")
        for digits, lamp in (("22226002", {"6002": True}), ("22216002", {"6002": False}),
                             ("22226001#", {"6002": False, "6001": True})):
            await s.send(MsgId.OFF_HOOK, line_instance=1)
            state, tone = await s.expect(MsgId.CALL_STATE, MsgId.START_TONE)
            assert (state["call_state"], tone["tone"]) == (CallState.OFF_HOOK, Tone.INSIDE_DIAL)
            await s.dial(digits)
            stop, proceed, onhook = await s.expect(MsgId.STOP_TONE, MsgId.CALL_STATE, MsgId.CALL_STATE)
            assert (proceed["call_state"], onhook["call_state"]) == (CallState.PROCEED, CallState.ON_HOOK)
            assert stop["call_reference"] == state["call_reference"] == onhook["call_reference"]
            await s.send(MsgId.ON_HOOK, line_instance=1)  # the port hangs up: already idle
            assert sim.lamps() == lamp
        for digits in ("22227777", "9"):  # an unknown extension, an unknown code
            await s.send(MsgId.OFF_HOOK, line_instance=1)
            await s.expect(MsgId.CALL_STATE, MsgId.START_TONE)
            await s.dial(digits)
            _, reorder, congestion = await s.expect(MsgId.STOP_TONE, MsgId.START_TONE, MsgId.CALL_STATE)
            assert (reorder["tone"], congestion["call_state"]) == (Tone.REORDER, CallState.CONGESTION)
            await s.send(MsgId.ON_HOOK, line_instance=1)
            _, onhook = await s.expect(MsgId.STOP_TONE, MsgId.CALL_STATE)
            assert onhook["call_state"] == CallState.ON_HOOK
        # 2222 6001 could go on to 60012: decided at the interdigit timeout
        await s.send(MsgId.OFF_HOOK, line_instance=1)
        await s.expect(MsgId.CALL_STATE, MsgId.START_TONE)
        await s.dial("22216001")
        await s.expect(MsgId.STOP_TONE, MsgId.CALL_STATE, MsgId.CALL_STATE)
        assert sim.lamps() == {"6002": False, "6001": False}
        counts = sim.stats()["counts"]
        assert (counts["mwi_on"], counts["mwi_off"], counts["mwi_refused"]) == (2, 2, 2)
        assert [e["refused"][:8] for e in sim.lamp_events if e["refused"]] == ["unknown ", "unknown "]
        assert {e["style"] for e in sim.lamp_events} == {"cme"}


async def test_mwi_callmanager_style_by_calling_party():
    async with running(extensions=["6001", "6002"]) as (sim, port):
        s = await registered(port, "CiscoUM2-VI1")
        await s.send(MsgId.OFF_HOOK_WITH_CGPN, calling_party="6002")
        await s.expect(MsgId.CALL_STATE, MsgId.START_TONE)
        await s.dial("2222")
        _, proceed, onhook = await s.expect(MsgId.STOP_TONE, MsgId.CALL_STATE, MsgId.CALL_STATE)
        assert (proceed["call_state"], onhook["call_state"]) == (CallState.PROCEED, CallState.ON_HOOK)
        assert sim.lamps() == {"6002": True}
        await s.send(MsgId.OFF_HOOK_WITH_CGPN, calling_party="7777")  # not a known extension
        await s.expect(MsgId.CALL_STATE, MsgId.START_TONE)
        await s.dial("2221")
        _, reorder, congestion = await s.expect(MsgId.STOP_TONE, MsgId.START_TONE, MsgId.CALL_STATE)
        assert (reorder["tone"], congestion["call_state"]) == (Tone.REORDER, CallState.CONGESTION)
        assert sim.lamps() == {"6002": True}
        assert sim.lamp_events[-1]["style"] == "callmanager"
        assert sim.lamp_events[-1]["refused"] == "unknown extension '7777'"


def test_mwi_verdicts():
    kw = {"mwi_on": "2222", "mwi_off": "2221"}
    assert mwi_verdict("222", None, final=False, **kw) is None
    assert mwi_verdict("22226001", None, final=False, **kw) is None  # any extension: needs an end
    assert mwi_verdict("22226001#", None, final=False, **kw) == (True, "6001")
    assert mwi_verdict("22216001", None, final=True, **kw) == (False, "6001")
    assert mwi_verdict("2222", None, final=True, **kw) == "bad extension ''"
    assert mwi_verdict("2221", "6001", final=False, **kw) == (False, "6001")
    assert mwi_verdict("22", "6001", final=True, **kw) == "unknown code '22'"
    assert mwi_verdict("3", None, final=False, **kw) == "unknown code '3'"
    with pytest.raises(ValueError, match="prefix"):
        CallManagerSim(DEVICES, mwi_on="22", mwi_off="221")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789*#ABCD", max_size=30), st.one_of(st.none(), st.text(max_size=30)),
       st.booleans())
def test_mwi_verdict_never_fails(digits, cgpn, final):
    v = mwi_verdict(digits, cgpn, final=final, mwi_on="2222", mwi_off="2221", extensions={"6001"})
    assert v is None or isinstance(v, str) or (isinstance(v, tuple) and v[1] in ("6001", cgpn))
    if final:
        assert v is not None


# ------------------------------------------------------------------------------ control, pcap


async def test_inject_and_reset_reach_the_station_as_sent():
    async with running() as (sim, port):
        s = await registered(port, "CiscoUM1-VI1")
        garbage = bytes(range(256)) * 3
        assert await sim.inject("CiscoUM1-VI1", garbage) == len(garbage)
        with trio.fail_after(WAIT):
            while garbage not in s.raw:
                s.raw += await s.stream.receive_some(65536)
        s.framer, s.pending = Framer(), []
        assert await sim.reset("CiscoUM1-VI1", 2)
        (reset,) = await s.expect(MsgId.RESET)
        assert reset["reset_type"] == 2
        with pytest.raises(ValueError, match="not registered"):
            await sim.inject("CiscoUM1-VI2", b"x")
        with pytest.raises(ValueError, match="unknown device"):
            await sim.reset("SEPX", 1)
        assert sim.stats()["counts"]["injected"] == 1


async def test_the_pcap_holds_every_frame_and_both_decoders_agree(tmp_path):
    pcap = tmp_path / "cm.pcap"
    async with running(pcap=pcap, extensions=["6001"]) as (sim, port):
        s = await registered(port, "CiscoUM1-VI1")
        await s.send(MsgId.BUTTON_TEMPLATE_REQ)
        await s.expect(MsgId.BUTTON_TEMPLATE_RES)
        await s.send(MsgId.KEEPALIVE_REQ)
        await s.recv(skip_keepalive=False)
        await s.send(MsgId.OFF_HOOK_WITH_CGPN, calling_party="6001")
        await s.expect(MsgId.CALL_STATE, MsgId.START_TONE)
        await s.dial("2")  # each reply is read before the next send: one order on both sides
        await s.expect(MsgId.STOP_TONE)
        await s.dial("222")
        await s.expect(MsgId.CALL_STATE, MsgId.CALL_STATE)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: sim.call("4021", last_redirecting="1002", reason=2))
            await ring_messages(s)
            await answer_without_media(s)
        await s.send(MsgId.UNREGISTER_REQ)
        await s.expect(MsgId.UNREGISTER_ACK)
        assert await s.recv() is None
    problems = check_pcap(pcap, s.log, port=port)
    assert problems == []


def test_bad_configurations_are_refused():
    for kw, match in (({"devices": []}, "no devices"), ({"devices": ["bad name"]}, "bad device"),
                      ({"devices": DEVICES, "keepalive": 0}, "keepalive"),
                      ({"devices": DEVICES, "pilot": "50x"}, "pilot"),
                      ({"devices": DEVICES, "extensions": ["60a"]}, "extension"),
                      ({"devices": ["A", "A"]}, "twice")):
        with pytest.raises(ValueError, match=match):
            CallManagerSim(**kw)
    assert parse_devices("A=5001, B ,#c") == {"A": "5001", "B": ""}
    assert (port_name("CiscoUM2-VI12"), port_name("SEPABC")) == ("sccp-12", None)


async def test_bad_call_arguments_are_refused(tmp_path):
    (tmp_path / "bad.wav").write_bytes(b"RIFF....WAVEnope")
    async with running() as (sim, _):
        for kw, match in (({"codec": "g729"}, "codec"), ({"record_s": 0}, "record_s"),
                          ({"digits": "x"}, "DTMF"), ({"wav": tmp_path / "none.wav"}, "cannot read"),
                          ({"wav": tmp_path / "bad.wav"}, "WAV"), ({"call_type": "sideways"}, "call_type"),
                          ({"reason": -1}, "reason"), ({"called": "1" * 30}, "called")):
            with pytest.raises(ValueError, match=match):
                await sim.call("4021", **kw)
        assert sim.calls() == []


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_the_rtp_peer_survives_any_datagram(data):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        peer = RtpPeer(sock, max_record_s=1)
        peer.received_packet(data, 1.0)
        peer.received_packet(RtpPacket(payload_type=0, seq=1, timestamp=2**32 - 80, ssrc=5,
                                       payload=data[:160]).encode(), 1.02)
        stats = peer.stats()
        assert stats["received"] == 2 and len(peer.recorded()) <= 16000
    finally:
        sock.close()


# ------------------------------------------------------------------------------ process form


async def test_process_form_with_the_sync_client(tmp_path):
    pcap = tmp_path / "proc.pcap"
    proc, cm = await trio.to_thread.run_sync(
        lambda: start_callmanager(tmp_path, DEVICES[:2], keepalive=5, pcap=pcap, extensions=["6001"]))
    try:
        assert isinstance(cm, CallManagerClient) and cm.address[1] > 0
        s = await registered(cm.address[1], "CiscoUM1-VI2")
        regs = await trio.to_thread.run_sync(lambda: cm.wait_registered(["CiscoUM1-VI2"], timeout=WAIT))
        assert regs["CiscoUM1-VI2"]["state"] == "registered"
        with pytest.raises(TimeoutError):
            await trio.to_thread.run_sync(lambda: cm.wait_registered(["CiscoUM1-VI1"], timeout=0.2))
        result = {}

        def place():
            result.update(cm.call("4021", last_redirecting="1002", reason=2, hang_up_after=1.5))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, place)
            _, _, info, _, _ = await ring_messages(s)
            assert (info["last_redirecting_party"], info["call_type"]) == ("1002", CallType.FORWARD)
            await s.send(MsgId.OFF_HOOK, line_instance=1)
            await port_media(s, "ulaw", dsp.tone(800, 400, -20), bytearray(), [])
            await expect_cleared(s, media=True)
        assert (result["device"], result["port"], result["ended_by"]) == ("CiscoUM1-VI2", "sccp-2", "caller")
        rec = media.pcm_of(open(result["wav"], "rb").read())
        assert tone_power_at(rec[:3200], 800) > 0.9
        await s.send(MsgId.OFF_HOOK)
        await s.expect(MsgId.CALL_STATE, MsgId.START_TONE)
        await s.dial("22226001#")
        await s.expect(MsgId.STOP_TONE, MsgId.CALL_STATE, MsgId.CALL_STATE)
        assert await trio.to_thread.run_sync(cm.lamps) == {"6001": True}
        assert await trio.to_thread.run_sync(lambda: cm.inject("CiscoUM1-VI2", b"\x01\x02")) == 2
        with pytest.raises(CallManagerError, match="not registered"):
            await trio.to_thread.run_sync(lambda: cm.reset("CiscoUM1-VI1", 1))
        with pytest.raises(CallManagerError, match="unknown op"):
            await trio.to_thread.run_sync(lambda: cm.request("explode"))
        stats = await trio.to_thread.run_sync(cm.stats)
        assert stats["registered"] == ["CiscoUM1-VI2"] and stats["calls"] == 1
        assert len(await trio.to_thread.run_sync(cm.calls)) == 1
        assert await trio.to_thread.run_sync(cm.stop) is True
        with trio.fail_after(WAIT):
            assert await trio.to_thread.run_sync(proc.wait) == 0
        await s.aclose()
    finally:
        stop_callmanager(proc)
    assert not (tmp_path / "cm.sock").exists()
    # the process's capture holds what the station saw (the injected bytes are no PDU)
    pdus = [p for p in tshark_pdus(pcap, port=cm.address[1]) if p["id"] is not None]
    assert Counter(int(p["id"]) for p in pdus) == Counter(int(m.id) for m in s.log)
    assert int(pdus[0]["id"]) == MsgId.REGISTER_REQ


def test_a_bad_device_list_stops_the_process_with_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="bad device name"):
        start_callmanager(tmp_path, "bad name,X")


def test_devices_from_a_file(tmp_path):
    (tmp_path / "devices").write_text("# node a\nCiscoUM1-VI1=5001\n\nCiscoUM2-VI1\n")
    args = parse_args(["--listen", "127.0.0.1:0", "--control", "c", "--devices", str(tmp_path / "devices")])
    assert args.devices == {"CiscoUM1-VI1": "5001", "CiscoUM2-VI1": ""}
    assert args.listen == ("127.0.0.1", 0)
    with pytest.raises(SystemExit):
        parse_args(["--listen", "nohost", "--control", "c", "--devices", "A"])


def test_the_control_socket_answers_bad_requests_and_goes_on(tmp_path):
    proc, cm = start_callmanager(tmp_path, ["CiscoUM1-VI1"])
    try:
        for raw in (b"not json\n", b"[1, 2]\n", b'{"op": "call", "bogus": 1}\n', b'{"op": "inject"}\n',
                    b'{"op": "inject", "device": "CiscoUM1-VI1", "hex": "zz"}\n'):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
                c.settimeout(WAIT)
                c.connect(str(cm.path))
                c.sendall(raw)
                reply = json.loads(c.makefile("rb").readline())
            assert reply["ok"] is False and reply["error"], (raw, reply)
        assert cm.stats()["counts"] == {}
        assert cm.registrations()["CiscoUM1-VI1"]["state"] == "never"
    finally:
        assert stop_callmanager(proc) == 0
