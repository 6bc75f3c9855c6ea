"""``python -m telephony.sip.worker`` as a real child process, driven by this test playing the
messaging service on a Unix socket (JSON lines), against real SIPp processes on 127.0.0.1.

The SIPp scenarios are in ``lab/sipp/``; SIPp runs (:func:`lab.sip.sipp`) in a temporary
folder (its cwd holds the streamed WAV and its logs).  RFC 2833 DTMF comes from a small pjsua2 caller process
(SIPp cannot send telephone-events without a pcap).  Every process is started and stopped by
PID; every ``fail_after`` is a hang guard, never a speed limit.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import wave
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from lab.pair import free_udp_block
from lab.sip import GUARD, SCENARIOS, free_udp_port, kill, sipp, wait_exit, write_tone_ulaw

ROOT = Path(__file__).resolve().parents[3]


def _pjsua2_missing() -> str | None:
    """The skip reason if the package pjsua2 is not installed at all; None if it is.

    Only a missing top-level ``pjsua2`` counts as missing: a package that is there but broken
    (its bindings not staged, a shared library that does not load, an error inside it) raises
    here, so its traceback fails the collection instead of hiding behind a skip."""
    try:
        import pjsua2
    except ModuleNotFoundError as exc:
        if exc.name != "pjsua2":
            raise
        return ("pjsua2 is not installed: the SIP tests need it "
                "(.venv/bin/pip install -e '.[test]' installs pjsua2-python==2.15.1.post1)")
    _ = pjsua2.Endpoint  # the lazy package loads its bindings here; any failure propagates
    return None


PJSUA2_MISSING = _pjsua2_missing()
pytestmark = [
    pytest.mark.multiprocess,
    pytest.mark.skipif(PJSUA2_MISSING is not None, reason=PJSUA2_MISSING or ""),
]
needs_sipp = pytest.mark.skipif(
    shutil.which("sipp") is None,
    reason="SIPp is not installed: the SIP worker's peer (apt-get install sip-tester)")


# ============================================================================ helpers

def write_tone_pcm(path: Path, seconds: float = 1.0, freq: float = 440.0) -> None:
    """8 kHz 16-bit mono PCM WAV (stdlib wave)."""
    n = int(8000 * seconds)
    frames = b"".join(struct.pack("<h", int(12000 * math.sin(2 * math.pi * freq * i / 8000)))
                      for i in range(n))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(frames)


def goertzel(samples: list[int], freq: float, rate: int = 8000) -> float:
    coeff = 2 * math.cos(2 * math.pi * freq / rate)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x + coeff * s1 - s2, s1
    return s1 * s1 + s2 * s2 - coeff * s1 * s2


class Parent:
    """The messaging service's end of one worker's control socket."""

    def __init__(self, stream: trio.SocketStream, proc: trio.Process, tmp: Path) -> None:
        self.stream = stream
        self.proc = proc
        self.tmp = tmp
        self.buf = b""
        self.events: list[dict] = []
        self.closed = False
        self.ready: dict = {}

    async def send(self, **op: Any) -> None:
        await self.stream.send_all(json.dumps(op).encode() + b"\n")

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def next(self) -> dict | None:
        while b"\n" not in self.buf:
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self.closed = True
                return None
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        assert len(line) < 65536
        ev = json.loads(line)
        assert isinstance(ev, dict) and isinstance(ev.get("ev"), str), ev
        self.events.append(ev)
        return ev

    async def expect(self, ev: str, **match: Any) -> dict:
        while True:
            msg = await self.next()
            assert msg is not None, f"worker closed the socket while waiting for {ev} {match}"
            if msg["ev"] == ev and all(msg.get(k) == v for k, v in match.items()):
                return msg
            assert msg["ev"] != "error" or ev == "error", f"unexpected error: {msg}"

    async def drain(self) -> list[dict]:
        """Every event until the worker closes the socket."""
        out = []
        while (msg := await self.next()) is not None:
            out.append(msg)
        return out


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@asynccontextmanager
async def worker(*extra: str, ports: int = 4, name: str = "w1"):
    """Listen on a fresh Unix socket, start the worker, accept it, read "ready".  Yields a
    Parent; the worker is killed by PID at the end if it is still running."""
    tmp = Path(tempfile.mkdtemp(prefix="vmha-sipw-", dir="/tmp"))  # AF_UNIX path <= 107 bytes
    path = str(tmp / "c.sock")
    log_path = tmp / "worker.log"
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    proc = None
    sip_port = free_udp_port()
    rtp_port = free_udp_block(4 * ports)
    try:
        await sock.bind(path)
        sock.listen(1)
        listener = trio.SocketListener(sock)
        with open(log_path, "wb") as log_file:
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "telephony.sip.worker", "--control", path, "--name", name,
                 "--bind", "127.0.0.1", "--sip-port", str(sip_port), "--rtp-port", str(rtp_port),
                 "--ports", str(ports), "--media-dir", str(tmp), *extra],
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file)
        with trio.fail_after(GUARD):
            stream = await listener.accept()
        parent = Parent(stream, proc, tmp)
        try:
            with trio.fail_after(GUARD):
                parent.ready = await parent.expect("ready")
            assert parent.ready["pid"] == proc.pid
            assert parent.ready["sip"] == f"127.0.0.1:{sip_port}"
            parent.sip_port = sip_port  # type: ignore[attr-defined]
            yield parent
        except BaseException:
            print(log_path.read_text(errors="replace")[-20000:])
            raise
        finally:
            await stream.aclose()
            await listener.aclose()
    finally:
        kill(proc)
        if proc is not None:
            with trio.CancelScope(shield=True):
                await proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def uac_args(parent: Parent, *extra: str) -> list[str]:
    return [f"127.0.0.1:{parent.sip_port}", "-s", "5000", "-mp", str(free_udp_block(4)),
            *extra]


# ============================================================================ tests

@needs_sipp
async def test_diversion_answer_play_and_hang_up():
    async with worker() as w:
        write_tone_pcm(w.tmp / "prompt.wav", 1.0)
        write_tone_pcm(w.tmp / "long.wav", 5.0, 600.0)
        async with sipp(w.tmp, "uac_diversion_wait_bye.xml", *uac_args(w, "-key", "divnum", "1234",
                                                                       "-m", "1")) as uac:
            with trio.fail_after(GUARD):
                inc = await w.expect("incoming")
                diversion = "Diversion: <sip:1234@127.0.0.1>;reason=no-answer;counter=1;privacy=off"
                assert f"\r\n{diversion}\r\n" in inc["raw"]
                assert inc["raw"].startswith("INVITE sip:5000@127.0.0.1:")
                assert inc["request_uri"] == f"sip:5000@127.0.0.1:{w.sip_port}"
                assert "sip:0301234567@127.0.0.1" in inc["from"]
                assert '"Caller \ufffd' in inc["raw"]   # the Latin-1 byte, replaced
                assert "sip:5000@127.0.0.1" in inc["to"]
                assert inc["remote"] == f"127.0.0.1:{uac.port}"
                assert inc["sip_call_id"] and inc["call"].startswith("w1-")
                call = inc["call"]
                await w.send(op="answer", call=call)
                await w.expect("media", call=call)
                # refused, and nothing changes: no such file, not a WAV, a second answer,
                # a recording into a missing folder
                (w.tmp / "junk.wav").write_bytes(b"this is no RIFF file" * 10)
                await w.send(op="play", call=call, id=1, path="nope.wav")
                assert (await w.expect("error", ref=1))["op"] == "play"
                await w.send(op="play", call=call, id=2, path="junk.wav")
                assert (await w.expect("error", ref=2))["op"] == "play"
                await w.send(op="answer", call=call)
                assert (await w.expect("error"))["op"] == "answer"
                await w.send(op="record", call=call, id=3, path="no/such/dir/x.wav")
                assert (await w.expect("error", ref=3))["op"] == "record"
                await w.send(op="play", call=call, id=6, path=str(w.tmp / "long.wav"))
                await w.send(op="play", call=call, id=6, path="long.wav")       # id in use
                assert (await w.expect("error", ref=6))["op"] == "play"
                await w.send(op="stop_play", call=call, id=6)
                assert (await w.expect("played", call=call, id=6))["how"] == "stopped"
                await w.send(op="play", call=call, id=7, path="prompt.wav")  # under --media-dir
                played = await w.expect("played", call=call, id=7)
                assert played["how"] == "eof"
                await w.send(op="hangup", call=call)
                gone = await w.expect("disconnected", call=call)
                assert gone["by"] == "local"
            assert await uac.exit_code() == 0
        await w.send(op="shutdown")
        assert await wait_exit(w.proc) == 0
        assert len([e for e in w.events if e["ev"] == "error"]) == 5


@needs_sipp
async def test_reject_and_480_when_nobody_answers():
    async with worker("--answer-timeout", "1") as w:
        async with sipp(w.tmp, "uac_expect_486.xml", *uac_args(w, "-m", "1")) as uac:
            with trio.fail_after(GUARD):
                call = (await w.expect("incoming"))["call"]
                await w.send(op="reject", call=call, code=486)
                gone = await w.expect("disconnected", call=call)
            assert (gone["code"], gone["by"]) == (486, "local")
            assert await uac.exit_code() == 0
        async with sipp(w.tmp, "uac_expect_480.xml", *uac_args(w, "-m", "1")) as uac:
            with trio.fail_after(GUARD):
                call = (await w.expect("incoming"))["call"]   # not answered
                gone = await w.expect("disconnected", call=call)
            assert (gone["code"], gone["by"]) == (480, "local")
            assert await uac.exit_code() == 0            # it heard 180, then 480
        await w.send(op="answer", call=call)             # too late: an error, nothing else
        assert (await w.expect("error"))["call"] == call
        await w.send(op="shutdown")
        assert await wait_exit(w.proc) == 0


@needs_sipp
async def test_record_streamed_tone():
    async with worker() as w:
        write_tone_ulaw(w.tmp / "tone.wav", 2.0)
        async with sipp(w.tmp, "uac_rtp_tone.xml", *uac_args(w, "-m", "1", "-d", "2500")) as uac:
            with trio.fail_after(GUARD):
                call = (await w.expect("incoming"))["call"]
                await w.send(op="answer", call=call)
                await w.expect("media", call=call)
                await w.send(op="record", call=call, id=1, path="msg.wav")
                # the file grows while recording (the service tails it), header lengths still 0
                path = w.tmp / "msg.wav"
                while not path.exists() or path.stat().st_size < 8192:
                    await trio.sleep(0.02)
                head = path.read_bytes()[:44]
                assert head[:4] == b"RIFF" and head[40:44] == b"\0\0\0\0", head
                rec = await w.expect("recorded", call=call, id=1)   # the caller hung up
                gone = await w.expect("disconnected", call=call)
                assert gone["by"] == "remote"
            assert await uac.exit_code() == 0
        assert rec["path"] == str(w.tmp / "msg.wav")
        with wave.open(rec["path"], "rb") as wf:
            assert (wf.getnchannels(), wf.getsampwidth(), wf.getframerate()) == (1, 2, 8000)
            assert rec["bytes"] == os.path.getsize(rec["path"]) == 44 + wf.getnframes() * 2
            pcm = wf.readframes(wf.getnframes())
        samples = list(struct.unpack(f"<{len(pcm) // 2}h", pcm))
        assert len(samples) >= 8000, "less than 1 s recorded"
        loud = [s for s in samples if abs(s) > 2000]
        assert len(loud) > 8000, "the tone is not in the recording"
        tone = goertzel(samples, 440)
        for other in (300, 600, 1000, 2000):
            assert tone > 50 * goertzel(samples, other), other
        await w.send(op="shutdown")
        assert await wait_exit(w.proc) == 0


@needs_sipp
async def test_dtmf_by_sip_info_both_bodies():
    async with worker() as w:
        async with sipp(w.tmp, "uac_info_dtmf.xml", *uac_args(w, "-key", "divnum", "1", "-m", "1")
                        ) as uac:
            with trio.fail_after(GUARD):
                call = (await w.expect("incoming"))["call"]
                await w.send(op="answer", call=call)
                digits = []
                while len(digits) < 3:
                    ev = await w.expect("dtmf", call=call)
                    digits.append((ev["digit"], ev["via"]))
                await w.send(op="hangup", call=call)
                await w.expect("disconnected", call=call)
            # every INFO got its 200 (the scenario fails otherwise), the call ended by our BYE
            assert await uac.exit_code() == 0
        assert digits == [("5", "info"), ("7", "info"), ("#", "info")]


def refer_to_seen(cwd: Path, scenario: str) -> list[str]:
    """The Refer-To values SIPp logged (``-trace_logs``) in ``cwd`` for ``scenario``."""
    logs = "".join(f.read_text(errors="replace") for f in cwd.glob(f"{scenario}_*_logs.log"))
    return re.findall(r"Refer-To=(.*)", logs)


async def answered_call(w: Parent) -> tuple[str, str]:
    """Take the next ``incoming``, answer it, wait for its media: (call, sip:0@<remote>)."""
    inc = await w.expect("incoming")
    call = inc["call"]
    await w.send(op="answer", call=call)
    await w.expect("media", call=call)
    return call, f"sip:0@{inc['remote']}"


@needs_sipp
async def test_transfer_accepted_final_notify_200_then_the_worker_sends_bye():
    async with worker() as w:
        async with sipp(w.tmp, "uac_refer_accept.xml",
                        *uac_args(w, "-key", "sipfrag", "SIP/2.0 200 OK", "-m", "1",
                                  "-trace_logs")) as uac:
            with trio.fail_after(GUARD):
                inc = await w.expect("incoming")
                call, target = inc["call"], f"sip:0@{inc['remote']}"
                assert inc["remote"] == f"127.0.0.1:{uac.port}"
                await w.send(op="transfer", call=call, id=1, target=target)  # not answered
                err = await w.expect("error", ref=1)
                assert err["op"] == "transfer" and "not answered" in err["message"], err
                await w.send(op="answer", call=call)
                await w.expect("media", call=call)
                await w.send(op="transfer", call=call, id=2, target=target)
                await w.send(op="transfer", call=call, id=3, target=target)  # one at a time
                assert "still pending" in (await w.expect("error", ref=3))["message"]
                res = await w.expect("transfer_result", call=call)
                gone = await w.expect("disconnected", call=call)
            # SIPp saw the REFER, its NOTIFY got 200, then our BYE came (its scenario checks)
            assert await uac.exit_code() == 0
        assert (res["id"], res["code"], res["reason"]) == (2, 200, "OK")
        assert (gone["code"], gone["by"]) == (200, "local")
        assert refer_to_seen(w.tmp, "uac_refer_accept") == [target]
        kinds = [e["ev"] for e in w.events if e.get("call") == call and e["ev"] != "error"]
        assert kinds[-2:] == ["transfer_result", "disconnected"], kinds
        assert kinds.count("transfer_result") == 1
        await w.send(op="shutdown")
        assert await wait_exit(w.proc) == 0


@needs_sipp
@pytest.mark.parametrize("refusal", ["603 Decline", "405 Method Not Allowed"])
async def test_transfer_refused_gives_the_refer_status_and_the_call_stays_up(refusal):
    async with worker() as w:
        write_tone_pcm(w.tmp / "prompt.wav", 0.5)
        # SIPp checks status lines at load time (no key there): a copy with this status
        scenario = w.tmp / "uac_refer_refuse.xml"
        text = (SCENARIOS / "uac_refer_refuse.xml").read_text(encoding="latin-1")
        assert text.count("SIP/2.0 603 Decline") == 1
        scenario.write_text(text.replace("SIP/2.0 603 Decline", f"SIP/2.0 {refusal}"),
                            encoding="latin-1")
        async with sipp(w.tmp, str(scenario), *uac_args(w, "-m", "1", "-trace_logs")) as uac:
            target, res, gone = await failed_transfer_then_hang_up(w, 5)
            assert await uac.exit_code() == 0      # the BYE was the test's hang-up
        code, reason = refusal.split(" ", 1)
        assert (res["id"], res["code"], res["reason"]) == (5, int(code), reason)
        assert gone["by"] == "local"
        assert refer_to_seen(w.tmp, "uac_refer_refuse") == [target]
        await w.send(op="shutdown")
        assert await wait_exit(w.proc) == 0


async def failed_transfer_then_hang_up(w, tid: int) -> tuple[str, dict, dict]:
    """Answer SIPp's call, transfer it (id ``tid``), then show the call is still up after the
    result (a prompt plays to its end on it) and hang up: (target, result, disconnected)."""
    with trio.fail_after(GUARD):
        call, target = await answered_call(w)
        await w.send(op="transfer", call=call, id=tid, target=target)
        res = await w.expect("transfer_result", call=call)
        await w.send(op="play", call=call, id=tid + 1, path="prompt.wav")
        assert (await w.expect("played", call=call, id=tid + 1))["how"] == "eof"
        await w.send(op="hangup", call=call)
        return target, res, await w.expect("disconnected", call=call)


@needs_sipp
async def test_transfer_final_notify_486_gives_486_and_the_call_stays_up():
    async with worker() as w:
        write_tone_pcm(w.tmp / "prompt.wav", 0.5)
        async with sipp(w.tmp, "uac_refer_accept.xml",
                        *uac_args(w, "-key", "sipfrag", "SIP/2.0 486 Busy Here", "-m", "1",
                                  "-trace_logs")) as uac:
            target, res, gone = await failed_transfer_then_hang_up(w, 7)
            assert await uac.exit_code() == 0
        assert (res["id"], res["code"], res["reason"]) == (7, 486, "Busy Here")
        assert gone["by"] == "local"
        assert refer_to_seen(w.tmp, "uac_refer_accept") == [target]
        await w.send(op="shutdown")
        assert await wait_exit(w.proc) == 0


@needs_sipp
async def test_transfer_cut_by_the_far_ends_bye_reports_487():
    async with worker() as w:
        async with sipp(w.tmp, "uac_refer_then_bye.xml", *uac_args(w, "-m", "1")) as uac:
            with trio.fail_after(GUARD):
                call, target = await answered_call(w)
                await w.send(op="transfer", call=call, id=9, target=target)
                res = await w.expect("transfer_result", call=call)
                gone = await w.expect("disconnected", call=call)
            assert await uac.exit_code() == 0
        assert (res["id"], res["code"]) == (9, 487)
        assert res["reason"] == "call ended before the transfer's final status, REFER accepted"
        assert (gone["code"], gone["by"]) == (200, "remote")
        await w.send(op="shutdown")
        assert await wait_exit(w.proc) == 0


DTMF_CALLER = textwrap.dedent('''
    import sys, time
    import pjsua2 as pj
    target, port, digits = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    ep = pj.Endpoint(); ep.libCreate()
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0; cfg.uaConfig.mainThreadOnly = True
    cfg.logConfig.level = 1; cfg.logConfig.consoleLevel = 1
    cfg.medConfig.sndAutoCloseTime = -1; cfg.medConfig.clockRate = 8000
    cfg.medConfig.sndClockRate = 8000
    ep.libInit(cfg); ep.audDevManager().setNullDev()
    t = pj.TransportConfig(); t.port = port; t.boundAddress = "127.0.0.1"
    ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, t); ep.libStart()
    acfg = pj.AccountConfig(); acfg.idUri = "sip:dtmf@127.0.0.1:%d" % port
    acfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
    acc = pj.Account(); acc.create(acfg)
    state = {"media": False, "gone": False}
    class Caller(pj.Call):
        def onCallState(self, prm):
            if self.getInfo().state == pj.PJSIP_INV_STATE_DISCONNECTED:
                state["gone"] = True
        def onCallMediaState(self, prm):
            ci = self.getInfo()       # keep it: ci.media points into it
            for m in ci.media:
                if m.type == pj.PJMEDIA_TYPE_AUDIO and m.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                    state["media"] = True
    call = Caller(acc)
    call.makeCall(target, pj.CallOpParam(True))
    def spin(key, seconds):
        end = time.monotonic() + seconds
        while not state[key] and time.monotonic() < end:
            ep.libHandleEvents(10)
        return state[key]
    ok = spin("media", 20)
    if ok:
        spin("gone", 0.3)
        call.dialDtmf(digits)        # RFC 2833 telephone-events
        ok = spin("gone", 20)        # the worker's side hangs up after the digits
    if not state["gone"]:
        call.hangup(pj.CallOpParam(True)); spin("gone", 2)
    del call
    ep.libDestroy()
    sys.exit(0 if ok else 3)
''')


async def test_dtmf_rfc2833_from_pjsua2_caller():
    async with worker() as w:
        script = w.tmp / "caller.py"
        script.write_text(DTMF_CALLER)
        caller = None
        try:
            with open(w.tmp / "caller.log", "wb") as out:
                caller = await trio.lowlevel.open_process(
                    [sys.executable, str(script), f"sip:5000@127.0.0.1:{w.sip_port}",
                     str(free_udp_port()), "19#"],
                    cwd=w.tmp, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
            with trio.fail_after(GUARD):
                call = (await w.expect("incoming"))["call"]
                await w.send(op="answer", call=call)
                digits = []
                while len(digits) < 3:
                    ev = await w.expect("dtmf", call=call)
                    digits.append((ev["digit"], ev["via"]))
                await w.send(op="hangup", call=call)
                await w.expect("disconnected", call=call)
            code = await wait_exit(caller)
            if code != 0:
                print((w.tmp / "caller.log").read_text(errors="replace"))
            assert code == 0
        finally:
            kill(caller)
            if caller is not None:
                with trio.CancelScope(shield=True):
                    await caller.wait()
        assert digits == [("1", "rfc2833"), ("9", "rfc2833"), ("#", "rfc2833")]


MWI_BODY = ("Messages-Waiting: yes\r\nMessage-Account: sip:1001@127.0.0.1\r\n"
            "Voice-Message: 2/8 (0/2)\r\n")
MWI_HEADERS = {"Event": "message-summary", "Subscription-State": "active"}


@needs_sipp
async def test_mwi_notify_200_403_and_timeout():
    # --tsx-timeout: the unanswered NOTIFY ends in 2 s instead of pjsip's 32 s (64*T1)
    async with worker("--tsx-timeout", "2000") as w:
        p200, p403, nobody, pmany = (free_udp_port() for _ in range(4))
        many = w.tmp / "many"
        many.mkdir()
        async with sipp(w.tmp, "uas_mwi_200.xml", "-m", "1", "-trace_logs", port=p200) as ok_uas, \
                sipp(w.tmp, "uas_mwi_403.xml", "-m", "1", port=p403) as no_uas, \
                sipp(many, "uas_mwi_200.xml", "-m", "10", "-trace_logs", port=pmany) as ten_uas:
            await trio.sleep(0.3)  # let them bind their ports
            with trio.fail_after(GUARD):
                await w.send(op="notify", id=1, target=f"sip:1001@127.0.0.1:{p200}",
                             account="sip:1001@127.0.0.1", body=MWI_BODY, headers=MWI_HEADERS)
                await w.send(op="notify", id=2, target=f"sip:1001@127.0.0.1:{p403}",
                             body=MWI_BODY.replace("yes", "no"), headers=MWI_HEADERS)
                await w.send(op="notify", id=3, target=f"sip:1001@127.0.0.1:{nobody}",
                             body=MWI_BODY, headers=MWI_HEADERS)
                for i in range(10):   # ten at once, each From a different mailbox
                    dn = 2000 + i
                    await w.send(op="notify", id=100 + i, target=f"sip:{dn}@127.0.0.1:{pmany}",
                                 account=f"sip:{dn}@127.0.0.1", body=MWI_BODY, headers=MWI_HEADERS)
                await w.send(op="notify", id=3, target=f"sip:1001@127.0.0.1:{p200}",
                             body=MWI_BODY, headers=MWI_HEADERS)       # id 3 still pending
                assert (await w.expect("error", ref=3))["op"] == "notify"
                while len([e for e in w.events if e["ev"] == "notify_result"]) < 13:
                    await w.expect("notify_result")
            results = {e["id"]: (e["code"], e["reason"])
                       for e in w.events if e["ev"] == "notify_result"}
            assert await ok_uas.exit_code() == 0   # Event, Content-Type and body checked
            assert await no_uas.exit_code() == 0
            assert await ten_uas.exit_code() == 0
        assert results[1] == (200, "OK")
        assert results[2] == (403, "Forbidden")
        assert results[3][0] == 408
        assert all(results[100 + i] == (200, "OK") for i in range(10))
        logs = "".join(f.read_text() for f in w.tmp.glob("uas_mwi_200_*_logs.log"))
        assert "waiting=yes" in logs and "new=2 old=8 urgent=0/2" in logs
        assert "From=sip:1001@127.0.0.1" in logs.replace(" ", "")
        logs = "".join(f.read_text() for f in many.glob("uas_mwi_200_*_logs.log"))
        froms = set(re.findall(r"From=(sip:\d+@127\.0\.0\.1)", logs.replace(" ", "")))
        assert froms == {f"sip:{2000 + i}@127.0.0.1" for i in range(10)}
        await w.send(op="shutdown")
        assert await wait_exit(w.proc) == 0


@needs_sipp
async def test_fifth_call_is_refused_while_four_are_held():
    async with worker(ports=4) as w:
        async with sipp(w.tmp, "uac_diversion_wait_bye.xml",
                        *uac_args(w, "-key", "divnum", "1", "-m", "4", "-l", "4", "-r", "20",
                                  "-trace_logs")) as four:
            calls = []
            with trio.fail_after(GUARD):
                while len(calls) < 4:
                    ev = await w.next()
                    assert ev is not None
                    if ev["ev"] == "incoming":
                        await w.send(op="answer", call=ev["call"])
                        calls.append(ev["call"])
                media = {e["call"] for e in w.events if e["ev"] == "media"}
                while len(media) < 4:
                    media.add((await w.expect("media"))["call"])
                async with sipp(w.tmp, "uac_expect_486.xml", *uac_args(w, "-m", "1")) as fifth:
                    assert await fifth.exit_code() == 0          # it got 486
                    busy = await w.expect("busy")
                assert busy["code"] == 486
                await w.send(op="stats")
                stats = await w.expect("stats")
                assert stats["calls"] == 4
                for call in calls:                               # the 4 are fine
                    await w.send(op="hangup", call=call)
                for _ in calls:
                    ev = await w.expect("disconnected")
                    assert ev["by"] == "local" and ev["call"] in calls
            assert await four.exit_code() == 0
        assert len([e for e in w.events if e["ev"] == "incoming"]) == 4
        # the SDP answers said 127.0.0.1 (checked by SIPp) and RTP ports in the worker's range
        logs = "".join(f.read_text(errors="replace")
                       for f in w.tmp.glob("uac_diversion_wait_bye_*_logs.log"))
        first, last = w.ready["rtp"]
        rtp = [int(x) for x in re.findall(r"rtp=(\d+)", logs)]
        assert len(rtp) == 4 and all(first <= p <= last for p in rtp), (rtp, first, last)


@needs_sipp
async def test_register_mode_registered_then_unregistered():
    tmp = Path(tempfile.mkdtemp(prefix="vmha-reg-"))
    pw = tmp / "pw"
    pw.write_text("s3cret\n")
    pw.chmod(0o600)  # a secret file: the worker refuses one others may read
    try:
        async with sipp(tmp, "uas_register_auth.xml", "-m", "1") as registrar:
            await trio.sleep(0.2)
            async with worker("--mode", "register", "--registrar",
                              f"sip:127.0.0.1:{registrar.port}", "--user", "vm",
                              "--password-file", str(pw), ports=1) as w:
                assert w.ready["mode"] == "register" and w.ready["accounts"] == ["vm-1"]
                with trio.fail_after(GUARD):
                    reg = await w.expect("registration")
                assert reg == {"ev": "registration", "account": "vm-1", "state": "registered",
                               "code": 200, "reason": "OK", "expires": 300}
                # a call to the registered user reaches its account
                async with sipp(w.tmp, "uac_expect_486.xml", f"127.0.0.1:{w.sip_port}", "-s",
                                "vm-1", "-m", "1") as uac:
                    with trio.fail_after(GUARD):
                        inc = await w.expect("incoming")
                        assert inc["account"] == "vm-1"
                        assert inc["request_uri"] == f"sip:vm-1@127.0.0.1:{w.sip_port}"
                        await w.send(op="reject", call=inc["call"], code=486)
                    assert await uac.exit_code() == 0
                await w.send(op="shutdown")
                with trio.fail_after(GUARD):
                    unreg = await w.expect("registration")
                assert unreg["state"] == "unregistered"
                assert await wait_exit(w.proc) == 0
            assert await registrar.exit_code() == 0  # the digest checked out, un-REGISTER seen
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@needs_sipp
async def test_register_mode_refused_403():
    tmp = Path(tempfile.mkdtemp(prefix="vmha-reg-"))
    pw = tmp / "pw"
    pw.write_text("whatever\n")
    pw.chmod(0o600)  # a secret file: the worker refuses one others may read
    try:
        async with sipp(tmp, "uas_register_403.xml", "-m", "1") as registrar:
            await trio.sleep(0.2)
            async with worker("--mode", "register", "--registrar",
                              f"sip:127.0.0.1:{registrar.port}", "--users", "vm-9",
                              "--password-file", str(pw), ports=1) as w:
                with trio.fail_after(GUARD):
                    reg = await w.expect("registration")
                assert (reg["account"], reg["state"], reg["code"]) == ("vm-9", "failed", 403)
                await w.send(op="shutdown")
                assert await wait_exit(w.proc) == 0
            assert await registrar.exit_code() == 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def test_bad_lines_change_nothing_and_socket_close_exits():
    async with worker() as w:
        bad = [
            b"not json\n",
            b"[1, 2]\n",
            b'{"no": "op"}\n',
            b'{"op": 5}\n',
            b'{"op": "dance"}\n',
            b'{"op": "answer"}\n',
            b'{"op": "answer", "call": "w1-99"}\n',
            b'{"op": "play", "call": "w1-1", "id": "x", "path": "a.wav"}\n',
            b'{"op": "record", "call": "w1-1", "id": 1, "path": "a.mp3"}\n',
            b'{"op": "reject", "call": "w1-1", "code": 200}\n',
            b'{"op": "notify", "id": 4, "target": "mailto:x", "body": ""}\n',
            b'{"op": "notify", "id": 5, "target": "sip:a@127.0.0.1", "headers": {"Via": "x"}}\n',
            b'{"op": "notify", "id": 6, "target": "sip:a@127.0.0.1",'
            b' "headers": {"X": "a\\r\\nB: c"}}\n',
            b'{"op": "stop_play", "call": "w1-1", "id": 1}\n',
            b"x" * 70000 + b"\n",                 # over the 64 KiB line limit
            b'\xff\xfe{"op": "stats"}\n',
            b'{"op": "transfer", "call": "w1-1", "id": 7, "target": "tel:0"}\n',
            b'{"op": "transfer", "call": "w1-1", "id": 8, "target": "sip:0@a\\r\\nX: y"}\n',
            b'{"op": "transfer", "call": "w1-1", "id": 9, "target": "sip:' + b"0" * 300 + b'@a"}\n',
            b'{"op": "transfer", "call": "w1-1", "id": 10, "target": "sip:0@127.0.0.1"}\n',
        ]
        for line in bad:
            await w.send_raw(line)
        with trio.fail_after(GUARD):
            errors = [await w.expect("error") for _ in bad]
        assert all(e["message"] for e in errors)
        assert errors[8].get("ref") == 1 and errors[8]["op"] == "record"
        assert errors[10]["ref"] == 4
        assert [(e.get("ref"), e.get("op")) for e in errors[-4:]] == \
            [(7, "transfer"), (8, "transfer"), (9, "transfer"), (10, "transfer")]
        assert "no call" in errors[-1]["message"]           # unknown call
        await w.send(op="stats")                  # still alive and unchanged
        with trio.fail_after(GUARD):
            stats = await w.expect("stats")
        assert stats == {"ev": "stats", "calls": 0, "media_ports": 1, "pending_notifies": 0,
                         "clock": False, "clock_starts": 0}
        pid = w.proc.pid
        await w.stream.aclose()                   # the service is gone
        assert await wait_exit(w.proc) == 0
        assert pid_gone(pid)


async def test_sigterm_exits_0_even_with_a_notify_pending():
    async with worker() as w:                     # default 32 s transaction timeout
        await w.send(op="notify", id=9, target=f"sip:1001@127.0.0.1:{free_udp_port()}",
                     body=MWI_BODY, headers=MWI_HEADERS)
        await w.send(op="stats")
        with trio.fail_after(GUARD):
            assert (await w.expect("stats"))["pending_notifies"] == 1
        os.kill(w.proc.pid, signal.SIGTERM)
        with trio.fail_after(GUARD):
            rest = await w.drain()                # waits <= 5 s for the NOTIFY, then gives up
        assert {"ev": "notify_result", "id": 9, "code": 408, "reason": "worker shut down"} in rest
        assert await wait_exit(w.proc) == 0
        assert pid_gone(w.proc.pid)


@needs_sipp
async def test_sigterm_hangs_up_calls_and_exits_0():
    async with worker() as w:
        async with sipp(w.tmp, "uac_diversion_wait_bye.xml",
                        *uac_args(w, "-key", "divnum", "1", "-m", "1")) as uac:
            with trio.fail_after(GUARD):
                call = (await w.expect("incoming"))["call"]
                await w.send(op="answer", call=call)
                await w.expect("media", call=call)
                await w.send(op="record", call=call, id=3, path="r.wav")
                await w.send(op="stats")              # the record op has been carried out
                assert (await w.expect("stats"))["calls"] == 1
            os.kill(w.proc.pid, signal.SIGTERM)
            with trio.fail_after(GUARD):
                rest = await w.drain()
            kinds = [e["ev"] for e in rest]
            assert kinds.index("recorded") < kinds.index("disconnected")
            assert [e for e in rest if e["ev"] == "disconnected"][0]["by"] == "local"
            assert await wait_exit(w.proc) == 0
            assert await uac.exit_code() == 0      # it got our BYE


@needs_sipp
async def test_fifty_sequential_calls():
    async with worker() as w:
        async with sipp(w.tmp, "sn:uac", *uac_args(w, "-m", "50", "-l", "1", "-r", "50",
                                                   "-d", "100")) as uac:
            answered = ended = 0
            with trio.fail_after(GUARD * 2):
                while ended < 50:
                    ev = await w.next()
                    assert ev is not None
                    assert ev["ev"] != "error", ev
                    if ev["ev"] == "incoming":
                        await w.send(op="answer", call=ev["call"])
                        answered += 1
                    elif ev["ev"] == "disconnected":
                        assert ev["code"] == 200, ev
                        ended += 1
            assert await uac.exit_code() == 0
        assert answered == 50
        assert not [e for e in w.events if e["ev"] == "busy"]
        # no conference-slot leak: only the (null) sound device's port is left (the bridge
        # removes ports asynchronously, so the last call's slot may take a frame to go)
        with trio.fail_after(GUARD):
            for _ in range(50):
                await w.send(op="stats")
                stats = await w.expect("stats")
                if stats["media_ports"] == 1:
                    break
                await trio.sleep(0.05)
        assert stats == {"ev": "stats", "calls": 0, "media_ports": 1, "pending_notifies": 0,
                         "clock": stats["clock"], "clock_starts": stats["clock_starts"]}
        await w.send(op="shutdown")
        assert await wait_exit(w.proc) == 0


def thread_names(pid: int) -> list[str]:
    return [Path(f"/proc/{pid}/task/{t}/comm").read_text().strip()
            for t in os.listdir(f"/proc/{pid}/task")]


def wakeups(pid: int) -> int:
    """Voluntary context switches of every thread of ``pid`` (each is one sleep ended)."""
    n = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        for line in Path(f"/proc/{pid}/task/{t}/status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                n += int(line.split()[1])
    return n


async def test_an_idle_worker_sleeps_until_an_op_or_a_packet_comes():
    """Idle, the pj thread waits in libHandleEvents with a long timeout and no pjmedia thread
    ticks (no sound clock, no media ioqueue thread): a few wake-ups in 2 s where the polling
    loop had ~500 (pj thread every 10 ms, clock every 20 ms, media thread every 10 ms).  An op
    still wakes it at once (the CRLF datagram): 20 ops in a row are all answered (without the
    wake-up each would wait out the 10 s idle wait, far past the hang guard)."""
    async with worker() as w:
        pid = w.proc.pid
        with trio.fail_after(GUARD):
            await w.send(op="stats")
            await w.expect("stats")
        names = thread_names(pid)
        assert "clock" not in names and "media" not in names, names
        before = wakeups(pid)
        await trio.sleep(2)
        woke = wakeups(pid) - before
        assert woke <= 20, f"{woke} wake-ups of an idle worker in 2 s"
        with trio.fail_after(GUARD):
            for _ in range(20):
                await w.send(op="stats")
                assert (await w.expect("stats"))["calls"] == 0
        await w.send(op="shutdown")
        assert await wait_exit(w.proc) == 0


@needs_sipp
async def test_the_sound_clock_runs_only_while_a_call_is_up_and_leaks_no_slot():
    """Each call switches the null sound device (the bridge's clock) on at its INVITE and off
    once the call and its recorder are gone (and CLOCK_LINGER has passed); the recording is
    whole (its header final, so the clock ran until the recorder's removal), the bridge is
    back to its one port every time,
    and the next call works: the slot leak of pjsua's own auto-close does not come back."""
    async with worker() as w:
        pid = w.proc.pid
        for i in range(4):
            async with sipp(w.tmp, "sn:uac", *uac_args(w, "-m", "1", "-d", "300")) as uac:
                with trio.fail_after(GUARD):
                    call = (await w.expect("incoming"))["call"]
                    await w.send(op="stats")
                    assert (await w.expect("stats"))["clock"] is True   # before any media
                    await w.send(op="answer", call=call)
                    await w.expect("media", call=call)
                    await w.send(op="record", call=call, id=1, path=f"r{i}.wav")
                    rec = await w.expect("recorded", call=call, id=1)
                    await w.expect("disconnected", call=call)
                assert await uac.exit_code() == 0
            with wave.open(rec["path"], "rb") as wf:      # complete: the lengths are final
                assert rec["bytes"] == os.path.getsize(rec["path"]) == 44 + wf.getnframes() * 2
                assert wf.getnframes() > 0
            with trio.fail_after(GUARD):
                while True:
                    await w.send(op="stats")
                    stats = await w.expect("stats")
                    if not stats["clock"]:
                        break
                    await trio.sleep(0.01)
            assert stats == {"ev": "stats", "calls": 0, "media_ports": 1, "pending_notifies": 0,
                             "clock": False, "clock_starts": i + 1}
            assert "clock" not in thread_names(pid)
        await w.send(op="shutdown")
        assert await wait_exit(w.proc) == 0
