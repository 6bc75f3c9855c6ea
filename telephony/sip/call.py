"""One answered SIP call as the call flow sees it (:class:`SipCall`, a
:class:`telephony.core.callflow.CallPort`), on the worker process that holds it.

* Prompts are WAV files the worker plays; a recording is a WAV file the worker writes while
  this side reads it as it grows and ends it on silence, the maximum, a digit or hang-up
  (:class:`telephony.core.media.Recorder`, the same rules as every port).  Only the audio in
  the file decides silence and the maximum, never how late it is read: a loaded machine may
  write the file late or read it late, the outcome is the same.  The wall clock ends a
  recording (as ``max``) only once ``max_seconds + RECORD_STALL`` s have passed *and* its file
  has brought no audio for :data:`RECORD_STALL` s: a worker that writes slower than real time
  is never cut short.  The file is followed with ``pread`` on one descriptor in the event loop
  (a few KB a look, four looks a second, from the media directory on the RAM file system that
  the worker has just written), not with a thread round trip per look.
* :meth:`SipCall.transfer` is a blind transfer (REFER) of the call to
  ``sip:<digits>@<the PBX's signalling address>`` (where the INVITE came from); success is a
  2xx final status from the PBX within the profile's ``transfer_timeout``, after which the
  worker sends BYE and the call is over (docs/sip.md, *Transfer*).

The worker is anything with ``async send(**op)`` (:class:`telephony.sip.driver.Worker`): an op
that cannot be sent because the worker is gone ends the call.  The driver
(:mod:`telephony.sip.driver`) hands the call its worker's events (:meth:`SipCall.event`).
"""
from __future__ import annotations

import itertools
import logging
import os
import re
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import trio

from telephony.core import media
from telephony.core.callflow import check_destination

log = logging.getLogger("telephony.sip")

WAV_HEADER = 44  # pjmedia's PCM WAV writer: a 44-byte header, then the samples
#: the PBX's signalling address as the worker reports it (pjsip: "1.2.3.4:5060", "[::1]:5060")
_REMOTE = re.compile(r"(?:\d{1,3}(?:\.\d{1,3}){3}|\[[0-9A-Fa-f:.]{2,45}\]):\d{1,5}")
BYE_WAIT = 5.0  # s a transferred call waits for the worker's "disconnected"
#: s between looks at a growing recording: pjmedia writes it in 4096-byte steps (256 ms of
#: audio), so looking more often finds nothing new (bench: 3.7 ms/s of the service's CPU per
#: call with 0.05 s)
RECORD_POLL = 0.25
#: s a recording's file may stand still past ``max_seconds + RECORD_STALL`` before the wall clock
#: ends it as ``max`` (a worker gone quiet); while the file grows, only its audio ends it
RECORD_STALL = 5.0


class WorkerGone(ConnectionError):
    """The worker process is not running (or went away): the request was not sent."""


class WorkerOps(Protocol):
    """What a call needs of its worker: sending one op (raises :class:`WorkerGone`,
    ``trio.BrokenResourceError`` or ``trio.ClosedResourceError`` when it cannot)."""

    async def send(self, **msg: Any) -> None: ...


def transfer_target(destination: str, remote: Any) -> str:
    """The Refer-To URI of a blind transfer: ``sip:<destination>@<remote>``, ``remote`` being
    the address the call's INVITE came from (the PBX, or the proxy in front of it).  ``#`` is
    escaped as ``%23`` (RFC 3261 allows it in no user part).  ValueError for a bad
    destination or a ``remote`` that is no ``host:port``."""
    user = check_destination(destination).replace("#", "%23")
    if not isinstance(remote, str) or not _REMOTE.fullmatch(remote):
        raise ValueError(f"the call has no usable signalling address ({remote!r:.60})")
    return f"sip:{user}@{remote}"


class SipCall:
    """One answered SIP call, as the call flow sees it (:class:`telephony.core.callflow.CallPort`)."""

    def __init__(self, worker: WorkerOps, call_id: str, media_dir: Path, *,
                 record_poll: float = RECORD_POLL, remote: str = "",
                 transfer_timeout: float = 10.0,
                 label: str | None = None) -> None:
        self.worker = worker
        self.id = call_id
        self.media_dir = media_dir
        self.record_poll = record_poll
        self.remote = remote                   # where the INVITE came from ("host:port")
        self.transfer_timeout = transfer_timeout
        self.label = label or call_id          # the call id in log lines
        self._abandoned: set[int] = set()      # transfers given up on (timeout)
        self.digits: deque[str] = deque(maxlen=32)
        self.changed = trio.Event()
        self.done: dict[tuple[str, int], dict] = {}  # ("played"|"recorded", id) -> event
        self.ended = trio.Event()
        self.end_info: dict = {}
        self._ids = itertools.count(1)

    # ---------------------------------------------------------------- worker events

    def event(self, ev: dict) -> None:
        kind = ev.get("ev")
        if kind == "dtmf" and isinstance(ev.get("digit"), str) and ev["digit"] in "0123456789*#":
            self.digits.append(ev["digit"])
        elif kind in ("played", "recorded") and isinstance(ev.get("id"), int):
            self.done[(kind, ev["id"])] = ev
        elif kind == "transfer_result" and isinstance(ev.get("id"), int):
            if ev["id"] in self._abandoned:
                self._abandoned.discard(ev["id"])
                log.info("call %s: late transfer result after the timeout: %s %s", self.label,
                         ev.get("code"), ev.get("reason", ""))
            else:
                self.done[(kind, ev["id"])] = ev
        elif kind == "error" and ev.get("op") == "transfer" and isinstance(ev.get("ref"), int):
            self.done[("transfer_result", ev["ref"])] = {
                "code": 0, "reason": f"refused by the worker: {ev.get('message', '')}"}
        elif kind == "disconnected":
            self.end_info = ev
            self.ended.set()
        self.changed.set()
        self.changed = trio.Event()

    def gone(self) -> None:
        """The worker died: the call is over."""
        self._mark_ended({"by": "worker", "reason": "worker process ended"})

    def _mark_ended(self, info: dict) -> None:
        if not self.ended.is_set():
            self.end_info = info
        self.ended.set()
        self.changed.set()

    async def _wait(self, pred: Callable[[], bool], timeout: float) -> bool:
        with trio.move_on_after(timeout):
            while not pred():
                await self.changed.wait()
            return True
        return False

    async def _op(self, **msg: Any) -> bool:
        if self.ended.is_set():
            return False
        try:
            await self.worker.send(call=self.id, **msg)
            return True
        except (WorkerGone, trio.BrokenResourceError, trio.ClosedResourceError):
            self.gone()
            return False

    # ---------------------------------------------------------------- CallPort

    @property
    def hung_up(self) -> bool:
        return self.ended.is_set()

    async def play(self, wav: bytes, *, interruptible: bool = True) -> str | None:
        media.pcm_of(wav)  # ValueError for anything but 8 kHz 16-bit mono
        if self.hung_up:
            return None
        if interruptible and self.digits:
            return self.digits.popleft()
        n = next(self._ids)
        path = self.media_dir / f"{self.id}-play-{n}.wav"
        await trio.to_thread.run_sync(path.write_bytes, wav)
        try:
            if not await self._op(op="play", id=n, path=str(path)):
                return None
            seconds = media.wav_duration(wav)
            await self._wait(lambda: ("played", n) in self.done or self.hung_up
                             or (interruptible and bool(self.digits)), seconds + 10)
            if ("played", n) not in self.done and not self.hung_up:
                await self._op(op="stop_play", id=n)
                await self._wait(lambda: ("played", n) in self.done or self.hung_up, 5)
            self.done.pop(("played", n), None)
            if interruptible and self.digits and not self.hung_up:
                return self.digits.popleft()
            return None
        finally:
            path.unlink(missing_ok=True)

    async def record(self, *, max_seconds: float, silence_seconds: float) -> tuple[bytes, str]:
        rec = media.Recorder(max_seconds=max_seconds, silence_seconds=silence_seconds)
        self.digits.clear()
        if self.hung_up:
            return media.wav_bytes(rec.finish()), "hangup"
        n = next(self._ids)
        path = self.media_dir / f"{self.id}-rec-{n}.wav"
        if not await self._op(op="record", id=n, path=str(path)):
            return media.wav_bytes(rec.finish()), "hangup"
        tail = _Tail(path, WAV_HEADER)
        reason: str | None = None
        deadline = trio.current_time() + max_seconds + RECORD_STALL  # the file may lag
        grew = trio.current_time()  # when the file last brought audio
        try:
            while reason is None:
                with trio.move_on_after(self.record_poll):
                    await self.changed.wait()
                data = tail.read()
                if data:
                    grew = trio.current_time()
                    reason = rec.feed(data)
                if reason is None:
                    if self.digits:
                        reason = "dtmf"
                    elif self.hung_up:
                        reason = "hangup"
                    elif trio.current_time() > max(deadline, grew + RECORD_STALL):
                        reason = "max"  # the file stopped growing: the worker went quiet
            if reason != "hangup":
                await self._op(op="stop_record", id=n)
                await self._wait(lambda: ("recorded", n) in self.done or self.hung_up, 5)
            if reason in ("dtmf", "hangup"):  # what reached the file before the end counts
                rec.feed(tail.read())
            self.done.pop(("recorded", n), None)
            self.digits.clear()
            return media.wav_bytes(rec.finish()), reason
        finally:
            tail.close()
            path.unlink(missing_ok=True)

    async def collect_digits(self, *, max_digits: int, timeout: float, terminator: str = "#") -> str:
        got = ""
        while len(got) < max_digits and not self.hung_up:
            if not self.digits:
                if not await self._wait(lambda: bool(self.digits) or self.hung_up, timeout):
                    break
                continue
            d = self.digits.popleft()
            if d == terminator:
                break
            got += d
        return got

    async def hangup(self) -> None:
        if self.hung_up:
            return
        if await self._op(op="hangup"):
            await self._wait(lambda: self.hung_up, 5)
        if not self.hung_up:
            self.gone()

    async def transfer(self, destination: str) -> bool:
        """Blind transfer (REFER) to ``destination`` (1 to 31 of ``0-9 * #``; ValueError
        otherwise).  True when the PBX reports a 2xx final status within
        ``transfer_timeout``: the worker sends BYE and ``hung_up`` is True on return.  False
        when it refuses, reports a failure, says nothing in time, or the call ends first;
        the call goes on as before unless it ended.  False at once after a hang-up."""
        dest = check_destination(destination)
        if self.hung_up:
            return False
        try:
            target = transfer_target(dest, self.remote)
        except ValueError as e:
            log.warning("call %s: transfer to %s not attempted: %s", self.label, dest, e)
            return False
        n = next(self._ids)
        key = ("transfer_result", n)
        if not await self._op(op="transfer", id=n, target=target):
            log.warning("call %s: transfer to %s not sent: the call or its worker is gone",
                        self.label, dest)
            return False
        await self._wait(lambda: key in self.done or self.hung_up, self.transfer_timeout)
        res = self.done.pop(key, None)
        if res is None:
            if self.hung_up:
                log.info("call %s: transfer to %s (%s): the call ended first (%s)",
                         self.label, dest, target, self.end_info.get("reason", ""))
            else:
                self._abandoned.add(n)
                log.warning("call %s: transfer to %s (%s): no final status within %g s; "
                            "the call goes on", self.label, dest, target, self.transfer_timeout)
            return False
        code = res.get("code") if isinstance(res.get("code"), int) else 0
        ok = 200 <= code < 300
        then = "transferred" if ok else "the call ended" if self.hung_up else "the call goes on"
        log.info("call %s: transfer to %s (%s): %s %s -> %s", self.label, dest, target, code,
                 res.get("reason", ""), then)
        if not ok:
            return False
        if not await self._wait(lambda: self.hung_up, BYE_WAIT):  # the worker's BYE
            log.warning("call %s: no disconnect %g s after the transfer; counted as ended",
                        self.label, BYE_WAIT)
            self._mark_ended({"by": "local", "reason": "transferred"})
        return True


class _Tail:
    """Follows a growing recording from ``offset`` on: :meth:`read` returns the whole 16-bit
    samples added since the last read (b"" while the file does not exist yet).  One descriptor,
    opened at the first look that finds the file, read with ``pread``: no thread hop per look
    (the worker has just written these pages, normally on the RAM file system; at most
    ``READ_MAX`` bytes a look)."""

    READ_MAX = 1 << 20

    def __init__(self, path: Path, offset: int) -> None:
        self.path = path
        self.offset = offset
        self._fd: int | None = None

    def read(self) -> bytes:
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return b""
        data = os.pread(self._fd, self.READ_MAX, self.offset)
        data = data[:len(data) & ~1]  # an odd byte waits for its other half
        self.offset += len(data)
        return data

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
