"""A deterministic corpus of DTMF test signals, for the tests and the media benchmark.

Every :class:`Case` is 8 kHz 16-bit PCM with the digits a receiver must report
(``expected_digits``), whether the signal is within the acceptance limits (``in_spec``: the
digits must be decoded) or beyond them (``in_spec=False``: nothing may be decoded; speech
counts here), and whether it is ``clean`` (only generated tones and digital silence: no
noise, no speech, no codec).  Tones come from :func:`telephony.core.dtmf.generate` and
:func:`telephony.core.dsp.tone`; levels are per tone in dBm0 unless a name says ``total``.

The limits are ITU-T Q.24's as spandsp's receiver applies them with its default parameters;
where spandsp's behaviour and the textbook limit differ the corpus follows spandsp (the
reference) and says so (docs/analog.md, "DTMF"):

* frequency: ±1.5 % accepted in either group (both groups off at once: ±1 %, because
  spandsp starts dropping digits when both are 1.5 % off: a 1633 Hz tone 1.5 % off
  loses 1.5 dB in the 102-sample Goertzel, and with the low tone's loss the pair falls below
  its -0.85 dB share of the block's power); ±3.5 % rejected in the high group and in both
  groups together.  spandsp still accepts the **low** group alone at +3.5 % on 7 and *, and at
  -3.5 % on 1, 2, 3, A; those digits are left out of the low-group 3.5 % cases, and a ±4.5 %
  low-group case covers all sixteen.
* twist: spandsp's limits are 8 dB normal / 4 dB reverse *as measured on a 102-sample block*,
  where a pair's measured ratio differs from the generated one by up to about 1.5 dB, so at
  exactly 8 dB or 4 dB only some digits pass.  The corpus accepts at 6 dB normal and 3 dB
  reverse (all digits pass) and rejects at 10 and 12 dB normal, 6 and 8 dB reverse.
* level: accepted from 0 to -26 dBm0 **total** (each tone 3 dB less); spandsp's floor is
  -42 dBm0 per tone, so the rejected cases are at -48 and -60 dBm0 per tone (-35 dBm0 per
  tone is still decoded by the reference and is not a rejection case).
* duration 40 ms accepted, 20 ms rejected (at several alignments against the 102-sample
  blocks); a 40 ms pause separates two equal digits.
* white noise at 15 dB SNR (the pair's power over the noise's whole-band power) accepted.
* talk-off: speech from espeak-ng (several voices, rates and pitches), resampled from its
  22,050 Hz to 8 kHz with :func:`telephony.core.dsp.resample`, must give no digit.

:func:`speech` caches the synthesised speech under the system's temporary directory
(``vmha-dtmf-speech/``), never in the repository.
"""
from __future__ import annotations

import functools
import hashlib
import io
import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from telephony.core import dsp, dtmf, g711

LEAD_MS = 30  # silence before the first digit of every tone case
SPEECH_LEVEL_DBM0 = -12.0  # speech is scaled to this RMS level (a loud talker)
TALKOFF_SECONDS = 180  # speech in the corpus (in pieces of TALKOFF_PIECE_SECONDS)
TALKOFF_PIECE_SECONDS = 30
ESPEAK_RATE = 22050
CACHE_DIR = Path(tempfile.gettempdir()) / "vmha-dtmf-speech"

SENTENCES = (
    "Please leave your message after the tone. When you have finished, hang up or press the pound key.",
    "You have three new messages and two saved messages. To listen to your messages, press one.",
    "The quarterly figures are better than expected, but the shipping costs went up again in March.",
    "I'm calling about the appointment on Thursday at half past ten; could you call me back before noon?",
    "Seven, eight, nine, zero. Four, five, six. One, two, three, star, pound.",
    "She sells sea shells by the sea shore, and the shells she sells are surely sea shells.",
    "Hello, this is the front desk. Your car is ready and the keys are waiting at reception.",
    "Whistling, humming and singing are the classic causes of false digits in a voice channel.",
    "Oh, ah, ee, oo: long vowels with steady pitch stress a tone detector more than consonants do.",
    "The meeting has been moved to room twelve on the fourth floor; bring the signed contract.",
    "Good morning! It's a lovely day; the weather report says sunshine until the weekend.",
    "Press nine to delete this message, seven to save it, or star to return to the main menu.",
)
#: (voice, words per minute, pitch 0..99): men, women, fast and slow, high and low pitch
VOICES = (
    ("en-us", 160, 50), ("en-us+f3", 150, 70), ("en-gb", 175, 40), ("en-us+m3", 140, 30),
    ("en-gb+f2", 190, 85), ("en-us+f4", 120, 95), ("en-gb-scotland", 165, 55), ("en-us+m7", 200, 20),
)


@dataclass(frozen=True)
class Case:
    name: str
    pcm: bytes
    expected_digits: str
    in_spec: bool  # within the acceptance limits: the digits must be decoded
    clean: bool  # nothing but generated tones and digital silence


def _lead() -> bytes:
    return dsp.silence_ms(LEAD_MS)


def tone_pairs(digits: str, *, low_dev: float = 0.0, high_dev: float = 0.0, on_ms: float = 60,
           off_ms: float = 60, low_dbm0: float = -10.0, high_dbm0: float = -10.0) -> bytes:
    """Digits with their tones off-frequency (relative deviations) and at given levels."""
    parts = [_lead()]
    for d in digits:
        low, high = dtmf.FREQS[d]
        parts.append(dsp.tone((low * (1 + low_dev), high * (1 + high_dev)), on_ms, (low_dbm0, high_dbm0)))
        parts.append(dsp.silence_ms(off_ms))
    return b"".join(parts)


def _with_noise(pcm: bytes, snr_db: float, signal_dbm0: float, seed: int) -> bytes:
    x = dsp.samples(pcm).astype(np.float64)
    noise = dsp.samples(dsp.white_noise(len(x) / 8, signal_dbm0 - snr_db, seed)).astype(np.float64)
    return dsp.pcm_bytes(x + noise)


def tone_cases() -> list[Case]:
    """Every case made of tones (no speech): quick to build, needs no external program."""
    all16 = dtmf.DIGITS
    cases: list[Case] = []

    def add(name: str, pcm: bytes, digits: str, in_spec: bool, clean: bool = True) -> None:
        cases.append(Case(name, pcm, digits if in_spec else "", in_spec, clean))

    # every digit alone, and all in a row, at the default -10 dBm0 per tone
    for d in all16:
        add(f"clean_{d}", _lead() + dtmf.generate(d), d, True)
    add("clean_all", _lead() + dtmf.generate(all16), all16, True)
    # through the G.711 codecs the boards use
    for law in g711.LAWS:
        add(f"g711_{law}_all", g711.decode(law, g711.encode(law, _lead() + dtmf.generate(all16))),
            all16, True, clean=False)

    # frequency deviation, per group and sign
    for sign, label in ((1, "+"), (-1, "-")):
        add(f"freq_low_{label}1.5%", tone_pairs(all16, low_dev=sign * 0.015), all16, True)
        add(f"freq_high_{label}1.5%", tone_pairs(all16, high_dev=sign * 0.015), all16, True)
        # both groups off together: spandsp's -0.85 dB share-of-power test drops digits from 1.5 %
        one = sign * 0.01
        add(f"freq_both_{label}1%", tone_pairs(all16, low_dev=one, high_dev=one), all16, True)
        add(f"freq_split_{label}1%", tone_pairs(all16, low_dev=one, high_dev=-one), all16, True)
        add(f"freq_high_{label}3.5%", tone_pairs(all16, high_dev=sign * 0.035), all16, False)
        off = sign * 0.035
        add(f"freq_both_{label}3.5%", tone_pairs(all16, low_dev=off, high_dev=off), all16, False)
        add(f"freq_split_{label}3.5%", tone_pairs(all16, low_dev=off, high_dev=-off), all16, False)
        # spandsp accepts the low group alone at +3.5 % on 7 and *, at -3.5 % on 1 2 3 A
        spared = "7*" if sign > 0 else "123A"
        some = "".join(d for d in all16 if d not in spared)
        add(f"freq_low_{label}3.5%_except_{spared}", tone_pairs(some, low_dev=sign * 0.035), some, False)
        add(f"freq_low_{label}4.5%", tone_pairs(all16, low_dev=sign * 0.045), all16, False)

    # twist: low group stronger (normal) and high group stronger (reverse)
    for twist, ok in ((6.0, True), (10.0, False), (12.0, False)):
        add(f"twist_normal_{twist:g}dB", _lead() + dtmf.generate(all16, level_dbm0=-6, twist_db=twist),
            all16, ok)
    for twist, ok in ((3.0, True), (6.0, False), (8.0, False)):
        add(f"twist_reverse_{twist:g}dB",
            _lead() + dtmf.generate(all16, level_dbm0=-10 - twist, twist_db=-twist), all16, ok)

    # duration, at several alignments against the detector's 102-sample blocks
    for offset in (0, 17, 51, 88):
        pad = bytes(2 * offset)
        add(f"duration_40ms_offset{offset}", pad + _lead() + dtmf.generate(all16, on_ms=40, off_ms=60),
            all16, True)
        add(f"duration_20ms_offset{offset}", pad + _lead() + dtmf.generate(all16, on_ms=20, off_ms=60),
            all16, False)

    # a 40 ms pause separates digits, equal ones too
    for offset, seq in ((0, "11"), (33, "555"), (70, "0000"), (5, "##**"), (95, "123A456B789C*0#D")):
        add(f"pause_40ms_{seq}_offset{offset}",
            bytes(2 * offset) + _lead() + dtmf.generate(seq, on_ms=40, off_ms=40), seq, True)

    # level: the pair's total level from 0 to -26 dBm0 (each tone 3.01 dB lower)
    for total in (0, -6, -12, -18, -26):
        add(f"level_total_{total}dBm0", _lead() + dtmf.generate(all16, level_dbm0=total - 3.01), all16, True)
    for per_tone in (-48, -60):
        add(f"level_{per_tone}dBm0_per_tone", _lead() + dtmf.generate(all16, level_dbm0=per_tone),
            all16, False)

    # white noise at 15 dB SNR: the pair (-10 dBm0 per tone, -6.99 dBm0 total) over the noise
    for seed in (1, 2, 3, 4):
        clean = _lead() + dtmf.generate(all16, on_ms=50, off_ms=50)
        add(f"noise_15dB_seed{seed}", _with_noise(clean, 15.0, -10 + 3.01, seed), all16, True, clean=False)
    return cases


# ============================================================================ speech


@functools.cache
def _espeak_version() -> tuple[str, str]:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed (Debian package espeak-ng); the talk-off "
                           "corpus needs it")
    done = subprocess.run([exe, "--version"], capture_output=True, timeout=30, check=False)
    return exe, done.stdout.decode(errors="replace").strip()


def _espeak(text: str, voice: str, wpm: int, pitch: int) -> bytes:
    """espeak-ng's speech for ``text`` as 8 kHz PCM (cached per espeak-ng version)."""
    exe, version = _espeak_version()
    key = hashlib.sha256(repr((text, voice, wpm, pitch, ESPEAK_RATE, version)).encode()).hexdigest()[:20]
    cached = CACHE_DIR / f"{key}.pcm"
    if cached.exists():
        return cached.read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "speech.wav"
        done = subprocess.run([exe, "-v", voice, "-s", str(wpm), "-p", str(pitch), "-w", str(out), text],
                              capture_output=True, timeout=120, check=False)
        if done.returncode != 0 or not out.exists():
            why = done.stderr.decode(errors="replace")
            raise RuntimeError(f"espeak-ng failed ({done.returncode}): {why}")
        with wave.open(io.BytesIO(out.read_bytes())) as w:
            if (w.getnchannels(), w.getsampwidth(), w.getframerate()) != (1, 2, ESPEAK_RATE):
                raise RuntimeError(f"espeak-ng wrote {w.getparams()}, expected 22050 Hz 16-bit mono")
            raw = w.readframes(w.getnframes())
    pcm = dsp.resample(raw, ESPEAK_RATE, dsp.RATE)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    part = cached.with_suffix(f".{key}.tmp")
    part.write_bytes(pcm)
    part.replace(cached)
    return pcm


def speech(seconds: float) -> bytes:
    """``seconds`` of varied synthetic speech (8 kHz PCM), deterministic: the sentences of
    :data:`SENTENCES` spoken in turn by the voices of :data:`VOICES`, each scaled to
    :data:`SPEECH_LEVEL_DBM0`, repeated as needed, cut to length."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= 3600:
        raise ValueError(f"seconds must be from 0 to 3600, got {seconds!r:.40}")
    want = int(round(seconds * dsp.RATE))
    parts: list[np.ndarray] = []
    have = 0
    i = 0
    while have < want:
        text = SENTENCES[i % len(SENTENCES)]
        voice, wpm, pitch = VOICES[i % len(VOICES)]
        x = dsp.samples(_espeak(text, voice, wpm, pitch)).astype(np.float64)
        level = dsp.rms(dsp.pcm_bytes(x))
        if level > 0:
            x *= dsp.DBM0_RMS * 10 ** (SPEECH_LEVEL_DBM0 / 20) / level
        parts.append(x)
        parts.append(np.zeros(dsp.RATE // 5))  # 200 ms between sentences
        have += x.size + dsp.RATE // 5
        i += 1
    out = np.concatenate(parts)[:want] if parts else np.zeros(0)
    return dsp.pcm_bytes(out)


def talkoff_cases(seconds: float = TALKOFF_SECONDS) -> list[Case]:
    """Speech that must give no digit, in pieces of :data:`TALKOFF_PIECE_SECONDS`."""
    pcm = speech(seconds)
    step = TALKOFF_PIECE_SECONDS * dsp.RATE * 2
    return [Case(f"talkoff_{i // step}", pcm[i:i + step], "", False, False) for i in range(0, len(pcm), step)]


def build_corpus(talkoff_seconds: float = TALKOFF_SECONDS) -> list[Case]:
    """The whole corpus: :func:`tone_cases` then :func:`talkoff_cases`."""
    return tone_cases() + talkoff_cases(talkoff_seconds)
