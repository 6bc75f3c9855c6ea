"""Qualification of a DAHDI analog card's FXO ports (``DahdiBoard``) on a lab machine: the
channels given with ``--dahdi`` are opened as the messaging service opens them, and a person
places calls to them from a phone on the PBX when the run asks (the prompts go to the terminal
and to the log).  Without ``--dahdi`` every run here skips (``hardware:``): nobody has a card
in CI; the backend's logic and its ABI are checked without one in tests/telephony/analog/.

    dahdi_cfg -vv            # system.conf: fxsks=1-4, loadzone/defaultzone
    .venv/bin/python -m pytest hwtests/test_dahdi_board.py --dahdi 1-4 -s --hw-report q.json

Nothing here judges time; the guards only stop a run nobody attends.  The figures (signalling,
frames, levels) go to ``--hw-report``.
"""
from __future__ import annotations

import logging

import trio

from telephony.analog.board import FRAME_BYTES, Audio, Event, LineEvent
from telephony.analog.dahdi import DahdiBoard
from telephony.core import dsp

log = logging.getLogger("hwtests.dahdi")

ATTEND = 180.0  # seconds a person has to act on a prompt (a hang guard)
GUARD = 10.0  # seconds for anything the card does on its own


def prompt(request, text: str) -> None:
    """Tell the person at the lab bench what to do (terminal and log)."""
    log.warning("%s", text)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("")
        reporter.write_line(f">>> {text}", bold=True)


async def next_event(board: DahdiBoard, want: set[LineEvent], line: int | None = None,
                     audio: list[Audio] | None = None) -> Event:
    """The next event of a kind in ``want`` (on ``line`` if given); audio met on the way is
    collected into ``audio`` when given."""
    while True:
        item = await board.receive()
        if isinstance(item, Audio):
            if audio is not None:
                audio.append(item)
            continue
        log.info("line %d: %s", item.line, item.event)
        if item.event in want and (line is None or item.line == line):
            return item


async def test_channels_open_as_fxo_ports(dahdi_channels, hw_report):
    """Every channel opens with FXS signalling (an FXO port), takes the law and the block
    size, and no audio comes up from a line nobody rings or answers."""
    board = DahdiBoard(dahdi_channels)
    await board.open()
    try:
        infos = [board.channel_info(line) for line in range(1, board.lines + 1)]
        for info in infos:
            assert info["open"] and info["signalling"] in ("fxsks", "fxsls"), info
        seen: list[Event | Audio] = []
        with trio.move_on_after(2.0):
            while True:
                seen.append(await board.receive())
        audio = [x for x in seen if isinstance(x, Audio)]
        ringing = {x.line for x in seen if isinstance(x, Event) and x.event is LineEvent.RING_ON}
        assert all(a.line in ringing for a in audio), "audio from an idle on-hook line"
        assert board.counters["reads"] > 0, "the card delivered nothing in 2 s"
    finally:
        await board.aclose()
    hw_report["dahdi_channels"] = {
        "channels": dahdi_channels, "lines": infos,
        "reads_in_2s": board.counters["reads"],
        "alarms": [i["channel"] for i in infos if i["alarms"]]}


async def test_an_incoming_call_rings_answers_talks_and_hangs_up(request, dahdi_channels,
                                                                 hw_report):
    """A call from the PBX rings a line; the board answers it (loop current flows), hears the
    caller, plays a tone the caller hears, and hangs up; the line then goes quiet."""
    board = DahdiBoard(dahdi_channels)
    await board.open()
    try:
        prompt(request, f"call one of the lines on DAHDI channels {dahdi_channels} from a "
                        f"phone on the PBX now; pick up the phone when it is answered and say "
                        f"something ({ATTEND:g} s)")
        with trio.fail_after(ATTEND):
            ring = await next_event(board, {LineEvent.RING_ON})
        line = ring.line
        channel = board.channel_info(line)["channel"]
        cid_audio: list[Audio] = []
        with trio.fail_after(GUARD):
            await next_event(board, {LineEvent.RING_OFF}, line, cid_audio)
        await board.set_hook(line, True)
        with trio.fail_after(GUARD):
            await next_event(board, {LineEvent.LOOP_ON}, line)

        heard: list[Audio] = []

        async def collect() -> None:
            while True:
                item = await board.receive()
                if isinstance(item, Audio) and item.line == line:
                    heard.append(item)

        tone = dsp.tone(1004, 2000, -10.0)  # the caller hears 2 s of a 1004 Hz test tone
        with trio.fail_after(GUARD):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(collect)
                for i in range(0, len(tone), FRAME_BYTES):  # the card paces the writes
                    await board.send_audio(line, tone[i:i + FRAME_BYTES])
                await trio.sleep(0.2)
                nursery.cancel_scope.cancel()
        assert heard, f"no audio from line {line} while it was off hook"
        assert all(len(a.pcm) == FRAME_BYTES for a in heard)
        level = dsp.level_dbm0(b"".join(a.pcm for a in heard))

        await board.set_hook(line, False)
        after: list[Audio] = []
        with trio.move_on_after(1.0):
            while True:
                item = await board.receive()
                if isinstance(item, Audio) and item.line == line:
                    after.append(item)
        assert not after, "audio still came up after going on hook"
    finally:
        await board.aclose()
    hw_report["dahdi_call"] = {
        "line": line, "channel": channel, "frames_heard": len(heard),
        "level_heard_dbm0": round(level, 1), "frames_between_rings": len(cid_audio),
        "counters": dict(board.counters)}


async def test_the_far_end_hanging_up_drops_the_loop(request, dahdi_channels, hw_report):
    """Disconnect supervision: once answered, the caller hangs up and the PBX's loop drop
    (CPC) reaches the board as LOOP_DROP.  A PBX that signals the end of a call by tone only
    fails this run: configure a disconnect (CPC) on its analog ports."""
    board = DahdiBoard(dahdi_channels)
    await board.open()
    try:
        prompt(request, f"call one of the lines on DAHDI channels {dahdi_channels} again; when "
                        f"it answers, hang up the calling phone ({ATTEND:g} s)")
        with trio.fail_after(ATTEND):
            ring = await next_event(board, {LineEvent.RING_ON})
        line = ring.line
        await board.set_hook(line, True)
        with trio.fail_after(GUARD):
            await next_event(board, {LineEvent.LOOP_ON}, line)
        started = trio.current_time()
        with trio.fail_after(ATTEND):
            await next_event(board, {LineEvent.LOOP_DROP}, line)
        waited = trio.current_time() - started
        await board.set_hook(line, False)
    finally:
        await board.aclose()
    hw_report["dahdi_disconnect"] = {"line": line, "signalling": board.channel_info(line)["signalling"],
                                     "answered_to_drop_s": round(waited, 2)}
