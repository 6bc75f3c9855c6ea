"""The SIP ports of a real pair with real third-party peers (the lab harness of
``lab/sip.py``):

* the lab PBX alone (kamailio, a dead port, a SIPp target): it hunts past the dead port and
  routes the whole dialog (ACK, the callee's BYE) by its Record-Route.
* kamailio as the PBX of a pair: it hunts "first available" over the primary's worker ports, then the
  secondary's.  SIPp callers place calls through it one after the other while the primary's
  messaging service is killed (SIGKILL); every call placed after the kill is answered by the
  secondary, which took over, and its message is written by node b.  The calls lost across
  the kill are counted and printed, not judged.
* baresip, a real softphone, calls the active node directly with a WAV as its microphone:
  without Diversion it is an unknown caller, so the opening greeting and then a message in
  the configured default mailbox, whose audio holds the WAV's tone.

Hang guards only; no timing is judged (the numbers printed are for the report).
"""
from __future__ import annotations

import math
import os
import shutil
import signal
import struct
import time
import wave
from pathlib import Path

import pytest
import trio

from lab.pair import Pair, free_udp_block
from lab.sip import BaresipPhone, KamailioPbx, free_udp_port, sipp
from telephony.core import media
from tests.integration.conftest import until, wait_active
from tests.integration.test_messaging import FAST, admin
from tests.integration.test_sip import VOICE_HZ, caller_wav, has_voice, messages, sip, sip_port, subscriber
from tests.telephony.sip.test_worker import PJSUA2_MISSING, goertzel

pytestmark = [pytest.mark.multiprocess]
needs_pjsua2 = pytest.mark.skipif(PJSUA2_MISSING is not None, reason=PJSUA2_MISSING or "")
needs_sipp = pytest.mark.skipif(shutil.which("sipp") is None,
                                reason="SIPp is not installed (apt-get install sip-tester)")
needs_kamailio = pytest.mark.skipif(shutil.which("kamailio") is None,
                                    reason="kamailio is not installed (apt-get install kamailio)")
needs_baresip = pytest.mark.skipif(shutil.which("baresip") is None,
                                   reason="baresip is not installed (apt-get install baresip-core)")

CALL_GUARD = 90.0  # s: one SIPp call, a hang guard (a call lost in the kill ends after ~17 s)


async def proxy_call(cwd: Path, proxy: str, ext: str, header: str | None = None) -> int:
    """One SIPp call through the proxy forwarded from ``ext`` (Diversion; or with ``header``),
    streaming tone.wav; SIPp's exit code (0: answered, and the BYE went through)."""
    cwd.mkdir()
    caller_wav(cwd / "tone.wav")
    args = [proxy, "-s", "5000", "-m", "1", "-mp", str(free_udp_block(4)), "-key", "extra",
            header or f"Diversion: <sip:{ext}@pbx>;reason=no-answer;counter=1"]
    async with sipp(cwd, "proxy_headers_rtp.xml", *args) as uac:
        return await uac.exit_code(CALL_GUARD)


@needs_sipp
@needs_kamailio
async def test_kamailio_lab_hunts_past_a_dead_port_and_routes_the_dialog(pair_dir):
    """The lab PBX alone: the primary destination is a port nobody listens on, the secondary a
    SIPp UAS that answers OPTIONS and INVITE and hangs up itself (its BYE is routed back
    through kamailio).  Both calls are answered by the secondary: the first hunts after no
    reply (or goes there directly if a probe marked the dead port first), the second goes
    there directly."""
    dead, target = free_udp_port(), free_udp_port()
    kam = KamailioPbx(pair_dir / "kamailio", port=free_udp_port(), primary=[("127.0.0.1", dead)],
                      secondary=[("127.0.0.1", target)], fr_timer_ms=1000)
    uas_cwd = pair_dir / "uas"
    uas_cwd.mkdir()
    rcs = []
    async with sipp(uas_cwd, "proxy_uas_target.xml", "-mp", str(free_udp_block(4)), port=target):
        try:
            await trio.to_thread.run_sync(kam.start)
            for i in range(2):
                rcs.append(await proxy_call(pair_dir / f"call-{i}", kam.address, "",
                                            header=f"X-Lab-Call: {i}"))
            st = kam.stats()
        finally:
            await trio.to_thread.run_sync(kam.stop)
    assert kam.proc is None and kam.stats()["routed"] == 2
    assert rcs == [0, 0], rcs
    assert st["answered"] == {f"127.0.0.1:{target}": 2}, st
    assert st["dead"] >= 1 or (f"127.0.0.1:{dead}" in [d for d, _ in st["down"]]), st
    assert st["all_failed"] == 0 and st["no_destination"] == 0, st
    print(f"\nkamailio lab alone: {st}")


@needs_pjsua2
@needs_sipp
@needs_kamailio
async def test_kamailio_hunts_to_the_secondary_when_the_primarys_service_is_killed(pair_dir):
    started = time.monotonic()
    mwi_port = free_udp_port()
    n_calls, kill_after, gap = 14, 5, 1.0  # a call every second; the kill after the 5th
    exts = [str(3001 + i) for i in range(n_calls)]
    # a: two workers (2 destinations); its service is restarted only after a minute (longer
    # than the test), so its ports stay dead and the PBX keeps hunting to b (a restarted
    # primary would pull activity back with the next call: docs/failover-rules.md, "Which
    # node a call-takeover moves to")
    extra_a = {**sip("a", mwi_port=mwi_port, count=8),
               "service": {"max_restarts": 0, "restart_backoff": 60, "restart_backoff_max": 60,
                           "restart_backoff_alone": 60}}
    extra_b = sip("b", mwi_port=mwi_port, count=8)
    with Pair(pair_dir, extra=FAST, extra_a=extra_a, extra_b=extra_b) as pair:
        pair.start()
        await wait_active(pair, "a")
        r = await admin(pair.a, {"op": "db_write", "ops": [subscriber(e) for e in exts]})
        assert r["ok"], r
        pa, pb = sip_port(pair, "a"), sip_port(pair, "b")
        kam = KamailioPbx(pair_dir / "kamailio", port=free_udp_port(),
                          primary=[("127.0.0.1", pa), ("127.0.0.1", pa + 1)],
                          secondary=[("127.0.0.1", pb), ("127.0.0.1", pb + 1)],
                          fr_timer_ms=1000, fr_inv_timer_ms=5000)
        mwi_cwd = pair_dir / "mwi"
        mwi_cwd.mkdir()
        results: dict[str, int] = {}
        placed: dict[str, float] = {}  # ext -> wall-clock time the call was placed
        kill_at = 0.0
        try:
            await trio.to_thread.run_sync(kam.start)
            async with sipp(mwi_cwd, "uas_mwi_200.xml", port=mwi_port):  # the lamps' sink

                async def one(ext: str) -> None:
                    results[ext] = await proxy_call(pair_dir / f"call-{ext}", kam.address, ext)

                async with trio.open_nursery() as nursery:
                    for i, ext in enumerate(exts):
                        placed[ext] = time.time()
                        nursery.start_soon(one, ext)
                        if i == 0:  # routing works: the first call is answered by a
                            (h, _), = await until(lambda ext=ext: messages(pair, f"mb{ext}"),
                                                  "the first call's message", timeout=30)
                            assert h["x-vmha-node"] == "a", h
                        if i + 1 == kill_after:
                            await trio.sleep(gap / 2)  # calls in progress on a
                            pid = pair.a.service_pid()
                            assert pid is not None
                            kill_at = time.time()
                            os.kill(pid, signal.SIGKILL)
                            continue  # the next call at once: before kamailio's next probe
                        await trio.sleep(gap)
            st = kam.stats()
        finally:
            await trio.to_thread.run_sync(kam.stop)

        # the secondary took over, and it stays active (a's service is not restarted yet)
        await wait_active(pair, "b")
        before = [e for e in exts if placed[e] < kill_at]
        after = [e for e in exts if placed[e] >= kill_at]
        assert after and len(before) == kill_after
        for ext in after:
            assert results[ext] == 0, f"call {ext}, placed after the kill, failed"
            await until(lambda ext=ext: len(messages(pair, f"mb{ext}")) == 1, f"message for {ext}")
            (h, wav), = messages(pair, f"mb{ext}")
            assert h["x-vmha-node"] == "b", (ext, h)
            assert h["x-vmha-forwarding"] == ext and h["x-vmha-reason"] == "no_answer", h
            assert has_voice(wav), f"the caller's tone is not in {ext}'s message"
        b_ports = {f"127.0.0.1:{pb}", f"127.0.0.1:{pb + 1}"}
        assert sum(n for d, n in st["answered"].items() if d in b_ports) >= len(after), st

        failed = [e for e in before if results[e] != 0]
        lost = [e for e in before if not messages(pair, f"mb{e}")]
        first_b = min((t for d, t in st["first_answer"].items() if d in b_ports), default=None)
        print(f"\nkamailio lab: {len(before)} calls placed before the kill: {len(failed)} failed "
              f"at SIPp ({', '.join(failed) or 'none'}), {len(lost)} left no message "
              f"({', '.join(lost) or 'none'}); {len(after)} placed after it, all answered by b")
        if first_b is not None:
            print(f"first answer by b {first_b - kill_at:.3f} s after the kill "
                  f"(the first call after the kill was placed {placed[after[0]] - kill_at:.3f} s after it)")
        print(f"kamailio stats: {st}")
        print(f"test runtime {time.monotonic() - started:.1f} s")


def has_tone(wav: bytes, freq: float) -> bool:
    """A 0.25 s window of ``wav`` (any PCM WAV sndfile writes) where ``freq`` dominates."""
    pcm = media.pcm_of(wav)
    samples = [int.from_bytes(pcm[i:i + 2], "little", signed=True) for i in range(0, len(pcm), 2)]
    for i in range(0, max(0, len(samples) - 2000), 400):
        window = samples[i:i + 2000]
        if goertzel(window, freq) > 20 * max(goertzel(window, 440.0), goertzel(window, 1000.0),
                                             goertzel(window, VOICE_HZ), 1.0):
            return True
    return False


def speaking_wav(path: Path, *, lead: float, tone: float, tail: float) -> None:
    """8 kHz 16-bit mono PCM WAV for baresip's aufile: ``lead`` s of silence (the greeting and
    the beep), ``tone`` s of VOICE_HZ, ``tail`` s of silence (longer than the call: at the end
    of the file baresip hangs up)."""
    frames = bytearray(int(8000 * lead) * 2)
    frames += b"".join(struct.pack("<h", int(12000 * math.sin(2 * math.pi * VOICE_HZ * i / 8000)))
                       for i in range(int(8000 * tone)))
    frames += bytes(int(8000 * tail) * 2)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(bytes(frames))


@needs_pjsua2
@needs_sipp
@needs_baresip
async def test_baresip_leaves_a_message_in_the_default_mailbox(pair_dir):
    started = time.monotonic()
    mwi_port = free_udp_port()
    extra = {**FAST, "messaging": {**FAST["messaging"], "default_mailbox": "mb1999"}}
    with Pair(pair_dir, extra=extra, extra_a=sip("a", mwi_port=mwi_port)) as pair:
        pair.start()
        await wait_active(pair, "a")
        r = await admin(pair.a, {"op": "db_write", "ops": [subscriber("1999")]})
        assert r["ok"], r
        wav = pair_dir / "speech.wav"
        # the opening greeting (1.1 s) and the beep (0.25 s) come first
        speaking_wav(wav, lead=2.5, tone=1.5, tail=20.0)
        phone = BaresipPhone(pair_dir / "baresip", uri=f"sip:5000@127.0.0.1:{sip_port(pair, 'a')}",
                             wav=wav, seconds=15, sip_port=free_udp_port(),
                             rtp_port=free_udp_block(10))
        mwi_cwd = pair_dir / "mwi"
        mwi_cwd.mkdir()
        try:
            async with sipp(mwi_cwd, "uas_mwi_200.xml", port=mwi_port):  # the lamp's sink
                t0 = time.monotonic()
                await trio.to_thread.run_sync(phone.start)
                (h, audio), = await until(lambda: messages(pair, "mb1999"),
                                          "baresip's message in the default mailbox", timeout=30)
                # the node hangs up after its goodbye; baresip logs the call's end
                await until(lambda: "terminated (duration" in phone.log(),
                            "baresip sees the call end", timeout=30)
                ended = time.monotonic() - t0
        except BaseException:
            print(phone.log()[-4000:])
            raise
        finally:
            await trio.to_thread.run_sync(phone.stop)
        assert h["x-vmha-node"] == "a", h
        assert h["x-vmha-reason"] == "direct" and h["x-vmha-caller"] == "labphone", h
        assert has_voice(audio), "baresip's tone is not in the message"
        # and the other way: baresip heard the opening greeting (523, 659, 784 Hz)
        heard, = [p for p in phone.recordings() if p.name.endswith("-dec.wav")]
        assert has_tone(heard.read_bytes(), 659.0), "baresip did not hear the opening greeting"
        print(f"\nbaresip lab: a {h['x-vmha-duration']} s message; the node hung up {ended:.1f} s "
              f"after baresip started; test runtime {time.monotonic() - started:.1f} s")
