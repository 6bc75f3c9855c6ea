"""The call flow's port over 20 ms PCM frames (telephony/runtime/mediaport.py): play, record,
digits, transfer, hang-up; the analog port is the same class; and the port wired to a real
RTP endpoint pair on the loopback, as the SCCP ports use it."""
from __future__ import annotations

import pytest
import trio

from telephony.analog.port import AnalogPort
from telephony.core import dsp, dtmf, media
from telephony.runtime.mediaport import MAX_PENDING_DIGITS, MediaCallPort
from telephony.runtime.rtp import RtpEndpoint, RtpPortPool


class Line:
    def __init__(self):
        self.frames: list[bytes] = []
        self.hooks = 0

    async def send(self, frame: bytes) -> None:
        self.frames.append(frame)

    async def on_hook(self) -> None:
        self.hooks += 1


def _port(realtime=True, cls=MediaCallPort):
    line = Line()
    return cls("p-1", send=line.send, on_hook=line.on_hook, realtime=realtime), line


def _wav(ms: float, freq: float = 500) -> bytes:
    return media.wav_bytes(dsp.tone(freq, ms, -10))


async def test_play_sends_whole_frames_paced_in_real_time(autojump_clock):
    port, line = _port()
    t0 = trio.current_time()
    assert await port.play(_wav(1010)) is None
    assert len(line.frames) == 51 and all(len(f) == 320 for f in line.frames)
    assert line.frames[-1][160:] == bytes(160)  # the last half frame padded with silence
    assert trio.current_time() - t0 == pytest.approx(51 * 0.02)
    assert port.frames_sent == 51


async def test_play_interrupted_by_a_digit_and_by_typed_ahead_digits(autojump_clock):
    port, line = _port()
    async with trio.open_nursery() as n:
        async def press():
            await trio.sleep(0.3)
            port.feed_digit("7")
        n.start_soon(press)
        assert await port.play(_wav(2000)) == "7"
    assert 14 <= len(line.frames) <= 17
    port.feed_digit("1")
    port.feed_digit("2")
    sent = len(line.frames)
    assert await port.play(_wav(500)) == "1"  # typed ahead: the play ends before it starts
    assert len(line.frames) == sent
    assert await port.play(_wav(100), interruptible=False) is None
    assert await port.collect_digits(max_digits=3, timeout=1) == "2"


async def test_record_ends_on_silence_digit_hangup_and_max(autojump_clock):
    port, _ = _port()
    speech = dsp.tone(300, 1000, -10)

    async def caller(pcm: bytes, then=None):
        for off in range(0, len(pcm), 320):
            port.feed_audio(pcm[off:off + 320])
            await trio.sleep(0.02)
        if then:
            then()

    async with trio.open_nursery() as n:
        n.start_soon(caller, speech + dsp.silence_ms(2500))
        wav, why = await port.record(max_seconds=10, silence_seconds=2)
    assert why == "silence"
    assert media.wav_duration(wav) == pytest.approx(1.0, abs=0.03)
    async with trio.open_nursery() as n:
        n.start_soon(caller, speech, lambda: port.feed_digit("#"))
        wav, why = await port.record(max_seconds=10, silence_seconds=2)
    assert why == "dtmf" and media.wav_duration(wav) == pytest.approx(1.0, abs=0.03)
    wav, why = await port.record(max_seconds=0.5, silence_seconds=2)  # the line sends nothing
    assert why == "max" and media.wav_duration(wav) == 0
    async with trio.open_nursery() as n:
        n.start_soon(caller, speech, lambda: port.end("caller"))
        wav, why = await port.record(max_seconds=10, silence_seconds=2)
    assert why == "hangup" and media.wav_duration(wav) == pytest.approx(1.0, abs=0.03)
    assert port.hung_up and port.ended_by == "caller"
    assert await port.play(_wav(100)) is None
    assert await port.record(max_seconds=1, silence_seconds=1) == (media.wav_bytes(b""), "hangup")


async def test_collect_digits_terminator_timeout_and_checks(autojump_clock):
    port, _ = _port()
    for d in "12#9":
        port.feed_digit(d)
    assert await port.collect_digits(max_digits=5, timeout=2) == "12"
    assert await port.collect_digits(max_digits=1, timeout=2) == "9"
    t0 = trio.current_time()
    assert await port.collect_digits(max_digits=4, timeout=3) == ""
    assert trio.current_time() - t0 == pytest.approx(3)
    for bad in ({"max_digits": 0, "timeout": 1}, {"max_digits": 2, "timeout": 0},
                {"max_digits": 2, "timeout": 1, "terminator": "##"}):
        with pytest.raises(ValueError):
            await port.collect_digits(**bad)


async def test_digits_beyond_the_queue_are_dropped():
    port, _ = _port()
    for _ in range(MAX_PENDING_DIGITS + 5):
        port.feed_digit("5")
    assert port.digits_dropped == 5
    assert await port.collect_digits(max_digits=64, timeout=0.01) == "5" * MAX_PENDING_DIGITS


async def test_transfer_refused_and_hangup_once():
    port, line = _port()
    assert await port.transfer("2001") is False
    with pytest.raises(ValueError):
        await port.transfer("20x1")
    await port.hangup()
    await port.hangup()
    assert line.hooks == 1 and port.ended_by == "service"
    port.feed_digit("1")  # after the end: ignored
    assert await port.collect_digits(max_digits=1, timeout=1) == ""


async def test_analog_port_is_the_media_port():
    assert issubclass(AnalogPort, MediaCallPort)
    port, line = _port(realtime=False, cls=AnalogPort)
    assert await port.play(_wav(200)) is None and len(line.frames) == 10
    assert await port.transfer("12") is False
    with pytest.raises(ValueError):
        AnalogPort("x", send=line.send, on_hook=line.on_hook, silence_threshold=-1)


async def test_the_port_over_a_real_rtp_leg():
    """The SCCP wiring: the port's frames go out through an RTP endpoint; the far end's
    audio and digits come back through another, and the flow's operations see them."""
    pool = RtpPortPool(43100, 43199)
    ours = await RtpEndpoint.open("127.0.0.1", pool, jitter_ms=200)  # deep: a loaded machine
    far = await RtpEndpoint.open("127.0.0.1", pool, jitter_ms=200)
    port = MediaCallPort("sccp-1", send=ours.send_pcm, on_hook=ours.aclose)
    ours.on_audio, ours.on_digit = port.feed_audio, port.feed_digit
    heard: list[bytes] = []
    far.on_audio = heard.append
    ours.start("127.0.0.1", far.local_port, codec="pcmu")
    far.start("127.0.0.1", ours.local_port, codec="pcmu")

    async def caller():
        pcm = dtmf.generate("4", on_ms=80, off_ms=300) + dsp.tone(300, 1200, -12) \
            + dsp.silence_ms(1800)
        t0 = trio.current_time()
        for i, off in enumerate(range(0, len(pcm), 320)):
            await far.send_pcm(pcm[off:off + 320])
            await trio.sleep_until(t0 + (i + 1) * 0.02)

    async with trio.open_nursery() as n:
        await n.start(ours.run)
        await n.start(far.run)
        greeting = dsp.tone(1000, 600, -10)
        assert await port.play(media.wav_bytes(greeting), interruptible=False) is None
        n.start_soon(caller)
        assert await port.collect_digits(max_digits=1, timeout=2) == "4"
        wav, why = await port.record(max_seconds=10, silence_seconds=1.5)
        await port.hangup()
        await trio.sleep(0.2)
        n.cancel_scope.cancel()
    await far.aclose()
    assert why == "silence"
    # the recording starts once the digit was collected (the pause after it is kept, as
    # silence before speech is: 0.3 s less the digit's detection) and ends with the tone
    # (the silence after it is cut off)
    assert 1.2 <= media.wav_duration(wav) <= 1.8
    assert dsp.level_dbm0(media.pcm_of(wav)[-14400:-1600]) == pytest.approx(-12, abs=0.5)
    got = b"".join(heard)
    assert len(got) >= len(greeting)
    assert dsp.level_dbm0(got[:len(greeting)]) == pytest.approx(-10, abs=0.3)
    assert pool.in_use == 0  # on_hook closed our endpoint, aclose the far one


async def test_recording_ends_on_silence_when_the_far_end_stops_sending():
    """A far end that suppresses silence (sends nothing once the caller stops talking): the
    endpoint's quiet line lets the recording end on silence instead of running to its
    maximum."""
    pool = RtpPortPool(43200, 43299)
    ours = await RtpEndpoint.open("127.0.0.1", pool, jitter_ms=40)
    far = await RtpEndpoint.open("127.0.0.1", pool)
    port = MediaCallPort("sccp-2", send=ours.send_pcm, on_hook=ours.aclose)
    ours.on_audio, ours.on_digit = port.feed_audio, port.feed_digit
    ours.start("127.0.0.1", far.local_port, codec="pcma")
    far.start("127.0.0.1", ours.local_port, codec="pcma")

    async def talk_then_stop():
        pcm = dsp.tone(400, 800, -15)
        t0 = trio.current_time()
        for i, off in enumerate(range(0, len(pcm), 320)):
            await far.send_pcm(pcm[off:off + 320])
            await trio.sleep_until(t0 + (i + 1) * 0.02)

    async with trio.open_nursery() as n:
        await n.start(ours.run)
        n.start_soon(talk_then_stop)
        wav, why = await port.record(max_seconds=20, silence_seconds=1.5)
        await port.hangup()
        n.cancel_scope.cancel()
    await far.aclose()
    assert why == "silence"
    assert media.wav_duration(wav) == pytest.approx(0.8, abs=0.1)
    s = ours.stats()
    assert s["played"] == 40 and s["quiet_frames"] > 0 and s["underruns"] >= 1
