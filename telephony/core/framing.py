"""The one line framer and the codecs' shared outcome types.

Every stream that carries one JSON object per ``\\n``-terminated line (the local control
channel, the SIP workers' pipes, the loopback trunk, the admin socket) cuts its lines with
:class:`LineFramer`, which keeps at most ``max_line`` bytes of an unfinished line.  Binary
codecs (the node link, replication) share the sentinels :data:`NEED_DATA` and :class:`Closed`.

A framer is fed bytes and hands out lines::

    f = LineFramer(max_line=65536)
    f.receive_data(chunk)           # b"" means end of stream
    item = f.next_line()            # bytes | Unfinished | Overlong | NEED_DATA | Closed

Two policies for a line over ``max_line``:

* ``resync=False`` (a trusted peer that broke the framing): :class:`FramingError` is raised,
  then and on every later call; the caller closes the stream.
* ``resync=True`` (a peer whose lines may be long but the stream stays usable): the rest of
  the line is skipped up to its ``\\n`` and one :class:`Overlong` item comes out in its place.

:func:`encode_json_line` and :func:`decode_json_object` are the JSON halves.

Pure: no trio, socket, time, threading or os.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Final

MAX_LINE: Final = 65536


class NeedData:
    """The type of :data:`NEED_DATA`."""

    _instance: NeedData | None = None

    def __new__(cls) -> NeedData:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"


#: ``next_line()`` / ``next_event()`` needs more bytes before it can return anything.
NEED_DATA: Final = NeedData()


@dataclass(frozen=True)
class Closed:
    """The peer closed its side and everything complete has been returned."""


@dataclass(frozen=True)
class Unfinished:
    """Bytes after the last ``\\n`` when the stream ended: a line that was never finished."""

    raw: bytes


@dataclass(frozen=True)
class Overlong:
    """A line over the limit that was skipped (``resync=True``); ``size`` is how many bytes
    of it were seen before the framer gave up keeping them."""

    size: int


class FramingError(Exception):
    """The peer broke the framing (a line over the limit): close the stream."""


class LocalFramingError(Exception):
    """We misused the framer (data after the end of stream, a line that cannot be sent)."""


class LineFramer:
    """Bounded ``\\n`` framing of a byte stream (one per direction)."""

    def __init__(self, max_line: int = MAX_LINE, *, resync: bool = False) -> None:
        if max_line < 1:
            raise ValueError("max_line must be positive")
        self.max_line = max_line
        self.resync = resync
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf known to hold no b"\n"
        self._eof = False
        self._skipping = 0  # resync: bytes of an over-long line dropped so far (0: not skipping)
        self._broken: FramingError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for a line not yet complete."""
        return len(self._buf)

    def receive_data(self, data: bytes) -> None:
        """Add bytes from the peer; ``b""`` means the peer closed its side."""
        if self._eof:
            if data:
                raise LocalFramingError("receive_data after end of stream")
            return
        if not data:
            self._eof = True
        else:
            self._buf += data

    def next_line(self) -> bytes | Unfinished | Overlong | NeedData | Closed:
        """The next complete line without its ``\\n`` (a trailing ``\\r`` is kept)."""
        if self._broken is not None:
            raise self._broken
        while True:
            nl = self._buf.find(b"\n", self._scanned)
            if nl < 0:
                self._scanned = len(self._buf)
                if len(self._buf) > self.max_line:
                    if not self.resync:
                        self._fail(f"line longer than {self.max_line} bytes")
                    self._skipping += len(self._buf)
                    self._buf.clear()
                    self._scanned = 0
                if not self._eof:
                    return NEED_DATA
                if self._skipping:  # what is held is the end of the over-long line
                    size, self._skipping = self._skipping + len(self._buf), 0
                    self._buf.clear()
                    self._scanned = 0
                    return Overlong(size)
                if self._buf:
                    raw = bytes(self._buf)
                    self._buf.clear()
                    self._scanned = 0
                    return Unfinished(raw)
                return Closed()
            raw = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            self._scanned = 0
            if self._skipping:
                size, self._skipping = self._skipping + len(raw), 0
                return Overlong(size)
            if len(raw) > self.max_line:
                if not self.resync:
                    self._fail(f"line of {len(raw)} bytes is longer than {self.max_line}")
                return Overlong(len(raw))
            return raw

    @property
    def at_eof(self) -> bool:
        """The peer closed its side (lines may still be waiting)."""
        return self._eof

    def _fail(self, reason: str) -> None:
        self._broken = FramingError(reason)
        self._buf.clear()
        raise self._broken


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: no JSON number can stand for it again
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def decode_json_object(raw: bytes) -> dict | str:
    """One line as a JSON object, or the reason it is not one (a ``str``).  Strict JSON: no
    ``NaN``/``Infinity`` (nor a number too large for a float, such as ``1e400``), UTF-8
    only, nesting bounded by the parser, and no lone surrogate escape (``"\\ud800"``: not a
    character).  So whatever it returns, :func:`encode_json_line` can write again."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8: {exc.reason} at byte {exc.start}"
    try:
        obj = json.loads(text, parse_constant=_no_constants, parse_float=_finite)
    except RecursionError:
        return "JSON nested too deeply"
    except ValueError as exc:  # JSONDecodeError, over-long integers, NaN/Infinity
        return f"not JSON: {exc}"
    if not isinstance(obj, dict):
        return f"not a JSON object but {type(obj).__name__}"
    if "\\u" in text:  # only an escape can make a lone surrogate
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return "not JSON text: a \\u escape of a lone surrogate (no character)"
        except RecursionError:
            return "JSON nested too deeply"
    return obj


def encode_json_line(obj: dict, max_line: int = MAX_LINE) -> bytes:
    """``obj`` as one compact UTF-8 JSON line with its ``\\n``.  Raises
    :class:`LocalFramingError` if it cannot be encoded or is longer than ``max_line``."""
    try:
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        line = text.encode("utf-8")  # a lone surrogate: UnicodeEncodeError, a ValueError
    except (TypeError, ValueError, RecursionError) as exc:
        raise LocalFramingError(f"cannot encode the message: {exc}") from None
    if len(line) > max_line:
        raise LocalFramingError(f"a {len(line)}-byte line is over the {max_line}-byte limit")
    return line + b"\n"

