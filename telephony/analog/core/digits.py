"""DTMF integration digits: the few digits a PBX sends in band right after a voice-mail port
answers, and what they mean (docs/analog.md, "DTMF integration").  Pure: time comes in as
``now``.

A **pattern** is ``REASON:DIGITS`` (``"busy:#{ext}"``): DIGITS are DTMF symbols
(``0-9 * # A-D``) and the fields ``{ext}`` (the mailbox's extension) and ``{caller}`` (the
calling number), each 1 to :data:`MAX_FIELD` digits ``0-9``; REASON is one of
:class:`~telephony.core.events.Reason`.  :func:`parse_patterns` checks them;
:class:`DigitCollector` takes the digits one by one and says when the call's information is
complete:

* at once when the digits match a pattern and no pattern could match a longer string;
* ``gap`` seconds after the last digit when they match a pattern but a longer string could
  still match (``#12`` matches ``#{ext}``, and ``#123`` would too);
* at once, as *unmatched*, when no pattern can match the digits any more;
* after ``first_timeout`` seconds without any digit, or ``gap`` seconds after digits that
  match nothing (yet), as *no digits* / *unmatched*: the call is then a direct call with no
  numbers (the opening greeting).

At most :data:`MAX_DIGITS` digits are taken: more is unmatched.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from telephony.core.events import Reason

__all__ = ["DTMF_SYMBOLS", "FIELDS", "MAX_FIELD", "MAX_DIGITS", "MAX_PATTERNS", "DigitPattern",
           "parse_pattern", "parse_patterns", "Result", "DigitCollector"]

DTMF_SYMBOLS = "0123456789*#ABCD"
FIELDS = ("ext", "caller")
MAX_FIELD = 32
MAX_DIGITS = 64
MAX_PATTERNS = 32

_TOKEN = re.compile(r"\{(ext|caller)\}|([0-9*#ABCD])")


@dataclass(frozen=True)
class DigitPattern:
    """One pattern: ``tokens`` are DTMF symbols (one character) and field names
    (``"{ext}"``, ``"{caller}"``)."""

    reason: Reason
    tokens: tuple[str, ...]
    text: str

    def __str__(self) -> str:
        return self.text


def parse_pattern(text: object) -> DigitPattern:
    """``"busy:#{ext}"`` as a :class:`DigitPattern`; ``ValueError`` saying what is wrong."""
    if not isinstance(text, str) or len(text) > 100:
        raise ValueError(f"a digit pattern is a string REASON:DIGITS, not {text!r:.60}")
    reason, sep, digits = text.partition(":")
    if not sep:
        raise ValueError(f"digit pattern {text!r}: expected REASON:DIGITS (\"busy:#{{ext}}\")")
    try:
        r = Reason(reason.strip())
    except ValueError:
        raise ValueError(f"digit pattern {text!r}: reason {reason.strip()!r} is not one of "
                         f"{', '.join(x.value for x in Reason)}") from None
    digits = digits.strip()
    tokens: list[str] = []
    pos = 0
    while pos < len(digits):
        m = _TOKEN.match(digits, pos)
        if m is None:
            raise ValueError(f"digit pattern {text!r}: {digits[pos:pos + 10]!r} is neither a "
                             "DTMF symbol (0-9 * # A-D) nor {ext} / {caller}")
        tokens.append(m.group(0))
        pos = m.end()
    if not tokens:
        raise ValueError(f"digit pattern {text!r} has no digits")
    fields = [t for t in tokens if len(t) > 1]
    if len(set(fields)) != len(fields):
        raise ValueError(f"digit pattern {text!r} names a field twice")
    for a, b in zip(tokens, tokens[1:], strict=False):
        if len(a) > 1 and len(b) > 1:
            raise ValueError(f"digit pattern {text!r}: two fields side by side cannot be told "
                             "apart; put a symbol between them")
    return DigitPattern(r, tuple(tokens), f"{r.value}:{digits}")


def parse_patterns(items: object) -> tuple[DigitPattern, ...]:
    """A list of pattern strings, checked (1 to :data:`MAX_PATTERNS`, no pattern twice)."""
    if not isinstance(items, (list, tuple)) or not 1 <= len(items) <= MAX_PATTERNS:
        raise ValueError(f"expected 1 to {MAX_PATTERNS} digit patterns, not {items!r:.60}")
    out = tuple(parse_pattern(x) for x in items)
    seen = set()
    for p in out:
        if p.tokens in seen:
            raise ValueError(f"digit pattern {p.text!r} is listed twice")
        seen.add(p.tokens)
    return out


def _walk(tokens: tuple[str, ...], digits: str, ti: int, di: int, got: dict[str, str],
          prefix: bool) -> dict[str, str] | None:
    """Match ``digits[di:]`` against ``tokens[ti:]``: the fields' values when they match
    completely, or (``prefix``) ``{}`` when the digits are a prefix of some match."""
    if di == len(digits):
        if prefix:
            return got
        return got if ti == len(tokens) else None
    if ti == len(tokens):
        return None
    tok = tokens[ti]
    if len(tok) == 1:
        if digits[di] != tok:
            return None
        return _walk(tokens, digits, ti + 1, di + 1, got, prefix)
    # a field: 1..MAX_FIELD digits 0-9, longest first
    n = 0
    while di + n < len(digits) and n < MAX_FIELD and digits[di + n].isdigit():
        n += 1
    for k in range(n, 0, -1):
        found = _walk(tokens, digits, ti + 1, di + k, {**got, tok[1:-1]: digits[di:di + k]}, prefix)
        if found is not None:
            return found
    return None


def _full(p: DigitPattern, digits: str) -> dict[str, str] | None:
    return _walk(p.tokens, digits, 0, 0, {}, False)


def _could_grow(p: DigitPattern, digits: str) -> bool:
    """True when a longer string than ``digits`` could still match ``p``."""
    if len(digits) >= MAX_DIGITS:
        return False
    return any(_walk(p.tokens, digits + d, 0, 0, {}, True) is not None for d in DTMF_SYMBOLS)


@dataclass(frozen=True)
class Result:
    """What the digits said.  ``pattern`` None: nothing matched (``digits`` empty: none came)
    and the call is a direct call with no numbers."""

    digits: str
    pattern: DigitPattern | None = None
    ext: str = ""
    caller: str = ""

    @property
    def reason(self) -> Reason:
        return self.pattern.reason if self.pattern is not None else Reason.DIRECT

    @property
    def matched(self) -> bool:
        return self.pattern is not None


class DigitCollector:
    """Collects the integration digits of one call (see the module docstring)."""

    def __init__(self, patterns: tuple[DigitPattern, ...], *, now: float,
                 first_timeout: float = 3.0, gap: float = 0.6) -> None:
        for name, v in (("first_timeout", first_timeout), ("gap", gap)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v <= 0:
                raise ValueError(f"{name} must be a number of seconds above 0, not {v!r}")
        if not patterns:
            raise ValueError("no digit patterns")
        self.patterns = tuple(patterns)
        self.gap = float(gap)
        self.digits = ""
        self.result: Result | None = None
        self.deadline = now + float(first_timeout)
        self._best: Result | None = None  # a complete match that might still grow

    def feed(self, digit: str, now: float) -> Result | None:
        """One detected digit; the result once the information is complete."""
        if self.result is not None:
            return self.result
        if not isinstance(digit, str) or len(digit) != 1 or digit not in DTMF_SYMBOLS:
            raise ValueError(f"not a DTMF digit: {digit!r:.20}")
        self.digits += digit
        best = None
        grows = False
        for p in self.patterns:
            fields = _full(p, self.digits)
            if fields is not None and best is None:
                best = Result(self.digits, p, fields.get("ext", ""), fields.get("caller", ""))
            grows = grows or _could_grow(p, self.digits)
        self._best = best
        if not grows:
            self.result = best or Result(self.digits)
            return self.result
        self.deadline = now + self.gap
        return None

    def tick(self, now: float) -> Result | None:
        """The time is ``now``: the result once a timeout has made it complete."""
        if self.result is None and now >= self.deadline:
            self.result = self._best or Result(self.digits)
        return self.result
