"""DTMF integration digits (telephony/analog/core/digits.py): patterns, matching, timing."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from integrations.analog import DTMF_PATTERNS
from telephony.analog.core.digits import (
    DTMF_SYMBOLS,
    MAX_DIGITS,
    DigitCollector,
    parse_pattern,
    parse_patterns,
)
from telephony.core.events import Reason

DEFAULT = parse_patterns(list(DTMF_PATTERNS))


def collect(digits: str, patterns=DEFAULT, *, gap: float = 0.6, step: float = 0.12):
    """Feed ``digits`` ``step`` seconds apart from t=0.5; then let time run out.  Returns
    (result, the time it was known)."""
    col = DigitCollector(patterns, now=0.0, first_timeout=3.0, gap=gap)
    t = 0.5
    for d in digits:
        r = col.feed(d, t)
        if r is not None:
            return r, t
        t += step
    while True:
        r = col.tick(t)
        if r is not None:
            return r, t
        t += 0.01


@pytest.mark.parametrize("digits, reason, ext, caller", [
    ("#1234", Reason.BUSY, "1234", ""),
    ("*1234", Reason.NO_ANSWER, "1234", ""),
    ("##1234", Reason.DIRECT, "", "1234"),
    ("#5", Reason.BUSY, "5", ""),
])
def test_the_default_patterns(digits, reason, ext, caller):
    r, _ = collect(digits)
    assert r.matched and r.reason is reason and r.ext == ext and r.caller == caller
    assert r.digits == digits


def test_an_extension_at_the_end_waits_for_the_gap():
    r, at = collect("#1234", gap=0.6)
    # the last digit came at 0.5 + 4 * 0.12 = 0.98; complete one gap later
    assert at == pytest.approx(0.98 + 0.6, abs=0.011)


def test_a_closing_symbol_completes_at_once():
    pats = parse_patterns(["busy:#{ext}#", "no_answer:*{ext}#"])
    r, at = collect("#1234#", pats)
    assert r.reason is Reason.BUSY and r.ext == "1234"
    assert at == pytest.approx(0.5 + 5 * 0.12)


def test_both_fields_and_literal_symbols():
    pats = parse_patterns(["all:*9{ext}*{caller}#"])
    r, _ = collect("*91002*4021#", pats)
    assert (r.reason, r.ext, r.caller) == (Reason.ALL, "1002", "4021")


def test_no_digits_is_a_direct_call_with_no_numbers_after_the_first_timeout():
    col = DigitCollector(DEFAULT, now=10.0, first_timeout=3.0)
    assert col.tick(12.9) is None
    r = col.tick(13.0)
    assert r is not None and not r.matched and r.digits == "" and r.reason is Reason.DIRECT


def test_digits_no_pattern_can_match_end_at_once_unmatched():
    col = DigitCollector(DEFAULT, now=0.0)
    r = col.feed("5", 0.5)  # no pattern starts with 5
    assert r is not None and not r.matched and r.digits == "5"
    col = DigitCollector(DEFAULT, now=0.0)
    assert col.feed("#", 0.5) is None
    r = col.feed("*", 0.6)  # "#*" can start nothing
    assert r is not None and not r.matched and r.reason is Reason.DIRECT


def test_a_prefix_that_stops_is_unmatched_after_the_gap():
    col = DigitCollector(DEFAULT, now=0.0, gap=0.5)
    assert col.feed("#", 1.0) is None
    assert col.tick(1.49) is None
    r = col.tick(1.5)
    assert not r.matched and r.digits == "#"


def test_the_result_stays():
    col = DigitCollector(DEFAULT, now=0.0)
    r = col.feed("7", 0.1)
    assert col.feed("1", 0.2) is r and col.tick(99) is r


@pytest.mark.parametrize("text, fragment", [
    ("busy#{ext}", "REASON:DIGITS"),
    ("late:#{ext}", "is not one of"),
    ("busy:#{mailbox}", "neither a DTMF symbol"),
    ("busy:#x", "neither a DTMF symbol"),
    ("busy:", "has no digits"),
    ("busy:#{ext}{caller}", "side by side"),
    ("busy:#{ext}*{ext}", "twice"),
    (42, "REASON:DIGITS"),
])
def test_bad_patterns_say_what_is_wrong(text, fragment):
    with pytest.raises(ValueError) as e:
        parse_pattern(text)
    assert fragment in str(e.value)


def test_pattern_lists():
    assert [str(p) for p in DEFAULT] == list(DTMF_PATTERNS)
    assert parse_pattern(" busy : #{ext} ").text == "busy:#{ext}"
    with pytest.raises(ValueError, match="listed twice"):
        parse_patterns(["busy:#{ext}", "busy: #{ext}"])
    with pytest.raises(ValueError, match="1 to 32"):
        parse_patterns([])
    with pytest.raises(ValueError, match="1 to 32"):
        parse_patterns("busy:#{ext}")
    with pytest.raises(ValueError, match="not a DTMF digit"):
        DigitCollector(DEFAULT, now=0).feed("x", 1)
    with pytest.raises(ValueError, match="gap"):
        DigitCollector(DEFAULT, now=0, gap=0)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["busy", "no_answer", "all", "direct"]), st.text("0123456789", min_size=1,
                                                                        max_size=32))
def test_any_extension_comes_back_whole(reason, ext):
    pats = parse_patterns([f"{reason}:#{{ext}}"])
    r, _ = collect("#" + ext, pats)
    assert r.matched and r.ext == ext and r.reason is Reason(reason)


@settings(max_examples=300, deadline=None)
@given(st.text(DTMF_SYMBOLS, max_size=80), st.lists(st.floats(0, 2), max_size=80))
def test_any_digits_end_in_a_result_that_is_a_prefix_of_them(digits, gaps):
    """Whatever arrives, the collector finishes, takes at most MAX_DIGITS, and a match's
    fields are digits it was sent."""
    col = DigitCollector(DEFAULT, now=0.0, first_timeout=1.0, gap=0.3)
    t = 0.0
    result = None
    for i, d in enumerate(digits):
        t += gaps[i] if i < len(gaps) else 0.1
        result = col.tick(t) or col.feed(d, t)
        if result is not None:
            break
    if result is None:
        result = col.tick(t + 10)
    assert result is not None
    assert digits.startswith(result.digits) and len(result.digits) <= MAX_DIGITS
    if result.matched:
        assert result.ext in result.digits and result.caller in result.digits
        assert (result.ext or result.caller).isdigit()


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=120), st.text("busy:#*{}extcaler0123456789ABCD ", max_size=40),
                 st.integers(), st.none()))
def test_any_pattern_text_is_parsed_or_refused_with_a_value_error(text):
    try:
        p = parse_pattern(text)
    except ValueError:
        return
    assert p.reason in set(Reason) and p.tokens
    assert parse_pattern(p.text) == p  # the canonical text parses to the same pattern
