"""SMDI wire codec.  Pure (sans-IO): bytes in, events out; no trio, sockets, serial, clocks, files.

Wire format (``docs/protocols.md`` section 1; ``^Y`` = 0x19, ``^D`` = EOT = 0x04):

* call-detail record, switch -> voice mail (1.2)::

      <CR><LF> MD ggg mmmm a [forwarding] <SP> [calling] <SP> <CR><LF> ^Y

  ``ggg`` desk (3 digits), ``mmmm`` terminal = voice-mail port (4 digits), ``a`` call type
  (``D`` direct, ``A`` forward all, ``B`` busy, ``N`` no answer, ``U`` unknown, vendor extras);
* MWI failure record, switch -> voice mail (1.4)::

      <CR><LF> MWI [<SP>] number [!] <SP> cause <CR><LF> [DEL...] ^Y      cause: INV, BLK, ...

* MWI command, voice mail -> switch (1.3): ``OP:MWI <number>!^D`` and ``RMV:MWI <number>!^D``
  (the prefixes and suffix are an integration-profile setting, :class:`MwiFormat`).

Readers (:class:`SmdiReader` for the switch's stream, :class:`CommandReader` for the voice-mail
stream, used by PBX simulators) follow docs/protocols.md 1.5.  What they guarantee:

* ``feed()`` never raises for any ``bytes``/``bytearray``/``memoryview`` input; anything
  unparseable becomes a :class:`ProtocolError` carrying the skipped bytes.
* **Split invariance.**  Decisions depend only on the bytes, never on how they were split into
  reads: feeding a stream in any split and then calling ``close()`` yields exactly the same
  events (records *and* errors, same ``raw`` bytes, same order) as feeding it in one piece.  A
  reader holds back only what it cannot yet decide (a trailing ``M``/``MW``, a partial record).
* **Conservation.**  Every input byte ends up in exactly one event's ``raw``, or is a framing byte
  that was skipped silently (for SMDI: CR, LF, ^Y, DEL 0x7F, 0xFF; for commands: CR, LF, DEL,
  0xFF and the suffix's control characters, e.g. EOT).  Events come out in stream order.
* **Bounded.**  ``buffered`` never exceeds ``max_buffer``; a record may be at most
  :data:`MAX_RECORD` bytes from its first letter to its end.
* A record is delivered as soon as its end arrives; the reader never waits for an optional byte.

Decisions where the sources are silent (our choices, docs/protocols.md 1.5):

* **Record end and ``raw``.**  A record ends at the LF of its CR LF, or at a ^Y when the CR LF
  is missing.  DEL bytes (0x7F or 0xFF) may stand before the CR and between CR and LF.  ``raw``
  runs from the ``M`` to that LF (or ^Y) inclusive; the DELs and ^Y that follow a CR LF are
  framing between records and are skipped silently.  So ``b"\\r\\nMD0010007D 1001 \\r\\n\\x19"``
  gives ``raw == b"MD0010007D 1001 \\r\\n"``.  Waiting for the optional ^Y would delay a call
  record until the next byte arrived, which may be the next call.
* **Fields.**  Forwarding and calling numbers are 0..32 digits, the MWI-failure number 1..32
  digits.  The space after the forwarding number is required (``MD0010007N5551002<CR><LF>`` is
  malformed: the number could be either field); the space after the calling number may be
  missing.  **Stray space:** when the calling field is empty and a second space is followed by
  digits, that space is skipped and the digits are the calling number (Asterisk does this when a
  10-digit forwarding field was full; it is unambiguous, so it is accepted after any forwarding
  number).  A call type is one uppercase ASCII letter; which letters are meaningful is up to the
  consumer (:attr:`CallRecord.reason` maps the standard ones).
* **Noise.**  A noise run is a maximal stretch of non-framing bytes outside records.  It is
  reported as one :class:`ProtocolError` when it is known to have ended (at a framing byte, at
  the start of a record, or at ``close()``).  Framing bytes split runs: ``b"ab\\r\\ncd"`` gives two
  errors.  A run longer than ``max_buffer - MAX_RECORD`` bytes is reported in pieces of exactly
  that size.  Bytes with the high bit set are noise, except 0xFF, which is a DEL.
* **Resynchronisation.**  A record start (``MD``, ``MWI``; for commands the prefix up to its
  colon, e.g. ``OP:``) whose bytes do not fit the layout, or that runs past :data:`MAX_RECORD`,
  starts a noise run whose ``reason`` says what was wrong and where.  Scanning resumes at the
  byte after the record start, so a good record inside or right after the bad bytes is found;
  the error's ``raw`` is the bad record's bytes up to the next framing byte or record start.
* **close()** reports whatever is held (a partial record, a pending noise run) as
  :class:`ProtocolError` events and resets the reader, which may then be fed a new stream.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from telephony.core.events import Reason

__all__ = [
    "MAX_RECORD", "DEFAULT_MAX_BUFFER", "MAX_DIGITS", "CallRecord", "MwiFailure", "MwiCommand",
    "ProtocolError", "MwiFormat", "SmdiReader", "CommandReader", "SmdiEvent", "CommandEvent",
    "encode_call_record", "encode_mwi_failure",
]

#: Most bytes from a record's first letter to its end (inclusive); longer is a protocol error.
MAX_RECORD = 128
#: Default bound of a reader's internal buffer, in bytes.
DEFAULT_MAX_BUFFER = 4096
#: Most digits in any station number (forwarding, calling, MWI).
MAX_DIGITS = 32

_CR, _LF, _SP, _EM, _DEL, _FF = 0x0D, 0x0A, 0x20, 0x19, 0x7F, 0xFF
_DELS = frozenset((_DEL, _FF))
_SMDI_FRAMING = bytes((_CR, _LF, _EM, _DEL, _FF))
_DIGITS_RE = re.compile(rf"[0-9]{{1,{MAX_DIGITS}}}")
_MAX_PREFIX = 24
_MAX_SUFFIX = 16

_REASONS = {"D": Reason.DIRECT, "A": Reason.ALL, "B": Reason.BUSY, "N": Reason.NO_ANSWER}


# --------------------------------------------------------------------------- events

@dataclass(frozen=True)
class CallRecord:
    """An ``MD`` call-detail record (switch -> voice mail).

    As produced by :class:`SmdiReader`: ``desk`` is 0..999, ``terminal`` 0..9999, ``call_type``
    one uppercase ASCII letter, ``forwarding`` and ``calling`` 0..32 ASCII digits ("" on a direct
    call / unknown caller), ``raw`` the record's bytes from ``M`` to its end (module docstring).
    """

    desk: int
    terminal: int
    call_type: str
    forwarding: str
    calling: str
    raw: bytes

    @property
    def reason(self) -> Reason:
        """``D`` DIRECT, ``A`` ALL, ``B`` BUSY, ``N`` NO_ANSWER; any other call type UNKNOWN."""
        return _REASONS.get(self.call_type, Reason.UNKNOWN)


@dataclass(frozen=True)
class MwiFailure:
    """The switch could not act on an MWI command for ``number`` (1..32 digits).  ``cause`` is
    three uppercase ASCII letters: ``INV`` invalid station, ``BLK`` blocked, or another code."""

    number: str
    cause: str
    raw: bytes


@dataclass(frozen=True)
class MwiCommand:
    """An MWI command (voice mail -> switch), as a PBX simulator reads it: lamp ``on`` or off for
    ``number`` (1..32 digits, exactly as sent, including any zero padding)."""

    on: bool
    number: str
    raw: bytes


@dataclass(frozen=True)
class ProtocolError:
    """Bytes that could not be parsed and were skipped.  Never raised: readers return it.
    ``reason`` is human-readable; ``raw`` is non-empty and starts with a non-framing byte."""

    reason: str
    raw: bytes


SmdiEvent = CallRecord | MwiFailure | ProtocolError
CommandEvent = MwiCommand | ProtocolError


# --------------------------------------------------------------------------- encoders

def _check_int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in {low}..{high}, got {value}")
    return value


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def _check_digits(name: str, value: object, *, empty_ok: bool) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string of digits, got {type(value).__name__}")
    if value == "" and empty_ok:
        return value
    if not _DIGITS_RE.fullmatch(value):
        raise ValueError(f"{name} must be 1..{MAX_DIGITS} ASCII digits, got {value!r}")
    return value


def _check_letters(name: str, value: object, count: int) -> str:
    if (not isinstance(value, str) or len(value) != count
            or not all("A" <= c <= "Z" for c in value)):
        raise ValueError(f"{name} must be {count} uppercase ASCII letter(s), got {value!r}")
    return value


def encode_call_record(terminal: int, call_type: str, forwarding: str = "", calling: str = "", *,
                       desk: int = 1, eot: bool = True) -> bytes:
    """The bytes of an ``MD`` record as a switch sends it (for simulators and tests)::

        b"\\r\\nMD" + ggg + mmmm + a + forwarding + b" " + calling + b" " + b"\\r\\n" [+ b"\\x19"]

    ``terminal`` 0..9999, ``desk`` 0..999, ``call_type`` one uppercase ASCII letter,
    ``forwarding``/``calling`` 0..32 ASCII digits.  Raises ValueError naming the bad argument.
    """
    _check_int("terminal", terminal, 0, 9999)
    _check_int("desk", desk, 0, 999)
    _check_letters("call_type", call_type, 1)
    _check_digits("forwarding", forwarding, empty_ok=True)
    _check_digits("calling", calling, empty_ok=True)
    _check_bool("eot", eot)
    body = f"\r\nMD{desk:03d}{terminal:04d}{call_type}{forwarding} {calling} \r\n"
    return body.encode("ascii") + (b"\x19" if eot else b"")


def encode_mwi_failure(number: str, cause: str = "INV", *, space: bool = False, bang: bool = False,
                       dels: bytes = b"\x7f\x7f") -> bytes:
    """The bytes of an MWI failure record as a switch sends it (for simulators and tests)::

        b"\\r\\nMWI" [+ b" "] + number [+ b"!"] + b" " + cause + b"\\r\\n" + dels + b"\\x19"

    ``space`` gives the TOSHVP form, ``bang`` the KSIAZEK form, the default the DMS-100 form.
    ``number`` 1..32 ASCII digits, ``cause`` 3 uppercase ASCII letters, ``dels`` only 0x7F/0xFF
    bytes (may be empty).  Raises ValueError naming the bad argument.
    """
    _check_digits("number", number, empty_ok=False)
    _check_letters("cause", cause, 3)
    _check_bool("space", space)
    _check_bool("bang", bang)
    if not isinstance(dels, bytes) or any(b not in _DELS for b in dels):
        raise ValueError(f"dels must be bytes of 0x7F/0xFF only, got {dels!r}")
    text = f"\r\nMWI{' ' if space else ''}{number}{'!' if bang else ''} {cause}\r\n"
    return text.encode("ascii") + dels + b"\x19"


@dataclass(frozen=True)
class MwiFormat:
    """The MWI command format, an integration-profile setting (docs/protocols.md 1.3).

    A command is ``prefix + number + suffix`` with ``on_prefix`` to light the lamp and
    ``off_prefix`` to turn it off; ``pad_to`` zero-pads the number on the left to that many
    digits (a longer number is sent as it is; 0: never pad).  The fields are checked when the
    format is used (:meth:`encode`, :meth:`line_bytes`, :class:`CommandReader`): prefixes
    1..24 printable ASCII characters, suffix 0..16 ASCII characters, ``pad_to`` 0..32.
    """

    on_prefix: str = "OP:MWI "
    off_prefix: str = "RMV:MWI "
    suffix: str = "!\x04"
    pad_to: int = 0

    def _check(self) -> None:
        for name in ("on_prefix", "off_prefix"):
            value = getattr(self, name)
            if not isinstance(value, str) or not 1 <= len(value) <= _MAX_PREFIX:
                raise ValueError(f"{name} must be a string of 1..{_MAX_PREFIX} characters, "
                                 f"got {value!r}")
            if not all(" " <= c <= "~" for c in value):
                raise ValueError(f"{name} must be printable ASCII, got {value!r}")
        if not isinstance(self.suffix, str) or len(self.suffix) > _MAX_SUFFIX:
            raise ValueError(f"suffix must be a string of at most {_MAX_SUFFIX} characters, "
                             f"got {self.suffix!r}")
        if not self.suffix.isascii():
            raise ValueError(f"suffix must be ASCII, got {self.suffix!r}")
        _check_int("pad_to", self.pad_to, 0, MAX_DIGITS)

    def encode(self, on: bool, number: str) -> bytes:
        """The command bytes for ``number`` (1..32 ASCII digits).  ValueError naming the bad
        argument or format field."""
        self._check()
        _check_bool("on", on)
        _check_digits("number", number, empty_ok=False)
        prefix = self.on_prefix if on else self.off_prefix
        return (prefix + number.rjust(self.pad_to, "0") + self.suffix).encode("ascii")

    def line_bytes(self, number_len: int) -> int:
        """Bytes on the wire of one command for a number of ``number_len`` (1..32) digits: the
        longer of the on and off forms, after padding (for pacing the serial line)."""
        self._check()
        _check_int("number_len", number_len, 1, MAX_DIGITS)
        prefix = max(len(self.on_prefix), len(self.off_prefix))
        return prefix + max(number_len, self.pad_to) + len(self.suffix)


# --------------------------------------------------------------------------- parsing machinery

class _Need(Exception):
    """The bytes so far are a valid beginning of a record; more are needed to decide."""


class _Bad(Exception):
    """The bytes do not fit the layout; ``args[0]`` says what was wrong and where."""


def _show(byte: int) -> str:
    return repr(bytes((byte,)))


def _is_digit(byte: int) -> bool:
    return 0x30 <= byte <= 0x39


class _Cursor:
    """Reads one record candidate starting at ``start`` in ``buf``.  A read past the bytes held
    raises :class:`_Need` (or :class:`_Bad` at end of stream), a read past :data:`MAX_RECORD`
    bytes from ``start`` raises :class:`_Bad`; so every outcome depends on the bytes only."""

    __slots__ = ("buf", "start", "pos", "end", "capped", "final")

    def __init__(self, buf: bytearray, start: int, pos: int, final: bool) -> None:
        self.buf = buf
        self.start = start
        self.pos = pos
        self.capped = len(buf) >= start + MAX_RECORD
        self.end = start + MAX_RECORD if self.capped else len(buf)
        self.final = final

    def fail(self, what: str) -> _Bad:
        return _Bad(f"{what} at offset {self.pos - self.start}")

    def peek(self, ahead: int = 0) -> int:
        at = self.pos + ahead
        if at < self.end:
            return self.buf[at]
        if self.capped:
            raise _Bad(f"no end within {MAX_RECORD} bytes")
        if self.final:
            raise self.fail("the stream ended inside the record")
        raise _Need

    def accept(self, byte: int) -> bool:
        if self.peek() == byte:
            self.pos += 1
            return True
        return False

    def expect(self, literal: bytes, what: str) -> None:
        for want in literal:
            got = self.peek()
            if got != want:
                raise self.fail(f"expected {what}, got {_show(got)}")
            self.pos += 1

    def looking_at(self, literal: bytes) -> bool:
        """Whether the bytes at the cursor start with ``literal`` (not consumed)."""
        for k, want in enumerate(literal):
            if self.peek(k) != want:
                return False
        return True

    def fixed_digits(self, count: int, what: str) -> str:
        start = self.pos
        for _ in range(count):
            got = self.peek()
            if not _is_digit(got):
                raise self.fail(f"{what}: expected {count} digits, got {_show(got)}")
            self.pos += 1
        return self.buf[start:self.pos].decode("ascii")

    def digits(self, least: int, what: str) -> str:
        start = self.pos
        while _is_digit(self.peek()):
            if self.pos - start == MAX_DIGITS:
                raise self.fail(f"{what}: more than {MAX_DIGITS} digits")
            self.pos += 1
        if self.pos - start < least:
            raise self.fail(f"{what}: expected a digit, got {_show(self.peek())}")
        return self.buf[start:self.pos].decode("ascii")

    def letters(self, count: int, what: str) -> str:
        start = self.pos
        for _ in range(count):
            got = self.peek()
            if not 0x41 <= got <= 0x5A:
                raise self.fail(f"{what}: expected an uppercase letter, got {_show(got)}")
            self.pos += 1
        return self.buf[start:self.pos].decode("ascii")

    def end_of_line(self) -> None:
        """``[DEL...] (CR [DEL...] LF | ^Y)``, DEL being 0x7F or 0xFF."""
        while self.peek() in _DELS:
            self.pos += 1
        got = self.peek()
        if got == _EM:
            self.pos += 1
            return
        if got != _CR:
            raise self.fail(f"expected CR LF or ^Y, got {_show(got)}")
        self.pos += 1
        while self.peek() in _DELS:
            self.pos += 1
        got = self.peek()
        if got != _LF:
            raise self.fail(f"expected LF after CR, got {_show(got)}")
        self.pos += 1

    def raw(self) -> bytes:
        return bytes(self.buf[self.start:self.pos])


E = TypeVar("E")
#: A tag's parser: reads from just after the tag, returns the event or raises _Need/_Bad.
_Parser = Callable[[_Cursor], object]


class _Reader(Generic[E]):
    """The framing loop shared by both readers: skips framing bytes, collects noise runs, tries
    a parser wherever a tag starts, and resynchronises at the byte after a bad record's start."""

    def __init__(self, max_buffer: int, framing: bytes, tags: dict[bytes, tuple[str, _Parser]]
                 ) -> None:
        _check_int("max_buffer", max_buffer, 2 * MAX_RECORD, 1 << 40)
        self._max_buffer = max_buffer
        # Held at once: a noise run (< _noise_limit) and a partial tag (< MAX_RECORD), or a
        # partial record (< MAX_RECORD) alone; so buffered < max_buffer after every step.
        self._noise_limit = max_buffer - MAX_RECORD
        self._framing = frozenset(framing)
        self._tags = tags
        self._starters = frozenset(tag[0] for tag in tags)
        stops = bytes(sorted(self._framing | self._starters))
        self._stop = re.compile(b"[" + b"".join(re.escape(bytes((b,))) for b in stops) + b"]")
        self._buf = bytearray()
        self._noise = bytearray()
        self._noise_reason: str | None = None

    @property
    def buffered(self) -> int:
        """Bytes held: an undecided partial record or tag plus a noise run not yet known to have
        ended.  Never more than ``max_buffer``."""
        return len(self._buf) + len(self._noise)

    def feed(self, data: bytes) -> list[E | ProtocolError]:
        """Parse more of the stream; return the events completed by these bytes, in stream order.
        Never raises for ``bytes``, ``bytearray`` or ``memoryview`` data (TypeError for any other
        type: a programming error, not line noise)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"feed() takes bytes, got {type(data).__name__}")
        data = bytes(data)
        events: list[E | ProtocolError] = []
        pos = 0
        while pos < len(data):
            # _process leaves buffered < max_buffer (see __init__), so room >= 1 here.
            room = max(self._max_buffer - self.buffered, 1)
            self._buf += data[pos:pos + room]
            pos += room
            self._process(events, final=False)
        return events

    def close(self) -> list[ProtocolError]:
        """End of stream: report what is held (a partial record, a trailing noise run) as
        ProtocolError events and reset the reader."""
        events: list[E | ProtocolError] = []
        self._process(events, final=True)
        self._flush_noise(events)
        return [e for e in events if isinstance(e, ProtocolError)]

    # ----------------------------------------------------------------------- internals

    def _process(self, events: list[E | ProtocolError], final: bool) -> None:
        buf = self._buf
        i, n = 0, len(buf)
        while i < n:
            byte = buf[i]
            if byte in self._framing:
                self._flush_noise(events)
                i += 1
                continue
            if byte not in self._starters:
                match = self._stop.search(buf, i)
                j = match.start() if match else n
                self._add_noise(buf[i:j], events)
                i = j
                continue
            outcome = self._try_tags(buf, i, final)
            if outcome is None:                     # not a tag: the starter byte is noise
                self._add_noise(buf[i:i + 1], events)
                i += 1
            elif outcome is _Need:
                break
            elif isinstance(outcome, _Bad):
                self._flush_noise(events)
                self._noise_reason = outcome.args[0]
                self._add_noise(buf[i:i + 1], events)
                i += 1
            else:
                event, i = outcome
                self._flush_noise(events)
                events.append(event)
        del buf[:i]

    def _try_tags(self, buf: bytearray, i: int, final: bool
                  ) -> None | type[_Need] | _Bad | tuple[E, int]:
        held = len(buf) - i
        for tag, (name, parser) in self._tags.items():
            if held < len(tag):
                if tag.startswith(buf[i:]):
                    return None if final else _Need
                continue
            if buf.startswith(tag, i):
                cursor = _Cursor(buf, i, i + len(tag), final)
                try:
                    event = parser(cursor)
                except _Need:
                    return _Need
                except _Bad as bad:
                    return _Bad(f"malformed {name}: {bad.args[0]}")
                return event, cursor.pos
        return None

    def _add_noise(self, chunk: bytes | bytearray, events: list[E | ProtocolError]) -> None:
        view = memoryview(chunk)
        while len(view):
            room = self._noise_limit - len(self._noise)
            self._noise += view[:room]
            view = view[room:]
            if len(self._noise) >= self._noise_limit:
                self._flush_noise(events, cut=True)

    def _flush_noise(self, events: list[E | ProtocolError], cut: bool = False) -> None:
        if not self._noise:
            return
        reason = self._noise_reason or "noise outside a record"
        if cut:
            reason += f" (run cut at {self._noise_limit} bytes)"
        events.append(ProtocolError(reason, bytes(self._noise)))
        self._noise.clear()
        self._noise_reason = None


# --------------------------------------------------------------------------- SMDI reader

def _parse_md(cur: _Cursor) -> CallRecord:
    desk = cur.fixed_digits(3, "desk number")
    terminal = cur.fixed_digits(4, "terminal number")
    call_type = cur.letters(1, "call type")
    forwarding = cur.digits(0, "forwarding number")
    cur.expect(b" ", "a space after the forwarding number")
    calling = cur.digits(0, "calling number")
    if cur.accept(_SP) and not calling and _is_digit(cur.peek()):
        calling = cur.digits(1, "calling number")     # after a stray second space
        cur.accept(_SP)
    cur.end_of_line()
    return CallRecord(int(desk), int(terminal), call_type, forwarding, calling, cur.raw())


def _parse_mwi_failure(cur: _Cursor) -> MwiFailure:
    cur.accept(_SP)
    number = cur.digits(1, "station number")
    cur.accept(ord("!"))
    cur.expect(b" ", "a space before the cause")
    cause = cur.letters(3, "cause")
    cur.end_of_line()
    return MwiFailure(number, cause, cur.raw())


class SmdiReader(_Reader[CallRecord | MwiFailure]):
    """Parses the switch -> voice-mail stream into :class:`CallRecord`, :class:`MwiFailure` and
    :class:`ProtocolError` events (guarantees and rules: module docstring).

    ``max_buffer`` (at least ``2 * MAX_RECORD``) bounds the bytes held between calls.
    """

    def __init__(self, *, max_buffer: int = DEFAULT_MAX_BUFFER) -> None:
        super().__init__(max_buffer, _SMDI_FRAMING, {
            b"MD": ("MD record", _parse_md),
            b"MWI": ("MWI failure record", _parse_mwi_failure),
        })

    def feed(self, data: bytes) -> list[CallRecord | MwiFailure | ProtocolError]:
        """Parse more bytes; return the events they complete, in stream order.  Never raises
        for ``bytes``, ``bytearray`` or ``memoryview`` data."""
        return super().feed(data)


# --------------------------------------------------------------------------- command reader

def _split_prefix(prefix: bytes) -> tuple[bytes, bytes]:
    """``b"OP:MWI "`` -> (``b"OP:"``, ``b"MWI "``): the tag is the prefix up to its first colon
    (the whole prefix if it has none)."""
    colon = prefix.find(b":")
    cut = len(prefix) if colon < 0 else colon + 1
    return prefix[:cut], prefix[cut:]


class CommandReader(_Reader[MwiCommand]):
    """Parses the voice-mail -> switch stream of MWI commands in format ``fmt`` (as a PBX
    simulator would) into :class:`MwiCommand` and :class:`ProtocolError` events.

    Accepted: ``prefix digits suffix``; a space after the prefix's colon (the DMS-100 manual's
    ``OP: MWI``); a missing terminator (the suffix's trailing control characters, EOT by
    default) when a CR, an LF or the next command's tag follows.  Framing bytes, skipped
    between commands: CR, LF, DEL, 0xFF and the terminator's bytes.  Same guarantees as
    :class:`SmdiReader` (module docstring).  ValueError if ``fmt`` is invalid or ambiguous (equal
    tags, one tag a prefix of the other, a suffix starting with a digit).
    """

    def __init__(self, *, max_buffer: int = DEFAULT_MAX_BUFFER, fmt: MwiFormat = MwiFormat()
                 ) -> None:
        if not isinstance(fmt, MwiFormat):
            raise ValueError(f"fmt must be an MwiFormat, got {type(fmt).__name__}")
        fmt._check()
        suffix = fmt.suffix.encode("ascii")
        body = suffix.rstrip(bytes(range(0x20)) + b"\x7f")
        terminator = suffix[len(body):]
        if (body or terminator)[:1].isdigit():
            raise ValueError(f"suffix must not start with a digit, got {fmt.suffix!r}")
        on_tag, on_rest = _split_prefix(fmt.on_prefix.encode("ascii"))
        off_tag, off_rest = _split_prefix(fmt.off_prefix.encode("ascii"))
        if on_tag.startswith(off_tag) or off_tag.startswith(on_tag):
            raise ValueError(f"on_prefix {fmt.on_prefix!r} and off_prefix {fmt.off_prefix!r} "
                             "must differ before their colon")
        tags = (on_tag, off_tag)
        self._fmt = fmt
        framing = bytes({_CR, _LF, _DEL, _FF} | set(terminator))
        super().__init__(max_buffer, framing, {
            on_tag: ("MWI on command", self._parser(True, on_tag, on_rest, body, terminator, tags)),
            off_tag: ("MWI off command",
                      self._parser(False, off_tag, off_rest, body, terminator, tags)),
        })

    @staticmethod
    def _parser(on: bool, tag: bytes, rest: bytes, body: bytes, terminator: bytes,
                tags: tuple[bytes, bytes]) -> _Parser:
        spaced = tag.endswith(b":") and not rest.startswith(b" ")

        def parse(cur: _Cursor) -> MwiCommand:
            if spaced:
                cur.accept(_SP)
            cur.expect(rest, repr(tag + rest))
            number = cur.digits(1, "station number")
            cur.expect(body, f"{body!r} after the number")
            if terminator:
                got = cur.peek()
                if got == terminator[0]:
                    cur.expect(terminator, repr(terminator))
                elif not (got in (_CR, _LF) or any(cur.looking_at(t) for t in tags)):
                    raise cur.fail(f"expected {terminator!r}, CR, LF or a next command, "
                                   f"got {_show(got)}")
            return MwiCommand(on, number, cur.raw())

        return parse

    def feed(self, data: bytes) -> list[MwiCommand | ProtocolError]:
        """Parse more bytes; return the events they complete, in stream order.  Never raises
        for ``bytes``, ``bytearray`` or ``memoryview`` data."""
        return super().feed(data)
