"""SimBoard (telephony/analog/simboard.py) against the voice-board simulator (lab/voiceboard.py)
and against hand-made peers, over real Unix sockets: HELLO, the ring cadence on trio's clock,
audio both ways in the board's law, loop drop, reconnection, refused and broken peers."""
from __future__ import annotations

import pytest
import trio

from lab.voiceboard import open_host, open_voiceboard
from telephony.analog.board import Audio, BoardError, Event, LineEvent
from telephony.analog.core import simwire
from telephony.analog.simboard import SimBoard
from telephony.core import dsp, dtmf, g711, tones
from tests.util import until


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
async def test_hello_gives_lines_law_and_name(tmp_path, law):
    async with open_voiceboard(tmp_path, boards={"a": 4, "b": 2}, law=law) as sim:
        for name, lines in (("a", 4), ("b", 2)):
            board = SimBoard(sim.socket_path(name))
            assert board.lines == 0 and not board.is_open
            await board.open()
            assert (board.lines, board.law, board.name) == (lines, law, name)
            await until(lambda name=name: sim.connected(name), "the simulator to see the host")
            await board.aclose()


@pytest.mark.parametrize("profile", ["na", "etsi"])
async def test_ring_cadence_on_trios_clock(tmp_path, autojump_clock, profile):
    cadence = tones.lookup(profile, "ring").cadence
    async with open_voiceboard(tmp_path, boards={"a": 2}, profile=profile) as sim, \
            open_host(sim.socket_path("a")) as host:
        await until(lambda: sim.connected("a"))
        start = trio.current_time()
        call = await sim.call(digits="", rings_max=3)
        assert (call.answered, call.ended_by, call.rings) == (False, "no_answer", 3)
        assert sim.line_state("a", 1) == "idle"
        events = host.events_of(1)
        kinds = [e.event for _, e in events]
        bursts = 3 * len(cadence)
        assert kinds == [LineEvent.RING_ON, LineEvent.RING_OFF] * bursts
        # every burst and gap as long as the profile says (to a tick of the simulated clock)
        times = [t - start for t, _ in events]
        expect, at = [], 0.0
        for _ in range(3):
            for on, off in cadence:
                expect += [at, at + on / 1000]
                at += (on + off) / 1000
        assert times == pytest.approx(expect, abs=0.005)
        assert host.heard(1) == b""  # nothing reaches an on-hook line


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
async def test_answer_then_audio_both_ways_in_the_boards_law(tmp_path, law):
    caller = dsp.tone([1000.0], 400, [-10.0])
    async with open_voiceboard(tmp_path, boards={"a": 2}, law=law) as sim, \
            open_host(sim.socket_path("a")) as host:
        await until(lambda: sim.connected("a"))
        handle = sim.start_call(digits="#1234", audio=caller, hangup="none", digit_delay_ms=200)
        assert (handle.call.board, handle.call.line) == ("a", 1)
        await host.wait_event(1, "ring_on")
        assert sim.line_state("a", 1) == "ringing"
        await host.board.set_hook(1, True)
        await host.wait_event(1, "loop_on")
        await until(lambda: sim.line_state("a", 1) == "answered")
        assert sim.loop_current_ma("a", 1) == 25.0
        # the host talks: a 700 Hz tone; the simulator records it as PCM through the law
        said = dsp.tone([700.0], 300, [-12.0])
        await host.play(1, said)
        await until(lambda: handle.heard.find(g711.decode(law, g711.encode(law, said))) >= 0,
                    "the simulator to record what the host said")
        # what the host heard: the in-band digits, then the caller's audio, exact through the law
        await until(lambda: len(host.heard(1)) > 320 * 90, "the digits and the caller's audio")
        heard = host.heard(1)
        assert dtmf.detect(heard) == "#1234"
        assert heard.find(g711.decode(law, g711.encode(law, caller))) > 0
        other = "alaw" if law == "ulaw" else "ulaw"
        assert heard.find(g711.decode(other, g711.encode(law, caller))) < 0
        await host.board.set_hook(1, False)
        call = await handle.wait()
        assert (call.answered, call.ended_by, call.answer_after_rings) == (True, "host", 1)
        assert sim.line_state("a", 1) == "idle" and sim.loop_current_ma("a", 1) == 0.0


async def test_loop_drop_ends_the_call(tmp_path, autojump_clock):
    async with open_voiceboard(tmp_path, boards={"a": 1}, cpc_ms=700) as sim, \
            open_host(sim.socket_path("a")) as host:
        await until(lambda: sim.connected("a"))
        handle = sim.start_call(digits="12", audio=dsp.silence_ms(200), hangup="loop_drop")
        await host.wait_event(1, "ring_on")
        await host.board.set_hook(1, True)
        _, drop = await host.wait_event(1, "loop_drop")
        assert drop == Event(1, LineEvent.LOOP_DROP, 700)
        assert sim.loop_current_ma("a", 1) == 0.0 and sim.line_state("a", 1) == "released"
        t_drop = trio.current_time()
        t_back, _ = await host.wait_event(1, "loop_on", 2)  # the loop comes back after cpc_ms
        assert t_back - t_drop == pytest.approx(0.7, abs=0.03)
        assert sim.loop_current_ma("a", 1) == 25.0
        await host.board.set_hook(1, False)
        call = await handle.wait()
        assert (call.ended_by, call.answered) == ("pbx", True)
        assert call.host_onhook_at is not None and call.host_onhook_at >= call.pbx_hangup_at


async def test_reconnect_after_the_simulator_drops_the_connection(tmp_path, autojump_clock):
    async with open_voiceboard(tmp_path, boards={"a": 2}) as sim:
        board = SimBoard(sim.socket_path("a"))
        await board.open()
        await board.set_hook(2, True)  # a seizure: dial tone flows
        assert isinstance(await board.receive(), Event)  # loop_on
        assert isinstance(await board.receive(), Audio)
        assert sim.drop_connection("a")
        with pytest.raises(BoardError, match="closed the connection"):
            while True:
                await board.receive()
        assert not board.is_open
        with pytest.raises(BoardError, match="not open"):
            await board.set_hook(1, True)
        await until(lambda: not sim.connected("a"))
        assert sim.line_state("a", 2) == "idle"  # a lost host is an on-hook host
        await board.open()  # HELLO again, every line on hook
        assert board.lines == 2
        await until(lambda: sim.connected("a"))
        assert sim.boards["a"].connections == 2
        # and the board works again
        await board.set_hook(1, True)
        assert await board.receive() == Event(1, LineEvent.LOOP_ON)
        await board.aclose()


async def test_host_closing_and_reopening(tmp_path):
    async with open_voiceboard(tmp_path, boards={"a": 1}) as sim:
        board = SimBoard(sim.socket_path("a"))
        for _ in range(3):
            await board.open()
            await board.open()  # opening an open board starts a fresh connection
            await board.aclose()
            await board.aclose()
        await until(lambda: not sim.connected("a"))
        assert sim.refused["a"] == 0


async def test_second_host_is_refused(tmp_path, autojump_clock):
    async with open_voiceboard(tmp_path, boards={"a": 1}) as sim, open_host(sim.socket_path("a")):
        await until(lambda: sim.connected("a"))
        other = SimBoard(sim.socket_path("a"))
        with pytest.raises(BoardError, match="closed the connection before its HELLO .does another host"):
            await other.open()
        assert sim.refused["a"] == 1 and not other.is_open


async def test_no_simulator(tmp_path):
    with pytest.raises(BoardError, match="cannot connect to the board simulator"):
        await SimBoard(tmp_path / "nothing.sock").open()


async def test_bad_arguments_change_nothing(tmp_path):
    async with open_voiceboard(tmp_path, boards={"a": 2}) as sim:
        board = SimBoard(sim.socket_path("a"))
        with pytest.raises(BoardError, match="not open"):
            await board.send_audio(1, bytes(320))
        await board.open()
        for line in (0, 3, True, "1"):
            with pytest.raises(ValueError, match="not one of this board's lines"):
                await board.set_hook(line, True)
        with pytest.raises(ValueError, match="must be a bool"):
            await board.set_hook(1, 1)
        for pcm in (bytes(319), bytes(640), "x" * 320):
            with pytest.raises(ValueError, match="320 bytes"):
                await board.send_audio(1, pcm)
        await trio.sleep(0.05)
        assert sim.line_state("a", 1) == "idle" and sim.protocol_errors["a"] == 0
        assert sim.connected("a")
        await board.aclose()


# ------------------------------------------------------------------ hand-made peers

async def _peer(tmp_path, nursery, script):
    """A Unix socket whose one connection gets ``script(stream)``."""
    path = tmp_path / "peer.sock"
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(str(path))
    sock.listen(1)

    async def serve():
        conn, _ = await sock.accept()
        stream = trio.SocketStream(conn)
        try:
            await script(stream)
        finally:
            await stream.aclose()
            sock.close()
    nursery.start_soon(serve)
    return path


async def test_garbage_after_hello_is_a_clear_error(tmp_path):
    good = simwire.encode(simwire.EventFrame(1, "ring_on"))

    async def script(stream):
        await stream.send_all(simwire.encode(simwire.Hello(2, "ulaw", "x")) + good + b"\x09garbage")
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        board = SimBoard(await _peer(tmp_path, nursery, script))
        await board.open()
        assert await board.receive() == Event(1, LineEvent.RING_ON)  # the good frame first
        with pytest.raises(BoardError, match="broke the protocol: protocol error: unknown frame type 9"):
            await board.receive()
        assert board.counters["protocol_errors"] == 1 and not board.is_open
        with pytest.raises(BoardError, match="broke the protocol"):
            await board.receive()  # it stays failed until opened again
        nursery.cancel_scope.cancel()


async def test_garbage_instead_of_hello(tmp_path):
    async def script(stream):
        await stream.send_all(simwire.encode(simwire.EventFrame(1, "ring_on")))
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        board = SimBoard(await _peer(tmp_path, nursery, script))
        with pytest.raises(BoardError, match="EVENT before HELLO"):
            await board.open()
        assert not board.is_open
        nursery.cancel_scope.cancel()


async def test_silent_peer_times_out_at_open(tmp_path, autojump_clock):
    async def script(stream):
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        board = SimBoard(await _peer(tmp_path, nursery, script), hello_timeout=3)
        with pytest.raises(BoardError, match="sent no HELLO in 3 s"):
            await board.open()
        nursery.cancel_scope.cancel()


async def test_peer_gone_mid_frame(tmp_path):
    async def script(stream):
        await stream.send_all(simwire.encode(simwire.Hello(1, "alaw", "r")))
        await stream.send_all(b"\x03\x01\x00\xa0" + bytes(10))  # and gone, mid-frame

    async with trio.open_nursery() as nursery:
        board = SimBoard(await _peer(tmp_path, nursery, script))
        await board.open()
        assert board.law == "alaw"
        with pytest.raises(BoardError, match="closed the connection"):
            await board.receive()
        nursery.cancel_scope.cancel()


async def test_reset_peer(tmp_path):
    sent = trio.Event()

    async def script(stream):
        await stream.send_all(simwire.encode(simwire.Hello(1, "ulaw", "r")))
        await sent.wait()
        # closing with the host's bytes unread: the host's next read gets ECONNRESET

    async with trio.open_nursery() as nursery:
        board = SimBoard(await _peer(tmp_path, nursery, script))
        await board.open()
        await board.set_hook(1, True)
        sent.set()
        with pytest.raises(BoardError, match="connection to the board simulator at .* failed: .*reset"):
            await board.receive()
        assert not board.is_open
        nursery.cancel_scope.cancel()
