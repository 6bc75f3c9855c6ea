"""The voice-board simulator (lab/voiceboard.py) through a real SimBoard on its Unix sockets:
seizures (dial tone, feature codes, reorder, the DTMF measurement), calls (hunting, in-band
digits, hang-ups, abandon), alarms, and hosts that break the protocol."""
from __future__ import annotations

import random

import pytest
import trio

from lab.voiceboard import VoiceBoardSim, measure_dtmf, open_host, open_voiceboard
from telephony.analog.board import Event, LineEvent
from telephony.analog.core import simwire
from telephony.analog.simboard import SimBoard
from telephony.core import callerid, dsp, dtmf, tones
from tests.util import until


async def _seize_and_dial(sim, host, line, digits, **kw):
    await host.board.set_hook(line, True)
    await host.wait_event(line, "loop_on")
    await until(lambda: len(host.heard(line)) >= 320 * 40, "a second of dial tone")
    await host.play(line, dtmf.generate(digits, **kw))


async def test_seizure_gets_dial_tone(tmp_path, autojump_clock):
    async with open_voiceboard(tmp_path, boards={"a": 2}) as sim, open_host(sim.socket_path("a")) as host:
        await host.board.set_hook(2, True)
        assert await host.wait_event(2, "loop_on")
        assert sim.line_state("a", 2) == "seized" and sim.loop_current_ma("a", 2) == 25.0
        assert sim.line_state("a", 1) == "idle" and sim.loop_current_ma("a", 1) == 0.0
        await until(lambda: len(host.heard(2)) >= 320 * 50, "a second of audio")
        assert tones.detect("na", host.heard(2)) == ["dial"]
        assert tones.detect("etsi", host.heard(2)) == []


@pytest.mark.parametrize("profile", ["na", "etsi"])
async def test_lamp_on_by_feature_code_after_the_interdigit_timeout(tmp_path, autojump_clock, profile):
    async with open_voiceboard(tmp_path, boards={"a": 2}, profile=profile) as sim, \
            open_host(sim.socket_path("a")) as host:
        await _seize_and_dial(sim, host, 1, "*911234")
        assert sim.line_state("a", 1) == "dialling" and sim.lamps == {}
        host.clear(1)
        t0 = trio.current_time()
        await until(lambda: sim.lamps.get("1234") is True, "the lamp to go on")
        assert trio.current_time() - t0 == pytest.approx(sim.interdigit_s, abs=0.3)
        assert sim.line_state("a", 1) == "confirmed"
        await until(lambda: len(host.heard(1)) >= 320 * 50 * (sim.interdigit_s + 1.5))
        assert "confirm" in tones.detect(profile, host.heard(1))
        entry = sim.last_dtmf("a", 1)
        assert entry["digits"] == "*911234" and entry["result"] == "on" and entry["extension"] == "1234"
        # the first digit measured: '*' is 941 + 1209 Hz, each tone at -10 dBm0 (G.711 on the way)
        assert entry["digit"] == "*"
        assert entry["low_hz"] == pytest.approx(941, abs=1.0)
        assert entry["high_hz"] == pytest.approx(1209, abs=1.0)
        assert entry["low_dbm0"] == pytest.approx(-10, abs=0.5)
        assert entry["high_dbm0"] == pytest.approx(-10, abs=0.5)
        assert entry["level_dbm0"] == pytest.approx(-7, abs=0.5)
        assert entry["duration_ms"] == pytest.approx(60, abs=10)
        await host.board.set_hook(1, False)
        await until(lambda: sim.line_state("a", 1) == "idle")


async def test_lamp_off_ended_by_hash_with_twist(tmp_path, autojump_clock):
    async with open_voiceboard(tmp_path, boards={"a": 1}) as sim, open_host(sim.socket_path("a")) as host:
        sim.lamps["55"] = True
        await _seize_and_dial(sim, host, 1, "*9255#", level_dbm0=-6.0, twist_db=3.0, on_ms=80)
        await until(lambda: sim.lamps["55"] is False, "the lamp to go off")
        entry = sim.last_dtmf("a", 1)
        assert entry["result"] == "off" and entry["digits"] == "*9255#"
        assert entry["twist_db"] == pytest.approx(3.0, abs=0.5)
        assert entry["low_dbm0"] == pytest.approx(-6, abs=0.5)
        assert entry["duration_ms"] == pytest.approx(80, abs=10)
        assert sim.line_state("a", 1) == "confirmed"  # at the '#', not after a timeout


@pytest.mark.parametrize("digits", ["*93123", "12345", "*91", "*91A12", "*911#", "#"])
async def test_anything_else_gets_reorder(tmp_path, autojump_clock, digits):
    async with open_voiceboard(tmp_path, boards={"a": 1}) as sim, open_host(sim.socket_path("a")) as host:
        await _seize_and_dial(sim, host, 1, digits)
        await until(lambda: sim.line_state("a", 1) == "reorder", "reorder")
        host.clear(1)
        await until(lambda: len(host.heard(1)) >= 320 * 100)
        assert tones.detect("na", host.heard(1)) == ["reorder"]
        assert sim.lamps == {}
        assert sim.last_dtmf("a", 1)["result"] == "reorder"


async def test_configured_feature_codes(tmp_path, autojump_clock):
    async with open_voiceboard(tmp_path, boards={"a": 1}) as sim, open_host(sim.socket_path("a")) as host:
        sim.feature_codes = {"on": "#7", "off": "#8"}
        await _seize_and_dial(sim, host, 1, "#712345678")  # 8 digits: complete at once
        await until(lambda: sim.lamps.get("12345678") is True)


async def test_no_digit_gets_reorder(tmp_path, autojump_clock):
    async with open_voiceboard(tmp_path, boards={"a": 1}) as sim, open_host(sim.socket_path("a")) as host:
        await host.board.set_hook(1, True)
        t0 = trio.current_time()
        await until(lambda: sim.line_state("a", 1) == "reorder", "reorder", timeout=30)
        assert trio.current_time() - t0 == pytest.approx(sim.first_digit_s, abs=0.3)
        assert sim.dialled == []  # nothing was dialled


def test_verdicts():
    sim = VoiceBoardSim("/nonexistent", {"a": 1})
    assert sim.verdict("*9", final=False) is None
    assert sim.verdict("*911", final=False) is None
    assert sim.verdict("*9112", final=False) is None
    assert sim.verdict("*9112", final=True) == ("on", "12")
    assert sim.verdict("*921#", final=False) == ("reorder", "")
    assert sim.verdict("*9212345678", final=False) == ("off", "12345678")
    assert sim.verdict("5", final=False) == ("reorder", "")
    assert sim.verdict("", final=True) == ("reorder", "")
    assert sim.verdict("*91*2", final=False) == ("reorder", "")
    assert sim.verdict("*9112345678", final=False) == ("on", "12345678")  # complete at 8 digits
    assert sim.verdict("*91123456789", final=False) == ("reorder", "")
    assert sim.verdict("#", final=False) == ("reorder", "")
    sim.feature_codes = {"on": "#7", "off": "#8"}
    assert sim.verdict("#", final=False) is None
    assert sim.verdict("#712#", final=False) == ("on", "12")


async def test_call_digits_decoded_by_the_host(tmp_path, autojump_clock):
    async with open_voiceboard(tmp_path, boards={"a": 2, "b": 2}, law="alaw") as sim, \
            open_host(sim.socket_path("a")) as host:
        handle = sim.start_call(digits="#1234", audio=dsp.tone([440.0], 500, [-15.0]), hangup="tone",
                                digit_delay_ms=300)
        await host.wait_event(1, "ring_on", 2)  # answer in the second ring
        await host.board.set_hook(1, True)
        detector = dtmf.DtmfDetector()
        got = []
        seen = 0
        while len(got) < 5:
            await until(lambda seen=seen: len(host.heard(1)) > seen)
            chunk = host.heard(1)[seen:]
            seen += len(chunk)
            got += detector.feed(chunk)
        assert "".join(got) == "#1234"
        # then the caller's audio, then reorder: the PBX hung up with a tone
        await until(lambda: sim.line_state("a", 1) == "released")
        host.clear(1)
        await until(lambda: len(host.heard(1)) >= 320 * 100)
        assert tones.detect("na", host.heard(1)) == ["reorder"]
        await host.board.set_hook(1, False)
        call = await handle.wait()
        assert (call.answered, call.answer_after_rings, call.ended_by) == (True, 2, "pbx")
        assert call.answered_at - call.started_at == pytest.approx(6.0, abs=0.1)


async def test_hunting(tmp_path, autojump_clock):
    async with open_voiceboard(tmp_path, boards={"a": 2, "b": 1}) as sim:
        # board a has no host: the call hunts on to b
        async with open_host(sim.socket_path("b")) as hb:
            call = await sim.call(digits="", hunt=("a", "b"), rings_max=1)
            assert (call.board, call.line, call.answered) == ("b", 1, False)
            assert hb.events_of(1, ["ring_on"])
            async with open_host(sim.socket_path("a")) as ha:
                await ha.board.set_hook(1, True)  # line a/1 is in use: a/2 rings
                await ha.wait_event(1, "loop_on")
                first = sim.start_call(digits="", hunt=("a", "b"), rings_max=1)
                second = sim.start_call(digits="", hunt=("a", "b"), rings_max=1)
                third = sim.start_call(digits="", hunt=("a", "b"), rings_max=1)
                assert (first.call.board, first.call.line) == ("a", 2)
                assert (second.call.board, second.call.line) == ("b", 1)
                assert (third.call.board, third.call.line, third.done) == (None, None, True)
                assert third.call.ended_by == "no_line"
                await first.wait()
                await second.wait()


async def test_alarm(tmp_path, autojump_clock):
    async with open_voiceboard(tmp_path, boards={"a": 2}) as sim, open_host(sim.socket_path("a")) as host:
        sim.set_alarm("a", 1, True)
        assert await host.wait_event(1, "alarm")
        assert sim.line_state("a", 1) == "alarm"
        await host.board.set_hook(1, True)
        await trio.sleep(0.5)
        assert sim.loop_current_ma("a", 1) == 0.0 and host.heard(1) == b""  # a dead line
        call = sim.start_call(digits="", rings_max=1)
        assert call.call.line == 2  # not hunted
        await host.board.set_hook(1, False)
        sim.set_alarm("a", 1, False)
        assert await host.wait_event(1, "alarm_clear")
        assert sim.line_state("a", 1) == "idle"
        await call.wait()
        # an alarm is told again to a host that connects later
        sim.set_alarm("a", 2, True)
    async with open_voiceboard(tmp_path, boards={"a": 1}) as sim:
        sim.set_alarm("a", 1, True)
        board = SimBoard(sim.socket_path("a"))
        await board.open()
        assert await board.receive() == Event(1, LineEvent.ALARM)
        await board.aclose()


async def test_abandon_and_host_hangup(tmp_path, autojump_clock):
    async with open_voiceboard(tmp_path, boards={"a": 1}) as sim, open_host(sim.socket_path("a")) as host:
        h = sim.start_call(digits="")
        await host.wait_event(1, "ring_on")
        h.abandon()
        call = await h.wait()
        assert (call.answered, call.ended_by) == (False, "abandoned")
        await host.wait_event(1, "ring_off")
        assert [e.event for _, e in host.events_of(1)] == [LineEvent.RING_ON, LineEvent.RING_OFF]
        assert sim.line_state("a", 1) == "idle"
        # the host hangs up in the middle of the caller's audio
        h = sim.start_call(digits="", audio=dsp.tone([500.0], 5000, [-10.0]), hangup="loop_drop")
        await host.wait_event(1, "ring_on", 2)
        await host.board.set_hook(1, True)
        await until(lambda: len(h.heard) == 0 and len(host.heard(1)) > 320 * 50)
        await host.board.set_hook(1, False)
        call = await h.wait()
        assert (call.answered, call.ended_by, call.pbx_hangup_at) == (True, "host", None)
        assert not host.events_of(1, ["loop_drop"])


async def test_host_lost_mid_call(tmp_path, autojump_clock):
    async with open_voiceboard(tmp_path, boards={"a": 1}) as sim:
        async with open_host(sim.socket_path("a")) as host:
            h = sim.start_call(digits="", audio=dsp.silence_ms(10_000), hangup="none")
            await host.wait_event(1, "ring_on")
            await host.board.set_hook(1, True)
            await until(lambda: sim.line_state("a", 1) == "answered")
        call = await h.wait()
        assert call.ended_by == "host" and sim.line_state("a", 1) == "idle"


async def test_bad_frames_from_the_host_close_only_that_connection(tmp_path):
    async with open_voiceboard(tmp_path, boards={"a": 2}) as sim:
        for garbage in (b"\x09\x01\x00\x00", simwire.encode(simwire.Hook(3, True)), b"\x04\x01\x00\x01\x07",
                        b"\x03\x01\x10\x00"):
            stream = await trio.open_unix_socket(sim.socket_path("a"))
            hello = await stream.receive_some(100)
            assert simwire.Decoder().feed(hello) == [simwire.Hello(2, "ulaw", "a")]
            await stream.send_all(simwire.encode(simwire.Hook(1, True)) + garbage)
            with trio.fail_after(10):
                rest = b""
                while chunk := await stream.receive_some(65536):
                    rest += chunk  # loop_on and dial tone, then the end
            await stream.aclose()
        assert sim.protocol_errors["a"] == 4
        await until(lambda: sim.line_state("a", 1) == "idle")  # the good HOOK counted, then undone
        assert any(e.kind == "offhook" for e in sim.events)
        async with open_host(sim.socket_path("a")) as host:  # the simulator serves on
            await host.board.set_hook(2, True)
            await host.wait_event(2, "loop_on")


def test_measure_dtmf():
    pcm = dsp.silence_ms(100) + dsp.tone([700.0, 1340.0], 70, [-8.0, -12.0]) + dsp.silence_ms(60) \
        + dtmf.generate("1")
    m = measure_dtmf(pcm)
    assert m["low_hz"] == pytest.approx(700, abs=0.5) and m["high_hz"] == pytest.approx(1340, abs=0.5)
    assert m["low_dbm0"] == pytest.approx(-8, abs=0.3) and m["high_dbm0"] == pytest.approx(-12, abs=0.3)
    assert m["twist_db"] == pytest.approx(4, abs=0.3) and m["digit"] == "2"  # 697 + 1336 Hz is nearest
    assert m["duration_ms"] == pytest.approx(70, abs=5)
    assert measure_dtmf(dsp.silence_ms(500)) is None
    assert measure_dtmf(b"") is None


async def test_arguments(tmp_path):
    with pytest.raises(ValueError, match="255"):
        VoiceBoardSim(tmp_path, {"a": 0})
    with pytest.raises(ValueError, match="law"):
        VoiceBoardSim(tmp_path, {"a": 1}, law="slin")
    with pytest.raises(ValueError, match="profile"):
        VoiceBoardSim(tmp_path, {"a": 1}, profile="xx")
    sim = VoiceBoardSim(tmp_path, {"a": 1})
    with pytest.raises(RuntimeError, match="not running"):
        sim.start_call()
    async with open_voiceboard(tmp_path, boards={"a": 1}) as sim:
        for kw, why in (({"hangup": "slam"}, "hangup"), ({"rings_max": 0}, "rings_max"),
                        ({"digits": "12x"}, "not a DTMF digit"), ({"hunt": ("c",)}, "no board 'c'"),
                        ({"audio": b"\0"}, "whole 16-bit"), ({"cpc_ms": 0}, "cpc_ms")):
            with pytest.raises(ValueError, match=why):
                sim.start_call(**kw)
        assert sim.calls == []
        with pytest.raises(ValueError, match="no line 2"):
            sim.line_state("a", 2)


@pytest.mark.parametrize("profile, standard", [("na", "bell202"), ("etsi", "v23")])
async def test_callerid_between_the_first_and_second_ring(tmp_path, autojump_clock, profile, standard):
    cid = callerid.CallerId(number="5551234", name="ALICE EXAMPLE", when="12071530")
    async with open_voiceboard(tmp_path, boards={"a": 1}, profile=profile) as sim, \
            open_host(sim.socket_path("a")) as host:
        assert sim.callerid_standard == standard
        h = sim.start_call(digits="", callerid=cid, rings_max=3)
        await host.wait_event(1, "ring_off")
        await host.wait_event(1, "ring_on", 2)
        burst = host.heard(1)  # the on-hook audio of a ringing line: the burst alone
        assert callerid.decode(burst, standard) == cid
        assert len(burst) == pytest.approx(len(callerid.encode(cid, standard)), abs=320)
        await host.board.set_hook(1, True)
        call = await h.wait()
        assert call.callerid_sent and call.answer_after_rings == 2


async def test_smdi_hook_runs_before_the_first_ring_and_alarm_ends_a_call(tmp_path, autojump_clock):
    async with open_voiceboard(tmp_path, boards={"a": 2}) as sim, open_host(sim.socket_path("a")) as host:
        seen = []

        async def smdi(call):
            seen.append((call.board, call.line, len(sim.events_of(call.board, call.line, ["ring_on"]))))
            raise OSError("the SMDI link is down")  # recorded; the call rings all the same

        h = sim.start_call(digits="", audio=dsp.silence_ms(20_000), smdi=smdi)
        await host.wait_event(1, "ring_on")
        assert seen == [("a", 1, 0)] and sim.task_failures.counts["voiceboard-smdi"] == 1
        await host.board.set_hook(1, True)
        await until(lambda: sim.line_state("a", 1) == "answered")
        sim.set_alarm("a", 1, True)
        call = await h.wait()
        assert (call.answered, call.ended_by) == (True, "alarm")
        assert sim.line_state("a", 1) == "alarm" and sim.loop_current_ma("a", 1) == 0.0


async def test_random_garbage_never_ends_the_simulator(tmp_path):
    rng = random.Random(7)
    async with open_voiceboard(tmp_path, boards={"a": 4}) as sim:
        for n in range(20):
            garbage = rng.randbytes(rng.randrange(1, 3000))
            stream = await trio.open_unix_socket(sim.socket_path("a"))
            try:
                await stream.send_all(garbage)
            except trio.BrokenResourceError:
                pass  # the simulator already closed it: fine
            with trio.fail_after(10):
                try:
                    while await stream.receive_some(65536):
                        pass
                except trio.BrokenResourceError:
                    pass
            await stream.aclose()
            await until(lambda: not sim.connected("a"))
            assert sim.protocol_errors["a"] <= n + 1
        assert sim.protocol_errors["a"] >= 15  # random bytes are almost never a valid stream
        async with open_host(sim.socket_path("a")) as host:
            await host.board.set_hook(4, True)
            await host.wait_event(4, "loop_on")


async def test_a_host_that_does_not_read_loses_audio_not_the_connection(tmp_path, autojump_clock):
    async with open_voiceboard(tmp_path, boards={"a": 2}) as sim:
        stream = await trio.open_unix_socket(sim.socket_path("a"))
        await stream.send_all(simwire.encode(simwire.Hook(1, True)) + simwire.encode(simwire.Hook(2, True)))
        await until(lambda: sim.overruns["a"] > 100, "audio frames to be dropped", timeout=600)
        assert sim.connected("a") and sim.line_state("a", 1) == "seized"
        await stream.aclose()


@pytest.mark.parametrize("profile", ["na", "etsi"])
async def test_abandoned_call_with_busy_as_the_hangup_tone(tmp_path, autojump_clock, profile):
    async with open_voiceboard(tmp_path, boards={"a": 1}, profile=profile) as sim, \
            open_host(sim.socket_path("a")) as host:
        h = sim.start_call(digits="", hangup="none", hangup_tone="busy")
        await host.wait_event(1, "ring_on")
        await host.board.set_hook(1, True)
        await trio.sleep(5)
        assert sim.line_state("a", 1) == "answered"  # "none": connected until someone hangs up
        h.abandon()
        await until(lambda: sim.line_state("a", 1) == "released")
        host.clear(1)
        await until(lambda: len(host.heard(1)) >= 320 * 150)
        assert tones.detect(profile, host.heard(1)) == ["busy"]
        call = await h.wait()  # the host never hangs up: the PBX gives up after release_s
        assert call.ended_by == "pbx" and call.host_onhook_at is None
        assert call.ended_at - call.pbx_hangup_at == pytest.approx(sim.release_s, abs=0.1)
        assert sim.line_state("a", 1) == "released" and not host.events_of(1, ["loop_drop"])


async def test_echo_and_line_noise(tmp_path, autojump_clock):
    async with open_voiceboard(tmp_path, boards={"a": 1}) as sim, open_host(sim.socket_path("a")) as host:
        sim.echo_db, sim.noise_dbm0 = 12.0, -50.0
        h = sim.start_call(digits="", hangup="none")
        await host.wait_event(1, "ring_on")
        await host.board.set_hook(1, True)
        await until(lambda: sim.line_state("a", 1) == "answered")
        await host.play(1, dsp.silence_ms(200))
        host.clear(1)
        await host.play(1, dsp.silence_ms(1000))
        quiet = host.heard(1)  # the caller is silent: the line's noise alone
        assert dsp.level_dbm0(quiet) == pytest.approx(-50, abs=1.0)
        host.clear(1)
        await host.play(1, dsp.tone([1000.0], 2000, [-10.0]))
        back = host.heard(1)[320 * 10:320 * 90]  # the host's own tone, 12 dB down, plus the noise
        assert dsp.level_dbm0(back) == pytest.approx(-22, abs=1.0)
        assert dsp.goertzel_power(back, 1000.0) > 100 * dsp.goertzel_power(quiet[:len(back)], 1000.0)
        h.abandon()
        await host.board.set_hook(1, False)
        await h.wait()
