"""The board simulator's wire codec (telephony/analog/core/simwire.py): golden bytes, every
protocol error, and fuzzing (any bytes: only WireError, bounded buffer; any split: same
frames, same error)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telephony.analog.core import simwire
from telephony.analog.core.simwire import (
    TO_BOARD,
    TO_HOST,
    AudioFrame,
    Decoder,
    EventFrame,
    Hello,
    Hook,
    WireError,
    encode,
)

AUDIO = bytes(range(160))


def test_golden_bytes():
    assert encode(Hello(4, "ulaw", "a")) == b"\x01\x00\x00\x03\x04\x00a"
    assert encode(Hello(8, "alaw", "")) == b"\x01\x00\x00\x02\x08\x01"
    assert encode(EventFrame(3, "loop_drop", 600)) == b"\x02\x03\x00\x03\x04\x02\x58"
    assert encode(EventFrame(1, "ring_on")) == b"\x02\x01\x00\x03\x01\x00\x00"
    assert encode(EventFrame(2, "alarm_clear", 65535)) == b"\x02\x02\x00\x03\x06\xff\xff"
    assert encode(AudioFrame(2, AUDIO)) == b"\x03\x02\x00\xa0" + AUDIO
    assert encode(Hook(4, True)) == b"\x04\x04\x00\x01\x01"
    assert encode(Hook(1, False)) == b"\x04\x01\x00\x01\x00"


def test_every_event_code():
    assert simwire.EVENT_CODES == {1: "ring_on", 2: "ring_off", 3: "loop_on", 4: "loop_drop",
                                   5: "alarm", 6: "alarm_clear"}
    dec = Decoder(TO_HOST)
    stream = encode(Hello(6, "ulaw", "x")) + b"".join(
        encode(EventFrame(code, name, code * 100)) for code, name in simwire.EVENT_CODES.items())
    frames = dec.feed(stream)
    assert frames[0] == Hello(6, "ulaw", "x")
    assert frames[1:] == [EventFrame(code, name, code * 100) for code, name in simwire.EVENT_CODES.items()]


def test_round_trip_both_directions():
    to_host = [Hello(4, "alaw", "board a"), EventFrame(1, "ring_on"), AudioFrame(4, AUDIO),
               EventFrame(4, "loop_drop", 600)]
    assert Decoder(TO_HOST).feed(b"".join(encode(f) for f in to_host)) == to_host
    to_board = [Hook(1, True), AudioFrame(1, AUDIO), Hook(1, False), Hook(3, True)]
    dec = Decoder(TO_BOARD, lines=4)
    assert dec.feed(b"".join(encode(f, 4) for f in to_board)) == to_board
    assert dec.buffered == 0


def test_byte_by_byte():
    stream = encode(Hello(2, "ulaw", "b")) + encode(AudioFrame(2, AUDIO)) + encode(EventFrame(1, "alarm"))
    dec = Decoder(TO_HOST)
    out = []
    for i in range(len(stream)):
        out += dec.feed(stream[i:i + 1])
        assert dec.buffered < simwire.MAX_FRAME
    assert out == [Hello(2, "ulaw", "b"), AudioFrame(2, AUDIO), EventFrame(1, "alarm")]


HELLO4 = encode(Hello(4, "ulaw", "a"))


@pytest.mark.parametrize("direction, stream, why", [
    (TO_HOST, b"\x09\x00\x00\x00", "unknown frame type 9"),
    (TO_HOST, b"\x00\x00\x00\x00", "unknown frame type 0"),
    (TO_HOST, encode(EventFrame(1, "ring_on")), "EVENT before HELLO"),
    (TO_HOST, HELLO4 + HELLO4, "a second HELLO"),
    (TO_HOST, b"\x01\x01\x00\x02\x04\x00", "HELLO on line 1"),
    (TO_HOST, b"\x01\x00\x00\x01\x04", "HELLO payload length 1"),
    (TO_HOST, b"\x01\x00\x00\x02\x00\x00", "0 lines"),
    (TO_HOST, b"\x01\x00\x00\x02\x04\x02", "law byte 2"),
    (TO_HOST, b"\x01\x00\x00\x03\x04\x00\x07", "not printable"),
    (TO_HOST, HELLO4 + b"\x02\x05\x00\x03\x01\x00\x00", "EVENT on line 5, not in 1..4"),
    (TO_HOST, HELLO4 + b"\x02\x00\x00\x03\x01\x00\x00", "EVENT on line 0"),
    (TO_HOST, HELLO4 + b"\x02\x01\x00\x02\x01\x00", "EVENT payload length 2"),
    (TO_HOST, HELLO4 + b"\x02\x01\x00\x03\x07\x00\x00", "unknown event code 7"),
    (TO_HOST, HELLO4 + b"\x03\x01\x00\x9f" + bytes(159), "AUDIO payload length 159"),
    (TO_HOST, HELLO4 + b"\x03\x01\x04\x01", "payload length 1025 is over 1024"),
    (TO_HOST, HELLO4 + encode(Hook(1, True)), "HOOK is not sent in this direction"),
    (TO_BOARD, HELLO4, "HELLO is not sent in this direction"),
    (TO_BOARD, b"\x04\x01\x00\x01\x02", "HOOK value 2"),
    (TO_BOARD, b"\x04\x01\x00\x02\x01\x00", "HOOK payload length 2"),
    (TO_BOARD, b"\x04\x05\x00\x01\x01", "HOOK on line 5"),
    (TO_BOARD, encode(EventFrame(1, "ring_on")), "EVENT is not sent in this direction"),
])
def test_protocol_errors(direction, stream, why):
    dec = Decoder(direction, lines=4 if direction == TO_BOARD else None)
    with pytest.raises(WireError, match=why) as info:
        dec.feed(stream)
    assert dec.buffered == 0
    # frames before the bad one are handed over with the error; the decoder stays failed
    if stream.startswith(HELLO4) and direction == TO_HOST and why != "a second HELLO":
        assert info.value.frames == [Hello(4, "ulaw", "a")]
    with pytest.raises(WireError, match="already failed"):
        dec.feed(encode(Hook(1, True), 4))


def test_header_error_is_found_before_the_payload_arrives():
    dec = Decoder(TO_HOST)
    dec.feed(HELLO4)
    with pytest.raises(WireError, match="over 1024"):
        dec.feed(b"\x03\x01\xff\xff")  # no payload yet: refused at the header, nothing buffered


@pytest.mark.parametrize("frame, why", [
    (Hello(0, "ulaw"), "lines 0"),
    (Hello(256, "ulaw"), "lines 256"),
    (Hello(4, "slin"), "law 'slin'"),
    (Hello(4, "ulaw", "é"), "printable ASCII"),
    (Hello(4, "ulaw", "x" * 65), "longer than 64"),
    (EventFrame(1, "flash"), "unknown event 'flash'"),
    (EventFrame(1, "ring_on", 65536), "ms 65536"),
    (EventFrame(1, "ring_on", -1), "ms -1"),
    (EventFrame(0, "ring_on"), "line 0"),
    (AudioFrame(1, bytes(159)), "exactly 160"),
    (AudioFrame(1, "x" * 160), "exactly 160"),
    (Hook(1, 1), "must be a bool"),
    (Hook(True, True), "line True"),
    ("HOOK", "not a wire frame"),
])
def test_encode_refuses_bad_frames(frame, why):
    with pytest.raises(ValueError, match=why):
        encode(frame)


def test_encode_checks_the_line_count():
    assert encode(Hook(4, True), 4)
    with pytest.raises(ValueError, match="line 5 is not in 1..4"):
        encode(Hook(5, True), 4)


def test_decoder_arguments():
    with pytest.raises(ValueError, match="needs the board's line count"):
        Decoder(TO_BOARD)
    with pytest.raises(ValueError, match="direction"):
        Decoder("sideways")
    with pytest.raises(ValueError, match="lines 0"):
        Decoder(TO_BOARD, lines=0)


# ------------------------------------------------------------------ fuzzing

def _run(dec: Decoder, chunks: list[bytes]) -> tuple[list, str | None]:
    frames: list = []
    for chunk in chunks:
        try:
            frames += dec.feed(chunk)
        except WireError as e:
            return frames + e.frames, str(e)
        assert dec.buffered <= simwire.MAX_BUFFER
    return frames, None


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:], strict=False)]


to_host_frames = st.one_of(
    st.builds(EventFrame, st.integers(1, 8), st.sampled_from(sorted(simwire.EVENT_NAMES)),
              st.integers(0, 65535)),
    st.builds(AudioFrame, st.integers(1, 8), st.binary(min_size=160, max_size=160)),
)
to_board_frames = st.one_of(
    st.builds(Hook, st.integers(1, 8), st.booleans()),
    st.builds(AudioFrame, st.integers(1, 8), st.binary(min_size=160, max_size=160)),
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000), st.lists(st.integers(0, 4000), max_size=12),
       st.sampled_from([TO_HOST, TO_BOARD]))
def test_fuzz_random_bytes_any_split(data, cuts, direction):
    lines = 8 if direction == TO_BOARD else None
    whole = _run(Decoder(direction, lines=lines), [data])
    split = _run(Decoder(direction, lines=lines), _split(data, cuts))
    assert whole == split


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=64),
       st.lists(to_host_frames, max_size=12), st.lists(st.integers(0, 5000), max_size=12),
       st.binary(max_size=40))
def test_fuzz_valid_stream_any_split_then_garbage(name, frames, cuts, garbage):
    stream = encode(Hello(8, "alaw", name)) + b"".join(encode(f) for f in frames)
    got, err = _run(Decoder(TO_HOST), _split(stream, cuts))
    assert err is None
    assert got == [Hello(8, "alaw", name), *frames]
    # garbage after a good stream: the good frames stay, the result does not depend on the split
    whole = _run(Decoder(TO_HOST), [stream + garbage])
    assert whole == _run(Decoder(TO_HOST), _split(stream + garbage, cuts))
    assert whole[0][:len(frames) + 1] == [Hello(8, "alaw", name), *frames]


@settings(max_examples=100, deadline=None)
@given(st.lists(to_board_frames, max_size=12), st.lists(st.integers(0, 4000), max_size=12))
def test_fuzz_host_stream_any_split(frames, cuts):
    stream = b"".join(encode(f, 8) for f in frames)
    assert _run(Decoder(TO_BOARD, lines=8), _split(stream, cuts)) == (frames, None)
