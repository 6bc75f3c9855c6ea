"""``python -m lab.sip_caller`` (the built-in SIP caller of ``vmha demo``) as a real child
process against a real SIP worker (:mod:`telephony.sip.worker`), which this test drives as the
messaging service would: the INVITE must carry the Diversion header, the caller's WAV must be
heard in the worker's recording, and the result line must say how the call ended.  Every
process is stopped by PID; ``fail_after`` is a hang guard only.
"""
from __future__ import annotations

import json
import subprocess
import sys
import wave

import pytest
import trio

from lab.sip import GUARD, kill, wait_exit
from lab.sip_caller import diversion_header, host_of
from tests.telephony.sip.test_worker import PJSUA2_MISSING, ROOT, goertzel, worker, write_tone_pcm

pytestmark = [pytest.mark.multiprocess,
              pytest.mark.skipif(PJSUA2_MISSING is not None, reason=PJSUA2_MISSING or "")]

VOICE_HZ = 1250.0


def test_header_and_uri_helpers():
    assert host_of("sip:5000@127.0.0.1:5070") == "127.0.0.1"
    assert host_of("sip:pbx.example;transport=udp") == "pbx.example"
    with pytest.raises(ValueError):
        host_of("http://x")
    assert diversion_header("1001", "pbx", "no-answer") == "<sip:1001@pbx>;reason=no-answer;counter=1"


def test_bad_arguments_exit_2():
    r = subprocess.run([sys.executable, "-m", "lab.sip_caller", "--to", "nonsense"],
                       cwd=ROOT, capture_output=True, text=True, timeout=GUARD, check=False)
    assert r.returncode == 2 and "not a sip: URI" in r.stderr


class CallerProc:
    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.out = b""

    async def result(self) -> tuple[int, dict]:
        async def read():
            while data := await self.proc.stdout.receive_some(65536):
                self.out += data
        with trio.fail_after(GUARD):
            await read()
            code = await wait_exit(self.proc)
        lines = self.out.decode().splitlines()
        assert len(lines) == 1, lines  # exactly one line on stdout: the result
        return code, json.loads(lines[0])


async def start_caller(w, *args: str) -> CallerProc:
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "lab.sip_caller", "--bind", "127.0.0.1",
         "--to", f"sip:5000@127.0.0.1:{w.sip_port}", "--from", "0301234567", "--json", *args],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    return CallerProc(proc)


def tone_strength(path) -> tuple[float, float]:
    with wave.open(str(path), "rb") as r:
        pcm = r.readframes(r.getnframes())
    samples = [int.from_bytes(pcm[i:i + 2], "little", signed=True) for i in range(0, len(pcm), 2)]
    best = max((goertzel(samples[i:i + 4000], VOICE_HZ), goertzel(samples[i:i + 4000], 440.0))
               for i in range(0, max(1, len(samples) - 4000), 800))
    return best


async def test_forwarded_call_plays_its_wav_and_the_callee_hangs_up():
    async with worker() as w:
        write_tone_pcm(w.tmp / "voice.wav", 1.5, VOICE_HZ)
        caller = await start_caller(w, "--diversion", "1001", "--reason", "no-answer",
                                    "--wav", str(w.tmp / "voice.wav"), "--hold", "20")
        try:
            with trio.fail_after(GUARD):
                inc = await w.expect("incoming")
                assert "\r\nDiversion: <sip:1001@127.0.0.1>;reason=no-answer;counter=1\r\n" in inc["raw"]
                assert "sip:0301234567@127.0.0.1" in inc["from"]
                assert "c=IN IP4 127.0.0.1" in inc["raw"]  # no other interface in the SDP
                call = inc["call"]
                await w.send(op="answer", call=call)
                await w.expect("media", call=call)
                await w.send(op="record", call=call, id=1, path="rec.wav")
                await trio.sleep(2.0)  # the WAV is 1.5 s long (not a timing check: any length works)
                await w.send(op="stop_record", call=call, id=1)
                rec = await w.expect("recorded", call=call, id=1)
                await w.send(op="hangup", call=call)
                await w.expect("disconnected", call=call)
            code, res = await caller.result()
        finally:
            kill(caller.proc)
            with trio.CancelScope(shield=True):
                await caller.proc.wait()
        assert code == 0, res
        assert res["answered"] is True and res["code"] == 200 and res["by"] == "remote", res
        assert res["duration"] > 0
        voice, other = tone_strength(rec["path"])
        assert voice > 20 * max(other, 1.0), "the caller's WAV is not in the recording"


async def test_caller_hangs_up_after_hold_and_reports_a_rejection():
    async with worker() as w:
        caller = await start_caller(w, "--hold", "0.5")
        try:
            with trio.fail_after(GUARD):
                inc = await w.expect("incoming")
                assert "Diversion:" not in inc["raw"]  # none without --diversion
                await w.send(op="answer", call=inc["call"])
                ev = await w.expect("disconnected", call=inc["call"])
                assert ev["by"] == "remote"  # the caller's BYE
            code, res = await caller.result()
        finally:
            kill(caller.proc)
            with trio.CancelScope(shield=True):
                await caller.proc.wait()
        assert code == 0 and res["answered"] and res["by"] == "local", res

        caller = await start_caller(w, "--diversion", "1002")
        try:
            with trio.fail_after(GUARD):
                inc = await w.expect("incoming")
                await w.send(op="reject", call=inc["call"], code=486)
            code, res = await caller.result()
        finally:
            kill(caller.proc)
            with trio.CancelScope(shield=True):
                await caller.proc.wait()
        assert code == 1, res
        assert res == {"answered": False, "code": 486, "reason": "Busy Here", "duration": 0.0,
                       "by": "remote"}, res
