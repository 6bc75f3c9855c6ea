"""The call flow's port over any frame-based media (:class:`MediaCallPort`): the
``CallPort`` of a driver whose audio comes and goes as 20 ms PCM frames (docs/sccp.md; the
analog ports' ``AnalogPort`` is this class, docs/analog.md "Analog ports").

The driver feeds it what the caller sends: audio (:meth:`MediaCallPort.feed_audio`, 20 ms
frames), the DTMF digits found in it or signalled out of band (:meth:`feed_digit`) and the end
of the call (:meth:`end`).  The flow plays prompts (handed to ``send`` in 20 ms frames, paced
in real time), records the caller (:class:`telephony.core.media.Recorder`), collects digits
and hangs up (``on_hook``).  :meth:`transfer` is not offered: it checks its destination and
returns False (the flow goes on as after a refused transfer); a driver that can transfer
overrides it.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable

import trio

from telephony.core import media
from telephony.core.callflow import check_destination, check_digit_request

__all__ = ["MediaCallPort", "MAX_PENDING_DIGITS"]

#: digits typed ahead that wait for the flow; more are dropped
MAX_PENDING_DIGITS = 32


class MediaCallPort:
    """One answered call over 20 ms PCM frames (a ``telephony.core.callflow.CallPort``).

    ``send(frame)`` sends one 20 ms frame (320 bytes of PCM) towards the caller; ``on_hook()``
    ends the call on the driver's side (an analog line goes on hook, an SCCP station sends
    OnHook).  ``realtime=False`` sends frames as fast as ``send`` takes them."""

    def __init__(self, name: str, *, send: Callable[[bytes], Awaitable[None]],
                 on_hook: Callable[[], Awaitable[None]], realtime: bool = True,
                 silence_threshold: float = media.SILENCE_THRESHOLD) -> None:
        media.SilenceDetector(silence_threshold)  # checks it
        self.name = name
        self._send = send
        self._on_hook = on_hook
        self.realtime = realtime
        self.silence_threshold = silence_threshold
        self._digits: deque[str] = deque()
        self._changed = trio.Event()
        self._recorder: media.Recorder | None = None
        #: who ended the call: "caller", "service", "dropped"; None while it is up
        self._ended_by: str | None = None
        self.digits_dropped = 0
        self.frames_sent = 0

    # ------------------------------------------------------------------ driver side

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        """Until something happens on the port: a digit, the recorder's news, the end."""
        await self._changed.wait()

    def end(self, by: str) -> None:
        """The call is over (``caller``: the far end hung up; ``dropped``: the service or
        the driver ended it)."""
        if self._ended_by is None:
            self._ended_by = by
            self._wake()

    def feed_audio(self, pcm: bytes) -> None:
        """A 20 ms frame the caller sent (kept only while recording)."""
        rec = self._recorder
        if rec is None or rec.reason is not None or self._ended_by is not None:
            return
        talking = rec.speech_started
        if rec.feed(pcm) is not None or rec.speech_started is not talking:
            self._wake()

    def feed_digit(self, digit: str) -> None:
        """A DTMF digit the caller typed."""
        if self._ended_by is not None:
            return
        if len(self._digits) >= MAX_PENDING_DIGITS:
            self.digits_dropped += 1
            return
        self._digits.append(digit)
        self._wake()

    async def next_digit(self, deadline: float) -> str | None:
        """The next digit heard, or None at ``deadline`` (trio clock) or the call's end."""
        while True:
            changed = self._changed
            if self._digits:
                return self._digits.popleft()
            if self.hung_up or trio.current_time() >= deadline:
                return None
            with trio.move_on_at(deadline):
                await changed.wait()

    # ------------------------------------------------------------------ CallPort

    @property
    def hung_up(self) -> bool:
        return self._ended_by is not None

    @property
    def ended_by(self) -> str | None:
        return self._ended_by

    async def _frame(self, frame: bytes) -> bool:
        if self.hung_up:
            return False
        await self._send(frame)
        self.frames_sent += 1
        return True

    async def play(self, wav: bytes, *, interruptible: bool = True) -> str | None:
        pcm = media.pcm_of(wav)
        if self.hung_up:
            return None
        if interruptible and self._digits:  # typed ahead: the play ends before it starts
            return self._digits.popleft()
        start = trio.current_time()
        sent = 0
        for chunk in media.frames(pcm, media.FRAME_BYTES):
            if not await self._frame(chunk.ljust(media.FRAME_BYTES, b"\0")):
                return None
            sent += 1
            if self.realtime:
                deadline = start + sent * media.FRAME_MS / 1000
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
                return self._digits.popleft()
        return None

    async def record(self, *, max_seconds: float, silence_seconds: float) -> tuple[bytes, str]:
        rec = media.Recorder(max_seconds=max_seconds, silence_seconds=silence_seconds,
                             threshold=self.silence_threshold)
        if self.hung_up:
            return media.wav_bytes(b""), "hangup"
        self._digits.clear()
        deadline = trio.current_time() + max_seconds
        self._recorder = rec
        reason = "hangup"
        try:
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
                if trio.current_time() >= deadline:  # the line stopped sending audio
                    reason = "max"
                    break
                with trio.move_on_at(deadline):
                    await changed.wait()
        finally:
            self._recorder = None
        return media.wav_bytes(rec.finish()), reason

    async def collect_digits(self, *, max_digits: int, timeout: float,
                             terminator: str = "#") -> str:
        check_digit_request(max_digits, timeout, terminator)
        out = ""
        while len(out) < max_digits:
            digit = await self.next_digit(trio.current_time() + timeout)
            if digit is None or (terminator and digit == terminator):
                break
            out += digit
        return out

    async def transfer(self, destination: str) -> bool:
        """Not offered by this port: checks ``destination`` and returns False, so the flow
        goes on as after a transfer the PBX refused.  A driver that can transfer overrides it."""
        check_destination(destination)
        return False

    async def hangup(self) -> None:
        if self._ended_by is not None:
            return
        self.end("service")
        with trio.CancelScope(shield=True):
            await self._on_hook()
