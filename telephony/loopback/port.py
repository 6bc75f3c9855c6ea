"""The media side of one loopback call (:class:`LoopbackPort`): the call flow's ``CallPort``
on the trunk's JSON lines (the protocol: :mod:`telephony.loopback`)."""
from __future__ import annotations

import base64
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from telephony.core import media
from telephony.core.callflow import check_destination, check_digit_request
from telephony.loopback.wire import ANNOUNCEMENTS, MAX_PENDING_DIGITS, JsonLines


class LoopbackPort:
    """The media side of one loopback call: a ``telephony.core.callflow.CallPort`` (and an
    ``Announcer``).  The trunk feeds it the client's audio and digits; the flow calls
    :meth:`play`, :meth:`record`, :meth:`collect_digits`, :meth:`transfer`,
    :meth:`hangup`."""

    def __init__(self, line: JsonLines, *, realtime: bool = True,
                 play_chunk: int = media.FRAME_BYTES,
                 silence_threshold: float = media.SILENCE_THRESHOLD,
                 send_timeout: float = 1.0, transfer_timeout: float = 10.0) -> None:
        self._line = line
        self.transfer_timeout = transfer_timeout
        #: a transfer waiting for the client's answer: None (none asked), "pending", or its
        #: answer True / False
        self._transfer: bool | str | None = None
        self.send_timeout = send_timeout  # bounds the (shielded) hangup lines
        self.realtime = realtime
        self.play_chunk = play_chunk
        self.silence_threshold = silence_threshold
        self._digits: deque[str] = deque()
        self._changed = trio.Event()
        self._recorder: media.Recorder | None = None
        self._last_audio = 0.0
        #: who ended the call: "caller", "service" or "dropped"; None while it is up
        self._ended_by: str | None = None
        self._on_service_end: Callable[[], None] = lambda: None

    # ------------------------------------------------------------------ trunk side

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _end(self, by: str) -> None:
        if self._ended_by is None:
            self._ended_by = by
            self._wake()

    def _feed_audio(self, pcm: bytes) -> None:
        rec = self._recorder
        if rec is None or rec.reason is not None:
            return  # not recording: the caller's audio goes nowhere
        self._last_audio = trio.current_time()
        talking = rec.speech_started
        if rec.feed(pcm) is not None or rec.speech_started is not talking:
            self._wake()  # over, or the silence timer of record() starts now

    def _feed_transfer(self, ok: bool) -> None:
        if self._transfer != "pending":
            raise ValueError("no transfer was asked for")
        self._transfer = ok
        self._wake()

    def _feed_digit(self, digit: str) -> None:
        if len(self._digits) >= MAX_PENDING_DIGITS:
            raise ValueError(f"{MAX_PENDING_DIGITS} digits are already waiting; "
                             f"{digit!r} is dropped")
        self._digits.append(digit)
        self._wake()

    async def _send(self, **msg: Any) -> bool:
        if self._ended_by is not None:
            return False
        try:
            await self._line.reply(**msg)
            return True
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._end("caller")
            return False

    # ------------------------------------------------------------------ CallPort

    @property
    def hung_up(self) -> bool:
        return self._ended_by is not None

    @property
    def ended_by(self) -> str | None:
        """"caller", "service" (the flow hung up), "transferred" or "dropped"; None while
        the call is up."""
        return self._ended_by

    async def announce(self, event: str, **fields: int | str) -> None:
        """Send a structured event (``beep``, ``messages``) alongside the audio."""
        if event not in ANNOUNCEMENTS:
            raise ValueError(f"cannot announce {event!r:.40}; only {sorted(ANNOUNCEMENTS)}")
        for k, v in fields.items():
            if k in ("ev", "op") or isinstance(v, bool) or not isinstance(v, (int, str)):
                raise ValueError(f"announcement field {k}={v!r:.40} must be a string or int")
        await self._send(ev=event, **fields)

    async def play(self, wav: bytes, *, interruptible: bool = True) -> str | None:
        pcm = media.pcm_of(wav)
        if self.hung_up:
            return None
        if interruptible and self._digits:  # typed ahead: the play ends before it starts
            digit = self._digits.popleft()
            await self._send(ev="play_end", digit=digit)
            return digit
        start = trio.current_time()
        sent = 0
        for chunk in media.frames(pcm, self.play_chunk):
            if not await self._send(ev="play", audio=base64.b64encode(chunk).decode("ascii")):
                return None
            sent += len(chunk)
            if self.realtime:
                deadline = start + sent / media.BYTES_PER_SECOND
                while trio.current_time() < deadline:
                    changed = self._changed
                    if self.hung_up or (interruptible and self._digits):
                        break
                    with trio.move_on_at(deadline):
                        await changed.wait()
            else:
                await trio.lowlevel.checkpoint()
            if self.hung_up:
                return None
            if interruptible and self._digits:
                digit = self._digits.popleft()
                await self._send(ev="play_end", digit=digit)
                return digit
        await self._send(ev="play_end")
        return None

    async def record(self, *, max_seconds: float, silence_seconds: float) -> tuple[bytes, str]:
        rec = media.Recorder(max_seconds=max_seconds, silence_seconds=silence_seconds,
                             threshold=self.silence_threshold)
        if self.hung_up:
            return media.wav_bytes(b""), "hangup"
        self._digits.clear()
        start = self._last_audio = trio.current_time()
        self._recorder = rec
        reason = "hangup"
        try:
            if await self._send(ev="record_start"):
                while True:
                    changed = self._changed
                    if rec.reason is not None:
                        reason = rec.reason
                        break
                    if self.hung_up:
                        reason = "hangup"
                        break
                    if self._digits:
                        self._digits.popleft()
                        reason = "dtmf"
                        break
                    now = trio.current_time()
                    deadline = start + max_seconds
                    if rec.speech_started:
                        deadline = min(deadline, self._last_audio + silence_seconds)
                    if now >= deadline:
                        reason = "max" if now >= start + max_seconds else "silence"
                        break
                    with trio.move_on_at(deadline):
                        await changed.wait()
        finally:
            self._recorder = None
        pcm = rec.finish()
        if not self.hung_up:
            await self._send(ev="record_end", reason=reason)
        return media.wav_bytes(pcm), reason

    async def collect_digits(self, *, max_digits: int, timeout: float,
                             terminator: str = "#") -> str:
        check_digit_request(max_digits, timeout, terminator)
        out = ""
        deadline = trio.current_time() + timeout
        while len(out) < max_digits:
            changed = self._changed
            if self._digits:
                digit = self._digits.popleft()
                if terminator and digit == terminator:
                    break
                out += digit
                deadline = trio.current_time() + timeout
                continue
            if self.hung_up or trio.current_time() >= deadline:
                break
            with trio.move_on_at(deadline):
                await changed.wait()
        return out

    async def transfer(self, destination: str) -> bool:
        check_destination(destination)
        if self.hung_up:
            return False
        self._transfer = "pending"
        try:
            if not await self._send(ev="transfer", to=destination):
                return False
            with trio.move_on_after(self.transfer_timeout):
                while self._transfer == "pending" and not self.hung_up:
                    await self._changed.wait()
            if self._transfer is not True or self.hung_up:
                return False
        finally:
            self._transfer = None
        # the PBX has the call: the voice mail's part is over
        self._end("transferred")
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + self.send_timeout
            try:
                await self._line.reply(ev="ended", transferred=destination)
                self._line.final_sent = True
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        self._on_service_end()
        return True

    async def hangup(self) -> None:
        if self._ended_by is not None:
            return
        self._end("service")
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + self.send_timeout
            try:
                await self._line.reply(ev="hangup")
                await self._line.reply(ev="ended")
                self._line.final_sent = True
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        self._on_service_end()
