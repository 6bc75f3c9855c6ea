"""The board interface: what every analog voice-board backend offers (docs/analog.md, "Boards").

A board is a set of FXO lines numbered ``1..lines``.  Input from all lines comes through one
:meth:`Board.receive`: line events (:class:`Event`) and 20 ms frames of PCM (:class:`Audio`, the
house format of :mod:`telephony.core.media`: 8 kHz 16-bit little-endian mono, 320 bytes).  The
host drives the hook with :meth:`Board.set_hook` and talks with :meth:`Board.send_audio`.

A board that cannot go on (its connection or device failed, the other end broke the protocol)
raises :class:`BoardError` from whatever method noticed it; the caller closes it and opens it
again (with a backoff).  Bad arguments (a line out of range, a frame of the wrong size) raise
``ValueError`` and change nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Protocol

__all__ = ["FRAME_MS", "FRAME_BYTES", "LineEvent", "Event", "Audio", "Board", "BoardError",
           "check_line", "check_frame"]

FRAME_MS: Final = 20
FRAME_BYTES: Final = 320  # 20 ms of 8 kHz 16-bit PCM


class LineEvent(StrEnum):
    RING_ON = "ring_on"  # ringing voltage starts
    RING_OFF = "ring_off"  # ringing voltage stops
    LOOP_ON = "loop_on"  # loop current present
    LOOP_DROP = "loop_drop"  # loop current gone (``ms``: how long, when known)
    ALARM = "alarm"  # the line is unusable
    ALARM_CLEAR = "alarm_clear"  # the line is usable again


@dataclass(frozen=True)
class Event:
    line: int
    event: LineEvent
    ms: int = 0  # a duration (the loop drop's length); 0 when it does not apply


@dataclass(frozen=True)
class Audio:
    line: int
    pcm: bytes  # one 20 ms frame, 320 bytes of PCM


class BoardError(Exception):
    """The board cannot go on (connection lost or refused, device gone, protocol broken).
    Close it and open it again."""


class Board(Protocol):
    lines: int  # lines are numbered 1..lines (known after open())
    law: str  # "ulaw" | "alaw": what the wire or the card carries

    async def open(self) -> None: ...

    async def aclose(self) -> None: ...

    async def receive(self) -> Event | Audio:
        """The next input from any line; audio arrives only for a line that is off hook (and,
        on a board that passes it, the on-hook caller-ID burst of a ringing line)."""
        ...

    async def set_hook(self, line: int, offhook: bool) -> None: ...

    async def send_audio(self, line: int, pcm: bytes) -> None:
        """One 20 ms frame (320 bytes of PCM) to ``line``."""
        ...


def check_line(line: object, lines: int) -> int:
    """``line`` as a line number of a board with ``lines`` lines, or ``ValueError``."""
    if type(line) is not int or not 1 <= line <= lines:
        raise ValueError(f"line {line!r} is not one of this board's lines 1..{lines}")
    return line


def check_frame(pcm: object) -> bytes:
    """``pcm`` as one 20 ms PCM frame (320 bytes), or ``ValueError``."""
    if not isinstance(pcm, bytes | bytearray | memoryview) or len(pcm) != FRAME_BYTES:
        size = len(pcm) if isinstance(pcm, bytes | bytearray | memoryview) else type(pcm).__name__
        raise ValueError(f"an audio frame is {FRAME_BYTES} bytes of PCM (20 ms), not {size}")
    return bytes(pcm)
