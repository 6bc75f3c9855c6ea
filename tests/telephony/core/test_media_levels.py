"""The numpy levels of telephony.core.media against the pure-Python code they replaced.

``media.rms`` and the recorder's per-frame levels moved to numpy.  The reference below is the
previous implementation restated (an exact integer sum of squares in Python, one division, one
square root; the recorder judging one 20 ms frame at a time through ``SilenceDetector.feed``);
Hypothesis checks that the new code gives the very same floats, the same end reason, the same
cut and the same detector state, whatever the audio and however it is split into chunks."""
from __future__ import annotations

import math
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telephony.core import media

FAST = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

even_bytes = st.binary(max_size=6000).map(lambda b: b[: len(b) // 2 * 2])


def old_rms(frame: bytes) -> float:
    if not frame:
        return 0.0
    s = struct.unpack(f"<{len(frame) // 2}h", frame)
    return math.sqrt(sum(x * x for x in s) / len(s))


class OldDetector:
    def __init__(self, threshold: float, seconds: float) -> None:
        self.threshold = float(threshold)
        self.needed = max(2, media.byte_count(seconds))
        self.speech_started = False
        self.silent_bytes = 0
        self.done = False

    def feed(self, frame: bytes) -> bool:
        if self.done or not frame:
            return self.done
        if old_rms(frame) >= self.threshold:
            self.speech_started = True
            self.silent_bytes = 0
        elif self.speech_started:
            self.silent_bytes += len(frame)
            if self.silent_bytes >= self.needed:
                self.done = True
        return self.done


class OldRecorder:
    def __init__(self, *, max_seconds: float, silence_seconds: float, threshold: float) -> None:
        self.max_bytes = max(2, media.byte_count(max_seconds))
        self.detector = OldDetector(threshold, silence_seconds)
        self.buf = bytearray()
        self.pending = bytearray()
        self.reason: str | None = None

    def feed(self, pcm: bytes) -> str | None:
        if self.reason is not None:
            return self.reason
        self.pending += pcm
        while len(self.pending) >= media.FRAME_BYTES and self.reason is None:
            frame = bytes(self.pending[:media.FRAME_BYTES])
            del self.pending[:media.FRAME_BYTES]
            frame = frame[:self.max_bytes - len(self.buf)]
            self.buf += frame
            if self.detector.feed(frame):
                del self.buf[len(self.buf) - self.detector.silent_bytes:]
                self.reason = "silence"
            elif len(self.buf) >= self.max_bytes:
                self.reason = "max"
        return self.reason

    def finish(self) -> bytes:
        if self.reason is None and self.pending:
            self.buf += self.pending[:self.max_bytes - len(self.buf)]
        self.pending.clear()
        return bytes(self.buf)


@FAST
@given(even_bytes)
def test_rms_is_the_old_float(pcm):
    assert media.rms(pcm) == old_rms(pcm)


def test_rms_extremes():
    for value in (-32768, 32767, 1, -1):
        frame = struct.pack("<h", value) * 160
        assert media.rms(frame) == old_rms(frame) == abs(value)
    big = struct.pack("<h", -32768) * 1_000_000  # far beyond one frame: still exact
    assert media.rms(big) == 32768.0
    assert media.rms(bytearray(b"\x01\x00\xff\xff")) == old_rms(b"\x01\x00\xff\xff")


# frames of one constant sample value: RMS = |value| exactly, so values around the threshold
# test the comparison at the boundary; random frames add everything in between
frame_st = st.one_of(
    st.integers(-260, 260).map(lambda v: struct.pack("<h", v) * 160),
    st.binary(min_size=320, max_size=320),
    st.sampled_from([media.tone(440, 0.02), media.silence(0.02), media.tone(300, 0.02, 0.006)]))


@FAST
@given(st.lists(frame_st, max_size=40), st.binary(max_size=40).map(lambda b: b[: len(b) // 2 * 2]),
       st.lists(st.integers(1, 3000), min_size=1, max_size=30),
       st.integers(1, 12), st.integers(1, 40), st.sampled_from([0.0, 100.0, 200.0, 200.5, 250.0]))
def test_recorder_is_the_old_recorder(frames, tail, cuts, silence_frames, max_frames, threshold):
    """Same end reason after every chunk, same recording, same detector state."""
    pcm = b"".join(frames) + tail
    silence_s, max_s = silence_frames * 0.02, max_frames * 0.0137  # max often mid-frame
    new = media.Recorder(max_seconds=max_s, silence_seconds=silence_s, threshold=threshold)
    old = OldRecorder(max_seconds=max_s, silence_seconds=silence_s, threshold=threshold)
    pos, i = 0, 0
    while pos < len(pcm):
        size = cuts[i % len(cuts)] * 2
        chunk = pcm[pos:pos + size]
        pos, i = pos + size, i + 1
        assert new.feed(chunk) == old.feed(chunk)
        assert (new.speech_started, new.detector.silent_bytes, new.detector.done) == \
            (old.detector.speech_started, old.detector.silent_bytes, old.detector.done)
    assert new.reason == old.reason
    assert new.finish() == old.finish()


@FAST
@given(st.lists(frame_st, max_size=30), st.sampled_from([0.02, 0.06, 0.1]))
def test_detector_is_the_old_detector(frames, seconds):
    new = media.SilenceDetector(seconds=seconds)
    old = OldDetector(media.SILENCE_THRESHOLD, seconds)
    for frame in frames:
        assert new.feed(frame) == old.feed(frame)
        assert (new.speech_started, new.silent_bytes) == (old.speech_started, old.silent_bytes)


@FAST
@given(st.lists(frame_st, max_size=40), st.sampled_from([320, 322, 480, 640, 638]),
       st.integers(1, 12), st.integers(1, 40), st.sampled_from([0.0, 200.0, 200.5]))
def test_recorder_fed_a_frame_at_a_time_is_the_old_recorder(frames, size, silence_frames,
                                                            max_frames, threshold):
    """A port's 20 ms frames (one frame per feed, the single-frame path), and chunks of about a
    frame that leave a partial frame pending: the same as the old recorder."""
    pcm = b"".join(frames)
    silence_s, max_s = silence_frames * 0.02, max_frames * 0.0137
    new = media.Recorder(max_seconds=max_s, silence_seconds=silence_s, threshold=threshold)
    old = OldRecorder(max_seconds=max_s, silence_seconds=silence_s, threshold=threshold)
    for pos in range(0, len(pcm), size):
        chunk = pcm[pos:pos + size]
        assert new.feed(chunk) == old.feed(chunk)
        assert (new.speech_started, new.detector.silent_bytes, new.detector.done) == \
            (old.detector.speech_started, old.detector.silent_bytes, old.detector.done)
    assert new.reason == old.reason
    assert new.finish() == old.finish()
