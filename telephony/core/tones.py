"""Call-progress tones: the tone plans as data, a generator and a cadence-aware detector.

Pure (numpy only).  Audio is PCM (docs/analog.md, "Audio format"); levels are dBm0.

A :class:`Tone` is a set of frequencies, a level per frequency and a cadence: a tuple of
``(on_ms, off_ms)`` pairs played in a loop, ``()`` for a continuous tone.  A tone with
``once=True`` (the confirmation tone) plays its cadence once and is then silent.  The ringing
signal (``ring``) is a line voltage, not audio: it has no frequencies and only its cadence is
used (by the board simulator and the ring detection of the analog driver).

:class:`ToneDetector` cuts its input into 20 ms frames, decides per frame which of the
profile's frequency sets (if any) is present, joins equal frames into runs (a run changes only
after two frames agree, so a single odd frame neither breaks nor starts one) and matches the
recent runs against every tone's cadence.  See docs/analog.md, "Call-progress tones".
"""
from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass
from typing import Final

import numpy as np

from telephony.core.dsp import DBM0_PEAK, RATE, basis_for, pcm_bytes, samples, tone

FRAME: Final = 160  # samples per detector frame (20 ms)
FRAME_MS: Final = 20
MIN_LEVEL_DBM0: Final = -35.0  # the weakest component the detector must hear
MAX_LEVEL_DBM0: Final = 0.0  # the strongest
FREQ_TOLERANCE: Final = 0.02  # ±2 % of each nominal frequency
CADENCE_TOLERANCE: Final = 0.20  # ±20 % of each on/off time, or ...
CADENCE_SLACK_MS: Final = 50  # ... ±50 ms, whichever is larger
CONTINUOUS_MS: Final = 500  # a continuous tone is reported after this long (at least)
MAX_TWIST_DB: Final = 10.0  # most level difference between the components of one tone
MAX_RESIDUAL: Final = 0.25  # most share of a frame's energy outside the fitted components
_LEVEL_MARGIN_DB = 2.0  # measurement slack around the MIN/MAX levels
_OFFSETS = tuple(FREQ_TOLERANCE * k / 2 for k in range(-2, 3))  # trial frequencies: 0, ±1 %, ±2 %
_HISTORY = 12  # completed runs kept (the longest pattern needs 5)
_BATCH = 250  # frames classified together (5 s)
#: whole cycles heard before a repeating tone is reported (2 unless named here)
CYCLES: Final = {"ringback": 1}


@dataclass(frozen=True)
class Tone:
    """One call-progress tone: ``freqs`` in Hz, ``level_dbm0`` per frequency, ``cadence`` of
    ``(on_ms, off_ms)`` pairs (``()`` continuous), ``once``: the cadence plays once."""

    name: str
    freqs: tuple[float, ...]
    level_dbm0: float
    cadence: tuple[tuple[int, int], ...] = ()
    once: bool = False

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError("a tone needs a name")
        if any(not (0 < f < RATE / 2) for f in self.freqs):
            raise ValueError(f"{self.name}: frequencies must be between 0 and {RATE // 2} Hz")
        for pair in self.cadence:
            if len(pair) != 2 or min(pair) < 0 or pair[0] <= 0:
                raise ValueError(f"{self.name}: a cadence is (on_ms > 0, off_ms >= 0) pairs")

    @property
    def audible(self) -> bool:
        return bool(self.freqs)

    @property
    def period_ms(self) -> int:
        return sum(on + off for on, off in self.cadence)


def _na() -> dict[str, Tone]:
    # the North American precise tone plan
    return {t.name: t for t in (
        Tone("dial", (350.0, 440.0), -13.0),
        Tone("busy", (480.0, 620.0), -24.0, ((500, 500),)),
        Tone("reorder", (480.0, 620.0), -24.0, ((250, 250),)),
        Tone("ringback", (440.0, 480.0), -19.0, ((2000, 4000),)),
        Tone("confirm", (350.0, 440.0), -13.0, ((100, 100),) * 3, once=True),
        Tone("ring", (), 0.0, ((2000, 4000),)),
    )}


def _etsi() -> dict[str, Tone]:
    # the common European plan (ETSI TR 101 041 / CEPT values), all on 425 Hz
    return {t.name: t for t in (
        Tone("dial", (425.0,), -10.0),
        Tone("busy", (425.0,), -10.0, ((500, 500),)),
        Tone("reorder", (425.0,), -10.0, ((250, 250),)),
        Tone("ringback", (425.0,), -10.0, ((1000, 4000),)),
        Tone("confirm", (425.0,), -10.0, ((100, 100),) * 3, once=True),
        Tone("ring", (), 0.0, ((1000, 4000),)),
    )}


PROFILES: Final[dict[str, dict[str, Tone]]] = {"na": _na(), "etsi": _etsi()}


def _profile(profile: str) -> dict[str, Tone]:
    if not isinstance(profile, str) or profile not in PROFILES:
        raise ValueError(f"unknown tone profile {profile!r:.40}; known: {', '.join(PROFILES)}")
    return PROFILES[profile]


def lookup(profile: str, name: str) -> Tone:
    """The tone ``name`` of ``profile`` (ValueError naming the known ones otherwise)."""
    tones = _profile(profile)
    if not isinstance(name, str) or name not in tones:
        raise ValueError(f"profile {profile} has no tone {name!r:.40}; known: {', '.join(tones)}")
    return tones[name]


def generate(profile: str, name: str, ms: float) -> bytes:
    """``ms`` milliseconds of the tone ``name`` of ``profile`` as PCM, starting at the start
    of an on period (a ``once`` tone is silent after its cadence)."""
    t = lookup(profile, name)
    if not t.audible:
        raise ValueError(f"{name} is the ringing signal (a line voltage), not audio")
    x = samples(tone(list(t.freqs), ms, t.level_dbm0)).astype(np.float64)
    if t.cadence:
        n = np.arange(x.size)
        gate = np.zeros(x.size, dtype=bool)
        start = 0
        period = t.period_ms * RATE // 1000
        for on, off in t.cadence:
            a, b = start, start + on * RATE // 1000
            pos = n if t.once else n % period
            gate |= (pos >= a) & (pos < b)
            start = b + off * RATE // 1000
        x = np.where(gate, x, 0.0)
    return pcm_bytes(x)


def _bounds(ms: int) -> tuple[float, float]:
    """The on/off times accepted for a nominal ``ms``: the tolerance, plus one frame for the
    measurement (a run's edges fall inside frames)."""
    slack = max(CADENCE_TOLERANCE * ms, CADENCE_SLACK_MS) + FRAME_MS
    return ms - slack, ms + slack


@dataclass
class _Run:
    label: int | None  # index of the frequency set, None for no tone
    ms: int
    serial: int  # counts runs since the start, to tell one run from the next


class ToneDetector:
    """Recognises the call-progress tones of one profile in a stream of PCM.

    ``feed(pcm)`` takes any amount of audio (bytes of any length, or an int16 array) and
    returns the names of the tones recognised in it, each once per occurrence:

    * a continuous tone (``dial``) once it has lasted :data:`CONTINUOUS_MS` (longer when a
      cadenced tone of the profile has the same frequencies and a longer on time: then just
      past that on time's tolerance), and again only after it stopped;
    * a repeating tone (``busy``, ``reorder``) after two whole cycles, ``ringback`` after one
      on and one off period, and again only after its cadence broke or the tone stopped;
    * a ``once`` tone (``confirm``) when its last burst ends (a pattern that goes on repeating
      is reported once, like a repeating tone).
    """

    def __init__(self, profile: str = "na") -> None:
        self.profile = profile
        self.tones = [t for t in _profile(profile).values() if t.audible]
        self.sets: list[tuple[float, ...]] = sorted({tuple(sorted(t.freqs)) for t in self.tones})
        self._set_of = {t.name: self.sets.index(tuple(sorted(t.freqs))) for t in self.tones}
        # Every set is fitted at every combination of trial frequencies (nominal, ±1 %, ±2 %
        # per component): one stacked matrix of orthonormal bases gives the energy each
        # combination captures, the best one per set wins, and its least-squares coefficients
        # give the component levels.
        stacks = []
        self._pinvs: list[np.ndarray] = []  # per set: combinations × 2m × FRAME
        self._blocks: list[tuple[int, int, int]] = []  # per set: first row, combinations, rows each
        row = 0
        for fs in self.sets:
            pinvs = []
            combos = list(itertools.product(_OFFSETS, repeat=len(fs)))
            for offs in combos:
                a = basis_for(np.array([f * (1 + o) for f, o in zip(fs, offs, strict=True)]), FRAME, RATE)
                stacks.append(np.linalg.qr(a)[0].T)  # 2m orthonormal rows spanning the fit
                pinvs.append(np.linalg.pinv(a))
            self._pinvs.append(np.stack(pinvs))
            self._blocks.append((row, len(combos), 2 * len(fs)))
            row += 2 * len(fs) * len(combos)
        self._stack = np.concatenate(stacks, axis=0).T  # FRAME × rows
        self._continuous_ms: dict[int, int] = {}
        for i in range(len(self.sets)):
            longest = max((on for t in self.tones if self._set_of[t.name] == i
                           for on, _ in t.cadence), default=0)
            self._continuous_ms[i] = max(CONTINUOUS_MS, int(_bounds(longest)[1]) + FRAME_MS
                                         if longest else CONTINUOUS_MS)
        self.reset()

    def reset(self) -> None:
        """Forget all audio and every tone in progress."""
        self._pending = b""
        self._history: deque[_Run] = deque(maxlen=_HISTORY)
        self._serial = 0
        self._current = _Run(None, 0, 0)
        self._candidate: int | None = None
        self._candidate_frames = 0
        self._active: set[str] = set()
        self._run_of: dict[str, int] = {}
        self._changed = False

    # ------------------------------------------------------------------ frame analysis

    def classify(self, frames: np.ndarray) -> list[int | None]:
        """For each 20 ms frame (rows of float samples), the index in :attr:`sets` of the
        frequency set present in it, or None."""
        frames = np.atleast_2d(frames)
        energy = np.einsum("ij,ij->i", frames, frames)
        captured = (frames @ self._stack) ** 2
        out: list[int | None] = [None] * frames.shape[0]
        best = np.full(frames.shape[0], np.inf)
        rows = np.arange(frames.shape[0])
        with np.errstate(divide="ignore", invalid="ignore"):
            for label, (r0, count, each) in enumerate(self._blocks):
                shares = captured[:, r0:r0 + count * each].reshape(-1, count, each).sum(axis=2)
                pick = np.argmax(shares, axis=1)
                residual = 1.0 - shares[rows, pick] / energy
                coef = np.einsum("fij,fj->fi", self._pinvs[label][pick], frames)
                m = each // 2  # basis_for's columns: the cosines, then the sines
                levels = 20 * np.log10(np.hypot(coef[:, :m], coef[:, m:]) / DBM0_PEAK)
                ok = ((energy > 0) & (residual <= MAX_RESIDUAL)
                      & (levels.min(axis=1) >= MIN_LEVEL_DBM0 - _LEVEL_MARGIN_DB)
                      & (levels.max(axis=1) <= MAX_LEVEL_DBM0 + _LEVEL_MARGIN_DB)
                      & (levels.max(axis=1) - levels.min(axis=1) <= MAX_TWIST_DB)
                      & (residual < best))
                for f in np.flatnonzero(ok):
                    out[f] = label
                best = np.where(ok, residual, best)
        return out

    # ------------------------------------------------------------------ runs

    def _frame(self, label: int | None) -> None:
        cur = self._current
        self._changed = False
        if label == cur.label:
            cur.ms += FRAME_MS * (1 + self._candidate_frames)  # a lone odd frame joins the run
            self._candidate, self._candidate_frames = None, 0
            return
        if label == self._candidate:
            self._candidate_frames += 1
        else:
            self._candidate, self._candidate_frames = label, 1
        if self._candidate_frames >= 2 or cur.ms == 0:
            if cur.ms:
                self._history.append(cur)
            self._serial += 1
            self._current = _Run(label, FRAME_MS * self._candidate_frames, self._serial)
            self._candidate, self._candidate_frames = None, 0
            self._changed = True

    # ------------------------------------------------------------------ cadence

    def _fits_cadence(self, t: Tone, runs: list[_Run]) -> bool:
        """Whether ``runs`` (oldest first) are the on/off periods of ``t`` from the start of
        its cadence, each within its tolerance (the last one may still be going)."""
        label = self._set_of[t.name]
        steps = [ms for pair in t.cadence for ms in pair]
        for i, run in enumerate(runs):
            want_on = i % 2 == 0
            if (run.label == label) != want_on or (not want_on and run.label is not None):
                return False
            lo, hi = _bounds(steps[i % len(steps)])
            if not lo <= run.ms <= hi:
                return False
        return True

    def _recognised(self, t: Tone) -> bool:
        label = self._set_of[t.name]
        cur = self._current
        hist = list(self._history)
        if not t.cadence:
            return cur.label == label and cur.ms >= self._continuous_ms[label]
        if t.once:
            n = 2 * len(t.cadence) - 1  # on, off, ..., on: then anything else
            return self._changed and len(hist) >= n and self._fits_cadence(t, hist[-n:])
        cycles = CYCLES.get(t.name, 2)
        n = 2 * len(t.cadence) * cycles
        if len(hist) < n - 1:
            return False
        return self._fits_cadence(t, [*hist[-(n - 1):], cur])

    def _still_going(self, t: Tone) -> bool:
        label = self._set_of[t.name]
        cur = self._current
        if not t.cadence:
            return cur.label == label and cur.serial == self._run_of.get(t.name)
        if cur.label not in (label, None):
            return False
        steps = [ms for pair in t.cadence for ms in pair]
        longest = max(steps[0::2]) if cur.label == label else max(steps[1::2])
        if cur.ms > _bounds(longest)[1]:
            return False
        if self._changed and self._history:
            prev = self._history[-1]
            shortest = min(steps[0::2]) if prev.label == label else min(steps[1::2])
            if prev.ms < _bounds(shortest)[0]:
                return False
        return True

    def _update(self) -> list[str]:
        found = []
        for t in self.tones:
            if t.name in self._active:
                if self._still_going(t):
                    continue
                self._active.discard(t.name)
            if self._recognised(t):
                self._active.add(t.name)
                self._run_of[t.name] = self._current.serial
                found.append(t.name)
        return found

    # ------------------------------------------------------------------ input

    def feed(self, pcm: bytes | bytearray | memoryview | np.ndarray) -> list[str]:
        """Analyse more audio; the names of the tones recognised in it, in order."""
        if isinstance(pcm, np.ndarray):
            data = pcm_bytes(samples(pcm))
        elif isinstance(pcm, (bytes, bytearray, memoryview)):
            data = bytes(pcm)
        else:
            raise ValueError(f"PCM audio must be bytes or an int16 array, not {type(pcm).__name__}")
        data = self._pending + data
        whole = len(data) // (2 * FRAME) * (2 * FRAME)
        self._pending = data[whole:]
        if not whole:
            return []
        frames = np.frombuffer(data[:whole], dtype="<i2").reshape(-1, FRAME)
        found: list[str] = []
        for start in range(0, frames.shape[0], _BATCH):  # bounds the working memory
            for label in self.classify(frames[start:start + _BATCH].astype(np.float64)):
                self._frame(label)
                found.extend(self._update())
        return found


def detect(profile: str, pcm: bytes | np.ndarray) -> list[str]:
    """The tones a fresh :class:`ToneDetector` recognises in ``pcm``."""
    return ToneDetector(profile).feed(pcm)
