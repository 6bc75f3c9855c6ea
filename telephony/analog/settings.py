"""``[ports.analog]``: the analog voice-board lines' settings, declared once
(docs/configuration.md, docs/analog.md).

:data:`KEYS` is the file's schema for the section (checks, defaults, the docs' cells);
:class:`AnalogSettings` is what the node's file gives the service, which builds the driver
(:class:`telephony.analog.driver.AnalogPorts`) from it; its field defaults come from the same
keys, and a settings object built in code is checked by the same definitions.
:func:`problems` are the rules between keys.  Pure.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from integrations.analog import DTMF_PATTERNS, MWI_OFF_CODE, MWI_ON_CODE
from telephony.analog.core.digits import DigitPattern, parse_patterns
from telephony.analog.core.line import LineTiming
from telephony.core.settings import (
    Bad,
    Choice,
    Flag,
    Key,
    Num,
    Problem,
    boolean,
    check_typed,
    default_of,
    got,
    path,
)

__all__ = ["SECTION", "KIND", "KEYS", "BACKENDS", "TONE_PROFILES", "MAX_LINES",
           "AnalogSettings", "parse_channels", "dial_string", "problems"]

SECTION = "ports.analog"
#: the driver's kind and its ports' names (``analog-1`` ...: port N is the board's line N)
KIND = "analog"
BACKENDS = ("sim", "dahdi")
TONE_PROFILES = ("na", "etsi")
MAX_LINES = 256
#: the highest DAHDI channel number
MAX_CHANNEL = 1023
#: lines of a simulated board when ``count`` is not written
DEFAULT_COUNT = 4


def parse_channels(v: object) -> tuple[int, ...]:
    """``"1-4,7"`` -> ``(1, 2, 3, 4, 7)``: DAHDI channel numbers 1..1023, distinct, in the
    order written (line N is the N-th channel).  ``ValueError`` saying what is wrong."""
    if not isinstance(v, str) or not v.strip() or len(v) > 400:
        raise ValueError(f'expected channel numbers like "1-4,7", not {v!r:.60}')
    out: list[int] = []
    for part in v.split(","):
        lo, dash, hi = part.strip().partition("-")
        try:
            a = int(lo)
            b = int(hi) if dash else a
        except ValueError:
            raise ValueError(f"{part.strip()!r} is not a channel number or a range a-b") from None
        if not (1 <= a <= b <= MAX_CHANNEL):
            raise ValueError(f"{part.strip()!r}: channels are 1 to {MAX_CHANNEL}, a range goes "
                             "upwards")
        out.extend(range(a, b + 1))
        if len(out) > MAX_LINES:
            raise ValueError(f"more than {MAX_LINES} channels")
    if len(set(out)) != len(out):
        raise ValueError(f"a channel is listed twice in {v!r}")
    return tuple(out)


def _channels(v, ctx) -> tuple[int, ...]:
    try:
        return parse_channels(v)
    except ValueError as e:
        raise Bad(f"{e}, {got(v)}") from None


def _channels_typed(v) -> None:
    if not isinstance(v, tuple) or not v or not all(type(c) is int and 1 <= c <= MAX_CHANNEL for c in v) \
            or len(set(v)) != len(v):
        raise Bad(f"expected a tuple of distinct channel numbers 1..{MAX_CHANNEL}, {got(v)}")


def _patterns(v, ctx) -> tuple[DigitPattern, ...]:
    try:
        return parse_patterns(v)
    except ValueError as e:
        raise Bad(str(e)) from None


def _patterns_typed(v) -> None:
    if not isinstance(v, tuple) or not v or not all(isinstance(p, DigitPattern) for p in v):
        raise Bad(f"expected a tuple of digit patterns, {got(v)}")


def dial_string(template: str, extension: str) -> str:
    """A lamp feature code for ``extension`` (``"*91{ext}"`` -> ``"*911002"``)."""
    return template.replace("{ext}", extension)


def _code(v, ctx) -> str:
    if not isinstance(v, str) or v.count("{ext}") != 1 or len(v) > 40 \
            or any(c not in "0123456789*#ABCD" for c in v.replace("{ext}", "")):
        raise Bad(f"expected DTMF symbols (0-9 * # A-D) with {{ext}} once, {got(v)}")
    return v


channels = Flag(_channels, "channel list", f'`"1-4,7"`: 1 – {MAX_CHANNEL}, distinct',
                typed=_channels_typed)
patterns = Flag(_patterns, "array of strings", "`REASON:DIGITS`", typed=_patterns_typed)
code = Flag(_code, "string", "DTMF symbols with `{ext}`", typed=lambda v: _code(v, None))

KEYS: dict[str, Key] = {
    # a subscriber's lamps go by the driver its mwi_method names: both nodes serve the same
    "enabled": Key(boolean, False, shared=True),
    "backend": Key(Choice({b: b for b in BACKENDS}), "sim"),
    "socket": Key(path, None),  # required with backend = "sim"
    "channels": Key(channels, None),  # required with backend = "dahdi"
    "count": Key(Num(1, MAX_LINES, integer=True), None),  # sim: 4; dahdi: the channels'
    "law": Key(Choice({"ulaw": "ulaw", "alaw": "alaw"}), "ulaw"),
    "tone_profile": Key(Choice({t: t for t in TONE_PROFILES}), "na"),
    "rings": Key(Num(1, 20, integer=True), 2),
    "ring_timeout": Key(Num(1, 60), 6.0),
    "cpc_min_ms": Key(Num(1, 10_000, integer=True), 100),
    "silence_limit": Key(Num(1, 3600), 30.0),
    "guard": Key(Num(0, 10), 0.5),
    "digit_patterns": Key(patterns, list(DTMF_PATTERNS)),
    "digit_timeout": Key(Num(0.1, 60), 3.0),
    "digit_gap": Key(Num(0.05, 10), 0.6),
    "mwi_on": Key(code, MWI_ON_CODE),
    "mwi_off": Key(code, MWI_OFF_CODE),
    "dial_tone_timeout": Key(Num(0.5, 60), 3.0),
    "confirm_timeout": Key(Num(0.5, 60), 5.0),
    "mwi_retries": Key(Num(0, 10, integer=True), 2),
    "mwi_retry_delay": Key(Num(0.1, 600), 2.0),
    "mwi_lines": Key(Num(1, MAX_LINES, integer=True), 1),
}

_d = functools.partial(default_of, KEYS)  # a field's default: its key's


@dataclass(frozen=True)
class AnalogSettings:
    """``[ports.analog]`` (see docs/configuration.md for each key).  ``lines``: how many
    ports the driver has (``count``, else the DAHDI channels', else 4)."""

    enabled: bool = False
    backend: str = _d("backend")
    socket: str | Path | None = None
    channels: tuple[int, ...] | None = None
    count: int | None = None
    law: str = _d("law")
    tone_profile: str = _d("tone_profile")
    rings: int = _d("rings")
    ring_timeout: float = _d("ring_timeout")
    cpc_min_ms: int = _d("cpc_min_ms")
    silence_limit: float = _d("silence_limit")
    guard: float = _d("guard")
    digit_patterns: tuple[DigitPattern, ...] = field(default_factory=lambda: _d("digit_patterns"))
    digit_timeout: float = _d("digit_timeout")
    digit_gap: float = _d("digit_gap")
    mwi_on: str = _d("mwi_on")
    mwi_off: str = _d("mwi_off")
    dial_tone_timeout: float = _d("dial_tone_timeout")
    confirm_timeout: float = _d("confirm_timeout")
    mwi_retries: int = _d("mwi_retries")
    mwi_retry_delay: float = _d("mwi_retry_delay")
    mwi_lines: int = _d("mwi_lines")

    def __post_init__(self) -> None:
        check_typed(self, KEYS)

    @property
    def lines(self) -> int:
        if self.count is not None:
            return self.count
        if self.backend == "dahdi" and self.channels:
            return len(self.channels)
        return DEFAULT_COUNT

    def port_names(self) -> list[str]:
        """The driver's ports, in line order (``analog-N`` is the board's line N)."""
        return [f"{KIND}-{i}" for i in range(1, self.lines + 1)]

    def timing(self) -> LineTiming:
        """The line state machine's settings."""
        return LineTiming(rings=self.rings, ring_timeout=self.ring_timeout,
                          cpc_min_ms=self.cpc_min_ms, silence_limit=self.silence_limit,
                          dial_tone_timeout=self.dial_tone_timeout, guard=self.guard)


def problems(s: AnalogSettings) -> list[Problem]:
    """Rules between the section's keys, when the lines are on."""
    if not s.enabled:
        return []
    out: list[Problem] = []
    if s.backend == "sim" and s.socket is None:
        out.append(Problem(f"{SECTION}.socket", f'required with {SECTION}.backend = "sim": the '
                           "board simulator's Unix socket"))
    if s.backend == "dahdi":
        if s.channels is None:
            out.append(Problem(f"{SECTION}.channels", f'required with {SECTION}.backend = '
                               '"dahdi": the FXO channels, e.g. "1-4"'))
        elif s.count is not None and s.count != len(s.channels):
            out.append(Problem(f"{SECTION}.count", f"{s.count} lines but {len(s.channels)} "
                               f"channels in {SECTION}.channels: leave count out or make them "
                               "agree"))
    if s.mwi_lines > s.lines:
        out.append(Problem(f"{SECTION}.mwi_lines", f"{s.mwi_lines} lamp lines but only "
                           f"{s.lines} lines"))
    return out
