"""The DTMF detector and generator: against the corpus and against spandsp (the reference, a
real C library through ctypes) on every case; chunking independence and a fuzz with
Hypothesis; talk-off on synthetic speech."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lab import dtmf_corpus, spandsp
from telephony.core import dsp, dtmf

CORPUS = dtmf_corpus.build_corpus()
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("case", CORPUS, ids=lambda c: c.name)
def test_ours_matches_the_corpus_and_spandsp(case):
    ours = dtmf.detect(case.pcm)
    assert ours == case.expected_digits
    assert ours == spandsp.spandsp_dtmf(case.pcm)


def test_agreement_with_spandsp_is_complete():
    agree = sum(dtmf.detect(c.pcm) == spandsp.spandsp_dtmf(c.pcm) for c in CORPUS)
    assert agree / len(CORPUS) == 1.0


def test_agreement_on_a_sweep_across_the_boundaries():
    """Beyond the corpus: twist, level, duration and frequency swept across spandsp's limits,
    where single blocks decide; ours and spandsp give the same digits everywhere."""
    signals = []
    for twist in np.arange(5.0, 10.5, 0.5):
        signals.append(dtmf.generate(dtmf.DIGITS, level_dbm0=-6, twist_db=float(twist)))
        signals.append(dtmf.generate(dtmf.DIGITS, level_dbm0=-12, twist_db=-float(twist) / 2))
    for level in range(-38, -46, -1):
        signals.append(dtmf.generate(dtmf.DIGITS, level_dbm0=level))
    for ms in (22, 25, 27, 30, 33):
        signals.append(dtmf.generate(dtmf.DIGITS, on_ms=ms, off_ms=ms))
    for dev in (0.016, 0.02, 0.03, 0.04):
        signals.append(dtmf_corpus.tone_pairs(dtmf.DIGITS, high_dev=dev))
    for sig in signals:
        assert dtmf.detect(sig) == spandsp.spandsp_dtmf(sig)


def test_talkoff_a_minute_and_a_half_of_speech_in_20ms_frames():
    speech = dtmf_corpus.speech(90)
    assert len(speech) == 90 * 16000
    det = dtmf.DtmfDetector()
    found = []
    for i in range(0, len(speech), 320):
        found += det.feed(speech[i:i + 320])
    assert found == []
    assert spandsp.spandsp_dtmf(speech) == ""
    # the same speech with digits over it: they are still heard
    digits = dtmf.generate("5#9", on_ms=80, off_ms=200, level_dbm0=-6)
    x = dsp.samples(speech[:len(digits)]).astype(float) * 0.1 + dsp.samples(digits)
    assert dtmf.detect(dsp.pcm_bytes(x)) == "5#9"


@FAST
@given(st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=60), st.integers(0, 3))
def test_result_does_not_depend_on_chunking(cuts, seed):
    pcm = CHUNK_SIGNALS[seed]
    whole = dtmf.DtmfDetector().feed(pcm)
    det = dtmf.DtmfDetector()
    got, pos, i = [], 0, 0
    while pos < len(pcm):
        size = 2 * cuts[i % len(cuts)]
        got += det.feed(pcm[pos:pos + size])
        pos += size
        i += 1
        assert det.pending_samples < dtmf.BLOCK
    assert got == whole == list(spandsp.spandsp_dtmf(pcm))
    assert det.samples == len(pcm) // 2


CHUNK_SIGNALS = [
    dtmf.generate("1234", on_ms=40, off_ms=40),
    dtmf_corpus.tone_pairs("A#0*", low_dev=0.01),
    dsp.pcm_bytes(dsp.samples(dtmf.generate("9D", on_ms=45, off_ms=41)).astype(float)
                  + dsp.samples(dsp.white_noise(86 * 2, -25, seed=5))),
    bytes(2 * 37) + dtmf.generate("55", on_ms=41, off_ms=40),
]


def test_digit_reported_in_the_chunk_that_confirms_it():
    det = dtmf.DtmfDetector()
    tone = dtmf.generate("7", on_ms=200, off_ms=0)
    assert det.feed(tone[:2 * dtmf.BLOCK]) == []  # one block: not yet
    assert det.in_digit is None
    assert det.feed(tone[2 * dtmf.BLOCK:4 * dtmf.BLOCK]) == ["7"]  # the second block confirms it
    assert det.in_digit == "7"
    assert det.feed(tone[4 * dtmf.BLOCK:]) == []  # once per burst, however long
    assert det.feed(dsp.silence_ms(40)) == []
    assert det.in_digit is None
    assert det.feed(tone) == ["7"]  # a new burst


def test_long_tone_is_one_digit_and_short_gap_inside_a_tone_does_not_split_it():
    assert dtmf.detect(dtmf.generate("3", on_ms=3000)) == "3"
    # a single 12 ms dropout (less than one block can hide) inside a tone
    t = dtmf.generate("3", on_ms=200, off_ms=0)
    assert dtmf.detect(t[:1600] + dsp.silence_ms(12) + t[1600:]) == "3"


def test_reset_forgets_a_half_heard_digit():
    det = dtmf.DtmfDetector()
    det.feed(dtmf.generate("8", on_ms=30, off_ms=0))
    det.reset()
    assert det.samples == 0 and det.pending_samples == 0 and det.in_digit is None
    assert det.feed(dtmf.generate("8", on_ms=40, off_ms=0)[:2 * 100]) == []


def test_generate_layout_and_levels():
    pcm = dtmf.generate("1d", on_ms=50, off_ms=30, level_dbm0=-8, twist_db=4)
    assert len(pcm) == 2 * (50 + 30) * 16
    tone = dsp.samples(pcm[:50 * 16]).astype(float)[:400]
    assert not any(dsp.samples(pcm[50 * 16:80 * 16]))
    low, high = dtmf.FREQS["1"]
    p = dsp.goertzel_power(tone, [low, high])
    levels = 10 * np.log10(p / dsp.DBM0_RMS ** 2)
    assert levels[0] == pytest.approx(-8, abs=0.2) and levels[1] == pytest.approx(-12, abs=0.2)
    assert dtmf.detect(pcm) == "1D"
    assert spandsp.spandsp_dtmf(pcm) == "1D"
    assert dtmf.generate("") == b""
    assert dtmf.FREQS["0"] == (941.0, 1336.0) and dtmf.FREQS["A"] == (697.0, 1633.0)


def test_ours_decodes_spandsps_generator():
    for level in (-3, -10, -25):
        assert dtmf.detect(spandsp.spandsp_dtmf_tx(dtmf.DIGITS, level_dbm0=level)) == dtmf.DIGITS


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"digits": "12E"}, "not a DTMF digit"),
    ({"digits": 12}, "must be a string"),
    ({"digits": "1" * 1001}, "at most"),
    ({"digits": "1", "on_ms": float("nan")}, "on_ms"),
    ({"digits": "1", "off_ms": -1}, "off_ms"),
    ({"digits": "1", "level_dbm0": 10}, "level_dbm0"),
    ({"digits": "1", "twist_db": True}, "twist_db"),
    ({"digits": "1" * 1000, "on_ms": 5000, "off_ms": 5000}, "over"),
])
def test_generate_bad_input(kwargs, message):
    digits = kwargs.pop("digits")
    with pytest.raises(ValueError, match=message):
        dtmf.generate(digits, **kwargs)


@FAST
@given(st.binary(max_size=3000))
def test_fuzz_feed(data):
    det = dtmf.DtmfDetector()
    det.feed(dtmf.generate("4", on_ms=20, off_ms=0))
    before = (det.samples, det.pending_samples, det.in_digit)
    if len(data) % 2:
        with pytest.raises(ValueError, match="odd"):
            det.feed(data)
        assert (det.samples, det.pending_samples, det.in_digit) == before  # nothing changed
    else:
        found = det.feed(data)
        assert all(d in dtmf.DIGITS for d in found)
        assert det.pending_samples < dtmf.BLOCK


def test_feed_rejects_what_is_not_audio():
    det = dtmf.DtmfDetector()
    for bad in ("1234", [1, 2], np.zeros(4), None):
        with pytest.raises(ValueError):
            det.feed(bad)
    assert det.samples == 0
    assert det.feed(np.zeros(400, dtype=np.int16)) == []


def test_a_huge_chunk_is_worked_in_slices_with_the_same_result():
    edge = 4096 * dtmf.BLOCK  # where a single feed() starts a new slice of blocks
    digits = dtmf.generate("0#7", on_ms=45, off_ms=40)
    pcm = bytes(2 * (edge - 200)) + digits + bytes(2000)  # the first tone straddles the edge
    det = dtmf.DtmfDetector()
    framed = [d for i in range(0, len(pcm), 320) for d in det.feed(pcm[i:i + 320])]
    assert dtmf.detect(pcm) == "".join(framed) == "0#7"
