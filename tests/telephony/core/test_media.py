"""Audio helpers: WAV <-> PCM with format checks (and a fuzz), tones, the silence detector
and the recorder (model-checked with Hypothesis), the generated prompts."""
from __future__ import annotations

import io
import math
import struct
import wave

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telephony.core import media

FAST = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

LOUD = media.tone(440, 0.02)  # one 20 ms frame of speech
QUIET = media.silence(0.02)


def other_wav(*, rate=8000, width=2, channels=1, frames=b"\x00" * 40) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(frames)
    return out.getvalue()


# ============================================================================ WAV <-> PCM


@FAST
@given(st.binary(max_size=4000).map(lambda b: b[: len(b) // 2 * 2]))
def test_wav_round_trip(pcm):
    wav = media.wav_bytes(pcm)
    assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE" and len(wav) == 44 + len(pcm)
    assert media.pcm_of(wav) == pcm
    assert media.wav_duration(wav) == len(pcm) / 16000


def test_wav_is_8khz_16bit_mono():
    with wave.open(io.BytesIO(media.wav_bytes(media.tone(440, 0.1))), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == \
            (1, 2, 8000, 800)


@pytest.mark.parametrize("kw", [dict(rate=16000), dict(rate=44100, channels=2),
                                dict(width=1), dict(width=3), dict(channels=2)])
def test_pcm_of_refuses_other_formats(kw):
    with pytest.raises(ValueError, match="only 8000 Hz 16-bit mono uncompressed PCM"):
        media.pcm_of(other_wav(**kw))


@pytest.mark.parametrize("data,fragment", [
    (b"", "no RIFF/WAVE header"),
    (b"RIFX" + b"\x00" * 40, "no RIFF/WAVE header"),
    (b"RIFF\x00\x00\x00\x00AVI LIST", "no RIFF/WAVE header"),
    (b"RIFF\x04\x00\x00\x00WAVE", "bad WAV file"),
    (media.wav_bytes(b"\x01\x00" * 100)[:-10], "truncated WAV file"),
    (media.wav_bytes(b"\x01\x00" * 100)[:30], "bad WAV file"),
    ("RIFF....WAVE", "must be bytes"),
    (None, "must be bytes"),
])
def test_pcm_of_refuses_bad_files_clearly(data, fragment):
    with pytest.raises(ValueError, match=fragment):
        media.pcm_of(data)


def test_size_limits():
    with pytest.raises(ValueError, match="over the 67108864-byte limit"):
        media.pcm_of(b"RIFF" + bytes(media.MAX_WAV_BYTES))
    with pytest.raises(ValueError, match="over the 67108864-byte limit"):
        media.wav_bytes(bytes(media.MAX_WAV_BYTES - 42))
    with pytest.raises(ValueError, match="odd"):
        media.wav_bytes(b"\x00" * 3)
    with pytest.raises(ValueError, match="must be bytes"):
        media.wav_bytes("pcm")


@FAST
@given(st.binary(max_size=300))
def test_pcm_of_fuzz_only_value_errors(data):
    for blob in (data, b"RIFF" + data[:4] + b"WAVE" + data[4:]):
        try:
            pcm = media.pcm_of(blob)
        except ValueError:
            continue
        assert len(pcm) % 2 == 0


@FAST
@given(st.binary(min_size=2, max_size=200).map(lambda b: b[: len(b) // 2 * 2]),
       st.lists(st.tuples(st.integers(0, 300), st.integers(0, 255)), max_size=8),
       st.integers(0, 300))
def test_pcm_of_fuzz_mutated_wav(pcm, flips, cut):
    """Any byte of a valid file changed, or the file cut: a clear error or valid PCM."""
    wav = bytearray(media.wav_bytes(pcm))
    for pos, value in flips:
        if pos < len(wav):
            wav[pos] = value
    try:
        out = media.pcm_of(bytes(wav[: len(wav) - cut]))
    except ValueError as exc:
        assert str(exc)
    else:
        assert len(out) % 2 == 0 and len(out) <= len(wav)


# ============================================================================ PCM helpers


@pytest.mark.parametrize("freq,seconds,amp", [(440, 1.0, 0.3), (1000, 0.5, 1.0), (50, 0.2, 0.1)])
def test_tone(freq, seconds, amp):
    pcm = media.tone(freq, seconds, amp)
    assert len(pcm) == round(seconds * 8000) * 2 and media.duration(pcm) == seconds
    samples = struct.unpack(f"<{len(pcm) // 2}h", pcm)
    assert max(abs(s) for s in samples) <= round(amp * 32767)
    assert media.rms(pcm) == pytest.approx(amp * 32767 / math.sqrt(2), rel=0.01)
    crossings = sum(1 for a, b in zip(samples, samples[1:], strict=False) if (a < 0) != (b < 0))
    assert crossings == pytest.approx(2 * freq * seconds, abs=2)


def test_tone_is_little_endian():
    pcm = media.tone(2000, 0.001, 0.5)  # samples 0, peak, 0, -peak, ...
    assert pcm[:4] == b"\x00\x00" + struct.pack("<h", round(0.5 * 32767))


@pytest.mark.parametrize("args", [(0, 1), (4000, 1), (-5, 1), (float("nan"), 1), (440, -1),
                                  (440, float("inf")), (440, 1, 1.5), (440, 1, -0.1),
                                  (True, 1), ("440", 1), (440, media.MAX_SECONDS + 1)])
def test_tone_refuses_bad_arguments(args):
    with pytest.raises(ValueError):
        media.tone(*args)


def test_silence_rms_duration_frames():
    assert media.silence(0.5) == b"\x00" * 8000 and media.rms(media.silence(0.1)) == 0.0
    assert media.rms(b"") == 0.0
    assert media.rms(struct.pack("<2h", 3, -4)) == pytest.approx(math.sqrt(12.5))
    with pytest.raises(ValueError, match="odd"):
        media.rms(b"\x00")
    with pytest.raises(ValueError):
        media.silence(-1)
    assert media.byte_count(0.02) == media.FRAME_BYTES == 320
    assert list(media.frames(b"a" * 700)) == [b"a" * 320, b"a" * 320, b"a" * 60]
    with pytest.raises(ValueError):
        list(media.frames(b"ab", 3))


# ============================================================================ silence


def test_silence_detector_needs_speech_first():
    d = media.SilenceDetector(seconds=0.1)
    assert not any(d.feed(QUIET) for _ in range(100))
    assert not d.speech_started
    assert d.feed(LOUD) is False and d.speech_started
    assert [d.feed(QUIET) for _ in range(5)] == [False] * 4 + [True]
    assert d.feed(LOUD) is True  # done is final


def test_silence_detector_speech_resets_the_count():
    d = media.SilenceDetector(seconds=0.06)
    d.feed(LOUD)
    assert not d.feed(QUIET) and not d.feed(QUIET)
    assert not d.feed(LOUD)
    assert d.silent_bytes == 0
    assert [d.feed(QUIET) for _ in range(3)] == [False, False, True]


def test_silence_detector_threshold():
    soft = media.tone(440, 0.02, 0.005)  # RMS about 116
    assert media.rms(soft) < 200
    d = media.SilenceDetector(threshold=200, seconds=0.02)
    d.feed(LOUD)
    assert d.feed(soft)  # below the threshold: silence
    d = media.SilenceDetector(threshold=100, seconds=0.02)
    d.feed(LOUD)
    assert not d.feed(soft)  # above it: speech


@pytest.mark.parametrize("kw", [dict(threshold=-1), dict(threshold=float("nan")),
                                dict(seconds=0), dict(seconds=-1), dict(seconds="3")])
def test_silence_detector_refuses_bad_arguments(kw):
    with pytest.raises(ValueError):
        media.SilenceDetector(**kw)


@FAST
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 400)), max_size=60),
       st.integers(1, 50))
def test_silence_detector_model(frames, need_frames):
    """Against a model: done once the silent samples since the last speech reach the need."""
    seconds = need_frames * 0.005
    d = media.SilenceDetector(seconds=seconds)
    need = media.byte_count(seconds)
    started, quiet, done = False, 0, False
    for loud, samples in frames:
        frame = media.tone(1000, samples / 8000, 0.5) if loud else b"\x00" * (2 * samples)
        if loud and media.rms(frame) < d.threshold:  # a very short tone may sit near zero
            loud = False
        if not done:
            if loud:
                started, quiet = True, 0
            elif started:
                quiet += len(frame)
                done = quiet >= need
        assert d.feed(frame) is done


# ============================================================================ recorder


def test_recorder_cuts_the_trailing_silence():
    speech = media.tone(440, 1.0)
    r = media.Recorder(max_seconds=60, silence_seconds=3)
    assert r.feed(media.silence(0.5) + speech) is None
    assert r.feed(media.silence(2.98)) is None
    assert r.feed(media.silence(0.02)) == "silence"
    assert r.feed(speech) == "silence"  # over: ignored
    assert r.finish() == media.silence(0.5) + speech


def test_recorder_stops_at_max_exactly():
    r = media.Recorder(max_seconds=0.5, silence_seconds=3)
    assert r.feed(media.tone(440, 0.3)) is None
    assert r.feed(media.tone(440, 0.3)) == "max"
    assert r.finish() == media.tone(440, 0.6)[:8000]


def test_recorder_finish_keeps_a_partial_frame():
    r = media.Recorder(max_seconds=1, silence_seconds=1)
    r.feed(b"\x10\x00" * 10)
    assert r.pcm == b"" and r.finish() == b"\x10\x00" * 10
    with pytest.raises(ValueError, match="odd"):
        r.feed(b"\x00")
    with pytest.raises(ValueError):
        media.Recorder(max_seconds=0, silence_seconds=1)
    with pytest.raises(ValueError):
        media.Recorder(max_seconds=1, silence_seconds=float("inf"))


@FAST
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 60)), min_size=1, max_size=12),
       st.lists(st.integers(1, 3000), max_size=20), st.integers(1, 80), st.integers(1, 200))
def test_recorder_result_does_not_depend_on_chunking(segments, cuts, silence_frames,
                                                     max_frames):
    audio = b"".join(media.tone(700, n * 0.02) if loud else media.silence(n * 0.02)
                     for loud, n in segments)
    args = dict(max_seconds=max_frames * 0.02, silence_seconds=silence_frames * 0.02)
    whole = media.Recorder(**args)
    whole.feed(audio)
    pieces = media.Recorder(**args)
    pos = 0
    for c in cuts:
        c = c * 2
        pieces.feed(audio[pos:pos + c])
        pos += c
    pieces.feed(audio[pos:])
    assert (pieces.reason, pieces.finish()) == (whole.reason, whole.finish())
    out = whole.pcm
    assert len(out) <= media.byte_count(args["max_seconds"]) and audio.startswith(out)
    if whole.reason == "silence":
        assert media.rms(out[-320:]) >= media.SILENCE_THRESHOLD  # ends on speech


# ============================================================================ prompts


def test_default_prompts_are_short_valid_wavs():
    prompts = media.default_prompts()
    assert tuple(prompts) == media.PROMPT_NAMES
    for name, wav in prompts.items():
        assert 0.2 <= media.wav_duration(wav) <= 2.0, name
        assert media.pcm_of(wav) == media.prompt_pcm(name)
    assert media.standard_greeting() == prompts["standard_greeting"]
    with pytest.raises(ValueError, match="no prompt 'welcome'"):
        media.prompt_pcm("welcome")


def test_messages_prompt_grows_with_the_count_up_to_the_cap():
    lengths = [media.wav_duration(media.messages_prompt(n)) for n in range(0, 25)]
    assert lengths[1] < lengths[2] < lengths[3] < lengths[20]
    assert lengths[20] == lengths[21] == lengths[24]  # at most 20 pips
    assert media.messages_prompt(0) != media.messages_prompt(1)
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError):
            media.messages_prompt(bad)
