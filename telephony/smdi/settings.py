"""``[ports.smdi]``: the SMDI link's settings, declared once (docs/configuration.md, docs/smdi.md).

:data:`KEYS` is the file's schema for the section (checks, defaults, the docs' cells);
:class:`SerialSettings` (how the port is opened) and :class:`SmdiProfile` (which terminals are
this node's lines, number rewriting, MWI format and pacing) are what the driver
(:class:`telephony.smdi.driver.SmdiLink`) takes, their field defaults taken from the same
keys; :class:`SmdiSection` is the section as read from the file.  Pure.

The serial SMDI integration (docs/protocols.md section 1): a circuit-switched PBX hunts calls
over the voice lines of *both* servers and tells the voice-mail system about each call on one
serial data link: an ``MD`` record naming the message-desk **terminal** (the line), the call
type and the numbers.  Both servers hang on that link through a data splitter: both hear every
record, only the active one may transmit (``OP:MWI`` / ``RMV:MWI`` lamp commands).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

from integrations.base import IntegrationProfile
from integrations.smdi import SERIAL_SMDI
from telephony.core.settings import (
    Bad,
    Choice,
    Flag,
    Key,
    Num,
    Pattern,
    Problem,
    boolean,
    check_typed,
    default_of,
    got,
    path,
)
from telephony.smdi.core.codec import MwiFormat

__all__ = ["SECTION", "KIND", "KEYS", "PARITIES", "SerialSettings", "SmdiProfile",
           "SmdiSection", "problems"]

SECTION = "ports.smdi"
#: the driver's kind (its one port is the link, ``smdi-link``)
KIND = "smdi"
#: pyserial's parity letters
PARITIES = {"none": "N", "even": "E", "odd": "O", "mark": "M", "space": "S"}


def _device(v, ctx) -> str:
    """A serial device path (relative to the file) or a pyserial URL (kept as is)."""
    if isinstance(v, str) and "://" in v:
        if any(c.isspace() or c == "\0" for c in v):
            raise Bad(f"expected a pyserial URL without spaces, {got(v)}")
        return v
    return str(path(v, ctx))


def _device_typed(v) -> None:
    if not isinstance(v, str) or not v or "\0" in v:
        raise Bad(f"expected a path or a pyserial URL, {got(v)}")


def _terminals(v, ctx) -> tuple[int, ...]:
    if not (isinstance(v, list) and v and all(type(x) is int and 0 <= x <= 9999 for x in v)):
        raise Bad(f"expected a non-empty array of terminal numbers 0..9999, {got(v)}")
    if len(set(v)) != len(v):
        raise Bad(f"a terminal number is listed twice, {got(v)}")
    return tuple(v)


def _terminals_typed(v) -> None:
    if not isinstance(v, tuple):
        raise Bad(f"expected a tuple of terminal numbers, {got(v)}")
    _terminals(list(v), None)


def _wire_text(v, ctx) -> str:
    """Text put on the serial line: ASCII; ``\\xNN`` escapes (``"!\\x04"``) are decoded."""
    if not isinstance(v, str) or len(v) > 32:
        raise Bad(f"expected a string of up to 32 characters, {got(v)}")
    try:
        text = v.encode("ascii").decode("unicode_escape")
    except (UnicodeEncodeError, UnicodeDecodeError):
        raise Bad(f"expected ASCII with \\xNN escapes, {got(v)}") from None
    if not text.isascii():
        raise Bad(f"expected ASCII with \\xNN escapes, {got(v)}")
    return text


device = Flag(_device, "path or URL", typed=_device_typed)
terminals = Flag(_terminals, "array of integers", "0 – 9999, distinct", typed=_terminals_typed)
wire_text = Flag(_wire_text, "string", "ASCII, `\\xNN` escapes")
digits = Pattern(r"[0-9]{0,16}", "up to 16 digits", kind="digits", allowed="up to 16 digits")

_FORMAT = MwiFormat()  # the protocol's default command format (docs/protocols.md 1.3)

KEYS: dict[str, Key] = {
    # a subscriber's lamps go by the driver its mwi_method names: both nodes serve the same
    "enabled": Key(boolean, False, shared=True),
    "device": Key(device, None),  # required when enabled
    "baudrate": Key(Num(50, 4_000_000, integer=True), 9600),
    "bytesize": Key(Num(5, 8, integer=True), 7),
    "parity": Key(Choice({p: p for p in PARITIES}), "even"),
    "stopbits": Key(Choice({"1": 1, "1.5": 1.5, "2": 2}), "1"),
    "terminals": Key(terminals, None),  # required when enabled
    "desk": Key(Num(0, 999, integer=True), None),  # absent: any message desk
    "record_wait": Key(Num(0.1, 3600), 30.0),
    "ring_wait": Key(Num(0, 60), 3.0),
    "strip": Key(Num(0, 32, integer=True), 0),
    "keep_last": Key(Num(0, 32, integer=True), 0),
    "mwi_on": Key(wire_text, _FORMAT.on_prefix),
    "mwi_off": Key(wire_text, _FORMAT.off_prefix),
    "mwi_suffix": Key(wire_text, _FORMAT.suffix),
    "mwi_pad": Key(Num(0, 32, integer=True), _FORMAT.pad_to),
    "mwi_prefix": Key(digits, ""),
    "mwi_gap": Key(Num(0, 10), 0.0),
    "failure_window": Key(Num(0.1, 3600), 10.0),
    # the line goes through a data splitter the peer also drives: in a partition only the
    # primary transmits (docs/smdi.md, "A shared line in a partition"); false for a line
    # only this node drives
    "shared_line": Key(boolean, True),
}


_d = functools.partial(default_of, KEYS)  # a field's default: its key's


@dataclass(frozen=True)
class SerialSettings:
    """How the port is opened (pyserial).  ``device`` is a path (``/dev/ttyS0``, a pty link)
    or a pyserial URL (``socket://host:port``, ``rfc2217://host:port``, ``loop://``)."""

    device: str
    baudrate: int = _d("baudrate")
    bytesize: int = _d("bytesize")
    parity: str = _d("parity")  # none | even | odd | mark | space
    stopbits: float = _d("stopbits")

    def __post_init__(self) -> None:
        check_typed(self, KEYS, ("device", "baudrate", "bytesize", "parity", "stopbits"))

    @property
    def bits_per_char(self) -> float:
        """Bits on the wire per character: start + data + parity + stop."""
        return 1 + self.bytesize + (0 if self.parity == "none" else 1) + self.stopbits


@dataclass(frozen=True)
class SmdiProfile:
    """One node's view of the SMDI link.

    * ``terminals``: this node's lines, in line order: ``terminals[i]`` is the message-desk
      terminal number of the voice port ``lines[i]`` (default ``loopback-{i+1}``: the voice
      lines are the loopback trunk's).  Records for other terminals are the peer's.
    * ``record_wait``: seconds a record waits to be matched with the call ringing on its line
      (Asterisk's ``msgexpirytime``, 30 s).  ``ring_wait``: seconds a ringing line waits for
      its record before the call is taken as a direct call with no information.
    * inbound numbers: ``strip`` leading digits are removed (Asterisk's ``msdstrip``), then
      only the last ``keep_last`` digits are kept (0: all; 4 turns ``5551002`` into ``1002``).
    * outbound (MWI): ``mwi`` is the command format (prefixes, suffix, zero padding);
      ``mwi_prefix`` is put before the subscriber's extension (``555`` + ``1002``).
    * pacing: commands never go faster than the line rate of the serial settings, plus
      ``mwi_gap`` seconds between commands (some switches need a pause).
    * ``failure_window``: an MWI failure record (``MWI5551002 INV``) is matched to the last
      command for that station sent within this many seconds.
    """

    terminals: tuple[int, ...]
    desk: int | None = None  # None: accept any message desk number
    record_wait: float = _d("record_wait")
    ring_wait: float = _d("ring_wait")
    strip: int = _d("strip")
    keep_last: int = _d("keep_last")
    mwi: MwiFormat = field(default_factory=MwiFormat)
    mwi_prefix: str = _d("mwi_prefix")
    mwi_gap: float = _d("mwi_gap")
    failure_window: float = _d("failure_window")
    base: IntegrationProfile = SERIAL_SMDI
    #: the voice ports of the terminals, in order (empty: ``loopback-1`` ...); the service
    #: names the voice ports of the node's integration here
    lines: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_typed(self, KEYS, ("terminals", "desk", "record_wait", "ring_wait", "strip",
                                 "keep_last", "mwi_prefix", "mwi_gap", "failure_window"))
        if self.lines and len(self.terminals) > len(self.lines):
            raise ValueError(f"{len(self.terminals)} terminals for {len(self.lines)} lines: "
                             "one terminal per line")

    def port_of(self, terminal: int) -> str | None:
        """This node's port for ``terminal``, or None (the peer's line, or unknown)."""
        try:
            i = self.terminals.index(terminal)
        except ValueError:
            return None
        return self.lines[i] if self.lines else f"loopback-{i + 1}"

    def inbound(self, number: str) -> str:
        """A station number from a record, rewritten for the directory (may become "")."""
        n = number[self.strip:]
        if self.keep_last and len(n) > self.keep_last:
            n = n[-self.keep_last:]
        return n

    def station(self, extension: str) -> str:
        """The station number of an MWI command for a subscriber's extension."""
        return self.mwi_prefix + extension


@dataclass(frozen=True)
class SmdiSection:
    """``[ports.smdi]`` as the node's file gives it (each key checked by the loader)."""

    enabled: bool
    device: str | None
    baudrate: int
    bytesize: int
    parity: str
    stopbits: float
    terminals: tuple[int, ...] | None
    desk: int | None
    record_wait: float
    ring_wait: float
    strip: int
    keep_last: int
    mwi_on: str
    mwi_off: str
    mwi_suffix: str
    mwi_pad: int
    mwi_prefix: str
    mwi_gap: float
    failure_window: float
    shared_line: bool = _d("shared_line")

    def serial_settings(self) -> SerialSettings:
        """How the driver opens the port (ValueError on a bad combination)."""
        return SerialSettings(device=self.device or "", baudrate=self.baudrate,
                              bytesize=self.bytesize, parity=self.parity, stopbits=self.stopbits)

    def profile(self, lines: tuple[str, ...] = (),
                base: IntegrationProfile = SERIAL_SMDI) -> SmdiProfile:
        """The driver's view of the link, its terminals on the voice ports ``lines``, its
        calls labelled with the integration ``base`` (ValueError on a bad combination)."""
        return SmdiProfile(base=base,
            terminals=self.terminals or (), desk=self.desk, record_wait=self.record_wait,
            ring_wait=self.ring_wait, strip=self.strip, keep_last=self.keep_last,
            mwi=MwiFormat(on_prefix=self.mwi_on, off_prefix=self.mwi_off, suffix=self.mwi_suffix,
                          pad_to=self.mwi_pad),
            mwi_prefix=self.mwi_prefix, mwi_gap=self.mwi_gap, failure_window=self.failure_window,
            lines=tuple(lines))


def problems(s: SmdiSection) -> list[Problem]:
    """Rules between the section's keys, when the link is on."""
    if not s.enabled:
        return []
    out = [Problem(f"{SECTION}.{key}", f"required when {SECTION}.enabled = true")
           for key in ("device", "terminals") if getattr(s, key) is None]
    if s.device is not None and s.terminals is not None:
        for what in (s.serial_settings, s.profile):
            try:
                what()
            except ValueError as e:
                out.append(Problem(SECTION, str(e)))
    return out
