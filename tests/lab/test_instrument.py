"""The simulated line tester (lab/instrument.py): its SCPI parser and error queue, and the
server on a real TCP socket driving the real board simulator, reached through pyvisa-py and
through raw sockets.  Timeouts are hang guards only."""
from __future__ import annotations

import pytest
import pyvisa
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from lab.instrument import (
    IDN,
    MAX_CLIENTS,
    MAX_ERRORS,
    MAX_LINE,
    Command,
    ErrorQueue,
    InstrumentServer,
    LineBuffer,
    LineTester,
    ScpiError,
    parse_line,
    test_message,
)
from lab.voiceboard import open_voiceboard
from telephony.analog.simboard import SimBoard
from telephony.core import dsp, dtmf

GUARD = 20.0


# -- the parser ---------------------------------------------------------------------------
def test_units_headers_and_parameters():
    units = parse_line(b':LINE:SEL a,2;LINE:DIG "#12;34";*IDN?;meas:loop?')
    assert units == [Command(("LINE", "SEL"), False, ("a", "2"), (False, False)),
                     Command(("LINE", "DIG"), False, ("#12;34",), (True,)),
                     Command(("*IDN",), True), Command(("MEAS", "LOOP"), True)]
    assert parse_line(b"LINE:DIG 'a''b'") == [Command(("LINE", "DIG"), False, ("a'b",), (True,))]
    assert parse_line(b"") == []


@pytest.mark.parametrize("line, code", [
    (b'LINE:DIG "12', -102), (b"LINE:SEL a,,2", -102), (b"LINE:SEL a 2", -102),
    (b"9LINE", -102), (b"LINE:RING;;*IDN?", -102), (b"\xff\xfe", -101), (b"LINE\x01", -101),
    (b"A:B:C:D:E:F:G", -113), (b";".join([b"*CLS"] * 17), -100)])
def test_bad_lines_are_errors(line, code):
    units = parse_line(line)
    assert isinstance(units[-1], ScpiError) and units[-1].code == code, units


def test_line_buffer_bounds_lines_and_reports_an_overrun_once():
    buf = LineBuffer(16)
    assert buf.feed(b"*IDN?\r\nLINE:") == [b"*IDN?"]
    assert buf.feed(b"STAT?\n") == [b"LINE:STAT?"]
    assert buf.feed(b"x" * 40) == [None]
    assert buf.feed(b"y" * 4000) == []  # still the same over-long line: skipped
    assert buf.feed(b"\n*CLS\n") == [b"*CLS"]


def test_error_queue_is_fifo_bounded_with_overflow_last():
    q = ErrorQueue(3)
    assert q.pop() == '0,"No error"'
    for code in (-100, -222, -113, -102, -104):
        q.push(ScpiError(code, "x"))
    assert [q.pop() for _ in range(4)] == ['-100,"Command error; x"', '-222,"Data out of range; x"',
                                          '-350,"Queue overflow"', '0,"No error"']


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=700), max_size=8))
def test_fuzzed_bytes_never_break_the_reader_or_the_parser(chunks):
    buf = LineBuffer()
    for chunk in chunks:
        for line in buf.feed(chunk):
            assert line is None or len(line) < MAX_LINE
            if line is not None:
                for unit in parse_line(line):
                    assert isinstance(unit, (Command, ScpiError))
    assert len(buf._buf) < MAX_LINE


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["LINE", "SEL", "MEAS", "DTMF?", "*IDN?", ":", ";", ",", '"', "'",
                                 " ", "1", "a", "?", "*", "ON", "-5", "1e9", "LOOP?", "SYST:ERR?"]),
                max_size=30))
def test_fuzzed_scpi_like_text_parses_or_errors(parts):
    for unit in parse_line("".join(parts).encode()):
        assert isinstance(unit, (Command, ScpiError))


# -- the server, on the real board simulator ----------------------------------------------
class Client:
    """A raw-socket client (trio), as a script without VISA would talk to the tester."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream, self.buf = stream, b""

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def line(self) -> str:
        with trio.fail_after(GUARD):
            while b"\n" not in self.buf:
                data = await self.stream.receive_some(4096)
                assert data, "the tester closed the connection"
                self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode()

    async def query(self, text: str) -> str:
        await self.send(text.encode() + b"\n")
        return await self.line()


@pytest.fixture
async def bench(tmp_path):
    """The board simulator (boards a and b, 2 lines each) with the tester on a TCP port."""
    async with open_voiceboard(tmp_path, boards={"a": 2, "b": 2}) as sim:
        async with trio.open_nursery() as n:
            tester = LineTester(sim, message=test_message)
            server = InstrumentServer(tester)
            resource = await n.start(server.serve)
            yield sim, tester, server, resource
            n.cancel_scope.cancel()


async def connect(server: InstrumentServer) -> Client:
    return Client(await trio.open_tcp_stream("127.0.0.1", server.port))


async def test_raw_socket_identity_errors_and_garbage(bench):
    sim, tester, server, resource = bench
    assert resource == f"TCPIP::127.0.0.1::{server.port}::SOCKET"
    c = await connect(server)
    assert await c.query("*IDN?") == IDN
    assert await c.query("SYST:ERR?") == '0,"No error"'
    # every bad command: one error, nothing changed, the connection and the server go on
    await c.send(b"LINE:SEL c,1\nLINE:SEL a,9\nLINE:SEL a\nLINE:RING x\nLINE:RING 99\nFOO:BAR\n"
                 b"LINE:ALARM MAYBE\nLINE:DIG \"12X\"\nLINE:DIG 12\n\xff\x00garbage\n"
                 + b"A" * (MAX_LINE + 10) + b"\nLINE:SEL? 1\n")
    want = ["-224", "-222", "-109", "-104", "-222", "-113", "-224", "-224", "-104", "-101", "-363", "-108"]
    assert await c.query("SYST:ERR:COUN?") == str(len(want))
    got = [(await c.query("SYST:ERR?")).split(",")[0] for _ in want]
    assert got == want
    assert await c.query("LINE:SEL?") == "a,1"  # unchanged by the refused selections
    assert await c.query("SYST:ERR?") == '0,"No error"'
    # a full queue keeps its first entries and ends in -350
    await c.send(b"NOPE\n" * (MAX_ERRORS + 5))
    errs = [await c.query("SYST:ERR?") for _ in range(MAX_ERRORS + 1)]
    assert errs[0].startswith("-113") and errs[MAX_ERRORS - 1] == '-350,"Queue overflow"'
    assert errs[MAX_ERRORS] == '0,"No error"'
    # several queries in one line: one answer line, SCPI's ';' between
    assert await c.query("LINE:SEL b,2;LINE:SEL?;*OPC?") == "b,2;1"
    await c.query("*CLS;*OPC?")
    await c.send(b"ERR\n")
    await c.query("*CLS;*OPC?")
    assert await c.query("SYST:ERR?") == '0,"No error"'
    await c.stream.aclose()
    assert server.counters["errors"] == 0  # no command hit a bug


@settings(max_examples=60, deadline=None)
@given(garbage=st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=6))
def test_fuzzed_garbage_over_a_socket_leaves_the_tester_answering(garbage):
    async def main():
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            async with open_voiceboard(d, boards={"a": 1}) as sim:
                async with trio.open_nursery() as n:
                    server = InstrumentServer(LineTester(sim))
                    await n.start(server.serve)
                    c = await connect(server)
                    for g in garbage:
                        await c.send(g)
                    await c.send(b"\n*CLS;*IDN?\n")
                    # whatever came before, the last line is answered (earlier lines may have
                    # been queries with answers of their own)
                    while await c.line() != IDN:
                        pass
                    assert sim.line_state("a", 1) == "idle"
                    assert server.counters["errors"] == 0
                    n.cancel_scope.cancel()

    trio.run(main)


async def test_pyvisa_py_drives_a_call_on_the_board(bench):
    """Through pyvisa-py's TCPIP SOCKET session: the tester rings line a,1 for a host on the
    board (a SimBoard that answers on the second ring and then dials a lamp code on line 2), measures
    the loop, the DTMF it dialled, the lamp, and drops the loop."""
    sim, tester, server, resource = bench
    rm = pyvisa.ResourceManager("@py")
    inst = rm.open_resource(resource, read_termination="\n", write_termination="\n", timeout=10000)
    host = SimBoard(sim.socket_path("a"))
    await host.open()
    try:
        async with trio.open_nursery() as n:
            rings = []

            async def answerer():
                while True:
                    ev = await host.receive()
                    if getattr(ev, "event", None) == "ring_on" and ev.line == 1:
                        rings.append(ev)
                        if len(rings) == 2:
                            await host.set_hook(1, True)
                    if getattr(ev, "event", None) == "loop_drop" and ev.line == 1:
                        await host.set_hook(1, False)

            n.start_soon(answerer)
            q = lambda cmd: trio.to_thread.run_sync(inst.query, cmd)  # noqa: E731
            w = lambda cmd: trio.to_thread.run_sync(inst.write, cmd)  # noqa: E731
            assert await q("*IDN?") == IDN
            await w("LINE:SEL a,1")
            assert await q("LINE:STAT?") == "idle"
            assert float(await q("MEAS:LOOP?")) == 0.0
            await w('LINE:DIG ""')
            await w("LINE:AUD 20")
            await w("LINE:RING 4")
            assert await q("SYST:ERR?") == '0,"No error"'
            with trio.fail_after(GUARD):
                while await q("LINE:STAT?") != "offhook":
                    await trio.sleep(0.02)
            assert float(await q("MEAS:LOOP?")) == pytest.approx(sim.loop_ma)
            await w("MEAS:LEV?")  # the port has sent nothing yet: no figure, an error
            assert (await q("SYST:ERR?")).startswith("-230")
            tone = dsp.tone((1000.0,), 400, (-12.0,)) + dsp.silence_ms(200)
            for i in range(0, len(tone), 320):
                await host.send_audio(1, tone[i:i + 320])
            handle = tester.state.records[("a", 1)].handle
            with trio.fail_after(GUARD):  # the frames cross the socket
                while len(handle.heard) < len(tone):
                    await trio.sleep(0.01)
            assert float(await q("MEAS:LEV?")) == pytest.approx(-12.0, abs=0.3)  # the silence not counted
            ring_count, seconds = (await q("MEAS:RING?")).split(",")
            assert int(ring_count) == 2 and float(seconds) > 0
            await w("LINE:RING 4")  # the line is busy: refused
            assert (await q("SYST:ERR?")).startswith("-221")
            await w("LINE:HANG")
            with trio.fail_after(GUARD):
                while await q("LINE:STAT?") != "idle":
                    await trio.sleep(0.02)
            assert float(await q("MEAS:LOOP?")) == 0.0
            # the host seizes line 2 and dials a lamp code: the tester measures it
            assert await q('LINE:SEL a,2;MEAS:DTMF:COUN?;MEAS:DTMF?') == '0;"",0.0,0.0,-99.0'
            await host.set_hook(2, True)
            await trio.sleep(0.3)  # dial tone first, as a port waits for it
            for frame_start in range(0, len(pcm := dtmf.generate("*911234", level_dbm0=-7.0)), 320):
                await host.send_audio(2, pcm[frame_start:frame_start + 320].ljust(320, b"\0"))
            with trio.fail_after(GUARD):
                while await q('MEAS:LAMP? "1234"') != "1":
                    await host.send_audio(2, dsp.silence_ms(20))
            await w("LINE:SEL a,2")
            assert await q("LINE:STAT?;MEAS:DTMF:COUN?") == "offhook;1"
            digits, low, high, level = (await q("MEAS:DTMF?")).split(",")
            assert digits == '"*911234"'
            assert float(low) == pytest.approx(941, rel=0.015)
            assert float(high) == pytest.approx(1209, rel=0.015)
            assert float(level) == pytest.approx(-7.0 + 3.01, abs=0.5)  # the pair: two tones at -7
            await host.set_hook(2, False)
            # alarm on and off
            await w("LINE:ALARM ON")
            assert await q("LINE:STAT?;LINE:ALARM?") == "alarm;1"
            await w("LINE:ALARM OFF")
            assert await q("LINE:STAT?;SYST:ERR?") == 'idle;0,"No error"'
            n.cancel_scope.cancel()
    finally:
        await host.aclose()
        await trio.to_thread.run_sync(inst.close)
        await trio.to_thread.run_sync(rm.close)


async def test_rst_ends_calls_and_clears_alarms(bench):
    sim, tester, server, resource = bench
    c = await connect(server)
    await c.send(b"LINE:SEL a,1;LINE:RING 2\n")  # no port on board a: refused
    assert (await c.query("SYST:ERR?")).startswith("-200")
    host = SimBoard(sim.socket_path("a"))  # a port that never answers
    await host.open()
    try:
        await c.send(b"LINE:SEL b,1;LINE:ALARM ON\nLINE:SEL a,1;LINE:RING 2\n")
        assert await c.query("LINE:STAT?;SYST:ERR?") == 'ringing;0,"No error"'
        await c.send(b"*RST\n")
        with trio.fail_after(GUARD):
            while sim.line_state("a", 1) != "idle":
                await trio.sleep(0.02)
        assert sim.line_state("b", 1) == "idle"
        assert sim.calls[-1].ended_by == "abandoned"
        assert await c.query("LINE:SEL?;SYST:ERR?") == 'a,1;0,"No error"'
    finally:
        await host.aclose()


async def test_a_line_the_simulator_does_not_hunt_is_refused_not_rung_elsewhere(bench):
    """The board simulator rings the first idle line: a,2 while a,1 is idle is refused
    (-221) and no line rings; with a,1 ringing, a,2 is the one rung."""
    sim, tester, server, resource = bench
    host = SimBoard(sim.socket_path("a"))
    await host.open()
    try:
        c = await connect(server)
        await c.send(b"LINE:SEL a,2;LINE:RING 1\n")
        assert (await c.query("SYST:ERR?")).startswith("-221")
        assert (sim.line_state("a", 1), sim.line_state("a", 2)) == ("idle", "idle")
        await c.send(b"LINE:SEL a,1;LINE:RING 2;LINE:SEL a,2;LINE:RING 2\n")
        assert await c.query("LINE:STAT?;SYST:ERR?") == 'ringing;0,"No error"'
        assert [(call.board, call.line) for call in sim.calls] == [("a", 1), ("a", 2)]
        await c.send(b"*RST\n")
    finally:
        await host.aclose()


def test_the_tester_as_a_process_serves_pyvisa(tmp_path):
    """``python -m lab.instrument``: the board simulator and the tester in a process of their
    own, reached through pyvisa-py at the resource it prints; SIGINT ends it."""
    import os
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "lab.instrument", "--dir", str(tmp_path), "--lines", "2"],
                            stdout=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline().strip() for _ in range(3)]
        assert lines[0] == f"board a: {tmp_path / 'board_a.sock'}" and lines[1].startswith("board b: ")
        rm = pyvisa.ResourceManager("@py")
        inst = rm.open_resource(lines[2], read_termination="\n", write_termination="\n", timeout=10000)
        assert inst.query("*IDN?") == IDN
        inst.write("LINE:SEL b,3")
        assert inst.query("SYST:ERR?").startswith("-222")
        inst.close()
        rm.close()
    finally:
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=GUARD) == 0


async def test_clients_beyond_the_limit_are_closed_the_others_served(bench):
    sim, tester, server, resource = bench
    clients = [await connect(server) for _ in range(MAX_CLIENTS)]
    for c in clients:
        assert await c.query("*OPC?") == "1"
    extra = await connect(server)
    with trio.fail_after(GUARD):
        assert await extra.stream.receive_some(100) == b""  # closed at once
    await clients[0].stream.aclose()
    with trio.fail_after(GUARD):
        while server.clients == MAX_CLIENTS:
            await trio.sleep(0.01)
    again = await connect(server)
    assert await again.query("*IDN?") == IDN
    assert server.counters["refused"] == 1
