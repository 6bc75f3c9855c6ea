"""DTMF (ITU-T Q.23 signalling, Q.24 reception): a generator and a detector.  Pure: numpy only.

A DTMF digit is the sum of one tone of the low group (697, 770, 852, 941 Hz: the keypad's
row) and one of the high group (1209, 1336, 1477, 1633 Hz: its column).

**Detector** (:class:`DtmfDetector`), a block Goertzel receiver with the decision rules of
spandsp's (the reference it is measured against, see docs/analog.md "DTMF"):

1. The audio is cut into blocks of :data:`BLOCK` = 102 samples (12.75 ms) at fixed positions
   from the start of the stream, so the result does not depend on how it is fed.
2. Per block, the power at each of the eight frequencies (a Goertzel filter each, computed for
   all blocks of a chunk at once as one matrix product) and the block's total power.
3. The strongest row tone and the strongest column tone make a *hit* when all of these hold:
   both are at least -42 dBm0 (:data:`THRESHOLD_DBM0`); the row tone is less than 8 dB
   above the column tone (normal twist) and the column tone less than 4 dB above the row tone
   (reverse twist); every other tone of each group is at least 8 dB below the group's
   strongest (relative peak: rejects speech and music, rich in harmonics); and the two tones
   carry more than -0.85 dB of the block's total power (rejects noise and other signals).
4. A digit **starts** when two consecutive blocks hit the same digit while the detector is not
   already in it, and **ends** when two consecutive blocks are not that digit.  So a tone
   must cover two whole blocks (a 40 ms tone always does, a 20 ms tone never does) and a
   pause must too (40 ms is enough); one bad block inside a tone does not split it.

**Generator** (:func:`generate`): sums of sines starting at phase zero, tone then silence for
every digit.
"""
from __future__ import annotations

import math
from typing import Final

import numpy as np

from telephony.core import dsp

DIGITS: Final = "123A456B789C*0#D"  # row-major: DIGITS[4 * row + column]
ROWS: Final = (697.0, 770.0, 852.0, 941.0)  # low group
COLUMNS: Final = (1209.0, 1336.0, 1477.0, 1633.0)  # high group
FREQS: Final = {d: (ROWS[i // 4], COLUMNS[i % 4]) for i, d in enumerate(DIGITS)}

BLOCK: Final = 102  # samples per detection block (12.75 ms)
THRESHOLD_DBM0: Final = -42.0  # the weakest tone (each of the pair) accepted
NORMAL_TWIST_DB: Final = 8.0  # low group stronger than high: accepted below this
REVERSE_TWIST_DB: Final = 4.0  # high group stronger than low: accepted below this
RELATIVE_PEAK_DB: Final = 8.0  # every other tone of a group at least this far below its peak
TO_TOTAL_DB: Final = -0.85  # the pair's share of the block's power must be above this
MAX_DIGITS: Final = 1000  # the most digits generate() makes in one call

# The decisions work on raw Goertzel outputs: |X(f)|**2 of a block (a sine of amplitude A at f
# gives (A * BLOCK / 2)**2) and the block's sum of squares.  -42 dBm0 is counted from a
# full-scale amplitude of 32768 at +3.14 dBm0, as spandsp counts it.
_THRESHOLD = (32768.0 * BLOCK / 2) ** 2 * 10 ** ((THRESHOLD_DBM0 - 3.14) / 10)
_NORMAL_TWIST = 10 ** (NORMAL_TWIST_DB / 10)
_REVERSE_TWIST = 10 ** (REVERSE_TWIST_DB / 10)
_RELATIVE_PEAK = 10 ** (RELATIVE_PEAK_DB / 10)
# the pair's share: 2 (|X_row|**2 + |X_col|**2) / BLOCK**2 against sum(x**2) / BLOCK
_TO_TOTAL = 10 ** (TO_TOTAL_DB / 10) * BLOCK / 2
_BASIS = dsp.basis_for(np.array(ROWS + COLUMNS), BLOCK)
_SLICE = 4096 * BLOCK  # samples turned into float blocks at a time


def block_hits(blocks: np.ndarray) -> list[int]:
    """The hit of each block (rows of ``blocks``, each :data:`BLOCK` samples, float): the
    index of the digit in :data:`DIGITS`, or -1 for none (rules 2 and 3 of the module doc).

    The eight Goertzel outputs of every block come from one matrix product; the decision per
    block is a handful of comparisons on eight numbers, done on Python floats (cheaper than
    numpy calls for the one or two blocks a 20 ms frame completes)."""
    proj = blocks @ _BASIS
    proj *= proj
    powers = (proj[:, :8] + proj[:, 8:]).tolist()
    energies = np.einsum("ij,ij->i", blocks, blocks).tolist()
    return [_decide(p, e) for p, e in zip(powers, energies, strict=True)]


def _decide(p: list[float], energy: float) -> int:
    rows, cols = p[:4], p[4:]
    r = max(rows)
    c = max(cols)
    if r < _THRESHOLD or c < _THRESHOLD:
        return -1
    if not (c < r * _REVERSE_TWIST and c * _NORMAL_TWIST > r):
        return -1
    best_row = rows.index(r)  # the first of equals, as a strict "greater than" scan picks
    best_col = cols.index(c)
    for i in range(4):
        if i != best_row and rows[i] * _RELATIVE_PEAK > r:
            return -1
        if i != best_col and cols[i] * _RELATIVE_PEAK > c:
            return -1
    if r + c <= _TO_TOTAL * energy:
        return -1
    return 4 * best_row + best_col


class DtmfDetector:
    """A streaming DTMF receiver: :meth:`feed` it PCM in chunks of any size.

    State carries across chunks (at most ``BLOCK - 1`` samples of an unfinished block are
    kept), so the digits found do not depend on how the audio is cut.  Each digit is reported
    once per tone burst, in the chunk where its onset is confirmed (rule 4 of the module
    doc)."""

    def __init__(self) -> None:
        self._pending = np.zeros(0, dtype=np.int16)
        self._in_digit = -1  # the digit we are in (index in DIGITS), -1 for none
        self._last_hit = -1  # the previous block's (confirmed) hit
        self.samples = 0  # samples fed since the start or the last reset

    def reset(self) -> None:
        """Forget everything: as good as new."""
        self.__init__()

    @property
    def pending_samples(self) -> int:
        """Samples held back for an unfinished block (always fewer than :data:`BLOCK`)."""
        return int(self._pending.size)

    @property
    def in_digit(self) -> str | None:
        """The digit whose tone is present now (confirmed and not yet ended), if any."""
        return DIGITS[self._in_digit] if self._in_digit >= 0 else None

    def feed(self, pcm: bytes | np.ndarray) -> list[str]:
        """Digits whose onset was confirmed in this chunk of PCM, in order.

        Raises ValueError (and changes nothing) if ``pcm`` is not PCM (odd length, wrong type,
        over 64 MiB)."""
        x = dsp.samples(pcm)
        self.samples += x.size
        if self._pending.size:
            x = np.concatenate([self._pending, x])
        whole = x.size - x.size % BLOCK
        self._pending = x[whole:].copy()
        found: list[str] = []
        in_digit, last_hit = self._in_digit, self._last_hit
        for start in range(0, whole, _SLICE):  # bounded working memory for huge chunks
            blocks = x[start:min(whole, start + _SLICE)].astype(np.float64).reshape(-1, BLOCK)
            for hit in block_hits(blocks):
                if hit != in_digit and last_hit != in_digit:
                    # two blocks in a row differ from the current state: it changes
                    if hit != last_hit:
                        hit = -1
                    if hit >= 0:
                        found.append(DIGITS[hit])
                    in_digit = hit
                last_hit = hit
        self._in_digit, self._last_hit = in_digit, last_hit
        return found


def detect(pcm: bytes | np.ndarray) -> str:
    """The digits a fresh :class:`DtmfDetector` finds in ``pcm``."""
    return "".join(DtmfDetector().feed(pcm))


def _digit_list(digits: object) -> list[str]:
    if not isinstance(digits, str):
        raise ValueError(f"digits must be a string, not {type(digits).__name__}")
    if len(digits) > MAX_DIGITS:
        raise ValueError(f"at most {MAX_DIGITS} digits at a time, not {len(digits)}")
    out = []
    for d in digits.upper():
        if d not in FREQS:
            raise ValueError(f"{d!r} is not a DTMF digit (one of {DIGITS})")
        out.append(d)
    return out


def generate(digits: str, *, on_ms: float = 60, off_ms: float = 60, level_dbm0: float = -10.0,
             twist_db: float = 0.0) -> bytes:
    """PCM of ``digits`` (from :data:`DIGITS`, letters in either case): for each digit
    ``on_ms`` of its two tones then ``off_ms`` of silence.  The low-group tone is at
    ``level_dbm0`` and the high-group tone at ``level_dbm0 - twist_db`` (twist > 0: low group
    stronger, as a long line makes it).  Levels are per tone; the sum of two tones at -3 dBm0
    is the loudest pair that does not clip."""
    ds = _digit_list(digits)
    for name, value, lo, hi in (("on_ms", on_ms, 0, 10_000), ("off_ms", off_ms, 0, 10_000),
                                ("level_dbm0", level_dbm0, -90, 3.14), ("twist_db", twist_db, -40, 40)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not lo <= value <= hi:
            raise ValueError(f"{name} must be a number from {lo} to {hi}, got {value!r:.40}")
    if len(ds) * (on_ms + off_ms) * 16 > dsp.MAX_BYTES:  # 16 bytes of PCM per ms
        raise ValueError(f"{len(ds)} digits of {on_ms + off_ms} ms is over {dsp.MAX_BYTES} bytes of audio")
    gap = dsp.silence_ms(off_ms)
    parts = []
    for d in ds:
        low, high = FREQS[d]
        parts.append(dsp.tone((low, high), on_ms, (level_dbm0, level_dbm0 - twist_db)))
        parts.append(gap)
    return b"".join(parts)
