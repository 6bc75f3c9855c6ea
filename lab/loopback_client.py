"""A small Trio client of the loopback trunk: the simulated PBX of tests, benchmarks and the demo.

::

    outcome = await place_call("127.0.0.1", 7001, "c1", calling="4021", hold=0.5)
    if outcome.answered: print(outcome.node, outcome.port, outcome.term)

    async with open_call("127.0.0.1", 7001, "c2") as call:
        assert call.answered
        ...                      # the call is in progress
        await call.hangup()      # or leave the block: it hangs up for you

With a call flow on the trunk, the call carries media (see :mod:`telephony.loopback`)::

    async with open_call("127.0.0.1", 7001, "c3", calling="4021", forwarding="4000",
                         reason="busy") as call:
        await call.wait_event("record_start")   # the greeting and the beep were played
        greeting = await call.heard()           # PCM played to the call so far
        await call.say(tone(440, 1.0))          # PCM or WAV, sent as audio lines
        await call.say(silence(3.5))
        end = await call.wait_event("record_end")
        await call.wait_event("ended")          # the service hung up

The client reads only while it waits (``wait_event``, ``heard(until=...)``, ``hangup``,
``wait_dropped``); what it read is kept: the audio in ``heard()``, every other event in
``events`` (bounded).  ``say`` and ``dtmf`` only send.

The protocol is described in :mod:`telephony.loopback`.
"""
from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from telephony.core import media
from telephony.core.framing import NEED_DATA, Closed, FramingError, LineFramer, Unfinished, decode_json_object

MAX_LINE = 4096
AUDIO_CHUNK = 2560  # bytes of PCM per audio line (the trunk takes at most 2560)
MAX_EVENTS = 1024  # events kept per call (the oldest go first)
MAX_HEARD = 32 * 1024 * 1024  # bytes of played audio kept per call
DTMF_DIGITS = "0123456789*#"
_FINAL = ("ended", "dropped")


class LoopbackClientError(Exception):
    """The trunk sent something this client does not understand, or nothing in time."""


@dataclass(frozen=True)
class CallOutcome:
    """How a call went.  ``result``: ``answered`` (and ended normally), ``rejected``,
    ``dropped`` (answered, then hung up by the service), ``error`` (the trunk refused the offer)."""

    result: str
    node: str | None = None
    port: str | None = None
    term: int | None = None
    reason: str | None = None  # why rejected, or the error message

    @property
    def answered(self) -> bool:
        """The call was answered (whether it ended normally or was dropped later)."""
        return self.term is not None


class LoopbackCall:
    """One call on one connection.  Use :func:`open_call` to get one."""

    def __init__(self, stream: trio.abc.Stream, *, reply_timeout: float) -> None:
        self._stream = stream
        self._framer = LineFramer(MAX_LINE)  # the trunk's lines
        self.reply_timeout = reply_timeout
        self.answer: dict[str, Any] | None = None  # the reply to the offer
        self.final: dict[str, Any] | None = None  # ended / dropped / None while in progress
        #: events read after the answer, except the audio of ``play`` (that is in heard())
        self.events: list[dict[str, Any]] = []
        self.heard_overflow = False  # more than MAX_HEARD bytes were played: the rest is lost
        self._heard = bytearray()
        self._cursor = 0  # events before this index were passed by wait_event()

    # ------------------------------------------------------------------ state

    @property
    def answered(self) -> bool:
        return self.answer is not None and self.answer.get("ev") == "answered"

    @property
    def in_progress(self) -> bool:
        return self.answered and self.final is None

    @property
    def outcome(self) -> CallOutcome:
        a = self.answer or {}
        if a.get("ev") == "answered":
            dropped = self.final is not None and self.final.get("ev") == "dropped"
            return CallOutcome("dropped" if dropped else "answered", a.get("node"), a.get("port"),
                               a.get("term"))
        if a.get("ev") == "rejected":
            return CallOutcome("rejected", reason=a.get("reason"))
        return CallOutcome("error", reason=a.get("message", "no answer"))

    # ------------------------------------------------------------------ actions

    async def offer(self, call_id: str, *, calling: str = "", called: str = "",
                    forwarding: str = "", reason: str = "direct",
                    media: bool = False, line: int | None = None) -> dict[str, Any]:
        msg: dict[str, Any] = {"op": "offer", "call_id": call_id, "calling": calling,
                               "called": called, "forwarding": forwarding, "reason": reason}
        if line is not None:
            msg["line"] = line  # ring that line (its information comes from the data link)
        if media:
            msg["media"] = True  # ask the messaging service for the call flow (audio, DTMF)
        await self._send(msg)
        self.answer = await self._receive(timeout=self.reply_timeout)
        return self.answer

    async def hangup(self) -> dict[str, Any]:
        """Hang up; returns the trunk's last word (``ended``, or ``dropped`` if it was first)."""
        if not self.in_progress:
            raise LoopbackClientError("no call in progress")
        try:
            await self._send({"op": "hangup"})
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the trunk closed first: what it said before is still in the buffer
        while self.final is None:
            await self._next(timeout=self.reply_timeout)
        return self.final

    async def wait_dropped(self) -> dict[str, Any]:
        """Wait until the call ends from the trunk's side (``dropped``, or ``ended`` after
        the service hung up) or the connection closes."""
        while self.final is None:
            await self._next(timeout=None)
        return self.final

    # ------------------------------------------------------------------ media

    async def say(self, audio: bytes, *, chunk: int = AUDIO_CHUNK, realtime: bool = False) -> None:
        """Send what the caller says: PCM (8 kHz 16-bit mono) or a WAV file, as audio lines of
        ``chunk`` bytes; ``realtime`` waits each chunk's duration before the next."""
        if bytes(audio[:4]) == b"RIFF":
            try:
                audio = media.pcm_of(audio)
            except ValueError as exc:
                raise LoopbackClientError(str(exc)) from None
        if len(audio) % 2:
            raise LoopbackClientError("PCM must hold whole 16-bit samples (an even length)")
        if isinstance(chunk, bool) or not isinstance(chunk, int) \
                or not 2 <= chunk <= AUDIO_CHUNK or chunk % 2:
            raise LoopbackClientError(f"chunk must be an even size from 2 to {AUDIO_CHUNK}")
        self._check_up()
        for piece in media.frames(bytes(audio), chunk):
            await self._send_in_call({"op": "audio",
                                      "audio": base64.b64encode(piece).decode("ascii")})
            if realtime:
                await trio.sleep(media.duration(piece))

    async def dtmf(self, digits: str) -> None:
        """Press keys: one ``dtmf`` line per digit (0-9, *, #)."""
        if not isinstance(digits, str) or not digits or any(d not in DTMF_DIGITS for d in digits):
            raise LoopbackClientError(f"DTMF digits are 0-9, * and #, not {digits!r:.20}")
        self._check_up()
        for d in digits:
            await self._send_in_call({"op": "dtmf", "digit": d})

    async def answer_transfer(self, ok: bool) -> None:
        """Answer the service's ``transfer`` event as the PBX: True takes the call (the trunk
        then ends it with ``{"ev": "ended", "transferred": ...}``), False refuses it."""
        if not isinstance(ok, bool):
            raise LoopbackClientError(f"a transfer answer is True or False, not {ok!r:.20}")
        self._check_up()
        await self._send_in_call({"op": "transfer", "ok": ok})

    async def heard(self, *, until: str | None = None) -> bytes:
        """The PCM played to this call so far (what was read, plus complete lines already
        received).  With ``until``, first :meth:`wait_event` for that event."""
        if until is not None:
            await self.wait_event(until)
        self._take_buffered()
        await trio.lowlevel.checkpoint()
        return bytes(self._heard)

    async def wait_event(self, name: str, *, timeout: float | None = None) -> dict[str, Any]:
        """The next event called ``name`` after the one the last wait_event returned (reading
        from the trunk until it comes).  Raises LoopbackClientError if the call ends first."""
        with trio.fail_after(timeout if timeout is not None else float("inf")):
            while True:
                for i in range(self._cursor, len(self.events)):
                    if self.events[i].get("ev") == name:
                        self._cursor = i + 1
                        return self.events[i]
                self._cursor = len(self.events)
                if self.final is not None or self._framer.at_eof and not self._framer.buffered:
                    raise LoopbackClientError(
                        f"the call is over ({(self.final or {}).get('ev', 'closed')}) "
                        f"without {name!r:.40}")
                await self._next(timeout=None)

    def _check_up(self) -> None:
        if not self.in_progress:
            raise LoopbackClientError("no call in progress")

    async def _send_in_call(self, msg: dict[str, Any]) -> None:
        try:
            await self._send(msg)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise LoopbackClientError("the trunk closed the connection") from None

    def _note(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Keep what a read event says: audio into heard(), the rest into events."""
        if msg.get("ev") == "play" and isinstance(msg.get("audio"), str):
            try:
                pcm = base64.b64decode(msg["audio"], validate=True)
            except (binascii.Error, ValueError):
                raise LoopbackClientError("trunk sent audio that is not base64") from None
            if len(self._heard) + len(pcm) > MAX_HEARD:
                self.heard_overflow = True
            else:
                self._heard += pcm
            return msg
        self.events.append(msg)
        if len(self.events) > MAX_EVENTS:
            del self.events[0]
            self._cursor = max(0, self._cursor - 1)
        if msg.get("ev") in _FINAL and self.final is None:
            self.final = msg
        return msg

    async def _next(self, *, timeout: float | None) -> dict[str, Any]:
        return self._note(await self._receive(timeout=timeout))

    def _take_buffered(self) -> None:
        while True:
            msg = self._pop_line()
            if msg is None:
                return
            self._note(msg)

    # ------------------------------------------------------------------ lines

    async def _send(self, msg: dict[str, Any]) -> None:
        await self._stream.send_all(json.dumps(msg).encode() + b"\n")

    async def _receive(self, *, timeout: float | None) -> dict[str, Any]:
        with trio.fail_after(timeout if timeout is not None else float("inf")):
            while True:
                msg = self._pop_line()
                if msg is not None:
                    return msg
                if self._framer.at_eof:
                    # the connection closed without a final word: treat it as dropped
                    return {"ev": "dropped", "reason": "connection closed"}
                try:
                    data = await self._stream.receive_some(MAX_LINE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                self._framer.receive_data(data)  # b"": the end of the stream

    def _pop_line(self) -> dict[str, Any] | None:
        """The next complete line received, parsed; None if there is none (a line cut by
        the end of the stream is dropped)."""
        try:
            line = self._framer.next_line()
        except FramingError:
            raise LoopbackClientError("trunk sent an over-long line") from None
        if line is NEED_DATA or isinstance(line, (Closed, Unfinished)):
            return None
        msg = decode_json_object(line)
        if isinstance(msg, str):
            raise LoopbackClientError(f"trunk sent a bad line ({msg}): {line!r:.80}")
        if not isinstance(msg.get("ev"), str):
            raise LoopbackClientError(f"trunk sent a line without ev: {line!r:.80}")
        return msg


@asynccontextmanager
async def open_call(host: str, port: int, call_id: str, *, calling: str = "", called: str = "",
                    forwarding: str = "", reason: str = "direct",
                    reply_timeout: float = 30.0, media: bool = False,
                    line: int | None = None) -> AsyncIterator[LoopbackCall]:
    """Place a call and keep it; the block's end hangs it up if it is still in progress.
    ``reply_timeout`` bounds the wait for the answer (the trunk may hold the offer for a while).
    ``media=True`` asks a messaging service for the call flow (greeting, recording, DTMF).
    ``line=N`` rings port ``loopback-N`` itself, as a PBX rings one line of a voice board."""
    stream = await trio.open_tcp_stream(host, port)
    async with call_on_stream(stream, call_id, calling=calling, called=called,
                              forwarding=forwarding, reason=reason,
                              reply_timeout=reply_timeout, media=media, line=line) as call:
        yield call


@asynccontextmanager
async def call_on_stream(stream: trio.abc.Stream, call_id: str, *, calling: str = "",
                         called: str = "", forwarding: str = "", reason: str = "direct",
                         reply_timeout: float = 30.0, media: bool = False,
                         line: int | None = None) -> AsyncIterator[LoopbackCall]:
    """:func:`open_call` on a stream you connected yourself (closed at the end)."""
    async with stream:
        call = LoopbackCall(stream, reply_timeout=reply_timeout)
        await call.offer(call_id, calling=calling, called=called, forwarding=forwarding,
                         reason=reason, media=media, line=line)
        try:
            yield call
        finally:
            if call.in_progress:
                with trio.CancelScope(shield=True), trio.move_on_after(reply_timeout):
                    try:
                        await call.hangup()
                    except LoopbackClientError:
                        pass


async def place_call(host: str, port: int, call_id: str, *, calling: str = "", called: str = "",
                     forwarding: str = "", reason: str = "direct", hold: float = 0.0,
                     reply_timeout: float = 30.0) -> CallOutcome:
    """Place one call; if answered, stay on it for ``hold`` seconds (unless the trunk drops it
    first), then hang up.  Returns the outcome."""
    async with open_call(host, port, call_id, calling=calling, called=called,
                         forwarding=forwarding, reason=reason,
                         reply_timeout=reply_timeout) as call:
        if call.in_progress:
            with trio.move_on_after(hold):
                await call.wait_dropped()
            if call.in_progress:
                await call.hangup()
    return call.outcome
