"""The service side of a SIP call (:class:`telephony.sip.call.SipCall`) without a worker
process: a fake worker records the ops, the test plays the worker's events (and writes its
recording file).  Here: recordings followed under load, and blind
transfer (the REFER itself is tested against SIPp in test_worker.py and, through the call
flow, in tests/integration/test_sip.py)."""
from __future__ import annotations

from pathlib import Path

import pytest
import trio

from telephony.core import media
from telephony.core.callflow import CallPort, check_destination
from telephony.sip.call import RECORD_STALL, WAV_HEADER, SipCall, transfer_target

GUARD = 10  # seconds: a hang guard only


class FakeWorker:
    def __init__(self) -> None:
        self.ops: list[dict] = []
        self.sent = trio.Event()
        self.gone = False

    async def send(self, **msg) -> None:
        if self.gone:
            raise trio.BrokenResourceError("gone")
        self.ops.append(msg)
        self.sent.set()
        self.sent = trio.Event()


def make_call(tmp_path: Path, timeout: float = 10.0, remote: str = "10.0.0.5:5060"):
    w = FakeWorker()
    return w, SipCall(w, "w1-1", tmp_path, remote=remote, transfer_timeout=timeout,  # type: ignore[arg-type]
                      label="call-x")


async def next_op(w: FakeWorker) -> dict:
    n = len(w.ops)
    while len(w.ops) == n:
        await w.sent.wait()
    return w.ops[-1]


async def run_transfer(w: FakeWorker, call: SipCall, worker_side) -> dict:
    """``call.transfer("0")`` in a task; once its op is out, ``await worker_side(op, result)``
    plays the worker.  Returns ``result`` (``ok``: what transfer returned)."""
    result: dict = {}
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as n:
            async def run():
                result["ok"] = await call.transfer("0")
            n.start_soon(run)
            await worker_side(await next_op(w), result)
    return result


def test_destination_and_target():
    assert transfer_target("0", "10.1.2.3:5060") == "sip:0@10.1.2.3:5060"
    assert transfer_target("*12#", "[2001:db8::1]:5061") == "sip:*12%23@[2001:db8::1]:5061"
    assert check_destination("1" * 31) == "1" * 31
    for bad in ("", "1" * 32, "12a", "1 2", "0\r\n", None, 5, b"0"):
        with pytest.raises(ValueError, match="0-9"):
            check_destination(bad)
    for remote in ("", None, "1.2.3.4", "pbx:5060", "1.2.3.4:5060\r\nX: y", "1.2.3.4:5060;x"):
        with pytest.raises(ValueError, match="signalling address"):
            transfer_target("0", remote)


async def test_success_waits_for_the_disconnect_and_the_call_is_over(tmp_path, caplog):
    caplog.set_level("INFO", logger="telephony.sip")
    w, call = make_call(tmp_path)
    assert isinstance(call, CallPort)

    async def worker_side(op, result):
        assert op == {"call": "w1-1", "op": "transfer", "id": op["id"],
                      "target": "sip:0@10.0.0.5:5060"}
        call.event({"ev": "transfer_result", "call": "w1-1", "id": op["id"], "code": 200,
                    "reason": "OK"})
        await trio.lowlevel.checkpoint()
        assert "ok" not in result          # not over before the worker's disconnect
        call.event({"ev": "disconnected", "call": "w1-1", "code": 200, "by": "local"})

    result = await run_transfer(w, call, worker_side)
    assert result["ok"] is True and call.hung_up
    assert "call call-x: transfer to 0 (sip:0@10.0.0.5:5060): 200 OK -> transferred" in caplog.text


@pytest.mark.parametrize("ev", [
    {"ev": "transfer_result", "code": 603, "reason": "Decline"},
    {"ev": "transfer_result", "code": 486, "reason": "Busy Here"},
    {"ev": "error", "op": "transfer", "message": "pjsua refused"},   # the op itself refused
])
async def test_a_failure_returns_false_and_the_call_goes_on(tmp_path, ev, caplog):
    caplog.set_level("INFO", logger="telephony.sip")
    w, call = make_call(tmp_path)

    async def worker_side(op, result):
        ref = {"ref": op["id"]} if ev["ev"] == "error" else {"id": op["id"]}
        call.event({**ev, "call": "w1-1", **ref})

    result = await run_transfer(w, call, worker_side)
    assert result["ok"] is False and not call.hung_up
    assert "the call goes on" in caplog.text


async def test_call_ended_before_the_final_status(tmp_path):
    w, call = make_call(tmp_path)

    async def worker_side(op, result):
        call.event({"ev": "transfer_result", "call": "w1-1", "id": op["id"], "code": 487,
                    "reason": "call ended before the transfer's final status"})
        call.event({"ev": "disconnected", "call": "w1-1", "code": 200, "by": "remote"})

    result = await run_transfer(w, call, worker_side)
    assert result["ok"] is False and call.hung_up


async def test_no_final_status_in_time_is_a_failure_and_a_late_one_is_only_logged(tmp_path, caplog):
    caplog.set_level("INFO", logger="telephony.sip")
    w, call = make_call(tmp_path, timeout=0.2)       # the timeout is what is tested here
    with trio.fail_after(GUARD):
        assert await call.transfer("0") is False
    assert not call.hung_up and "no final status within 0.2 s" in caplog.text
    call.event({"ev": "transfer_result", "call": "w1-1", "id": w.ops[0]["id"], "code": 200,
                "reason": "OK"})
    assert "late transfer result after the timeout: 200 OK" in caplog.text
    assert not [k for k in call.done if k[0] == "transfer_result"]


async def test_after_a_hang_up_or_without_remote_nothing_is_sent(tmp_path):
    w, call = make_call(tmp_path)
    call.event({"ev": "disconnected", "call": "w1-1", "code": 200, "by": "remote"})
    assert await call.transfer("0") is False
    with pytest.raises(ValueError):                   # a bad destination still raises
        await call.transfer("0x")
    w2, call2 = make_call(tmp_path, remote="")
    assert await call2.transfer("0") is False
    assert w.ops == [] and w2.ops == []


async def test_a_worker_gone_during_the_wait(tmp_path):
    w, call = make_call(tmp_path)

    async def worker_side(op, result):
        call.gone()

    result = await run_transfer(w, call, worker_side)
    assert result["ok"] is False and call.hung_up and call.end_info["by"] == "worker"
    w.gone = True
    _, call3 = make_call(tmp_path)
    call3.worker = w                                  # the op cannot be sent at all
    assert await call3.transfer("0") is False and call3.hung_up


# ---------------------------------------------------------------- recording under load
# The worker's file is played by the test on Trio's virtual clock: a worker starved of CPU
# writes the caller's audio slower than real time, and the service reads it late.  Only the
# audio may end the recording; the wall clock only a file that stopped growing.

TONE = media.tone(1250, 10.0)  # the caller's audio: never silent


async def record_with_worker(tmp_path, write, *, max_seconds: float, record_poll: float = 0.25):
    """``call.record(...)`` while ``write(f)`` plays the worker's file (its 44-byte header
    first); the worker confirms the stop.  Returns (pcm, reason, virtual seconds taken)."""
    w = FakeWorker()
    call = SipCall(w, "w1-1", tmp_path, record_poll=record_poll, label="call-x")  # type: ignore[arg-type]
    out: dict = {}
    async with trio.open_nursery() as n:
        async def run():
            t0 = trio.current_time()
            wav, out["reason"] = await call.record(max_seconds=max_seconds, silence_seconds=3.0)
            out["pcm"], out["took"] = media.pcm_of(wav), trio.current_time() - t0
        n.start_soon(run)
        op = await next_op(w)
        assert op["op"] == "record"
        with open(op["path"], "wb", buffering=0) as f:
            f.write(b"\0" * WAV_HEADER)
            async with trio.open_nursery() as wn:
                wn.start_soon(write, f)
                stop = await next_op(w)
                wn.cancel_scope.cancel()
        assert stop == {"call": "w1-1", "op": "stop_record", "id": op["id"]}
        call.event({"ev": "recorded", "call": "w1-1", "id": op["id"]})
    return out["pcm"], out["reason"], out["took"]


async def test_a_worker_writing_slower_than_real_time_is_not_cut_short(tmp_path, autojump_clock):
    async def quarter_speed(f):  # 512 bytes (32 ms of audio) every 128 ms
        for i in range(0, len(TONE), 512):
            f.write(TONE[i:i + 512])
            await trio.sleep(0.128)

    pcm, reason, took = await record_with_worker(tmp_path, quarter_speed, max_seconds=2.0)
    # 2 s of audio take 8 s to arrive, past max_seconds + RECORD_STALL: the file kept growing,
    # so the recording ends on its audio, whole (the old wall-clock cut kept 1.75 s of it)
    assert reason == "max" and took > 2.0 + RECORD_STALL
    assert pcm == TONE[:media.byte_count(2.0)]


async def test_a_reader_late_by_more_than_the_silence_reads_the_same(tmp_path, autojump_clock):
    async def bursts(f):  # a starved worker: 1 s of audio at once, then nothing for 4 s
        for i in range(0, media.byte_count(4.0), media.byte_count(1.0)):
            f.write(TONE[i:i + media.byte_count(1.0)])
            await trio.sleep(4.0)

    pcm, reason, took = await record_with_worker(tmp_path, bursts, max_seconds=4.0,
                                                 record_poll=3.5)  # the service looks late too
    assert reason == "max" and pcm == TONE[:media.byte_count(4.0)]


async def test_a_file_that_stops_growing_ends_at_the_wall_clock_limit(tmp_path, autojump_clock):
    async def then_quiet(f):  # 0.5 s of audio, then the worker writes nothing more
        f.write(TONE[:media.byte_count(0.5)])
        await trio.sleep_forever()

    pcm, reason, took = await record_with_worker(tmp_path, then_quiet, max_seconds=2.0)
    assert reason == "max" and pcm == TONE[:media.byte_count(0.5)]
    assert 2.0 + RECORD_STALL < took <= 2.0 + RECORD_STALL + 0.25 + 0.01  # one look late at most
