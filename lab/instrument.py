"""A simulated telephone-line tester and audio analyser, remote-controlled by SCPI.

It stands in for the bench instrument of an analog-port qualification (docs/analog.md,
"Hardware qualification"): on one side it drives the lines of the board simulator
(:class:`lab.voiceboard.VoiceBoardSim`: rings a line, sends digits after answer, drops the
loop, raises an alarm), on the other it measures what the port under test does (hook state,
loop current, the DTMF it dials and its level, the level of its audio).  It is reached the way
a LAN instrument is: a raw TCP socket carrying newline-terminated SCPI (the VISA resource
``TCPIP::127.0.0.1::PORT::SOCKET``), so the qualification run opens it with pyvisa exactly as
it opens a real one.

The command set is in docs/analog.md.  Errors follow SCPI: a command that cannot be carried out
changes nothing and puts ``<code>,"<text>"`` in the error queue (``SYST:ERR?`` reads it, oldest
first; ``0,"No error"`` when empty; at most :data:`MAX_ERRORS`, the last slot then becomes
``-350,"Queue overflow"``); a query that fails answers nothing.  A line longer than
:data:`MAX_LINE` bytes is dropped whole (``-363``).  Nothing a client sends ends the server.

``python -m lab.instrument --dir DIR`` runs the board simulator (``DIR/board_a.sock``, ...) with
the instrument on a TCP port and prints its VISA resource.
"""
from __future__ import annotations

import argparse
import logging
import math
import re
import signal
import sys
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from telephony.core import dsp

log = logging.getLogger("lab.instrument")

__all__ = ["MAX_LINE", "MAX_ERRORS", "ERRORS", "ScpiError", "LineBuffer", "Command", "parse_line",
           "ErrorQueue", "LineTester", "InstrumentServer", "BenchThread", "IDN", "test_message",
           "main"]

#: bytes of one program line (terminator included) the instrument reads at most
MAX_LINE = 512
#: entries of the error queue
MAX_ERRORS = 16
#: program units in one line at most
MAX_UNITS = 16
#: client connections served at once (more are closed at once)
MAX_CLIENTS = 8

IDN = "vmha lab,LTS-1 line tester (simulator),SIM0001,1.0"

ERRORS = {
    -100: "Command error",
    -101: "Invalid character",
    -102: "Syntax error",
    -104: "Data type error",
    -108: "Parameter not allowed",
    -109: "Missing parameter",
    -113: "Undefined header",
    -200: "Execution error",
    -221: "Settings conflict",
    -222: "Data out of range",
    -224: "Illegal parameter value",
    -230: "Data corrupt or stale",
    -350: "Queue overflow",
    -363: "Input buffer overrun",
}

DIGITS_RE = re.compile(r"[0-9*#A-Da-d]{0,32}")
_HEADER = re.compile(r":?(\*[A-Za-z]{2,8}\??|[A-Za-z][A-Za-z0-9]{0,15}(:[A-Za-z][A-Za-z0-9]{0,15}){0,4}\??)")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d{1,3})?")


class ScpiError(Exception):
    """A command that could not be carried out: its SCPI error code and a detail."""

    def __init__(self, code: int, detail: str = "") -> None:
        super().__init__(code, detail)
        self.code, self.detail = code, detail

    def entry(self) -> str:
        text = ERRORS.get(self.code, "Error")
        if self.detail:
            text = f"{text}; {self.detail}"
        return f'{self.code},"{text[:120].replace(chr(34), chr(39))}"'


class ErrorQueue:
    """The SCPI error/event queue: first in, first out, bounded."""

    def __init__(self, size: int = MAX_ERRORS) -> None:
        self.size = size
        self._q: deque[str] = deque()

    def push(self, err: ScpiError) -> None:
        if len(self._q) >= self.size:
            self._q[-1] = ScpiError(-350).entry()
            return
        self._q.append(err.entry())

    def pop(self) -> str:
        return self._q.popleft() if self._q else '0,"No error"'

    def clear(self) -> None:
        self._q.clear()

    def __len__(self) -> int:
        return len(self._q)


class LineBuffer:
    """Splits a byte stream into program lines (``\\n``; a ``\\r`` before it is dropped),
    keeping at most ``limit`` bytes of an unfinished line.  An over-long line is skipped up to
    its terminator and reported once as ``None`` in its place."""

    def __init__(self, limit: int = MAX_LINE) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._skipping = False

    def feed(self, data: bytes) -> list[bytes | None]:
        out: list[bytes | None] = []
        while data:
            nl = data.find(b"\n")
            chunk, data = (data, b"") if nl < 0 else (data[:nl], data[nl + 1:])
            if not self._skipping:
                self._buf += chunk
                if len(self._buf) >= self.limit:
                    self._buf.clear()
                    self._skipping = True
                    out.append(None)
            if nl >= 0:
                if not self._skipping:
                    out.append(bytes(self._buf).removesuffix(b"\r"))
                self._buf.clear()
                self._skipping = False
        return out


@dataclass(frozen=True)
class Command:
    """One program unit: the header's mnemonics (upper case, as typed), whether it is a query,
    and its parameters (quoted strings unquoted; ``quoted`` says which were)."""

    header: tuple[str, ...]
    query: bool
    args: tuple[str, ...] = ()
    quoted: tuple[bool, ...] = ()


def _split(text: str, sep: str) -> list[str]:
    """``text`` split on ``sep`` outside quoted strings; ScpiError -102 on an open quote."""
    parts, cur, quote = [], [], ""
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
            cur.append(ch)
        elif ch == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if quote:
        raise ScpiError(-102, "unterminated string")
    parts.append("".join(cur))
    return parts


def _arg(text: str) -> tuple[str, bool]:
    text = text.strip()
    if not text:
        raise ScpiError(-109 if text == "" else -102)
    if text[0] in "\"'":
        q = text[0]
        inner = text[1:-1]
        if len(text) < 2 or text[-1] != q or q in inner.replace(q + q, ""):
            raise ScpiError(-102, "bad string")
        return inner.replace(q + q, q), True
    if not re.fullmatch(r"[A-Za-z0-9+\-.]{1,32}", text):
        raise ScpiError(-102, "bad parameter")
    return text, False


def parse_unit(text: str) -> Command:
    text = text.strip(" \t")
    head, _, rest = text.partition(" ")
    if not _HEADER.fullmatch(head):
        raise ScpiError(-102 if not head or not head[0].isalpha() and head[0] not in "*:" else -113)
    query = head.endswith("?")
    names = tuple(head.lstrip(":").rstrip("?").upper().split(":"))
    rest = rest.strip(" \t")
    args: list[str] = []
    quoted: list[bool] = []
    if rest:
        for part in _split(rest, ","):
            if not part.strip():
                raise ScpiError(-102, "empty parameter")
            a, q = _arg(part)
            args.append(a)
            quoted.append(q)
    return Command(names, query, tuple(args), tuple(quoted))


def parse_line(line: bytes) -> list[Command | ScpiError]:
    """The program units of one line, in order; a unit that does not parse is its error (the
    units before it still run; SCPI stops at the first bad unit, so nothing after it does)."""
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        return [ScpiError(-101, "not ASCII")]
    if any(ord(c) < 32 and c != "\t" or ord(c) == 127 for c in text):
        return [ScpiError(-101, "control character")]
    try:
        units = _split(text, ";")
    except ScpiError as e:
        return [e]
    if len(units) > MAX_UNITS:
        return [ScpiError(-100, f"more than {MAX_UNITS} commands in one line")]
    out: list[Command | ScpiError] = []
    for unit in units:
        if not unit.strip():
            if len(units) > 1:
                out.append(ScpiError(-102, "empty command"))
                break
            continue
        try:
            out.append(parse_unit(unit))
        except ScpiError as e:
            out.append(e)
            break
    return out


def _mnemonic(typed: str, long: str) -> bool:
    """SCPI header matching: the short form (the long form's capitals) or the long form."""
    short = "".join(c for c in long if c.isupper() or c.isdigit() or c == "*")
    return typed in (short, long.upper())


def _number(cmd: Command, i: int, lo: float, hi: float, *, integer: bool = True) -> float:
    if cmd.quoted[i]:
        raise ScpiError(-104, "a number is expected")
    text = cmd.args[i]
    if not _NUMBER.fullmatch(text):
        raise ScpiError(-104, f"{text!r} is not a number")
    v = float(text)
    if not math.isfinite(v) or not lo <= v <= hi or integer and v != int(v):
        raise ScpiError(-222, f"{text} not in {lo:g}..{hi:g}")
    return int(v) if integer else v


def _nargs(cmd: Command, n: int, at_least: int | None = None) -> None:
    lo = n if at_least is None else at_least
    if len(cmd.args) < lo:
        raise ScpiError(-109)
    if len(cmd.args) > n:
        raise ScpiError(-108)


@dataclass
class LineRecord:
    """The last call the tester placed on a line (a :class:`lab.voiceboard.CallHandle`)."""

    handle: Any = None
    rings: int = 0  # cycles it was asked to ring at most


@dataclass
class TesterState:
    board: str = ""
    line: int = 1
    digits: str = ""
    audio_s: float = 4.0
    audio_kind: str = "MSG"  # MSG: the test message; SIL: silence
    records: dict[tuple[str, int], LineRecord] = field(default_factory=dict)


Handler = Callable[[Command], Awaitable[str | None]]


class LineTester:
    """The instrument: executes SCPI program lines against a board simulator ``sim`` (a
    :class:`lab.voiceboard.VoiceBoardSim`).  A call placed by ``LINE:RING`` runs in the
    simulator and outlives the command.  ``message(seconds) -> PCM`` is the test message the
    caller plays after the digits (default :func:`test_message`)."""

    def __init__(self, sim: Any, *, message: Callable[[float], bytes] | None = None) -> None:
        self.sim = sim
        self.message = message or test_message
        self.errors = ErrorQueue()
        self.lock = trio.Lock()
        self.state = TesterState(board=self._boards()[0])
        self.commands = self._table()

    # -- the board simulator -------------------------------------------------------------
    def _boards(self) -> list[str]:
        return list(self.sim.boards)

    def _lines(self, board: str) -> int:
        return len(self.sim.boards[board].lines)

    def _record(self) -> LineRecord:
        key = (self.state.board, self.state.line)
        return self.state.records.setdefault(key, LineRecord())

    def line_state(self, board: str, line: int) -> str:
        """What the tester sees on a line: ``alarm``, ``offhook`` (the port holds the loop),
        ``ringing`` or ``idle``."""
        state = self.sim.line_state(board, line)
        if state == "alarm":
            return "alarm"
        if self.sim.host_offhook(board, line):
            return "offhook"
        return "ringing" if state == "ringing" else "idle"

    # -- the command table ---------------------------------------------------------------
    def _table(self) -> list[tuple[tuple[str, ...], bool, Handler]]:
        return [
            (("*IDN",), True, self._idn),
            (("*RST",), False, self._rst),
            (("*CLS",), False, self._cls),
            (("*OPC",), True, self._opc),
            (("SYSTem", "ERRor"), True, self._err),
            (("SYSTem", "ERRor", "NEXT"), True, self._err),
            (("SYSTem", "ERRor", "COUNt"), True, self._err_count),
            (("LINE", "SELect"), False, self._select),
            (("LINE", "SELect"), True, self._select_q),
            (("LINE", "RING"), False, self._ring),
            (("LINE", "DIGits"), False, self._digits),
            (("LINE", "DIGits"), True, self._digits_q),
            (("LINE", "AUDio"), False, self._audio),
            (("LINE", "AUDio"), True, self._audio_q),
            (("LINE", "STATe"), True, self._stat),
            (("LINE", "STATus"), True, self._stat),
            (("LINE", "HANGup"), False, self._hang),
            (("LINE", "ALARm"), False, self._alarm),
            (("LINE", "ALARm"), True, self._alarm_q),
            (("MEASure", "LOOP"), True, self._loop),
            (("MEASure", "DTMF"), True, self._dtmf),
            (("MEASure", "DTMF", "COUNt"), True, self._dtmf_count),
            (("MEASure", "LEVel"), True, self._level),
            (("MEASure", "RING"), True, self._ring_q),
            (("MEASure", "LAMP"), True, self._lamp_q),
        ]

    def _find(self, cmd: Command) -> Handler:
        for names, query, fn in self.commands:
            if query == cmd.query and len(names) == len(cmd.header) \
                    and all(_mnemonic(t, n) for t, n in zip(cmd.header, names, strict=True)):
                return fn
        raise ScpiError(-113, ":".join(cmd.header)[:40] + ("?" if cmd.query else ""))

    async def execute_line(self, line: bytes | None) -> str | None:
        """Run one program line; the answers of its queries joined by ``;`` (None: none).
        The first unit that fails queues its error and ends the line (SCPI)."""
        if line is None:
            self.errors.push(ScpiError(-363, f"line over {MAX_LINE} bytes"))
            return None
        answers: list[str] = []
        async with self.lock:
            for unit in parse_line(line):
                if isinstance(unit, ScpiError):
                    self.errors.push(unit)
                    break
                try:
                    answer = await self._find(unit)(unit)
                except ScpiError as e:
                    self.errors.push(e)
                    break
                except ValueError as e:  # the simulator refused: nothing changed
                    self.errors.push(ScpiError(-200, str(e)[:80]))
                    break
                if unit.query and answer is not None:
                    answers.append(answer)
        return ";".join(answers) if answers else None

    # -- common commands -----------------------------------------------------------------
    async def _idn(self, cmd: Command) -> str:
        _nargs(cmd, 0)
        return IDN

    async def _rst(self, cmd: Command) -> None:
        """Every call the tester placed ends (a ringing one stops, a connected one gets its
        loop drop), every alarm clears, the settings return to their defaults."""
        _nargs(cmd, 0)
        for rec in self.state.records.values():
            if rec.handle is not None and not rec.handle.done:
                rec.handle.abandon()
        for board in self._boards():
            for line in range(1, self._lines(board) + 1):
                self.sim.set_alarm(board, line, False)
        self.state = TesterState(board=self._boards()[0])

    async def _cls(self, cmd: Command) -> None:
        _nargs(cmd, 0)
        self.errors.clear()

    async def _opc(self, cmd: Command) -> str:
        _nargs(cmd, 0)
        return "1"

    async def _err(self, cmd: Command) -> str:
        _nargs(cmd, 0)
        return self.errors.pop()

    async def _err_count(self, cmd: Command) -> str:
        _nargs(cmd, 0)
        return str(len(self.errors))

    # -- line commands -------------------------------------------------------------------
    async def _select(self, cmd: Command) -> None:
        _nargs(cmd, 2)
        board = cmd.args[0].lower()
        if board not in self._boards():
            raise ScpiError(-224, f"no board {cmd.args[0][:16]!r}; boards {','.join(self._boards())}")
        line = _number(cmd, 1, 1, self._lines(board))
        self.state.board, self.state.line = board, int(line)

    async def _select_q(self, cmd: Command) -> str:
        _nargs(cmd, 0)
        return f"{self.state.board},{self.state.line}"

    async def _digits(self, cmd: Command) -> None:
        _nargs(cmd, 1)
        if not cmd.quoted[0]:
            raise ScpiError(-104, "digits are a quoted string")
        if not DIGITS_RE.fullmatch(cmd.args[0]):
            raise ScpiError(-224, "digits are 0-9 * # A-D, at most 32")
        self.state.digits = cmd.args[0].upper()

    async def _digits_q(self, cmd: Command) -> str:
        _nargs(cmd, 0)
        return f'"{self.state.digits}"'

    async def _audio(self, cmd: Command) -> None:
        _nargs(cmd, 2, at_least=1)
        seconds = _number(cmd, 0, 0.0, 600.0, integer=False)
        kind = "MSG"
        if len(cmd.args) == 2:
            kind = cmd.args[1].upper()
            if cmd.quoted[1] or kind not in ("MSG", "SIL"):
                raise ScpiError(-224, "MSG or SIL")
        self.state.audio_s, self.state.audio_kind = seconds, kind

    async def _audio_q(self, cmd: Command) -> str:
        _nargs(cmd, 0)
        return f"{self.state.audio_s:g},{self.state.audio_kind}"

    async def _stat(self, cmd: Command) -> str:
        _nargs(cmd, 0)
        return self.line_state(self.state.board, self.state.line)

    def _huntable(self, board: str, line: int) -> bool:
        """Whether the simulator's hunt over ``board`` takes ``line`` (the first idle line)."""
        return all(self.sim.line_state(board, n) != "idle" or self.sim.host_offhook(board, n)
                   for n in range(1, line))

    async def _ring(self, cmd: Command) -> None:
        _nargs(cmd, 1)
        cycles = int(_number(cmd, 0, 1, 30))
        board, line = self.state.board, self.state.line
        if self.line_state(board, line) != "idle" or self.sim.line_state(board, line) != "idle":
            raise ScpiError(-221, f"line {board},{line} is not idle")
        if not self.sim.connected(board):
            raise ScpiError(-200, f"no port is connected to board {board}")
        if not self._huntable(board, line):
            raise ScpiError(-221, f"the board simulator rings the first idle line of {board}, not {line}")
        audio = b""
        if self.state.audio_s:
            audio = (self.message(self.state.audio_s) if self.state.audio_kind == "MSG"
                     else bytes(int(self.state.audio_s * 8000) * 2))
        handle = self.sim.start_call(digits=self.state.digits, audio=audio, hunt=[board],
                                     hangup="loop_drop", rings_max=cycles)
        if (handle.call.board, handle.call.line) != (board, line):
            handle.abandon()
            raise ScpiError(-200, f"the simulator placed the call on {handle.call.board},{handle.call.line}")
        self.state.records[(board, line)] = LineRecord(handle=handle, rings=cycles)

    async def _hang(self, cmd: Command) -> None:
        _nargs(cmd, 0)
        rec = self._record()
        if rec.handle is None or rec.handle.done:
            raise ScpiError(-221, "no call on this line")
        rec.handle.abandon()

    async def _alarm(self, cmd: Command) -> None:
        _nargs(cmd, 1)
        word = cmd.args[0].upper()
        if word not in ("ON", "OFF", "1", "0") or cmd.quoted[0]:
            raise ScpiError(-224, "ON or OFF")
        self.sim.set_alarm(self.state.board, self.state.line, word in ("ON", "1"))

    async def _alarm_q(self, cmd: Command) -> str:
        _nargs(cmd, 0)
        return "1" if self.sim.line_state(self.state.board, self.state.line) == "alarm" else "0"

    # -- measurements --------------------------------------------------------------------
    async def _loop(self, cmd: Command) -> str:
        _nargs(cmd, 0)
        return f"{float(self.sim.loop_current_ma(self.state.board, self.state.line)):.1f}"

    async def _dtmf(self, cmd: Command) -> str:
        """The last string a port dialled on the line, with its first digit's frequencies
        and level; ``"",0.0,0.0,-99.0`` when none was dialled."""
        _nargs(cmd, 0)
        d = self.sim.last_dtmf(self.state.board, self.state.line)
        if not d or "low_hz" not in d:
            return f'"{d["digits"] if d else ""}",0.0,0.0,-99.0'
        return f'"{d["digits"]}",{d["low_hz"]:.1f},{d["high_hz"]:.1f},{d["level_dbm0"]:.1f}'

    async def _dtmf_count(self, cmd: Command) -> str:
        """How many strings a port has dialled on the line (of the simulator's last 1000)."""
        _nargs(cmd, 0)
        board, line = self.state.board, self.state.line
        return str(sum(1 for e in self.sim.dialled if e["board"] == board and e["line"] == line))

    async def _level(self, cmd: Command) -> str:
        """dBm0 of what the port sent during the line's last (or current) call, counting the
        20 ms frames above -50 dBm0."""
        _nargs(cmd, 0)
        rec = self._record()
        level = None if rec.handle is None else _level(rec.handle.heard)
        if level is None:
            raise ScpiError(-230, "no audio from the port on this line")
        return f"{level:.1f}"

    async def _ring_q(self, cmd: Command) -> str:
        """``<rings>,<seconds from the first ring to off hook>`` of the line's last call;
        ``<rings>,-1`` while it is not (or was never) answered."""
        _nargs(cmd, 0)
        rec = self._record()
        call = None if rec.handle is None else rec.handle.call
        if call is None or call.answered_at is None:
            return f"{call.rings if call else 0},-1"
        return f"{call.answer_after_rings},{call.answered_at - call.started_at:.3f}"

    async def _lamp_q(self, cmd: Command) -> str:
        _nargs(cmd, 1)
        if not cmd.quoted[0] or not re.fullmatch(r"[0-9]{1,16}", cmd.args[0]):
            raise ScpiError(-224, 'an extension: "1234"')
        return "1" if self.sim.lamps.get(cmd.args[0]) else "0"


def _level(pcm: bytes) -> float | None:
    """dBm0 of the audible part of ``pcm`` (20 ms frames above -50 dBm0), None when silent."""
    frames = [pcm[i:i + 320] for i in range(0, len(pcm) - 319, 320)]
    loud = [f for f in frames if dsp.level_dbm0(f) > -50.0]
    if not loud:
        return None
    return float(dsp.level_dbm0(b"".join(loud)))


class InstrumentServer:
    """Serves a :class:`LineTester` on a TCP port (raw socket, newline-terminated SCPI)."""

    def __init__(self, tester: LineTester, host: str = "127.0.0.1", port: int = 0) -> None:
        self.tester, self.host, self.port = tester, host, port
        self.clients = 0
        self.counters = {"connections": 0, "refused": 0, "lines": 0, "errors": 0}

    @property
    def resource(self) -> str:
        return f"TCPIP::{self.host}::{self.port}::SOCKET"

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.resource)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.counters["connections"] += 1
        if self.clients >= MAX_CLIENTS:
            self.counters["refused"] += 1
            await trio.aclose_forcefully(stream)
            return
        self.clients += 1
        buf = LineBuffer()
        try:
            while True:
                data = await stream.receive_some(4096)
                if not data:
                    return
                for line in buf.feed(data):
                    self.counters["lines"] += 1
                    try:
                        answer = await self.tester.execute_line(line)
                    except Exception as e:  # noqa: BLE001 - a bug in one command: say so, go on
                        self.counters["errors"] += 1
                        self.tester.errors.push(ScpiError(-200, f"internal: {type(e).__name__}"))
                        answer = None
                    if answer is not None:
                        await stream.send_all(answer.encode("ascii", "replace") + b"\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return
        except Exception:  # noqa: BLE001 - one connection never ends the server
            self.counters["errors"] += 1
            log.exception("line tester: a client connection failed")
        finally:
            self.clients -= 1
            await trio.aclose_forcefully(stream)


def test_message(seconds: float) -> bytes:
    """The tester's test message: 1 kHz at -15 dBm0 with 200 ms gaps, ``seconds`` long."""
    out = b""
    while len(out) < int(seconds * 16000):
        out += dsp.tone((1000.0,), 800, (-15.0,)) + dsp.silence_ms(200)
    return out[:int(seconds * 16000) // 2 * 2]


test_message.__test__ = False  # not a pytest test


class BenchThread:
    """The board simulator and the tester served from a thread of their own, for blocking
    callers (the qualification run, pyvisa scripts)::

        with BenchThread(tmp, {"a": 2, "b": 2}) as bench:
            bench.resource            # TCPIP::127.0.0.1::PORT::SOCKET
            bench.socket_path("a")    # board a's socket, for a node's [ports.analog]
            bench.call(bench.sim.line_state, "a", 1)   # anything in the simulator's thread
    """

    def __init__(self, directory: str | Path, boards: dict[str, int] | None = None, *, port: int = 0,
                 **sim_kw: Any) -> None:
        self.directory, self.boards, self.port, self.sim_kw = Path(directory), boards, port, sim_kw
        self.sim: Any = None
        self.server: InstrumentServer | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._cancel: trio.CancelScope | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="line-tester", daemon=True)

    @property
    def resource(self) -> str:
        assert self.server is not None
        return self.server.resource

    def socket_path(self, board: str) -> str:
        return self.sim.socket_path(board)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` run in the simulator's thread (its state is not thread-safe)."""
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as e:  # noqa: BLE001 - handed to the thread that started us
            self._error = e
        finally:
            self._ready.set()

    async def _main(self) -> None:
        from lab.voiceboard import open_voiceboard

        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as self._cancel:
            async with open_voiceboard(self.directory, self.boards, **self.sim_kw) as sim:
                self.sim = sim
                self.server = InstrumentServer(LineTester(sim), port=self.port)
                async with trio.open_nursery() as n:
                    await n.start(self.server.serve)
                    self._ready.set()
                    await trio.sleep_forever()

    def __enter__(self) -> BenchThread:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None or self.server is None:
            raise RuntimeError(f"the simulated bench did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive() and self._cancel is not None:
            try:
                trio.from_thread.run_sync(self._cancel.cancel, trio_token=self._token)
            except trio.RunFinishedError:
                pass
        self._thread.join(timeout=10)


async def _main(args: argparse.Namespace) -> None:
    from lab.voiceboard import open_voiceboard

    args.dir.mkdir(parents=True, exist_ok=True)
    boards = {name: args.lines for name in args.boards.split(",")}
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_voiceboard(args.dir, boards) as sim:
            server = InstrumentServer(LineTester(sim), port=args.port)
            async with trio.open_nursery() as n:
                resource = await n.start(server.serve)
                for name in boards:
                    print(f"board {name}: {sim.socket_path(name)}", flush=True)
                print(resource, flush=True)
                async for _ in signals:  # SIGINT or SIGTERM: stop
                    n.cancel_scope.cancel()
                    break


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lab.instrument", description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", type=Path, required=True, help="where the board sockets go")
    p.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (default: any free)")
    p.add_argument("--boards", default="a,b", help="board names (default a,b)")
    p.add_argument("--lines", type=int, default=4, help="lines per board (default 4)")
    args = p.parse_args(argv)
    trio.run(_main, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
