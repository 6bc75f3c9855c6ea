"""Call-progress tones: the generated tones measure as planned, and the detector recognises
each tone once per occurrence, across frequency and level tolerances and any chunking, and
stays quiet for DTMF, noise, speech and silence."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lab import dtmf_corpus
from telephony.core import dsp, dtmf, g711, tones

AUDIBLE = ("dial", "busy", "reorder", "ringback", "confirm")


def gated(profile: str, name: str, ms: float, *, factor: float = 1.0, level: float | None = None,
          on_scale: float = 1.0, off_scale: float = 1.0) -> bytes:
    """The tone with its frequencies scaled by ``factor`` and its cadence's on/off times by
    ``on_scale``/``off_scale`` (built here from the tone's data, not by tones.generate)."""
    t = tones.lookup(profile, name)
    x = dsp.samples(dsp.tone([f * factor for f in t.freqs], ms, t.level_dbm0 if level is None else level))
    x = x.astype(np.float64)
    if t.cadence:
        steps = [(round(on * on_scale) * 8, round(off * off_scale) * 8) for on, off in t.cadence]
        period = sum(a + b for a, b in steps)
        pos = np.arange(x.size) if t.once else np.arange(x.size) % period
        gate = np.zeros(x.size, dtype=bool)
        start = 0
        for on, off in steps:
            gate |= (pos >= start) & (pos < start + on)
            start += on + off
        x = np.where(gate, x, 0.0)
    return dsp.pcm_bytes(x)


def feed_in(profile: str, pcm: bytes, chunk: int) -> list[str]:
    det = tones.ToneDetector(profile)
    out: list[str] = []
    for i in range(0, len(pcm), chunk):
        out += det.feed(pcm[i:i + chunk])
    return out


# ----------------------------------------------------------------------------- the plans


@pytest.mark.parametrize("profile", sorted(tones.PROFILES))
@pytest.mark.parametrize("name", AUDIBLE)
def test_generated_tone_has_its_frequencies_level_and_cadence(profile, name):
    t = tones.lookup(profile, name)
    pcm = tones.generate(profile, name, 12_000)
    x = dsp.samples(pcm).astype(np.float64)
    assert x.size == 96_000
    on = np.abs(x).reshape(-1, 80).max(axis=1) > 0  # 10 ms blocks
    # cadence: the lengths of the on and off runs, in ms
    edges = np.flatnonzero(np.diff(on.astype(int))) + 1
    runs = np.diff(np.concatenate([[0], edges, [on.size]])) * 10
    if not t.cadence:
        assert on.all()
    elif t.once:
        assert list(runs) == [100, 100, 100, 100, 100, 11_500]
    else:
        pattern = [ms for pair in t.cadence for ms in pair]
        assert list(runs[: len(pattern)]) == pattern
        assert on[0]
    # frequencies and level over the first 100 ms, which is on in every tone
    first = x[:800]
    for f in t.freqs:
        level = 10 * np.log10(float(dsp.goertzel_power(first, f)) / dsp.DBM0_RMS ** 2)
        assert abs(level - t.level_dbm0) < 0.2, (f, level)
    # and nothing else: the whole level is the sum of the components'
    total = 10 * np.log10(len(t.freqs)) + t.level_dbm0
    assert abs(dsp.level_dbm0(dsp.samples(pcm)[:800]) - total) < 0.1


def test_plans_follow_the_documented_values():
    na, etsi = tones.PROFILES["na"], tones.PROFILES["etsi"]
    assert (na["dial"].freqs, na["dial"].cadence) == ((350.0, 440.0), ())
    assert (na["busy"].freqs, na["busy"].cadence) == ((480.0, 620.0), ((500, 500),))
    assert (na["reorder"].freqs, na["reorder"].cadence) == ((480.0, 620.0), ((250, 250),))
    assert (na["ringback"].freqs, na["ringback"].cadence) == ((440.0, 480.0), ((2000, 4000),))
    assert na["confirm"].cadence == ((100, 100),) * 3 and na["confirm"].once
    assert na["ring"].cadence == ((2000, 4000),) and not na["ring"].audible
    assert {t.freqs for t in etsi.values() if t.audible} == {(425.0,)}
    assert etsi["ringback"].cadence == ((1000, 4000),) and etsi["ring"].cadence == ((1000, 4000),)
    assert na["dial"].level_dbm0 == -13.0


def test_bad_requests_are_refused():
    with pytest.raises(ValueError, match="unknown tone profile"):
        tones.ToneDetector("uk")
    with pytest.raises(ValueError, match="no tone"):
        tones.generate("na", "howler", 100)
    with pytest.raises(ValueError, match="not audio"):
        tones.generate("etsi", "ring", 100)
    with pytest.raises(ValueError):
        tones.generate("na", "dial", -5)
    det = tones.ToneDetector("na")
    with pytest.raises(ValueError, match="bytes or an int16 array"):
        det.feed("dial tone")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cadence"):
        tones.Tone("x", (400.0,), -10.0, ((0, 100),))


# ----------------------------------------------------------------------------- detection


@pytest.mark.parametrize("profile", sorted(tones.PROFILES))
@pytest.mark.parametrize("name", AUDIBLE)
@pytest.mark.parametrize("factor", [0.98, 1.0, 1.02])
@pytest.mark.parametrize("level", [-35.0, -20.0, 0.0])
def test_each_tone_is_recognised_once(profile, name, factor, level):
    pcm = dsp.silence_ms(13.7) + gated(profile, name, 9000, factor=factor, level=level) + dsp.silence_ms(3000)
    assert tones.ToneDetector(profile).feed(pcm) == [name]


@pytest.mark.parametrize("profile", sorted(tones.PROFILES))
@pytest.mark.parametrize("name", ["busy", "reorder", "ringback", "confirm"])
@pytest.mark.parametrize("on_scale,off_scale", [(0.8, 1.2), (1.2, 0.8), (1.15, 1.15), (0.85, 0.85)])
def test_cadence_tolerance(profile, name, on_scale, off_scale):
    pcm = gated(profile, name, 14_000, on_scale=on_scale, off_scale=off_scale) + dsp.silence_ms(6000)
    assert tones.ToneDetector(profile).feed(pcm) == [name]


@pytest.mark.parametrize("profile", sorted(tones.PROFILES))
def test_a_cadence_between_busy_and_reorder_is_neither(profile):
    # 350/350 ms is 30 % off busy's 500 and 40 % off reorder's 250: beyond either tolerance
    pcm = gated(profile, "busy", 8000, on_scale=0.7, off_scale=0.7)
    assert tones.ToneDetector(profile).feed(pcm) == []
    # and a busy cadence too slow by 40 %
    assert tones.ToneDetector(profile).feed(gated(profile, "busy", 8000, on_scale=1.4, off_scale=1.4)) == []


@pytest.mark.parametrize("chunk", [1, 2, 3, 57, 320, 321, 4000])
def test_when_reported_and_any_chunking(chunk):
    det = tones.ToneDetector("na")
    pcm = tones.generate("na", "dial", 1000)
    times = []
    for i in range(0, len(pcm), chunk):
        if det.feed(pcm[i:i + chunk]):
            times.append(i + chunk)
    assert len(times) == 1
    assert 500 <= min(times[0], len(pcm)) / 16 < 500 + chunk / 16 + 20  # after 500 ms, within a frame
    assert feed_in("na", tones.generate("na", "busy", 5000) + dsp.silence_ms(2000), chunk) == ["busy"]


def test_short_dial_tone_is_not_reported_and_etsi_dial_waits_past_ringback():
    assert tones.ToneDetector("na").feed(tones.generate("na", "dial", 440)) == []
    # ETSI: every tone is 425 Hz and ringback is on for 1 s, so a steady tone counts as dial
    # tone only after ringback's on time (+20 %) has passed
    assert tones.ToneDetector("etsi").feed(tones.generate("etsi", "dial", 1180)) == []
    assert tones.ToneDetector("etsi").feed(tones.generate("etsi", "dial", 1300)) == ["dial"]


def test_once_per_occurrence_and_again_after_a_break():
    det = tones.ToneDetector("na")
    busy = tones.generate("na", "busy", 10_000)
    assert det.feed(busy) == ["busy"]
    assert det.feed(dsp.silence_ms(3000)) == []
    assert det.feed(busy) == ["busy"]
    assert det.feed(tones.generate("na", "reorder", 3000)) == ["reorder"]
    assert det.feed(tones.generate("na", "dial", 3000)) == ["dial"]
    assert det.feed(dsp.silence_ms(100) + tones.generate("na", "dial", 3000)) == ["dial"]


def test_confirmation_then_dial_tone():
    pcm = tones.generate("na", "confirm", 600) + tones.generate("na", "dial", 2000)
    assert tones.ToneDetector("na").feed(pcm) == ["confirm", "dial"]
    # an ETSI confirmation followed by congestion
    pcm = tones.generate("etsi", "confirm", 700) + tones.generate("etsi", "reorder", 3000)
    assert tones.ToneDetector("etsi").feed(pcm) == ["confirm", "reorder"]


def test_a_single_dropped_frame_does_not_break_dial_tone():
    dial = dsp.samples(tones.generate("na", "dial", 3000)).copy()
    dial[8000:8160] = 0  # 20 ms of silence one second in
    det = tones.ToneDetector("na")
    assert det.feed(dial) == ["dial"]


def test_reset_forgets_progress():
    det = tones.ToneDetector("na")
    assert det.feed(tones.generate("na", "dial", 400)) == []
    det.reset()
    assert det.feed(tones.generate("na", "dial", 400)) == []
    assert det.feed(tones.generate("na", "dial", 200)) == ["dial"]


# ----------------------------------------------------------------------------- no false tones


@pytest.mark.parametrize("profile", sorted(tones.PROFILES))
@pytest.mark.parametrize("level", [-30.0, -10.0, 0.0])
def test_dtmf_digits_are_not_tones(profile, level):
    digits = "123A456B789C*0#D" * 3
    pcm = dtmf.generate(digits, on_ms=100, off_ms=100, level_dbm0=level)
    long = dtmf.generate("5" * 5, on_ms=500, off_ms=500, level_dbm0=level)  # busy-like cadence
    steady = dtmf.generate("1", on_ms=3000, off_ms=0, level_dbm0=level)
    for audio in (pcm, long, steady):
        assert tones.ToneDetector(profile).feed(audio) == []


@pytest.mark.parametrize("profile", sorted(tones.PROFILES))
@pytest.mark.parametrize("level", [-45.0, -20.0, -3.0])
def test_white_noise_and_silence_are_not_tones(profile, level):
    det = tones.ToneDetector(profile)
    for seed in range(3):
        assert det.feed(dsp.white_noise(10_000, level, seed)) == []
    assert det.feed(dsp.silence_ms(10_000)) == []


@pytest.fixture(scope="module")
def talk() -> bytes:
    """Three minutes of varied espeak-ng speech at -12 dBm0 (the DTMF talk-off corpus's)."""
    try:
        return dtmf_corpus.speech(180)
    except RuntimeError as e:
        pytest.fail(f"the speech corpus needs espeak-ng: {e}")


@pytest.mark.parametrize("profile", sorted(tones.PROFILES))
@pytest.mark.parametrize("gain_db", [-18.0, 0.0, 7.0])
def test_speech_is_not_a_tone(talk, profile, gain_db):
    x = dsp.samples(talk).astype(np.float64) * 10 ** (gain_db / 20)  # -30, -12 and -5 dBm0
    assert tones.ToneDetector(profile).feed(dsp.pcm_bytes(x)) == []


def test_speech_does_not_hide_dial_tone_after_it(talk):
    pcm = talk[:2 * 8000 * 3] + tones.generate("na", "dial", 1000)
    assert tones.ToneDetector("na").feed(pcm) == ["dial"]


# ----------------------------------------------------------------------------- fuzzing


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts=st.lists(st.integers(min_value=0, max_value=2 * 8000 * 9), max_size=12),
       profile=st.sampled_from(sorted(tones.PROFILES)))
def test_any_chunking_gives_the_same_result(cuts, profile):
    pcm = (tones.generate(profile, "busy", 3000) + dsp.silence_ms(1000)
           + tones.generate(profile, "dial", 2000) + dsp.silence_ms(500)
           + tones.generate(profile, "confirm", 900) + dsp.silence_ms(1600))
    whole = tones.ToneDetector(profile).feed(pcm)
    assert whole == ["busy", "dial", "confirm"]
    det = tones.ToneDetector(profile)
    got: list[str] = []
    edges = sorted({0, len(pcm), *(c for c in cuts if c < len(pcm))})
    for a, b in zip(edges, edges[1:], strict=False):
        got += det.feed(pcm[a:b])
    assert got == whole


@settings(max_examples=60, deadline=None)
@given(chunks=st.lists(st.binary(max_size=2000), max_size=20),
       profile=st.sampled_from(sorted(tones.PROFILES)))
def test_arbitrary_bytes_never_break_the_detector(chunks, profile):
    det = tones.ToneDetector(profile)
    names = {t.name for t in tones.PROFILES[profile].values()}
    for chunk in chunks:
        found = det.feed(chunk)
        assert set(found) <= names
        assert len(det._pending) < 2 * tones.FRAME  # noqa: SLF001 - the bounded state
        assert len(det._history) <= det._history.maxlen  # noqa: SLF001


# ----------------------------------------------------------------------------- the line


def sox_synth(args: list[str]) -> bytes:
    exe = shutil.which("sox")
    if exe is None:
        pytest.fail("sox is needed to make tones independently: install the Debian package sox")
    return subprocess.run([exe, "-n", "-r", "8000", "-e", "signed", "-b", "16", "-c", "1", "-t", "raw",
                           "-L", "-", "synth", *args], capture_output=True, check=True).stdout


@pytest.mark.parametrize("args,profile,name", [
    ("3 sine 350 sine 440 vol 0.2", "na", "dial"),
    ("0.5 sine 480 sine 620 vol 0.1 pad 0 0.5 repeat 5", "na", "busy"),
    ("0.25 sine 480 sine 620 vol 0.1 pad 0 0.25 repeat 9", "na", "reorder"),
    ("2 sine 440 sine 480 vol 0.1 pad 0 4 repeat 1", "na", "ringback"),
    ("0.5 sine 425 vol 0.3 pad 0 0.5 repeat 5", "etsi", "busy"),
    ("1 sine 425 vol 0.3 pad 0 4 repeat 1", "etsi", "ringback"),
    # and tones of the other plan: a 400 Hz busy tone in North America, NA dial tone in Europe
    ("0.5 sine 400 vol 0.3 pad 0 0.5 repeat 5", "na", None),
    ("3 sine 350 sine 440 vol 0.2", "etsi", None),
])
def test_tones_made_by_sox(args, profile, name):
    # an independent generator: sox's synth (two sines mixed to one channel, gated by pad)
    pcm = sox_synth(args.split())
    assert len(pcm) > 16_000
    assert tones.ToneDetector(profile).feed(pcm + dsp.silence_ms(1000)) == ([name] if name else [])


@pytest.mark.parametrize("profile", sorted(tones.PROFILES))
@pytest.mark.parametrize("name", AUDIBLE)
@pytest.mark.parametrize("law", g711.LAWS)
def test_tones_through_g711_and_noise(profile, name, law):
    # what a board delivers: the tone with line noise 15 dB under it, through the codec
    t = tones.lookup(profile, name)
    clean = tones.generate(profile, name, 9000) + dsp.silence_ms(3000)
    noise = dsp.samples(dsp.white_noise(12_000, t.level_dbm0 - 15, 7)).astype(np.float64)
    noisy = dsp.pcm_bytes(dsp.samples(clean).astype(np.float64) + noise)
    heard = g711.decode(law, g711.encode(law, noisy))
    assert tones.ToneDetector(profile).feed(heard) == [name]


@pytest.mark.parametrize("profile", sorted(tones.PROFILES))
def test_a_looped_confirmation_tone_is_reported_once(profile):
    # a simulator looping one period of the confirmation tone: bursts every 200 ms
    period = tones.generate(profile, "confirm", tones.lookup(profile, "confirm").period_ms)
    det = tones.ToneDetector(profile)
    assert det.feed(period * 10) == ["confirm"]
    assert det.feed(dsp.silence_ms(1000) + period * 3) == ["confirm"]
