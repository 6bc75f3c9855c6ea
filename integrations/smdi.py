"""The serial SMDI integration through a data splitter (docs/protocols.md section 1).  Data only.

A circuit-switched PBX hunts calls over the voice lines of *both* servers and tells the
voice-mail system about each call on one serial data link (SMDI): an ``MD`` record naming the
message-desk **terminal** (the line), the call type (why it came) and the numbers.  Both servers
hang on that link through a data splitter: both hear every record, only the active one may
transmit (``OP:MWI`` / ``RMV:MWI`` lamp commands).

:class:`SmdiProfile` says which terminal numbers are this node's lines (the peer's lines carry
other numbers; their records are the peer's business), how long a record waits for its ring,
how station numbers are rewritten on the way in and out, the MWI command format and the pacing
of MWI commands.  Every one of these is a setting (``[ports.smdi]`` in the node's TOML), not a
code branch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from telephony.smdi.core.codec import MwiFormat

from integrations.base import IntegrationProfile, MwiMethod

#: The voice lines of the serial-SMDI integration are the loopback trunk's ports (the
#: simulator of an analog voice board: nobody has one here); terminal ``terminals[i]`` is
#: port ``loopback-{i+1}``.
SERIAL_SMDI = IntegrationProfile(
    name="serial-smdi",
    port_kind="loopback",
    ports=4,
    mwi_method=MwiMethod.SMDI,
    description="circuit-switched PBX: voice lines plus SMDI call records and MWI commands "
                "on one RS-232 link shared by both nodes through a data splitter",
)

PARITIES = {"none": "N", "even": "E", "odd": "O", "mark": "M", "space": "S"}


@dataclass(frozen=True)
class SerialSettings:
    """How the port is opened (pyserial).  ``device`` is a path (``/dev/ttyS0``, a pty link)
    or a pyserial URL (``socket://host:port``, ``rfc2217://host:port``, ``loop://``)."""

    device: str
    baudrate: int = 9600
    bytesize: int = 7
    parity: str = "even"  # none | even | odd | mark | space
    stopbits: float = 1

    def __post_init__(self) -> None:
        if not isinstance(self.device, str) or not self.device or "\0" in self.device:
            raise ValueError(f"device must be a path or a pyserial URL, not {self.device!r}")
        if not (isinstance(self.baudrate, int) and 50 <= self.baudrate <= 4_000_000):
            raise ValueError(f"baudrate must be 50..4000000, not {self.baudrate!r}")
        if self.bytesize not in (5, 6, 7, 8):
            raise ValueError(f"bytesize must be 5, 6, 7 or 8, not {self.bytesize!r}")
        if self.parity not in PARITIES:
            raise ValueError(f"parity must be one of {', '.join(PARITIES)}, not {self.parity!r}")
        if self.stopbits not in (1, 1.5, 2):
            raise ValueError(f"stopbits must be 1, 1.5 or 2, not {self.stopbits!r}")

    @property
    def bits_per_char(self) -> float:
        """Bits on the wire per character: start + data + parity + stop."""
        return 1 + self.bytesize + (0 if self.parity == "none" else 1) + self.stopbits


@dataclass(frozen=True)
class SmdiProfile:
    """One node's view of the SMDI link.

    * ``terminals``: this node's lines, in port order: ``terminals[i]`` is the message-desk
      terminal number of port ``loopback-{i+1}``.  Records for other terminals are the peer's.
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
    record_wait: float = 30.0
    ring_wait: float = 3.0
    strip: int = 0
    keep_last: int = 0
    mwi: MwiFormat = field(default_factory=MwiFormat)
    mwi_prefix: str = ""
    mwi_gap: float = 0.0
    failure_window: float = 10.0
    base: IntegrationProfile = SERIAL_SMDI

    def __post_init__(self) -> None:
        t = self.terminals
        if not (isinstance(t, tuple) and t and all(type(x) is int and 0 <= x <= 9999 for x in t)):
            raise ValueError(f"terminals must be a non-empty list of numbers 0..9999, not {t!r}")
        if len(set(t)) != len(t):
            raise ValueError(f"terminals lists a number twice: {list(t)}")
        if self.desk is not None and not (type(self.desk) is int and 0 <= self.desk <= 999):
            raise ValueError(f"desk must be 0..999, not {self.desk!r}")
        for name, lo, hi in (("record_wait", 0.1, 3600), ("ring_wait", 0, 60),
                             ("mwi_gap", 0, 10), ("failure_window", 0.1, 3600)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                raise ValueError(f"{name} must be {lo:g}..{hi:g} seconds, not {v!r}")
        for name in ("strip", "keep_last"):
            v = getattr(self, name)
            if type(v) is not int or not 0 <= v <= 32:
                raise ValueError(f"{name} must be 0..32 digits, not {v!r}")
        if not (isinstance(self.mwi_prefix, str) and (self.mwi_prefix == "" or
                                                      self.mwi_prefix.isdigit())
                and len(self.mwi_prefix) <= 16):
            raise ValueError(f"mwi_prefix must be up to 16 digits, not {self.mwi_prefix!r}")

    def port_of(self, terminal: int) -> str | None:
        """This node's port for ``terminal``, or None (the peer's line, or unknown)."""
        try:
            return f"loopback-{self.terminals.index(terminal) + 1}"
        except ValueError:
            return None

    def inbound(self, number: str) -> str:
        """A station number from a record, rewritten for the directory (may become "")."""
        n = number[self.strip:]
        if self.keep_last and len(n) > self.keep_last:
            n = n[-self.keep_last:]
        return n

    def station(self, extension: str) -> str:
        """The station number of an MWI command for a subscriber's extension."""
        return self.mwi_prefix + extension
