"""The board simulator's wire: frames between a host (:class:`telephony.analog.simboard.SimBoard`)
and the voice-board simulator, over a Unix stream socket.  Pure (sans-IO): bytes in, frames out.

Every frame, in both directions (docs/analog.md, "The simulator's wire")::

    type u8 | line u8 | length u16 (big-endian) | payload (length bytes, at most 1024)

====  =========  ==============  ==========================================================
type  name       direction       payload
====  =========  ==============  ==========================================================
1     ``HELLO``  board -> host   ``lines u8`` (1..255), ``law u8`` (0 µ-law, 1 A-law),
                                 ``name`` printable ASCII (the rest, at most 64 bytes)
2     ``EVENT``  board -> host   ``code u8`` (1 ring_on, 2 ring_off, 3 loop_on, 4 loop_drop,
                                 5 alarm, 6 alarm_clear), ``ms u16`` (big-endian)
3     ``AUDIO``  both            160 bytes of G.711 in the board's law (20 ms)
4     ``HOOK``   host -> board   ``offhook u8`` (0 or 1)
====  =========  ==============  ==========================================================

``line`` is 1..lines in every frame but ``HELLO`` (where it is 0).  ``HELLO`` is the board's
first frame and comes exactly once per connection.

A :class:`Decoder` reads one direction of one connection.  Anything that does not fit the
table (an unknown type, a frame of the other direction, a bad line, a wrong payload length, a
length over 1024, a frame before ``HELLO`` or a second ``HELLO``, a bad field value) is a
protocol error: the stream cannot be trusted after it, so the decoder raises
:class:`WireError` (carrying the good frames decoded before it in the same call) and stays
failed; the connection is to be closed.  The decoder holds at most one unfinished frame
(at most :data:`MAX_FRAME` - 1 bytes, well inside the :data:`MAX_BUFFER` bound), and what it
decodes does not depend on how the stream was split into reads.

:func:`encode` checks a frame the same way and raises :class:`ValueError` for a bad one.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

__all__ = [
    "HEADER", "MAX_PAYLOAD", "MAX_FRAME", "MAX_BUFFER", "MAX_NAME", "AUDIO_BYTES", "LAWS",
    "EVENT_CODES", "EVENT_NAMES", "HELLO", "EVENT", "AUDIO", "HOOK", "TO_HOST", "TO_BOARD",
    "Hello", "EventFrame", "AudioFrame", "Hook", "Frame", "WireError", "encode", "Decoder",
]

HEADER: Final = 4
MAX_PAYLOAD: Final = 1024
MAX_FRAME: Final = HEADER + MAX_PAYLOAD
#: the most bytes a decoder may hold (the contract's bound; one frame never needs more)
MAX_BUFFER: Final = 4096
MAX_NAME: Final = 64
AUDIO_BYTES: Final = 160  # 20 ms of G.711 at 8 kHz
#: law byte -> law name
LAWS: Final = ("ulaw", "alaw")
#: event code -> event name (the values of telephony.analog.board.LineEvent)
EVENT_CODES: Final = {1: "ring_on", 2: "ring_off", 3: "loop_on", 4: "loop_drop", 5: "alarm",
                      6: "alarm_clear"}
EVENT_NAMES: Final = {name: code for code, name in EVENT_CODES.items()}

HELLO: Final = 1
EVENT: Final = 2
AUDIO: Final = 3
HOOK: Final = 4
_TYPE_NAMES = {HELLO: "HELLO", EVENT: "EVENT", AUDIO: "AUDIO", HOOK: "HOOK"}

#: directions a decoder reads
TO_HOST: Final = "to_host"  # what the board sends: HELLO, EVENT, AUDIO
TO_BOARD: Final = "to_board"  # what the host sends: AUDIO, HOOK
_ACCEPTS = {TO_HOST: frozenset((HELLO, EVENT, AUDIO)), TO_BOARD: frozenset((AUDIO, HOOK))}

_HEAD = struct.Struct(">BBH")
_EVENT = struct.Struct(">BH")


@dataclass(frozen=True)
class Hello:
    """The board's first frame: how many lines (numbered 1..lines), its law, its name."""

    lines: int
    law: str
    name: str = ""


@dataclass(frozen=True)
class EventFrame:
    """A line event; ``event`` is a name of :data:`EVENT_CODES`, ``ms`` 0..65535."""

    line: int
    event: str
    ms: int = 0


@dataclass(frozen=True)
class AudioFrame:
    """20 ms of G.711 (160 bytes) in the board's law."""

    line: int
    data: bytes


@dataclass(frozen=True)
class Hook:
    """The host takes ``line`` off hook (True) or puts it back on hook (False)."""

    line: int
    offhook: bool


Frame = Hello | EventFrame | AudioFrame | Hook


class WireError(ValueError):
    """A protocol error in the stream.  ``frames``: the good frames :meth:`Decoder.feed`
    decoded before the bad one in the same call (to be handled before closing)."""

    def __init__(self, message: str, frames: list[Frame] | None = None) -> None:
        super().__init__(message)
        self.frames: list[Frame] = list(frames or [])


def _check_line(line: object, lines: int | None) -> str | None:
    if type(line) is not int or not 1 <= line <= (lines if lines is not None else 255):
        top = lines if lines is not None else 255
        return f"line {line!r} is not in 1..{top}"
    return None


def _check_name(name: str) -> str | None:
    if len(name) > MAX_NAME:
        return f"board name longer than {MAX_NAME} characters"
    if not all(" " <= c <= "~" for c in name):
        return f"board name {name!r} is not printable ASCII"
    return None


def encode(frame: Frame, lines: int | None = None) -> bytes:
    """The bytes of ``frame``.  ``lines``: the board's line count, to check ``line`` against
    (without it, 1..255).  A frame the wire cannot carry raises :class:`ValueError`."""
    if isinstance(frame, Hello):
        if type(frame.lines) is not int or not 1 <= frame.lines <= 255:
            raise ValueError(f"HELLO lines {frame.lines!r} is not in 1..255")
        if frame.law not in LAWS:
            raise ValueError(f"HELLO law {frame.law!r} is not one of {LAWS}")
        if not isinstance(frame.name, str) or (why := _check_name(frame.name)):
            raise ValueError(f"HELLO {why if isinstance(frame.name, str) else 'name must be str'}")
        payload = bytes((frame.lines, LAWS.index(frame.law))) + frame.name.encode("ascii")
        return _HEAD.pack(HELLO, 0, len(payload)) + payload
    if not isinstance(frame, EventFrame | AudioFrame | Hook):
        raise ValueError(f"not a wire frame: {frame!r}")
    if why := _check_line(frame.line, lines):
        raise ValueError(why)
    if isinstance(frame, EventFrame):
        code = EVENT_NAMES.get(frame.event)
        if code is None:
            raise ValueError(f"unknown event {frame.event!r} (one of {sorted(EVENT_NAMES)})")
        if type(frame.ms) is not int or not 0 <= frame.ms <= 0xFFFF:
            raise ValueError(f"event ms {frame.ms!r} is not in 0..65535")
        return _HEAD.pack(EVENT, frame.line, _EVENT.size) + _EVENT.pack(code, frame.ms)
    if isinstance(frame, AudioFrame):
        if not isinstance(frame.data, bytes | bytearray | memoryview) or len(frame.data) != AUDIO_BYTES:
            raise ValueError(f"an AUDIO frame carries exactly {AUDIO_BYTES} bytes of G.711")
        return _HEAD.pack(AUDIO, frame.line, AUDIO_BYTES) + bytes(frame.data)
    if not isinstance(frame.offhook, bool):
        raise ValueError(f"HOOK offhook must be a bool, not {frame.offhook!r}")
    return _HEAD.pack(HOOK, frame.line, 1) + bytes((int(frame.offhook),))


class Decoder:
    """Frames of one direction of one connection.

    ``direction``: :data:`TO_HOST` (the host reads the board: ``HELLO`` first, then events and
    audio; the line count comes from ``HELLO``) or :data:`TO_BOARD` (the board reads the host:
    audio and hook frames; give ``lines``)."""

    def __init__(self, direction: str = TO_HOST, *, lines: int | None = None) -> None:
        if direction not in _ACCEPTS:
            raise ValueError(f"direction must be {TO_HOST!r} or {TO_BOARD!r}, not {direction!r}")
        if lines is not None and (type(lines) is not int or not 1 <= lines <= 255):
            raise ValueError(f"lines {lines!r} is not in 1..255")
        if direction == TO_BOARD and lines is None:
            raise ValueError("a decoder of the host's frames needs the board's line count")
        self.direction = direction
        self.lines = lines
        self.hello: Hello | None = None
        self.error: WireError | None = None
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes held of an unfinished frame (never over :data:`MAX_BUFFER`)."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """The frames completed by ``data``.  On a protocol error: :class:`WireError` (also on
        every later call: the decoder stays failed)."""
        if self.error is not None:
            raise WireError(f"stream already failed: {self.error}")
        self._buf += data
        frames: list[Frame] = []
        buf = self._buf
        pos = 0
        try:
            while len(buf) - pos >= HEADER:
                ftype, line, length = _HEAD.unpack_from(buf, pos)
                self._check_header(ftype, line, length)
                if len(buf) - pos < HEADER + length:
                    break
                payload = bytes(buf[pos + HEADER:pos + HEADER + length])
                frames.append(self._frame(ftype, line, payload))
                pos += HEADER + length
        except WireError as e:
            e.frames = frames
            self.error = e
            self._buf = bytearray()
            raise
        del buf[:pos]
        assert len(self._buf) < MAX_FRAME <= MAX_BUFFER
        return frames

    def _fail(self, why: str) -> WireError:
        return WireError(f"protocol error: {why}")

    def _check_header(self, ftype: int, line: int, length: int) -> None:
        name = _TYPE_NAMES.get(ftype)
        if name is None:
            raise self._fail(f"unknown frame type {ftype}")
        if ftype not in _ACCEPTS[self.direction]:
            raise self._fail(f"{name} is not sent in this direction ({self.direction})")
        if length > MAX_PAYLOAD:
            raise self._fail(f"{name} payload length {length} is over {MAX_PAYLOAD}")
        if self.direction == TO_HOST:
            if ftype == HELLO:
                if self.hello is not None:
                    raise self._fail("a second HELLO")
                if line != 0:
                    raise self._fail(f"HELLO on line {line} (must be 0)")
                if not 2 <= length <= 2 + MAX_NAME:
                    raise self._fail(f"HELLO payload length {length} is not in 2..{2 + MAX_NAME}")
                return
            if self.hello is None:
                raise self._fail(f"{name} before HELLO")
        if not 1 <= line <= (self.lines or 0):
            raise self._fail(f"{name} on line {line}, not in 1..{self.lines}")
        want = {EVENT: _EVENT.size, AUDIO: AUDIO_BYTES, HOOK: 1}[ftype]
        if length != want:
            raise self._fail(f"{name} payload length {length} (must be {want})")

    def _frame(self, ftype: int, line: int, payload: bytes) -> Frame:
        if ftype == HELLO:
            lines, law = payload[0], payload[1]
            if lines == 0:
                raise self._fail("HELLO says the board has 0 lines")
            if law >= len(LAWS):
                raise self._fail(f"HELLO law byte {law} (0 µ-law, 1 A-law)")
            name = payload[2:].decode("latin-1")
            if why := _check_name(name):
                raise self._fail(f"HELLO {why}")
            self.hello = Hello(lines, LAWS[law], name)
            self.lines = lines
            return self.hello
        if ftype == EVENT:
            code, ms = _EVENT.unpack(payload)
            if code not in EVENT_CODES:
                raise self._fail(f"unknown event code {code} on line {line}")
            return EventFrame(line, EVENT_CODES[code], ms)
        if ftype == AUDIO:
            return AudioFrame(line, payload)
        if payload[0] > 1:
            raise self._fail(f"HOOK value {payload[0]} on line {line} (must be 0 or 1)")
        return Hook(line, bool(payload[0]))
