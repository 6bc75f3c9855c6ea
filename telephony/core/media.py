"""Audio of the voice-mail call flow.  Pure: no trio, socket, time or os.

The audio format everywhere in the service is the loopback port's: **8 kHz, 16-bit signed
little-endian, mono PCM** ("PCM" below means bytes in that format).  Messages, greetings
and prompts travel as WAV files (RIFF) holding exactly that format.

* :func:`wav_bytes` / :func:`pcm_of` convert between PCM and WAV.  ``pcm_of`` checks the
  format and refuses anything else (other rates, widths, channel counts, compressed data, a
  truncated data chunk, a file over 64 MiB) with a :class:`ValueError` that says why.
* :func:`tone`, :func:`silence`, :func:`rms`, :func:`duration`, :func:`frames` are small
  helpers over PCM.  Levels are computed with numpy: the sum of squares exactly in 64-bit
  integers, then one division and one square root, so :func:`rms` gives the very float the
  pure-Python sum gave; the recorder computes the levels of every whole frame of a chunk at once
  (a chunk of one frame, a port's 20 ms, gets its one level without the array pass).
* :class:`SilenceDetector` (frames in, "the caller has stopped talking" out) and
  :class:`Recorder` (audio in, "the recording is over: silence | max" out) are sans-IO.
* The prompts: a voice-mail system without recorded prompts still needs something to play.
  Every prompt here is a **generated tone pattern** (there is no speech synthesis):

  ====================  ===============================================================
  ``standard_greeting``  played when a subscriber has no greeting of their own: two rising
                         tones, 440 Hz then 550 Hz, 0.4 s each with a 0.1 s gap (0.9 s)
  ``opening_greeting``   for callers the system cannot place (no subscriber): three rising
                         tones 523/659/784 Hz, 0.3 s each with 0.1 s gaps (1.1 s)
  ``beep``               before a recording: 1 kHz for 0.25 s
  ``goodbye``            before the system hangs up: 660 Hz then 440 Hz, 0.3 s each
  ``end_of_messages``    after the last new message: 400 Hz for 0.5 s
  ``transfer``           "please hold" before a transfer to the operator: three 784 Hz pips
  ====================  ===============================================================

  "You have N new messages" is :func:`messages_prompt`: a 0.2 s 350 Hz lead-in, then one
  0.12 s 880 Hz pip per message (at most 20 pips), or one 0.4 s 300 Hz tone for none.
  Deployments replace the fixed prompts with recordings (``CallFlow(prompts=...)``).
"""
from __future__ import annotations

import io
import math
import struct
import sys
import wave
from array import array
from collections.abc import Iterator
from typing import Final

import numpy as np

RATE: Final = 8000  # samples per second
SAMPLE_WIDTH: Final = 2  # bytes per sample (16-bit signed, little-endian)
CHANNELS: Final = 1
BYTES_PER_SECOND: Final = RATE * SAMPLE_WIDTH * CHANNELS
FRAME_MS: Final = 20
FRAME_BYTES: Final = BYTES_PER_SECOND * FRAME_MS // 1000  # 320: one 20 ms frame
MAX_WAV_BYTES: Final = 64 * 1024 * 1024  # the largest WAV (or PCM) this module accepts
MAX_SECONDS: Final = (MAX_WAV_BYTES - 44) // BYTES_PER_SECOND  # longest generated audio
SILENCE_THRESHOLD: Final = 200.0  # RMS below this is silence (about -44 dBFS)
FULL_SCALE: Final = 32767

_BIG_ENDIAN = sys.byteorder == "big"
_INT16_LE = np.dtype("<i2")
_WAVE_FORMAT_PCM = 0x0001
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE


# ============================================================================ WAV <-> PCM


def _check_pcm(pcm: object, what: str = "PCM audio") -> bytes:
    if not isinstance(pcm, (bytes, bytearray, memoryview)):
        raise ValueError(f"{what} must be bytes, not {type(pcm).__name__}")
    pcm = bytes(pcm)
    if len(pcm) % SAMPLE_WIDTH:
        raise ValueError(f"{what} must hold whole 16-bit samples: {len(pcm)} bytes is odd")
    return pcm


def wav_bytes(pcm: bytes) -> bytes:
    """A WAV file (RIFF, 8 kHz 16-bit mono PCM) holding ``pcm``."""
    pcm = _check_pcm(pcm)
    if len(pcm) + 44 > MAX_WAV_BYTES:
        raise ValueError(f"{len(pcm)} bytes of audio is over the {MAX_WAV_BYTES}-byte limit")
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(CHANNELS)
        w.setsampwidth(SAMPLE_WIDTH)
        w.setframerate(RATE)
        w.writeframes(pcm)
    return out.getvalue()


def pcm_of(wav: bytes) -> bytes:
    """The PCM of a WAV file in the service's format.  Raises ValueError saying what is wrong
    (not a WAV file, another format, truncated, over 64 MiB).  The RIFF chunks are walked here
    with ``struct`` (bounded by the file's length), not with the ``wave`` module, whose reader
    lets odd errors (RuntimeError, EOFError) out of damaged files."""
    if not isinstance(wav, (bytes, bytearray, memoryview)):
        raise ValueError(f"a WAV file must be bytes, not {type(wav).__name__}")
    wav = bytes(wav)
    if len(wav) > MAX_WAV_BYTES:
        raise ValueError(f"WAV file of {len(wav)} bytes is over the {MAX_WAV_BYTES}-byte limit")
    if len(wav) < 12 or wav[:4] != b"RIFF" or wav[8:12] != b"WAVE":
        raise ValueError("not a WAV file: no RIFF/WAVE header")
    fmt: tuple[int, int, int, int, int] | None = None
    pos = 12
    while pos + 8 <= len(wav):
        cid, size = struct.unpack_from("<4sI", wav, pos)
        pos += 8
        body = wav[pos:pos + size]
        if cid == b"fmt ":
            if len(body) < 16:
                raise ValueError(f"bad WAV file: its fmt chunk has {len(body)} bytes, not 16")
            tag, channels, rate, _, align, bits = struct.unpack_from("<HHIIHH", body)
            if tag == _WAVE_FORMAT_EXTENSIBLE and len(body) >= 26:
                tag = struct.unpack_from("<H", body, 24)[0]  # the sub-format GUID's first field
            fmt = (tag, channels, rate, align, bits)
        elif cid == b"data":
            if fmt is None:
                raise ValueError("bad WAV file: its data chunk comes before the fmt chunk")
            tag, channels, rate, align, bits = fmt
            if (tag, channels, rate, bits, align) != (_WAVE_FORMAT_PCM, CHANNELS, RATE,
                                                      8 * SAMPLE_WIDTH, SAMPLE_WIDTH):
                raise ValueError(
                    f"WAV format is {rate} Hz, {bits}-bit, {channels} channel(s), format tag "
                    f"{tag:#x}; only {RATE} Hz 16-bit mono uncompressed PCM is accepted")
            if len(body) < size:
                raise ValueError(f"truncated WAV file: its header says {size // 2} samples, "
                                 f"the data chunk holds {len(body) // 2}")
            if size % SAMPLE_WIDTH:
                raise ValueError(f"bad WAV file: a data chunk of {size} bytes is not whole "
                                 "16-bit samples")
            return body
        pos += size + (size & 1)  # chunks are padded to an even length
    raise ValueError("bad WAV file: no " + ("data" if fmt else "fmt") + " chunk")


def wav_duration(wav: bytes) -> float:
    """Seconds of audio in a WAV file (checked like :func:`pcm_of`)."""
    return duration(pcm_of(wav))


# ============================================================================ PCM helpers


def duration(pcm: bytes) -> float:
    """Seconds of audio in ``pcm``."""
    return len(pcm) / BYTES_PER_SECOND


def byte_count(seconds: float) -> int:
    """Bytes of PCM in ``seconds`` of audio (whole samples)."""
    _check_seconds(seconds)
    return round(seconds * RATE) * SAMPLE_WIDTH


def frames(pcm: bytes, size: int = FRAME_BYTES) -> Iterator[bytes]:
    """``pcm`` in pieces of ``size`` bytes (the last may be shorter)."""
    if size < SAMPLE_WIDTH or size % SAMPLE_WIDTH:
        raise ValueError(f"frame size must be a positive even number of bytes, not {size}")
    for i in range(0, len(pcm), size):
        yield pcm[i:i + size]


def _to_bytes(a: array) -> bytes:
    if _BIG_ENDIAN:
        a = array("h", a)
        a.byteswap()
    return a.tobytes()


def rms(frame: bytes) -> float:
    """Root mean square of the samples in ``frame`` (0.0 for no samples)."""
    frame = _check_pcm(frame, "a frame")
    return _level(frame) if frame else 0.0  # the sum of squares is exact in int64


def _level(frame: bytes) -> float:
    """:func:`rms` of a checked, non-empty frame."""
    x = np.frombuffer(frame, dtype=_INT16_LE).astype(np.int64)
    return math.sqrt(int(x @ x) / len(x))


def _frame_levels(pcm: bytes) -> list[float]:
    """The RMS of each whole :data:`FRAME_BYTES` frame of ``pcm``, the same floats as
    :func:`rms` of each (a frame's sum of squares is below 2**38: exact as a float)."""
    n = len(pcm) // FRAME_BYTES
    x = np.frombuffer(pcm, dtype=_INT16_LE, count=n * FRAME_BYTES // SAMPLE_WIDTH)
    x = x.astype(np.int64).reshape(n, FRAME_BYTES // SAMPLE_WIDTH)
    return np.sqrt(np.einsum("ij,ij->i", x, x) / x.shape[1]).tolist()


def _check_seconds(seconds: float) -> None:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) \
            or not math.isfinite(seconds) or not 0 <= seconds <= MAX_SECONDS:
        raise ValueError(f"seconds must be a number from 0 to {MAX_SECONDS}, got {seconds!r:.40}")


def silence(seconds: float) -> bytes:
    """``seconds`` of digital silence."""
    return b"\x00" * byte_count(seconds)


def tone(freq: float, seconds: float, amplitude: float = 0.3) -> bytes:
    """A sine tone of ``freq`` Hz (0 < freq < 4000) lasting ``seconds``; ``amplitude`` is a
    fraction of full scale (0..1)."""
    for name, value, lo, hi in (("freq", freq, 0.0, RATE / 2), ("amplitude", amplitude, 0.0, 1.0)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or not lo <= value <= hi:
            raise ValueError(f"{name} must be a number from {lo:g} to {hi:g}, got {value!r:.40}")
    if not 0 < freq < RATE / 2:
        raise ValueError(f"freq must be above 0 and below {RATE // 2} Hz, got {freq!r}")
    n = byte_count(seconds) // SAMPLE_WIDTH
    peak = amplitude * FULL_SCALE
    step = 2 * math.pi * freq / RATE
    return _to_bytes(array("h", (round(peak * math.sin(step * i)) for i in range(n))))


# ============================================================================ silence


class SilenceDetector:
    """Says when ``seconds`` of silence have followed speech.  Sans-IO: :meth:`feed` it frames
    (any whole number of samples; 20 ms frames are usual).  A frame whose RMS is at least
    ``threshold`` is speech; silence before the first speech never counts."""

    def __init__(self, threshold: float = SILENCE_THRESHOLD, seconds: float = 3.0) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
                or not math.isfinite(threshold) or threshold < 0:
            raise ValueError(f"threshold must be a number >= 0, got {threshold!r:.40}")
        _check_seconds(seconds)
        if seconds <= 0:
            raise ValueError(f"seconds must be above 0, got {seconds!r}")
        self.threshold = float(threshold)
        self.seconds = seconds
        self._needed = max(SAMPLE_WIDTH, byte_count(seconds))
        self.speech_started = False
        self.silent_bytes = 0  # bytes of silence since the last speech frame
        self.done = False

    def feed(self, frame: bytes) -> bool:
        """Take the next frame; True once the silence after speech is long enough (and from
        then on)."""
        frame = _check_pcm(frame, "a frame")
        if self.done or not frame:
            return self.done
        return self._judge(rms(frame), len(frame))

    def _judge(self, level: float, size: int) -> bool:
        """:meth:`feed` of a checked, non-empty frame of ``size`` bytes whose RMS is ``level``."""
        if self.done:
            return True
        if level >= self.threshold:
            self.speech_started = True
            self.silent_bytes = 0
        elif self.speech_started:
            self.silent_bytes += size
            if self.silent_bytes >= self._needed:
                self.done = True
        return self.done


class Recorder:
    """One recording, sans-IO.  :meth:`feed` it the caller's audio in pieces of any (even)
    size; it returns the end reason once the recording is over: ``"max"`` when
    ``max_seconds`` of audio are in (the audio is cut to exactly that), ``"silence"`` when
    ``silence_seconds`` of silence followed speech (that trailing silence is cut off).  The
    recording's outcome does not depend on how the audio was split into pieces.
    :meth:`finish` ends it early (hang-up, DTMF, timeout) and returns the PCM."""

    def __init__(self, *, max_seconds: float, silence_seconds: float,
                 threshold: float = SILENCE_THRESHOLD) -> None:
        for name, v in (("max_seconds", max_seconds), ("silence_seconds", silence_seconds)):
            _check_seconds(v)
            if v <= 0:
                raise ValueError(f"{name} must be above 0, got {v!r}")
        self.max_bytes = max(SAMPLE_WIDTH, byte_count(max_seconds))
        self.detector = SilenceDetector(threshold, silence_seconds)
        self._buf = bytearray()
        self._pending = bytearray()  # less than one frame, not yet judged
        self.reason: str | None = None

    @property
    def speech_started(self) -> bool:
        return self.detector.speech_started

    @property
    def pcm(self) -> bytes:
        return bytes(self._buf)

    def feed(self, pcm: bytes) -> str | None:
        pcm = _check_pcm(pcm)
        if self.reason is not None:
            return self.reason
        if self._pending:  # a partial frame from before goes first
            self._pending += pcm
            pcm = bytes(self._pending)
            self._pending.clear()
        n = len(pcm) // FRAME_BYTES
        if n == 1:  # one frame (a port's 20 ms): its level alone is cheaper than the array pass
            levels = [_level(pcm[:FRAME_BYTES])]
        else:       # every whole frame's level in one numpy pass
            levels = _frame_levels(pcm) if n else []
        used = 0
        for level in levels:
            self._take(pcm[used:used + FRAME_BYTES], level)
            used += FRAME_BYTES
            if self.reason is not None:
                break
        self._pending += pcm[used:]
        return self.reason

    def _take(self, frame: bytes, level: float) -> None:
        room = self.max_bytes - len(self._buf)
        if room < len(frame):  # the last frame before max: judged on what is kept of it
            frame = frame[:room]
            level = rms(frame)
        self._buf += frame
        if self.detector._judge(level, len(frame)):
            del self._buf[len(self._buf) - self.detector.silent_bytes:]
            self.reason = "silence"
        elif len(self._buf) >= self.max_bytes:
            self.reason = "max"

    def finish(self) -> bytes:
        """Stop (if not already over) and return the recording's PCM."""
        if self.reason is None and self._pending:
            self._buf += self._pending[:self.max_bytes - len(self._buf)]
        self._pending.clear()
        return self.pcm


# ============================================================================ prompts


def _seq(*parts: tuple[float, float]) -> bytes:
    """Tones and gaps: (freq, seconds); freq 0 is silence."""
    return b"".join(silence(s) if f == 0 else tone(f, s) for f, s in parts)


_PROMPTS: Final = {
    "standard_greeting": ((440, 0.4), (0, 0.1), (550, 0.4)),
    "opening_greeting": ((523, 0.3), (0, 0.1), (659, 0.3), (0, 0.1), (784, 0.3)),
    "beep": ((1000, 0.25),),
    "goodbye": ((660, 0.3), (440, 0.3)),
    "end_of_messages": ((400, 0.5),),
    "transfer": ((784, 0.2), (0, 0.1), (784, 0.2), (0, 0.1), (784, 0.2)),
}
#: The names of the fixed prompts (see the module docstring).
PROMPT_NAMES: Final = tuple(_PROMPTS)
MAX_PIPS: Final = 20


def prompt_pcm(name: str) -> bytes:
    """The generated PCM of the fixed prompt ``name`` (one of :data:`PROMPT_NAMES`)."""
    try:
        parts = _PROMPTS[name]
    except KeyError:
        raise ValueError(f"no prompt {name!r:.40}; known: {', '.join(PROMPT_NAMES)}") from None
    return _seq(*parts)


def default_prompts() -> dict[str, bytes]:
    """Every fixed prompt as WAV bytes, by name."""
    return {name: wav_bytes(prompt_pcm(name)) for name in PROMPT_NAMES}


def standard_greeting() -> bytes:
    """The standard greeting (WAV) played when a subscriber has none of their own."""
    return wav_bytes(prompt_pcm("standard_greeting"))


def messages_prompt(count: int) -> bytes:
    """"You have ``count`` new messages" as WAV: a lead-in then one pip per message (at most
    :data:`MAX_PIPS`), or a single low tone for none."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be an integer >= 0, got {count!r:.40}")
    if count == 0:
        return wav_bytes(_seq((300, 0.4)))
    pips = ((880, 0.12), (0, 0.12)) * min(count, MAX_PIPS)
    return wav_bytes(_seq((350, 0.2), (0, 0.15), *pips))
