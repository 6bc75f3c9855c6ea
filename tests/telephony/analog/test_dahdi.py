"""The DAHDI board backend without a card: its pure parts (the channel list, the byte order of
the card's linear audio, cutting reads into 20 ms frames, what each kernel event means for a
line) and its refusals (bad arguments, a device that is missing or is not DAHDI's, a board
used before it is open), on real files and devices.  The card itself is exercised by
hwtests/test_dahdi_board.py (``--dahdi CHANNELS`` on a lab machine)."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from telephony.analog.board import FRAME_BYTES, BoardError, LineEvent
from telephony.analog.core import dahdi_abi as abi
from telephony.analog.dahdi import (
    AFTER_RING_FRAMES,
    EVENT_MAP,
    MAX_CHANNEL,
    DahdiBoard,
    FrameAssembler,
    LineState,
    card_to_pcm,
    channel_list,
    parse_channels,
    pcm_to_card,
)

L = LineEvent


# ---------------------------------------------------------------------- channel lists

@pytest.mark.parametrize("text, want", [
    ("1", [1]), ("1-4", [1, 2, 3, 4]), ("1-4,7", [1, 2, 3, 4, 7]), ("7, 1-2", [7, 1, 2]),
    ("1023", [1023]), ("5-5", [5]), ("1,3,2", [1, 3, 2])])
def test_channel_lists_parse(text, want):
    assert parse_channels(text) == want
    assert channel_list(text) == want


@pytest.mark.parametrize("text, message", [
    ("", "is not N or N-M"), ("1-", "is not N or N-M"), ("-3", "is not N or N-M"),
    ("a", "is not N or N-M"), ("1,,2", "is not N or N-M"), ("1-2-3", "is not N or N-M"),
    ("4-1", "runs backwards"), ("0", r"channels are 1\.\.1023"), ("1-1024", "channels are"),
    ("1-3,2", "channel 2 is listed twice"), ("١", "is not N or N-M"), ("1" * 5000, "at most")])
def test_bad_channel_lists_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        parse_channels(text)


@pytest.mark.parametrize("value, message", [
    ([], "at least one channel"), ([0], "is not a DAHDI channel number"),
    ([1, True], "True is not a DAHDI channel"), ([1.0], "1.0 is not"), ([1, 1], "listed twice"),
    (5, "must be a list"), ([MAX_CHANNEL + 1], "is not a DAHDI channel number")])
def test_bad_channel_numbers_are_refused(value, message):
    with pytest.raises(ValueError, match=message):
        channel_list(value)


@given(st.text(max_size=40))
def test_any_channel_text_parses_or_is_refused_clearly(text):
    try:
        channels = parse_channels(text)
    except ValueError as e:
        assert "channel" in str(e)
    else:
        assert channels and len(set(channels)) == len(channels)
        assert all(1 <= c <= MAX_CHANNEL for c in channels)


@given(st.lists(st.integers(1, MAX_CHANNEL), min_size=1, max_size=30, unique=True))
def test_a_list_written_as_text_comes_back(channels):
    assert parse_channels(",".join(map(str, channels))) == channels


# ---------------------------------------------------------------------- audio bytes

@given(st.lists(st.integers(-32768, 32767), max_size=400))
def test_card_samples_become_little_endian_pcm(values):
    native = np.array(values, dtype=np.int16).tobytes()  # the host's order, as the card gives
    little = np.array(values, dtype="<i2").tobytes()
    assert card_to_pcm(native) == little
    assert pcm_to_card(little) == native
    big = np.array(values, dtype=">i2").tobytes()
    assert card_to_pcm(big, "big") == little and pcm_to_card(little, "big") == big


def test_odd_audio_is_refused():
    with pytest.raises(ValueError, match="pairs of bytes, not 3"):
        card_to_pcm(b"abc", sys.byteorder)


@given(st.binary(max_size=3000).map(lambda b: b[: len(b) // 2 * 2]),
       st.lists(st.integers(0, 700), max_size=20))
def test_frames_do_not_depend_on_how_reads_split_the_audio(stream, cuts):
    pieces, at = [], 0
    for n in cuts:
        pieces.append(stream[at:at + n])
        at += n
    pieces.append(stream[at:])
    assembler = FrameAssembler()
    frames = [f for piece in pieces for f in assembler.feed(piece)]
    whole = len(stream) // FRAME_BYTES
    assert frames == [stream[i * FRAME_BYTES:(i + 1) * FRAME_BYTES] for i in range(whole)]
    assert assembler.held == len(stream) - whole * FRAME_BYTES < FRAME_BYTES


def test_frame_assembler_reset_and_bad_sizes():
    a = FrameAssembler(160)
    assert a.feed(b"\1" * 100) == [] and a.held == 100
    a.reset()
    assert a.feed(b"\2" * 170) == [b"\2" * 160] and a.held == 10
    for bad in (0, -2, 3):
        with pytest.raises(ValueError, match="positive even"):
            FrameAssembler(bad)


# ---------------------------------------------------------------------- events

def feed(state: LineState, *codes: int) -> list[LineEvent]:
    return [e for code in codes for e in state.kernel_event(code)]


def test_a_ringing_call_answered_and_hung_up_by_the_far_end():
    s = LineState()
    assert not s.passes_audio
    assert feed(s, abi.DAHDI_EVENT_RINGBEGIN) == [L.RING_ON]
    assert s.passes_audio
    assert feed(s, abi.DAHDI_EVENT_RINGOFFHOOK) == [L.RING_OFF]
    assert s.passes_audio  # the caller-ID burst comes on hook, in the silence after the ring
    assert feed(s, abi.DAHDI_EVENT_RINGBEGIN) == [L.RING_ON]
    assert s.hook(True) == [] and s.passes_audio
    assert s.loop_sample(True) == [L.LOOP_ON]
    assert s.loop_sample(True) == []
    assert feed(s, abi.DAHDI_EVENT_RINGOFFHOOK) == [L.RING_OFF]  # the ring we answered ends
    assert feed(s, abi.DAHDI_EVENT_RINGOFFHOOK) == []  # and nothing more while off hook
    assert feed(s, abi.DAHDI_EVENT_ONHOOK) == [L.LOOP_DROP]  # kewlstart disconnect
    assert s.loop_sample(False) == []  # the poll sees the same drop: reported once
    assert s.loop_sample(True) == [L.LOOP_ON]  # the exchange restores the battery
    assert s.hook(False) == [] and not s.passes_audio and s.loop is None


def test_audio_between_rings_passes_for_a_window_only():
    """On hook, audio goes up for AFTER_RING_FRAMES frames after a ring (the caller-ID burst),
    then stops until the next ring; going off hook or an alarm ends the window."""
    s = LineState()
    feed(s, abi.DAHDI_EVENT_RINGBEGIN, abi.DAHDI_EVENT_RINGOFFHOOK)
    s.passed(AFTER_RING_FRAMES - 1)
    assert s.passes_audio
    s.passed(1)
    assert not s.passes_audio  # the caller gave up: nothing more until the next ring
    feed(s, abi.DAHDI_EVENT_RINGBEGIN)
    s.passed(10 * AFTER_RING_FRAMES)  # frames while ringing do not use up anything
    feed(s, abi.DAHDI_EVENT_RINGOFFHOOK)
    assert s.after_ring == AFTER_RING_FRAMES
    s.hook(True)
    s.hook(False)
    assert not s.passes_audio  # a call answered and over: no window left
    feed(s, abi.DAHDI_EVENT_RINGBEGIN, abi.DAHDI_EVENT_RINGOFFHOOK)
    feed(s, abi.DAHDI_EVENT_ALARM)
    feed(s, abi.DAHDI_EVENT_NOALARM)
    assert not s.passes_audio  # an alarm ends it too


def test_loop_polling_alone_sees_a_drop():
    """With loopstart signalling the kernel reports no disconnect: the poll does."""
    s = LineState()
    s.hook(True)
    assert s.loop_sample(False) == []  # no battery yet: nothing to report
    assert s.loop_sample(True) == [L.LOOP_ON]
    assert s.loop_sample(False) == [L.LOOP_DROP]
    assert feed(s, abi.DAHDI_EVENT_ONHOOK) == []  # the kernel's report of the same drop
    s.hook(False)
    assert s.loop_sample(False) == [] and s.loop_sample(True) == []  # on hook: no loop


def test_a_ring_reported_only_by_its_end():
    s = LineState()
    assert feed(s, abi.DAHDI_EVENT_RINGOFFHOOK) == [L.RING_ON, L.RING_OFF]
    assert feed(s, abi.DAHDI_EVENT_RINGBEGIN, abi.DAHDI_EVENT_RINGBEGIN) == [L.RING_ON]
    s.hook(False)  # going on hook forgets the ring
    assert not s.ringing


def test_on_hook_the_kernel_onhook_is_not_a_loop_drop():
    s = LineState()
    assert feed(s, abi.DAHDI_EVENT_ONHOOK) == []


def test_alarms_by_battery_and_by_loss_combine():
    s = LineState()
    s.kernel_event(abi.DAHDI_EVENT_RINGBEGIN)
    assert feed(s, abi.DAHDI_EVENT_ALARM) == [L.ALARM]
    assert not s.ringing and not s.passes_audio
    assert feed(s, abi.DAHDI_EVENT_ALARM) == []
    assert feed(s, abi.DAHDI_EVENT_REMOVED) == []  # still in alarm, now for two reasons
    assert feed(s, abi.DAHDI_EVENT_NOALARM) == []  # the channel is still gone
    assert s.alarm("lost", False) == [L.ALARM_CLEAR]
    assert feed(s, abi.DAHDI_EVENT_NOALARM) == []


@pytest.mark.parametrize("code", [
    abi.DAHDI_EVENT_POLARITY, abi.DAHDI_EVENT_RINGERON, abi.DAHDI_EVENT_RINGEROFF,
    abi.DAHDI_EVENT_HOOKCOMPLETE, abi.DAHDI_EVENT_WINKFLASH, abi.DAHDI_EVENT_NEONMWI_ACTIVE,
    abi.DAHDI_EVENT_DTMFDOWN | ord("1"), 12345])
def test_events_without_a_line_meaning_change_nothing(code):
    s = LineState()
    s.hook(True)
    s.loop_sample(True)
    before = (s.offhook, s.ringing, s.loop, set(s.alarms))
    assert s.kernel_event(code) == []
    assert (s.offhook, s.ringing, s.loop, s.alarms) == before


def test_the_documented_mapping_is_the_state_machine():
    for code, meaning in EVENT_MAP.items():
        s = LineState()
        if code in (abi.DAHDI_EVENT_RINGOFFHOOK,):
            s.kernel_event(abi.DAHDI_EVENT_RINGBEGIN)
        if code == abi.DAHDI_EVENT_ONHOOK:
            s.hook(True)
            s.loop_sample(True)
        if code == abi.DAHDI_EVENT_NOALARM:
            s.kernel_event(abi.DAHDI_EVENT_ALARM)
        got = s.kernel_event(code)
        name = meaning.split(":")[0]
        if name.startswith("("):
            assert got == [], abi.event_name(code)
        else:
            assert got == [LineEvent(name)], abi.event_name(code)


EVENT_CODES = [abi.DAHDI_EVENT_RINGBEGIN, abi.DAHDI_EVENT_RINGOFFHOOK, abi.DAHDI_EVENT_ONHOOK,
               abi.DAHDI_EVENT_ALARM, abi.DAHDI_EVENT_NOALARM, abi.DAHDI_EVENT_REMOVED,
               abi.DAHDI_EVENT_POLARITY]
STEPS = st.one_of(st.tuples(st.just("event"), st.sampled_from(EVENT_CODES)),
                  st.tuples(st.just("hook"), st.booleans()),
                  st.tuples(st.just("loop"), st.booleans()),
                  st.tuples(st.just("found"), st.just(False)))


@given(st.lists(STEPS, max_size=60))
def test_any_sequence_reports_a_consistent_line(steps):
    s = LineState()
    alarmed, loop = False, None
    for kind, value in steps:
        offhook = s.offhook
        if kind == "event":
            out = s.kernel_event(value)
        elif kind == "hook":
            out = s.hook(value)
            loop = None
        elif kind == "loop":
            out = s.loop_sample(value)
        else:
            out = s.alarm("lost", False)
        for e in out:
            if e in (L.ALARM, L.ALARM_CLEAR):  # alarms alternate
                assert (e is L.ALARM) != alarmed
                alarmed = e is L.ALARM
            if e in (L.LOOP_ON, L.LOOP_DROP):  # loop events only off hook, never repeated
                assert offhook and loop is not (e is L.LOOP_ON)
                loop = e is L.LOOP_ON
        assert s.alarmed == alarmed
        assert s.passes_audio == (not alarmed and (s.offhook or s.ringing or s.after_ring > 0))


# ---------------------------------------------------------------------- the backend's refusals

@pytest.mark.parametrize("kwargs, message", [
    ({"law": "slinear"}, "law must be one of"), ({"block_ms": 3}, "must divide 20"),
    ({"block_ms": 40}, "must divide 20"), ({"block_ms": 1}, "must divide 20"),
    ({"block_ms": 20.0}, "must divide 20"), ({"reopen_s": 0}, "must be positive"),
    ({"channels": "1-x"}, "is not N or N-M"), ({"channels": []}, "at least one")])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DahdiBoard(**{"channels": [1], **kwargs})


def test_a_board_describes_itself():
    board = DahdiBoard("1-4,7", law="alaw", block_ms=10)
    assert board.lines == 5 and board.channels == [1, 2, 3, 4, 7] and board.law == "alaw"
    assert board.block_samples == 80 and board.numbufs == 8
    assert not board.is_open and "closed" in repr(board)
    assert board.channel_info(5)["channel"] == 7 and board.channel_info(5)["open"] is False
    with pytest.raises(ValueError, match="not one of this board's lines 1..5"):
        board.channel_info(6)


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


async def test_a_missing_device_is_a_clear_error(tmp_path):
    missing = tmp_path / "dahdi" / "channel"
    board = DahdiBoard("1-2", device=missing)
    before = open_fds()
    with pytest.raises(BoardError, match=rf"cannot open {missing} for DAHDI channel 1: "
                                         r"No such file or directory \(is DAHDI loaded"):
        await board.open()
    assert not board.is_open and open_fds() == before  # nothing stays open


@pytest.mark.parametrize("device", ["/dev/null", "file"])
async def test_a_device_that_is_not_dahdi_is_refused(tmp_path, device):
    if device == "file":
        device = tmp_path / "channel"
        device.write_bytes(b"")
    board = DahdiBoard([1, 2], device=device)
    before = open_fds()
    with pytest.raises(BoardError, match=r"DAHDI channel 1: DAHDI_SPECIFY failed: .*"
                                         r"is not DAHDI's channel device"):
        await board.open()
    assert not board.is_open and open_fds() == before


async def test_a_closed_board_refuses_use():
    board = DahdiBoard([1, 2])
    with pytest.raises(BoardError, match="not open"):
        await board.receive()
    with pytest.raises(BoardError, match="not open"):
        await board.set_hook(1, True)
    with pytest.raises(BoardError, match="not open"):
        await board.send_audio(1, bytes(FRAME_BYTES))
    await board.aclose()  # closing a closed board is fine
    assert not board.is_open

