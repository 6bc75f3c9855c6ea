"""Signal helpers of the media core.  Pure: numpy only, no I/O.

The house audio format is PCM: 8 kHz, 16-bit signed little-endian mono, as ``bytes`` (see
docs/analog.md, "Audio format").  Every function here that takes audio accepts PCM ``bytes``
(``bytearray``/``memoryview`` too) or a one-dimensional ``numpy.int16`` array, and every
function that makes audio returns PCM ``bytes``.

Levels are in dBm0: a sine of peak amplitude :data:`DBM0_PEAK` (≈ 22,826) is 0 dBm0, so the
full-scale sine of G.711 µ-law is +3.14 dBm0 (the convention of ITU-T G.711 and spandsp).

Bad input (a type that is not audio, an odd byte count, a number that is not finite, a rate or
duration out of range, audio over 64 MiB) raises :class:`ValueError` saying what is wrong.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

import numpy as np

RATE: Final = 8000  # the house sample rate
DBM0_PEAK: Final = 32767 * 10 ** (-3.14 / 20)  # peak amplitude of a 0 dBm0 sine (≈ 22,826)
DBM0_RMS: Final = DBM0_PEAK / math.sqrt(2)  # RMS of a 0 dBm0 sine
MAX_BYTES: Final = 64 * 1024 * 1024  # the most audio (bytes of PCM) any function takes or makes
MAX_RATE: Final = 384_000  # highest sample rate accepted by tone/resample
#: half-length of the resampling filter, in zero crossings of the lower rate's low-pass
RESAMPLE_ZEROS: Final = 16
RESAMPLE_ROLLOFF: Final = 0.94  # the low-pass cut-off as a fraction of the lower Nyquist rate
_KAISER_BETA = 8.6  # stop band about -85 dB
_LE_INT16 = np.dtype("<i2")


# ============================================================================ conversions


def samples(pcm: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """The samples of ``pcm`` as a one-dimensional ``numpy.int16`` array (native order).

    ``pcm`` is PCM bytes or an int16 array (returned as is when already 1-D int16)."""
    if isinstance(pcm, np.ndarray):
        if pcm.dtype.kind != "i" or pcm.dtype.itemsize != 2:
            raise ValueError(f"an audio array must be int16, not {pcm.dtype}")
        if pcm.ndim != 1:
            raise ValueError(f"an audio array must be one-dimensional, not {pcm.ndim}-D")
        if pcm.nbytes > MAX_BYTES:
            raise ValueError(f"{pcm.nbytes} bytes of audio is over the {MAX_BYTES}-byte limit")
        return pcm.astype(np.int16, copy=False)
    if not isinstance(pcm, (bytes, bytearray, memoryview)):
        raise ValueError(f"PCM audio must be bytes or an int16 array, not {type(pcm).__name__}")
    n = pcm.nbytes if isinstance(pcm, memoryview) else len(pcm)
    if n % 2:
        raise ValueError(f"PCM audio must hold whole 16-bit samples: {n} bytes is odd")
    if n > MAX_BYTES:
        raise ValueError(f"{n} bytes of audio is over the {MAX_BYTES}-byte limit")
    return np.frombuffer(bytes(pcm), dtype=_LE_INT16).astype(np.int16)


def pcm_bytes(array: np.ndarray | Sequence[float]) -> bytes:
    """PCM bytes of a one-dimensional array of samples.

    Values are rounded to the nearest integer and saturated to -32768..32767 (as a codec or a
    DSP chain clips); a value that is not finite is an error."""
    a = np.asarray(array)
    if a.dtype.kind not in "iuf" and not (a.dtype.kind == "O" and a.size == 0):
        raise ValueError(f"samples must be real numbers, not {a.dtype}")
    if a.ndim != 1:
        raise ValueError(f"samples must be a one-dimensional array, not {a.ndim}-D")
    if a.size * 2 > MAX_BYTES:
        raise ValueError(f"{a.size * 2} bytes of audio is over the {MAX_BYTES}-byte limit")
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)):
            raise ValueError("samples must be finite numbers (found NaN or infinity)")
        a = np.rint(a)
    a = np.clip(a.astype(np.float64) if a.dtype.kind != "i" else a, -32768, 32767)
    return a.astype(_LE_INT16).tobytes()


def _float(pcm: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    return samples(pcm).astype(np.float64)


# ============================================================================ measurement


def rms(pcm: bytes | np.ndarray) -> float:
    """Root mean square of the samples (0.0 for no samples)."""
    x = _float(pcm)
    return float(np.sqrt(np.mean(x * x))) if x.size else 0.0


def level_dbm0(pcm: bytes | np.ndarray) -> float:
    """The level of ``pcm`` in dBm0 (its RMS against a 0 dBm0 sine's); ``-inf`` for silence or
    no samples."""
    r = rms(pcm)
    return 20 * math.log10(r / DBM0_RMS) if r > 0 else -math.inf


def goertzel_power(x: bytes | np.ndarray, freq: float | Sequence[float], rate: int = RATE) -> np.ndarray:
    """The power of the component at ``freq`` Hz in the block ``x``, as the Goertzel filter
    measures it, in the units of the mean square of ``x``: a sine of amplitude ``A`` at
    exactly ``freq`` over a whole number of periods gives ``A**2 / 2``.

    ``x`` is PCM (bytes / int16 array), or a real float array of one block (1-D) or of many
    blocks (2-D: one block per row).  ``freq`` is one frequency or a sequence of them.  The
    result has the shape of ``x`` without its last axis, plus one axis for a sequence of
    frequencies; for one block and one frequency it is a 0-d array (use ``float()``).

    The Goertzel recursion ``s[n] = x[n] + 2 cos(w) s[n-1] - s[n-2]`` ends in
    ``|X(w)|**2 = s1**2 + s2**2 - 2 cos(w) s1 s2``, which is the squared magnitude of the
    single DFT term at ``w``; numpy computes the same term as one matrix product over all
    blocks and frequencies at once (the vectorised form of the recursion)."""
    if isinstance(x, (bytes, bytearray, memoryview)) or (
            isinstance(x, np.ndarray) and x.dtype == np.int16 and x.ndim == 1):
        a = _float(x)
    else:
        a = np.asarray(x)
        if a.dtype.kind not in "iuf":
            raise ValueError(f"a block must be real numbers, not {a.dtype}")
        if a.ndim not in (1, 2):
            raise ValueError(f"a block must be 1-D or 2-D (blocks × samples), not {a.ndim}-D")
        if a.nbytes > 8 * MAX_BYTES:
            raise ValueError("block too large")
        a = a.astype(np.float64, copy=False)
        if not np.all(np.isfinite(a)):
            raise ValueError("a block must hold finite numbers (found NaN or infinity)")
    _check_rate(rate)
    scalar = np.ndim(freq) == 0
    f = np.atleast_1d(np.asarray(freq, dtype=np.float64))
    if f.ndim != 1 or not np.all(np.isfinite(f)) or np.any(f < 0) or np.any(f > rate / 2):
        raise ValueError(f"frequencies must be finite, from 0 to {rate / 2:g} Hz, got {freq!r:.60}")
    n = a.shape[-1]
    if n == 0:
        out = np.zeros(a.shape[:-1] + f.shape)
    else:
        basis = basis_for(f, n, rate)
        out = power_from(a @ basis, n, len(f))
    return out[..., 0] if scalar else out


def basis_for(freqs: np.ndarray, n: int, rate: int = RATE) -> np.ndarray:
    """The (n × 2k) cos/sin matrix :func:`goertzel_power` multiplies a block by, for reuse by
    detectors that measure the same frequencies on every block (compute once, then
    ``power_from(blocks @ basis, n, k)``)."""
    t = np.arange(n, dtype=np.float64)
    w = 2 * np.pi * np.asarray(freqs, dtype=np.float64) / rate
    return np.concatenate([np.cos(np.outer(t, w)), np.sin(np.outer(t, w))], axis=1)


def power_from(projection: np.ndarray, n: int, k: int) -> np.ndarray:
    """Powers (units of the mean square, see :func:`goertzel_power`) from the product of
    blocks of ``n`` samples with :func:`basis_for`'s matrix of ``k`` frequencies."""
    re = projection[..., :k]
    im = projection[..., k:]
    return 2.0 * (re * re + im * im) / (n * n)


# ============================================================================ generation


def _check_number(name: str, value: object, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(value)) or not lo <= float(value) <= hi:
        raise ValueError(f"{name} must be a number from {lo:g} to {hi:g}, got {value!r:.40}")
    return float(value)


def _check_rate(rate: object) -> int:
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or not 1 <= rate <= MAX_RATE:
        raise ValueError(f"a sample rate must be an integer from 1 to {MAX_RATE} Hz, got {rate!r:.40}")
    return int(rate)


def _count(ms: object, rate: int) -> int:
    limit_ms = MAX_BYTES // 2 * 1000 / rate
    ms = _check_number("ms", ms, 0, limit_ms)
    return int(round(ms * rate / 1000))


def _as_list(name: str, value: object) -> list[float]:
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return [float(value)]
    if isinstance(value, (list, tuple, np.ndarray)):
        return [v for v in value]
    raise ValueError(f"{name} must be a number or a sequence of numbers, not {type(value).__name__}")


def tone(freqs: float | Sequence[float], ms: float, levels_dbm0: float | Sequence[float],
         rate: int = RATE) -> bytes:
    """``ms`` milliseconds of the sum of sines at ``freqs`` Hz, one level in dBm0 per
    frequency (a single level applies to every frequency).  Each sine starts at phase 0; the
    sum is saturated to 16 bits.  At most 8 frequencies, each from 0 to rate/2, each level
    from -120 to +3.14 dBm0."""
    rate = _check_rate(rate)
    fs = _as_list("freqs", freqs)
    lv = _as_list("levels_dbm0", levels_dbm0)
    if not 1 <= len(fs) <= 8:
        raise ValueError(f"a tone has 1 to 8 frequencies, not {len(fs)}")
    if len(lv) == 1:
        lv = lv * len(fs)
    if len(lv) != len(fs):
        raise ValueError(f"one level per frequency: {len(fs)} frequencies, {len(lv)} levels")
    fs = [_check_number("a frequency", f, 0, rate / 2) for f in fs]
    lv = [_check_number("a level (dBm0)", v, -120, 3.14) for v in lv]
    n = _count(ms, rate)
    t = np.arange(n, dtype=np.float64) / rate
    out = np.zeros(n)
    for f, level in zip(fs, lv, strict=True):
        out += DBM0_PEAK * 10 ** (level / 20) * np.sin(2 * np.pi * f * t)
    return pcm_bytes(out)


def silence_ms(ms: float, rate: int = RATE) -> bytes:
    """``ms`` milliseconds of digital silence."""
    return bytes(2 * _count(ms, _check_rate(rate)))


def white_noise(ms: float, level_dbm0: float, seed: int, rate: int = RATE) -> bytes:
    """``ms`` milliseconds of Gaussian white noise at ``level_dbm0`` (its RMS), from a
    ``numpy.random.Generator`` seeded with ``seed`` (the same seed gives the same noise).
    Peaks beyond 16 bits are saturated (negligible below about -10 dBm0)."""
    rate = _check_rate(rate)
    level = _check_number("level_dbm0", level_dbm0, -120, 3.14)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r:.40}")
    n = _count(ms, rate)
    rng = np.random.default_rng(int(seed))
    return pcm_bytes(rng.standard_normal(n) * DBM0_RMS * 10 ** (level / 20))


# ============================================================================ resampling


def _resample_filter(up: int, down: int) -> tuple[np.ndarray, int]:
    """The polyphase prototype low-pass at the rate ``from_rate * up``: a Kaiser-windowed sinc
    cut off at ``RESAMPLE_ROLLOFF`` of the lower Nyquist rate, scaled by ``up``."""
    step = max(up, down)
    half = RESAMPLE_ZEROS * step
    k = np.arange(-half, half + 1, dtype=np.float64)
    fc = RESAMPLE_ROLLOFF * 0.5 / step  # cycles per (upsampled) sample
    h = 2 * fc * np.sinc(2 * fc * k) * np.kaiser(2 * half + 1, _KAISER_BETA)
    return h * up, half


def resample(pcm: bytes | np.ndarray, from_rate: int, to_rate: int) -> bytes:
    """``pcm`` (16-bit mono at ``from_rate``) converted to ``to_rate`` (16-bit PCM bytes).

    A polyphase FIR: conceptually the input is upsampled by ``up`` (zeros inserted), low-passed
    by a Kaiser-windowed sinc below the lower rate's Nyquist frequency (``RESAMPLE_ROLLOFF``,
    about -85 dB stop band) and decimated by ``down``, where ``up/down = to_rate/from_rate``
    in lowest terms; only the products that survive the decimation are computed.  The output
    has ``ceil(len * to_rate / from_rate)`` samples and is aligned in time with the input
    (zero delay); samples beyond the ends count as silence."""
    x = _float(pcm)
    from_rate = _check_rate(from_rate)
    to_rate = _check_rate(to_rate)
    if from_rate == to_rate:
        return pcm_bytes(x)
    g = math.gcd(from_rate, to_rate)
    up, down = to_rate // g, from_rate // g
    n_out = -(-x.size * up // down)
    if n_out * 2 > MAX_BYTES:
        raise ValueError(f"{n_out * 2} bytes of resampled audio is over the {MAX_BYTES}-byte limit")
    if max(up, down) > 10_000:
        raise ValueError(f"rates {from_rate} and {to_rate} have no small common ratio "
                         f"({up}/{down}); round one of them")
    h, half = _resample_filter(up, down)
    taps = 2 * half // up + 1
    out = np.empty(n_out)
    padded = np.concatenate([np.zeros(taps + 1), x, np.zeros(taps + 1)])
    block = max(1, (1 << 20) // taps)
    j = np.arange(taps + 1)
    for start in range(0, n_out, block):
        n = np.arange(start, min(n_out, start + block), dtype=np.int64)
        m = n * down  # position in the upsampled stream
        i0 = -((half - m) // up)  # ceil((m - half) / up): the first input sample in reach
        i = i0[:, None] + j[None, :]
        k = m[:, None] - i * up  # filter offset of each input sample
        ok = np.abs(k) <= half
        coef = np.where(ok, h[np.clip(k + half, 0, 2 * half)], 0.0)
        out[start:start + n.size] = np.sum(coef * padded[i + taps + 1], axis=1)
    return pcm_bytes(out)
