"""Signal helpers: conversions, levels in dBm0, tones, noise, resampling and the Goertzel
power, each against an independent computation (numpy's FFT, the definition of dBm0)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telephony.core import dsp


def peak_freq(pcm: bytes, rate: int) -> float:
    """The strongest frequency by FFT with zero padding (resolution well under 1 Hz)."""
    x = dsp.samples(pcm).astype(float)
    n = 1 << 20
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size), n))
    return float(np.fft.rfftfreq(n, 1 / rate)[np.argmax(spectrum)])


def middle(pcm: bytes, rate: int, ms: int = 100) -> bytes:
    """``pcm`` without ``ms`` at each end (the resampler's edges)."""
    k = rate * ms // 1000 * 2
    return pcm[k:-k]


def test_samples_and_pcm_bytes_are_little_endian_int16():
    assert dsp.samples(b"\x01\x00\xff\xff\x00\x80").tolist() == [1, -1, -32768]
    assert dsp.pcm_bytes([1, -1, -32768, 32767]) == b"\x01\x00\xff\xff\x00\x80\xff\x7f"
    a = np.array([5, -6], dtype=np.int16)
    assert dsp.samples(a) is a and dsp.samples(bytearray(b"\x05\x00")).tolist() == [5]


def test_pcm_bytes_rounds_and_saturates():
    assert dsp.samples(dsp.pcm_bytes([0.4, 0.6, -1.6, 1e9, -1e9, 40000])).tolist() == \
        [0, 1, -2, 32767, -32768, 32767]
    assert dsp.pcm_bytes(np.zeros(0)) == b""


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=4000).map(lambda b: b[:len(b) - len(b) % 2]))
def test_samples_round_trip(pcm):
    assert dsp.pcm_bytes(dsp.samples(pcm)) == pcm


@pytest.mark.parametrize("level", [0.0, -10.0, -26.5, 3.0])
def test_tone_level_is_dbm0(level):
    pcm = dsp.tone(1000, 1000, level)
    assert dsp.level_dbm0(pcm) == pytest.approx(level, abs=0.01)
    # the definition: 0 dBm0 is a sine of peak 32767 * 10**(-3.14/20)
    assert dsp.DBM0_PEAK == pytest.approx(22826.4, abs=0.1)
    assert np.max(np.abs(dsp.samples(dsp.tone(1000, 100, 0)))) == pytest.approx(dsp.DBM0_PEAK, abs=1)


def test_tone_frequencies_and_levels_per_frequency():
    pcm = dsp.tone((697, 1477), 500, (-6, -12))
    assert len(pcm) == 8000
    # the strongest frequency below and above 1 kHz (band-limited by a zero-padded FFT)
    x = dsp.samples(pcm).astype(float)
    n = 1 << 20
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size), n))
    freqs = np.fft.rfftfreq(n, 1 / 8000)
    below, above = freqs < 1000, freqs >= 1000
    assert freqs[below][np.argmax(spectrum[below])] == pytest.approx(697, abs=0.1)
    assert freqs[above][np.argmax(spectrum[above])] == pytest.approx(1477, abs=0.1)
    ratio = 20 * np.log10(np.max(spectrum[below]) / np.max(spectrum[above]))
    assert ratio == pytest.approx(6, abs=0.1)
    # levels: total power is the sum of the two
    expected = 10 * math.log10(10 ** -0.6 + 10 ** -1.2)
    assert dsp.level_dbm0(pcm) == pytest.approx(expected, abs=0.02)
    assert dsp.tone([440], 20, -10, rate=16000) == dsp.tone(440, 20, [-10], rate=16000)
    assert len(dsp.tone(440, 20, -10, rate=16000)) == 640


def test_silence_and_levels_of_nothing():
    assert dsp.silence_ms(20) == bytes(320)
    assert dsp.silence_ms(0) == b""
    assert dsp.rms(b"") == 0.0 and dsp.level_dbm0(bytes(320)) == -math.inf
    assert dsp.rms(dsp.pcm_bytes([3, -4, 3, -4])) == pytest.approx(math.sqrt(12.5))


def test_white_noise_is_seeded_at_its_level_and_flat():
    a = dsp.white_noise(2000, -20, seed=7)
    assert a == dsp.white_noise(2000, -20, seed=7)
    assert a != dsp.white_noise(2000, -20, seed=8)
    assert len(a) == 32000
    assert dsp.level_dbm0(a) == pytest.approx(-20, abs=0.1)
    x = dsp.samples(a).astype(float)
    power = np.abs(np.fft.rfft(x)) ** 2
    bands = [power[i * 2000:(i + 1) * 2000].mean() for i in range(4)]  # four 1 kHz bands
    assert max(bands) / min(bands) < 1.3
    assert abs(np.corrcoef(x[:-1], x[1:])[0, 1]) < 0.05  # no correlation between samples


@pytest.mark.parametrize(("a", "b"), [(16000, 8000), (8000, 48000), (8000, 16000), (22050, 8000),
                                      (44100, 8000), (8000, 11025)])
def test_resample_keeps_frequency_and_level(a, b):
    src = dsp.tone(1000, 1000, -10, rate=a)
    out = dsp.resample(src, a, b)
    assert len(out) // 2 == -(-(len(src) // 2) * b // a)
    body = middle(out, b)
    assert peak_freq(body, b) == pytest.approx(1000, abs=0.5)
    assert dsp.level_dbm0(body) == pytest.approx(-10, abs=0.05)


def test_resample_round_trip_16k_8k_16k():
    src = dsp.tone(1000, 1000, -10, rate=16000)
    back = dsp.resample(dsp.resample(src, 16000, 8000), 8000, 16000)
    assert len(back) == len(src)
    x, y = dsp.samples(middle(src, 16000)).astype(float), dsp.samples(middle(back, 16000)).astype(float)
    assert np.max(np.abs(x - y)) < 0.01 * np.max(np.abs(x))  # in phase and at level
    # and 8k -> 16k -> 8k of a voice-band tone is the identity to within rounding
    t = dsp.tone((697, 3000), 500, -12)
    rt = dsp.resample(dsp.resample(t, 8000, 16000), 16000, 8000)
    diff = dsp.samples(middle(rt, 8000, 50)).astype(int) - dsp.samples(middle(t, 8000, 50))
    assert np.max(np.abs(diff)) <= 2


def test_resample_removes_what_the_new_rate_cannot_carry():
    src = dsp.tone(6000, 1000, -10, rate=16000)  # above the 4 kHz Nyquist frequency of 8 kHz
    assert dsp.level_dbm0(middle(dsp.resample(src, 16000, 8000), 8000)) < -70


def test_resample_same_rate_and_empty():
    pcm = dsp.tone(440, 10, -10)
    assert dsp.resample(pcm, 8000, 8000) == pcm
    assert dsp.resample(b"", 22050, 8000) == b""


def test_goertzel_power_against_the_fft():
    x = dsp.samples(dsp.white_noise(25, -10, seed=1)).astype(float)[:200]
    fft = np.fft.rfft(x)
    for k in (5, 17, 40):
        f = k * 8000 / 200
        assert float(dsp.goertzel_power(x, f)) == pytest.approx(2 * abs(fft[k]) ** 2 / 200 ** 2, rel=1e-9)
    # a sine of amplitude A at the frequency gives A**2 / 2, with nothing at another bin
    a = 1000.0
    s = a * np.sin(2 * np.pi * 1000 * np.arange(200) / 8000)
    assert float(dsp.goertzel_power(s, 1000)) == pytest.approx(a * a / 2, rel=1e-9)
    assert float(dsp.goertzel_power(s, 2000)) < 1e-12 * a * a


def test_goertzel_power_vectorised_shapes():
    blocks = np.random.default_rng(1).standard_normal((7, 102))
    p = dsp.goertzel_power(blocks, [697, 1209])
    assert p.shape == (7, 2)
    for i in range(7):
        assert p[i, 1] == pytest.approx(float(dsp.goertzel_power(blocks[i], 1209)), rel=1e-12)
    assert dsp.goertzel_power(blocks, 697).shape == (7,)
    assert dsp.goertzel_power(dsp.tone(697, 20, -10), [697]).shape == (1,)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: dsp.samples(b"\x00\x00\x00"), "odd"),
    (lambda: dsp.samples("ab"), "must be bytes"),
    (lambda: dsp.samples([1, 2]), "must be bytes"),
    (lambda: dsp.samples(np.zeros(3, dtype=np.float64)), "int16"),
    (lambda: dsp.samples(np.zeros((2, 2), dtype=np.int16)), "one-dimensional"),
    (lambda: dsp.samples(bytes(dsp.MAX_BYTES + 2)), "limit"),
    (lambda: dsp.pcm_bytes([1.0, float("nan")]), "finite"),
    (lambda: dsp.pcm_bytes(np.zeros((2, 2))), "one-dimensional"),
    (lambda: dsp.pcm_bytes(["a"]), "real numbers"),
    (lambda: dsp.rms(b"\x00"), "odd"),
    (lambda: dsp.tone(440, float("inf"), -10), "ms must be"),
    (lambda: dsp.tone(440, 10, float("nan")), "level"),
    (lambda: dsp.tone(float("nan"), 10, -10), "frequency"),
    (lambda: dsp.tone(5000, 10, -10), "frequency"),
    (lambda: dsp.tone((440, 480), 10, (-10, -10, -10)), "one level per frequency"),
    (lambda: dsp.tone(440, 10_000_000, -10), "ms must be"),  # over 64 MiB
    (lambda: dsp.tone(440, 10, -10, rate=0), "sample rate"),
    (lambda: dsp.tone("440", 10, -10), "number or a sequence"),
    (lambda: dsp.silence_ms(-1), "ms must be"),
    (lambda: dsp.white_noise(10, -10, seed=-1), "seed"),
    (lambda: dsp.white_noise(10, -10, seed=1.5), "seed"),
    (lambda: dsp.resample(b"\x00\x00", 8000, 8000.5), "sample rate"),
    (lambda: dsp.resample(b"\x00\x00", 8000, 10**6), "sample rate"),
    (lambda: dsp.resample(bytes(2 * 3_000_000), 8000, 96000), "limit"),
    (lambda: dsp.resample(b"\x00\x00", 8000, 10007), "common ratio"),
    (lambda: dsp.goertzel_power(np.array([1.0, np.inf]), 697), "finite"),
    (lambda: dsp.goertzel_power(np.zeros(10), 5000), "frequencies"),
    (lambda: dsp.goertzel_power(np.zeros((2, 2, 2)), 697), "1-D or 2-D"),
])
def test_bad_input_is_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
