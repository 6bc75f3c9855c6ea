"""G.711 µ-law and A-law (ITU-T G.711), as lookup tables.  Pure: numpy only, no I/O.

Both laws code a sample in 8 bits: a sign bit, a 3-bit segment (chord) and a 4-bit step
inside the segment; segment ``s`` spans twice the range of segment ``s - 1`` with steps twice
as large, so the coding error stays roughly proportional to the signal.

* **µ-law** (North America, Japan) works on 14-bit magnitudes: the magnitude (16-bit sample
  shifted right by 2, saturated at 8159) plus a bias of 33 puts the segment's top bit at
  position ``s + 5``; the code is ``sign | s << 4 | step`` with every bit inverted (so that
  silence is 0xFF, not a run of zeros on a T1 line).
* **A-law** (Europe, the rest of the world) works on 13-bit magnitudes (shifted right by 3);
  segments 0 and 1 share one step size (the law is linear near zero), and the even bits are
  inverted (XOR 0x55) with the sign bit set for positive samples.

Decoding returns the middle of the quantisation interval, scaled back to 16 bits.  The tables
are built once at import: 65,536 codes per law for encoding (indexed by the sample as an
unsigned 16-bit value) and 256 samples per law for decoding, so a conversion is a single
numpy ``take``.  They are exactly the tables of the ITU-T reference and of ``audioop`` (checked
by the tests for every input).
"""
from __future__ import annotations

from typing import Final

import numpy as np

from telephony.core import dsp

LAWS: Final = ("ulaw", "alaw")
MAX_CODE_BYTES: Final = dsp.MAX_BYTES // 2  # decoding makes twice as many bytes of PCM
_ULAW_CLIP = 8159  # largest 14-bit magnitude µ-law codes
_ULAW_BIAS = 33


def _segment(magnitude: np.ndarray, first_top: int) -> np.ndarray:
    """Segment number 0..7 of magnitudes: segment 0 holds values below ``2**first_top``,
    each next one doubles the range (values beyond segment 7 give 8)."""
    bits = np.zeros(magnitude.shape, dtype=np.int64)
    v = magnitude >> first_top
    while np.any(v):
        bits += v > 0
        v >>= 1
    return bits


def _build_ulaw() -> tuple[np.ndarray, np.ndarray]:
    x = np.arange(65536, dtype=np.int64)
    x = np.where(x >= 32768, x - 65536, x) >> 2  # 14-bit signed
    negative = x < 0
    mag = np.minimum(np.where(negative, -x, x), _ULAW_CLIP) + _ULAW_BIAS
    seg = _segment(mag, 6)  # segment 0: biased magnitudes 33..63
    code = np.where(seg >= 8, 0x7F, (seg << 4) | ((mag >> (seg + 1)) & 0x0F))
    code = np.where(negative, code | 0x80, code) ^ 0xFF
    enc = code.astype(np.uint8)

    c = (~np.arange(256)) & 0xFF
    seg = (c >> 4) & 0x07
    mag = ((((c & 0x0F) << 1) + _ULAW_BIAS) << seg) - _ULAW_BIAS  # middle of the interval (14-bit)
    dec = np.where(c & 0x80, -mag, mag) << 2
    return enc, dec.astype(np.int16)


def _build_alaw() -> tuple[np.ndarray, np.ndarray]:
    x = np.arange(65536, dtype=np.int64)
    x = np.where(x >= 32768, x - 65536, x) >> 3  # 13-bit signed
    positive = x >= 0
    mag = np.where(positive, x, -x - 1)  # magnitude of -1 is 0: A-law has no code for zero
    seg = _segment(mag, 5)  # segment 0: magnitudes 0..31
    step = np.where(seg < 2, mag >> 1, mag >> np.maximum(seg, 1)) & 0x0F
    code = np.where(seg >= 8, 0x7F, (seg << 4) | step)
    code = np.where(positive, code | 0x80, code) ^ 0x55
    enc = code.astype(np.uint8)

    c = np.arange(256) ^ 0x55
    seg = (c >> 4) & 0x07
    base = ((c & 0x0F) << 4) + 8  # the middle of step (c & 15) in segments 0 and 1
    mag = np.where(seg == 0, base, (base + 0x100) << np.maximum(seg - 1, 0))
    dec = np.where(c & 0x80, mag, -mag)
    return enc, dec.astype(np.int16)


_ULAW_ENC, _ULAW_DEC = _build_ulaw()
_ALAW_ENC, _ALAW_DEC = _build_alaw()
_LE_INT16 = np.dtype("<i2")


def _codes(data: object) -> np.ndarray:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"G.711 data must be bytes, not {type(data).__name__}")
    n = data.nbytes if isinstance(data, memoryview) else len(data)
    if n > MAX_CODE_BYTES:
        raise ValueError(f"{n} bytes of G.711 is over the {MAX_CODE_BYTES}-byte limit")
    return np.frombuffer(bytes(data), dtype=np.uint8)


def ulaw_encode(pcm: bytes | np.ndarray) -> bytes:
    """µ-law codes (one byte per sample) of PCM."""
    return _ULAW_ENC[dsp.samples(pcm).view(np.uint16)].tobytes()


def ulaw_decode(data: bytes) -> bytes:
    """PCM of µ-law codes."""
    return _ULAW_DEC[_codes(data)].astype(_LE_INT16).tobytes()


def alaw_encode(pcm: bytes | np.ndarray) -> bytes:
    """A-law codes (one byte per sample) of PCM."""
    return _ALAW_ENC[dsp.samples(pcm).view(np.uint16)].tobytes()


def alaw_decode(data: bytes) -> bytes:
    """PCM of A-law codes."""
    return _ALAW_DEC[_codes(data)].astype(_LE_INT16).tobytes()


def _check_law(law: object) -> str:
    if law not in LAWS:
        raise ValueError(f"law must be one of {', '.join(LAWS)}, not {law!r:.40}")
    return str(law)


def encode(law: str, pcm: bytes | np.ndarray) -> bytes:
    """G.711 codes of PCM in ``law`` (``"ulaw"`` or ``"alaw"``)."""
    return ulaw_encode(pcm) if _check_law(law) == "ulaw" else alaw_encode(pcm)


def decode(law: str, data: bytes) -> bytes:
    """PCM of G.711 codes in ``law`` (``"ulaw"`` or ``"alaw"``)."""
    return ulaw_decode(data) if _check_law(law) == "ulaw" else alaw_decode(data)
