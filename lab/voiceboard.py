"""A voice board and the PBX behind it — a **simulator** (nobody has an analog voice board and a
circuit-switched PBX here).  It serves the board simulator's wire (docs/analog.md, "The
simulator's wire"; :mod:`telephony.analog.core.simwire`) on one Unix socket per board, for the
host's :class:`telephony.analog.simboard.SimBoard`, and plays the exchange side of every FXO
line and the callers:

::

    async with open_voiceboard(tmp_path, boards={"a": 4, "b": 4}, law="ulaw") as sim:
        board = SimBoard(sim.socket_path("a"))
        ...
        call = await sim.call(digits="#1234", audio=pcm, hunt=("a", "b"))
        call.answered, call.heard, call.answer_after_rings

What it models, per line (docs/analog.md, "The board simulator"):

* **state** (:meth:`VoiceBoardSim.line_state`): ``idle``, ``ringing``, ``answered`` (a call is
  connected), ``released`` (the PBX ended the call, the host is still off hook), ``seized``
  (the host went off hook with no call: dial tone), ``dialling``, ``confirmed`` (a feature code
  was accepted), ``reorder``, ``alarm``;
* **loop current** (:meth:`VoiceBoardSim.loop_current_ma`): :attr:`VoiceBoardSim.loop_ma`
  (25 mA) while the host holds the line off hook and the PBX feeds the loop; 0 on hook, during
  a loop drop, in alarm;
* **ringing** with the tone profile's ring cadence on trio's clock (``RING_ON``/``RING_OFF``);
  the caller-ID burst (:mod:`telephony.core.callerid`) as on-hook audio after the first ring;
* **audio** both ways in 20 ms frames in real time (trio's clock): one frame every 20 ms for
  every line the host holds off hook (the caller's audio, a tone, or silence); what the host
  sends is decoded and recorded;
* **seizures**: dial tone; the host's DTMF is decoded (:class:`telephony.core.dtmf.DtmfDetector`)
  and acted on: a feature code (:attr:`VoiceBoardSim.feature_codes`, ``*91``/``*92`` + an
  extension of 2..8 digits, ended by ``#`` or the interdigit timeout) sets
  :attr:`VoiceBoardSim.lamps` and answers with the confirmation tone; anything else gets
  reorder.  Every dialled string is kept in :attr:`VoiceBoardSim.dialled` with the level and
  the two measured frequencies of its first digit.

One host connection per board at a time: a second one is refused (logged, counted in
``refused``) and closed; after a drop the next connection gets ``HELLO`` again.  A host that
breaks the protocol is logged, counted (``protocol_errors``) and disconnected; the simulator
never dies of what a host sends.
"""
from __future__ import annotations

import logging
import math
import os
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import trio

from telephony.analog.board import Audio, BoardError, Event, LineEvent
from telephony.analog.core import simwire
from telephony.analog.simboard import SimBoard
from telephony.core import callerid as cid_codec
from telephony.core import dsp, dtmf, g711, tones
from telephony.core.dsp import DBM0_PEAK
from telephony.runtime.tasks import TaskFailures, python_logger

__all__ = ["VoiceBoardSim", "SimCall", "CallHandle", "SimEvent", "open_voiceboard", "measure_dtmf",
           "HANGUPS", "BoardHost", "open_host"]

log = logging.getLogger("lab.voiceboard")

RATE = 8000
FRAME = 160  # samples per 20 ms frame
FRAME_BYTES = 2 * FRAME
TICK = 0.020
SILENCE = bytes(FRAME_BYTES)
HANGUPS = ("loop_drop", "tone", "none")
_AUDIO_QUEUE = 512  # frames queued to a host beyond which audio is dropped (overrun)
_MAX_QUEUE = 4096  # frames queued beyond which the host is disconnected (it does not read)
_MAX_RECORD_S = 600  # most seconds of a call's heard audio kept
_MAX_DIAL_S = 60  # most seconds of a seizure's audio kept for the DTMF measurement


@dataclass(frozen=True)
class SimEvent:
    """One thing that happened on a line: an event sent to the host (``ring_on``, ...,
    ``alarm_clear``; ``delivered`` False when no host was connected) or the host's hook
    (``offhook``/``onhook``)."""

    t: float
    board: str
    line: int
    kind: str
    ms: int = 0
    delivered: bool = True


@dataclass
class SimCall:
    """A call the simulated PBX placed: filled in while it goes, final once it ended.

    ``ended_by``: ``"pbx"`` (it hung up as told), ``"host"`` (the host went on hook first),
    ``"no_answer"`` (``rings_max`` rings), ``"no_line"`` (no idle line on a connected board),
    ``"abandoned"`` (:meth:`CallHandle.abandon` while ringing), ``"alarm"`` (the line went
    into alarm).  Times are trio's."""

    board: str | None
    line: int | None
    digits: str
    hangup: str
    answered: bool = False
    rings: int = 0
    answer_after_rings: int | None = None
    callerid_sent: bool = False
    heard: bytes = b""
    started_at: float = 0.0
    answered_at: float | None = None
    pbx_hangup_at: float | None = None
    host_onhook_at: float | None = None
    ended_at: float | None = None
    ended_by: str = ""


class CallHandle:
    """A call in progress (:meth:`VoiceBoardSim.start_call`)."""

    def __init__(self, call: SimCall) -> None:
        self.call = call
        self._done = trio.Event()
        self._abandon = False
        self._line: _Line | None = None

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def heard(self) -> bytes:
        """What the host has sent so far."""
        line = self._line
        if line is not None and line.rx is not None and not self.done:
            return bytes(line.rx)
        return self.call.heard

    async def wait(self) -> SimCall:
        """The call, once it has ended."""
        await self._done.wait()
        return self.call

    def abandon(self) -> None:
        """The caller hangs up now: a ringing call stops ringing, a connected one ends with its
        hang-up (loop drop, tone or nothing)."""
        self._abandon = True
        if self._line is not None:
            self._line.pulse()


class _Player:
    """What the PBX sends on one line: one-shot audio first, then a looped tone (or silence)."""

    def __init__(self, on_drained: Callable[[], None]) -> None:
        self._once = bytearray()
        self._pos = 0
        self._loop = b""
        self._loop_pos = 0
        self._on_drained = on_drained

    @property
    def playing(self) -> bool:
        return self._pos < len(self._once)

    def play(self, pcm: bytes, then: bytes = b"") -> None:
        """Play ``pcm`` (replacing what was playing), then loop ``then`` (silence if empty)."""
        self._once = bytearray(pcm)
        if len(self._once) % FRAME_BYTES:
            self._once += bytes(FRAME_BYTES - len(self._once) % FRAME_BYTES)
        self._pos = 0
        self._loop, self._loop_pos = then, 0

    def loop(self, pcm: bytes) -> None:
        self.play(b"", pcm)

    def stop(self) -> None:
        self.play(b"", b"")

    def frame(self) -> bytes:
        if self._pos < len(self._once):
            out = bytes(self._once[self._pos:self._pos + FRAME_BYTES])
            self._pos += FRAME_BYTES
            if self._pos >= len(self._once):
                self._once = bytearray()
                self._pos = 0
                self._on_drained()
            return out
        if not self._loop:
            return SILENCE
        out = bytearray()
        while len(out) < FRAME_BYTES:
            piece = self._loop[self._loop_pos:self._loop_pos + FRAME_BYTES - len(out)]
            out += piece
            self._loop_pos = (self._loop_pos + len(piece)) % len(self._loop)
        return bytes(out)


@dataclass
class _Dial:
    """A seizure's digit collection."""

    detector: Any
    started: float
    digits: str = ""
    last_digit_at: float = 0.0
    audio: bytearray = field(default_factory=bytearray)
    first_digit_sample: int | None = None
    changed: trio.Event = field(default_factory=trio.Event)


class _Line:
    def __init__(self, board: _Board, number: int) -> None:
        self.board = board
        self.number = number
        self.state = "idle"
        self.host_offhook = False
        self.loop_dropped = False
        self.alarm = False
        self.call: CallHandle | None = None
        self.player = _Player(self.pulse)
        self.onhook_audio = bytearray()  # the caller-ID burst, sent while on hook
        self.rx: bytearray | None = None  # the host's audio of the call in progress
        self.dial: _Dial | None = None
        self.changed = trio.Event()
        self.received = 0  # audio frames from the host
        self.last_rx: bytes | None = None  # the host's last frame (for the echo)
        self.noise_pos = 0

    def pulse(self) -> None:
        self.changed.set()
        self.changed = trio.Event()
        if self.dial is not None:
            self.dial.changed.set()
            self.dial.changed = trio.Event()


class _Conn:
    def __init__(self, stream: trio.SocketStream, cancel: trio.CancelScope) -> None:
        self.stream = stream
        self.cancel = cancel
        self.queue: deque[bytes] = deque()
        self.wake = trio.Event()
        self.done = trio.Event()


class _Board:
    def __init__(self, name: str, lines: int, path: Path) -> None:
        self.name = name
        self.path = path
        self.lines = {n: _Line(self, n) for n in range(1, lines + 1)}
        self.conn: _Conn | None = None
        self.connections = 0


class VoiceBoardSim:
    """The simulator.  ``boards``: board name -> line count; ``law``: ``"ulaw"``/``"alaw"``;
    ``profile``: the tone profile (:data:`telephony.core.tones.PROFILES`) for dial tone,
    reorder, confirmation and the ring cadence.  Run it with :meth:`run` in a nursery (or
    :func:`open_voiceboard`)."""

    def __init__(self, directory: str | os.PathLike, boards: dict[str, int] | None = None, *,
                 law: str = "ulaw", profile: str = "na", cpc_ms: int = 600,
                 callerid_standard: str | None = None) -> None:
        boards = {"a": 4, "b": 4} if boards is None else dict(boards)
        if not boards:
            raise ValueError("the simulator needs at least one board")
        for name, n in boards.items():
            if not (isinstance(name, str) and name.isidentifier() and len(name) <= 32):
                raise ValueError(f"board name {name!r} must be a short identifier")
            if type(n) is not int or not 1 <= n <= 255:
                raise ValueError(f"board {name}: {n!r} lines is not in 1..255")
        if law not in simwire.LAWS:
            raise ValueError(f"law must be one of {simwire.LAWS}, not {law!r}")
        if profile not in tones.PROFILES:
            raise ValueError(f"unknown tone profile {profile!r}; known: {', '.join(tones.PROFILES)}")
        self.directory = Path(directory)
        self.law = law
        self.profile = profile
        if type(cpc_ms) is not int or not 0 < cpc_ms <= 0xFFFF:
            raise ValueError(f"cpc_ms {cpc_ms!r} is not in 1..65535")
        self.cpc_ms = cpc_ms
        self.callerid_standard = callerid_standard or ("bell202" if profile == "na" else "v23")
        if self.callerid_standard not in cid_codec.STANDARDS:
            raise ValueError(f"callerid_standard must be one of {', '.join(cid_codec.STANDARDS)}")
        self.boards = {name: _Board(name, n, self.directory / f"board_{name}.sock")
                       for name, n in boards.items()}
        for b in self.boards.values():
            if len(os.fsencode(b.path)) > 100:
                raise ValueError(f"socket path {b.path} is too long for a Unix socket")
        #: loop current while the host holds a fed loop, mA
        self.loop_ma = 25.0
        #: feature code -> what it does to the lamp of the extension dialled after it
        self.feature_codes = {"on": "*91", "off": "*92"}
        #: seconds after a digit that end the dialled string; seconds of dial tone before reorder
        self.interdigit_s = 3.0
        self.first_digit_s = 10.0
        #: seconds the PBX waits for the host to hang up after ending a call (then silence)
        self.release_s = 10.0
        #: seconds a new host connection waits for the previous one to end before it is refused
        self.admit_wait_s = 1.0
        #: the line's hybrid: the host hears its own audio back this many dB down, one frame
        #: (20 ms) later (None: no echo); and the line's idle noise (white, dBm0; None: none)
        self.echo_db: float | None = None
        self.noise_dbm0: float | None = None
        self.lamps: dict[str, bool] = {}
        self.dialled: list[dict[str, Any]] = []
        self.events: deque[SimEvent] = deque(maxlen=2000)
        self.calls: list[SimCall] = []
        self.protocol_errors: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.overruns: Counter[str] = Counter()
        self.task_failures = TaskFailures(python_logger(log))
        self._nursery: trio.Nursery | None = None
        self._tone_cache: dict[str, bytes] = {}

    # ------------------------------------------------------------------ running

    def socket_path(self, board: str) -> str:
        return str(self._board(board).path)

    def connected(self, board: str) -> bool:
        """Whether a host holds ``board``'s connection."""
        return self._board(board).conn is not None

    def drop_connection(self, board: str) -> bool:
        """Close the host's connection to ``board`` (as a board reset does); False if there
        was none."""
        b = self._board(board)
        if b.conn is None:
            return False
        log.info("board %s: dropping the host's connection", b.name)
        b.conn.cancel.cancel()
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve every board until cancelled (the sockets are removed at the end)."""
        listeners = []
        try:
            for b in self.boards.values():
                listeners.append(await self._listen(b.path))
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for b, sock in zip(self.boards.values(), listeners, strict=True):
                    nursery.start_soon(self._accept_loop, b, sock)
                    nursery.start_soon(self._ticker, b)
                task_status.started()
        finally:
            self._nursery = None
            for sock in listeners:
                sock.close()
            for b in self.boards.values():
                try:
                    b.path.unlink()
                except FileNotFoundError:
                    pass

    @staticmethod
    async def _listen(path: Path) -> trio.socket.SocketType:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        try:
            await sock.bind(str(path))
            sock.listen(4)
        except OSError as e:
            sock.close()
            raise OSError(e.errno, f"the voice-board simulator cannot listen on {path}: "
                                   f"{e.strerror or e}") from e
        return sock

    async def _accept_loop(self, b: _Board, sock: trio.socket.SocketType) -> None:
        assert self._nursery is not None
        while True:
            try:
                conn, _ = await sock.accept()
            except OSError as e:
                self.task_failures.failed(f"voiceboard-{b.name}-accept", e)
                await trio.sleep(0.1)
                continue
            self._nursery.start_soon(self._admit, b, trio.SocketStream(conn))

    async def _admit(self, b: _Board, stream: trio.SocketStream) -> None:
        """Serve a new host connection, or refuse it while another host holds the board (a
        host that just closed its connection is let go first: the reader sees its end in a
        moment)."""
        try:
            old = b.conn
            if old is not None:
                with trio.move_on_after(self.admit_wait_s):
                    await old.done.wait()
            if b.conn is not None:
                self.refused[b.name] += 1
                log.warning("board %s: a second host connection refused (one host per board)", b.name)
                await stream.aclose()
                return
            conn = b.conn = _Conn(stream, trio.CancelScope())
            await self._serve(b, conn)
        except Exception as e:  # noqa: BLE001 - one connection never ends the simulator
            self.task_failures.failed(f"voiceboard-{b.name}-connection", e)

    async def _serve(self, b: _Board, conn: _Conn) -> None:
        stream = conn.stream
        b.connections += 1
        log.info("board %s: host connected (connection %d)", b.name, b.connections)
        try:
            with conn.cancel:
                self._send(b, simwire.encode(simwire.Hello(len(b.lines), self.law, b.name)))
                for line in b.lines.values():
                    if line.alarm:
                        self._emit(line, "alarm")
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer, b, conn)
                    nursery.start_soon(self._reader, b, conn)
        finally:
            if b.conn is conn:
                b.conn = None
            for line in b.lines.values():  # a lost host is an on-hook host
                if line.host_offhook:
                    self._hook(line, False)
            conn.done.set()
            with trio.CancelScope(shield=True):
                await stream.aclose()
            log.info("board %s: host disconnected", b.name)

    async def _writer(self, b: _Board, conn: _Conn) -> None:
        try:
            while True:
                if not conn.queue:
                    conn.wake = trio.Event()
                    await conn.wake.wait()
                    continue
                data = b"".join(conn.queue)
                conn.queue.clear()
                await conn.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            log.info("board %s: sending to the host failed: %s", b.name, e)
        conn.cancel.cancel()

    async def _reader(self, b: _Board, conn: _Conn) -> None:
        decoder = simwire.Decoder(simwire.TO_BOARD, lines=len(b.lines))
        try:
            while True:
                data = await conn.stream.receive_some(65536)
                if not data:
                    break
                try:
                    frames = decoder.feed(data)
                except simwire.WireError as e:
                    for frame in e.frames:
                        self._from_host(b, frame)
                    self.protocol_errors[b.name] += 1
                    log.warning("board %s: bad frame from the host, disconnecting: %s", b.name, e)
                    break
                for frame in frames:
                    self._from_host(b, frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            log.info("board %s: reading from the host failed: %s", b.name, e)
        conn.cancel.cancel()

    def _send(self, b: _Board, data: bytes, *, audio: bool = False) -> bool:
        conn = b.conn
        if conn is None:
            return False
        if audio and len(conn.queue) >= _AUDIO_QUEUE:
            self.overruns[b.name] += 1
            return False
        if len(conn.queue) >= _MAX_QUEUE:
            log.warning("board %s: the host does not read; disconnecting", b.name)
            conn.cancel.cancel()
            return False
        conn.queue.append(data)
        conn.wake.set()
        return True

    async def _ticker(self, b: _Board) -> None:
        """Every 20 ms, one frame to every line the host holds off hook (and the on-hook
        caller-ID burst)."""
        next_at = trio.current_time()
        while True:
            next_at += TICK
            now = trio.current_time()
            if now - next_at > 0.2:  # far behind (a stalled process): skip, do not burst
                next_at = now
            await trio.sleep_until(next_at)
            try:
                self._tick(b)
            except Exception as e:  # noqa: BLE001 - the clock of the board goes on
                self.task_failures.failed(f"voiceboard-{b.name}-ticker", e)

    def _tick(self, b: _Board) -> None:
        if b.conn is None:
            return
        for line in b.lines.values():
            if line.alarm:
                continue  # a dead line: nothing to sample
            if line.host_offhook:
                pcm = SILENCE if line.loop_dropped else self._line_effects(line, line.player.frame())
            elif line.onhook_audio:
                pcm = bytes(line.onhook_audio[:FRAME_BYTES]).ljust(FRAME_BYTES, b"\0")
                del line.onhook_audio[:FRAME_BYTES]
            else:
                continue
            data = g711.encode(self.law, pcm)
            self._send(b, simwire.encode(simwire.AudioFrame(line.number, data)), audio=True)

    def _line_effects(self, line: _Line, pcm: bytes) -> bytes:
        """``pcm`` as the host hears it through the line: plus the echo of what the host sent
        (:attr:`echo_db`) and the line noise (:attr:`noise_dbm0`)."""
        echo, line.last_rx = line.last_rx, None
        if self.echo_db is None and self.noise_dbm0 is None:
            return pcm
        x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
        if self.echo_db is not None and echo is not None:
            x += np.frombuffer(echo, dtype="<i2") * 10 ** (-self.echo_db / 20)
        if self.noise_dbm0 is not None:
            noise = self._noise(self.noise_dbm0)
            x += noise[line.noise_pos:line.noise_pos + FRAME]
            line.noise_pos = (line.noise_pos + FRAME) % (noise.size - FRAME)
        return np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes()

    def _noise(self, level_dbm0: float) -> np.ndarray:
        key = f"noise{level_dbm0}"
        if key not in self._tone_cache:
            self._tone_cache[key] = dsp.white_noise(2000, level_dbm0, seed=1)
        return np.frombuffer(self._tone_cache[key], dtype="<i2").astype(np.float64)

    # ------------------------------------------------------------------ the host's side

    def _from_host(self, b: _Board, frame: simwire.Frame) -> None:
        line = b.lines[frame.line]
        if isinstance(frame, simwire.Hook):
            self._hook(line, frame.offhook)
        elif isinstance(frame, simwire.AudioFrame):
            if not line.host_offhook:
                return  # a board passes nothing from an on-hook line
            line.received += 1
            pcm = g711.decode(self.law, frame.data)
            line.last_rx = pcm
            if line.rx is not None and len(line.rx) < _MAX_RECORD_S * RATE * 2:
                line.rx += pcm
            if line.dial is not None:
                self._dial_audio(line, pcm)

    def _hook(self, line: _Line, offhook: bool) -> None:
        if offhook == line.host_offhook:
            return
        line.host_offhook = offhook
        self._record(line, "offhook" if offhook else "onhook")
        if offhook:
            if line.alarm:
                pass  # no loop, no tone: the line is dead
            elif line.state == "ringing":
                line.state = "answered"  # the call task takes it from here
                if line.call is not None:
                    c = line.call.call
                    c.answered, c.answered_at, c.answer_after_rings = True, trio.current_time(), c.rings
                    line.rx = bytearray()
                self._emit(line, "loop_on")
            elif line.state == "idle":
                self._seize(line)
        else:
            line.loop_dropped = False
            line.player.stop()
            line.onhook_audio.clear()
            if line.dial is not None:
                line.dial = None
            if line.state not in ("ringing", "alarm"):
                line.state = "idle" if line.call is None else "host_onhook"
        line.pulse()

    # ------------------------------------------------------------------ events

    def _record(self, line: _Line, kind: str, ms: int = 0, delivered: bool = True) -> None:
        self.events.append(SimEvent(trio.current_time(), line.board.name, line.number, kind, ms,
                                    delivered))

    def _emit(self, line: _Line, kind: str, ms: int = 0) -> None:
        data = simwire.encode(simwire.EventFrame(line.number, kind, ms))
        self._record(line, kind, ms, self._send(line.board, data))

    # ------------------------------------------------------------------ what tests ask

    def _board(self, board: str) -> _Board:
        try:
            return self.boards[board]
        except KeyError:
            raise ValueError(f"no board {board!r}; boards: {', '.join(self.boards)}") from None

    def _line(self, board: str, line: int) -> _Line:
        b = self._board(board)
        if type(line) is not int or line not in b.lines:
            raise ValueError(f"board {board} has no line {line!r} (1..{len(b.lines)})")
        return b.lines[line]

    def line_state(self, board: str, line: int) -> str:
        ln = self._line(board, line)
        if ln.state == "host_onhook":
            return "idle"
        return ln.state

    def host_offhook(self, board: str, line: int) -> bool:
        return self._line(board, line).host_offhook

    def loop_current_ma(self, board: str, line: int) -> float:
        ln = self._line(board, line)
        if ln.alarm or not ln.host_offhook or ln.loop_dropped:
            return 0.0
        return float(self.loop_ma)

    def set_alarm(self, board: str, line: int, on: bool) -> None:
        """Put ``line`` out of order (``ALARM``; no loop, not hunted) or back (``ALARM_CLEAR``)."""
        ln = self._line(board, line)
        on = bool(on)
        if on == ln.alarm:
            return
        ln.alarm = on
        if on:
            ln.state = "alarm"
            ln.player.stop()
            ln.dial = None
            self._emit(ln, "alarm")
        else:
            ln.state = "idle" if ln.call is None else "host_onhook"
            self._emit(ln, "alarm_clear")
            if ln.host_offhook and ln.call is None:
                self._seize(ln)
        ln.pulse()

    def last_dtmf(self, board: str, line: int) -> dict[str, Any] | None:
        """The last string the host dialled on ``line`` with its first digit's measurement
        (an entry of :attr:`dialled`), or None."""
        self._line(board, line)
        for entry in reversed(self.dialled):
            if entry["board"] == board and entry["line"] == line:
                return entry
        return None

    def events_of(self, board: str, line: int, kinds: Iterable[str] | None = None) -> list[SimEvent]:
        wanted = set(kinds) if kinds is not None else None
        return [e for e in self.events if e.board == board and e.line == line
                and (wanted is None or e.kind in wanted)]

    # ------------------------------------------------------------------ tones

    def tone_pcm(self, name: str) -> bytes:
        """One period of the profile's tone ``name`` (a second of a continuous one)."""
        pcm = self._tone_cache.get(name)
        if pcm is None:
            t = tones.lookup(self.profile, name)
            ms = t.period_ms if t.cadence else 1000
            pcm = self._tone_cache[name] = tones.generate(self.profile, name, ms)
        return pcm

    def ring_cadence(self) -> tuple[tuple[int, int], ...]:
        return tones.lookup(self.profile, "ring").cadence or ((2000, 4000),)

    # ------------------------------------------------------------------ calls

    def start_call(self, digits: str = "#1234", audio: bytes = b"", hunt: Iterable[str] | None = None,
                   hangup: str = "loop_drop", rings_max: int = 6,
                   callerid: cid_codec.CallerId | None = None, digit_delay_ms: int = 500, *,
                   cpc_ms: int | None = None, after_drop: str = "reorder", digit_on_ms: float = 60,
                   digit_off_ms: float = 60, digit_level_dbm0: float = -10.0,
                   hangup_tone: str = "reorder",
                   smdi: Callable[[SimCall], Awaitable[Any]] | None = None) -> CallHandle:
        """Place a call and return at once (the line is already hunted and ringing, or the
        call has ended with ``no_line``); :meth:`CallHandle.wait` gives the finished call.

        The call rings the first idle line of the boards in ``hunt`` order (default: every
        board) whose host is connected, with the profile's ring cadence, at most
        ``rings_max`` times; ``callerid`` (a :class:`telephony.core.callerid.CallerId`) is sent
        as the FSK burst 500 ms after the first ring.  When the host answers, the PBX waits
        ``digit_delay_ms``, sends ``digits`` in band (DTMF), plays ``audio`` (PCM) and hangs
        up: ``loop_drop`` drops the loop for ``cpc_ms`` (then ``after_drop``: ``reorder``,
        ``dial`` or ``silence``), ``tone`` plays ``hangup_tone`` (reorder, busy or dial),
        ``none`` waits for the host.  After
        its hang-up the PBX waits :attr:`release_s` for the host to hang up.  ``smdi``: an
        async function awaited with the :class:`SimCall` (board and line known) before the
        first ring, to send the call's SMDI record (:mod:`lab.smdi_pbx`); if it fails the
        call still rings."""
        if self._nursery is None:
            raise RuntimeError("the voice-board simulator is not running")
        if hangup not in HANGUPS:
            raise ValueError(f"hangup must be one of {HANGUPS}, not {hangup!r}")
        if after_drop not in ("reorder", "dial", "silence"):
            raise ValueError(f"after_drop must be reorder, dial or silence, not {after_drop!r}")
        if hangup_tone not in ("reorder", "busy", "dial"):
            raise ValueError(f"hangup_tone must be reorder, busy or dial, not {hangup_tone!r}")
        if type(rings_max) is not int or rings_max < 1:
            raise ValueError(f"rings_max must be a positive int, not {rings_max!r}")
        if not isinstance(audio, bytes | bytearray) or len(audio) % 2:
            raise ValueError("audio must be PCM bytes (whole 16-bit samples)")
        if not 0 <= digit_delay_ms <= 60_000:
            raise ValueError(f"digit_delay_ms {digit_delay_ms!r} is not in 0..60000")
        cpc = self.cpc_ms if cpc_ms is None else cpc_ms
        if type(cpc) is not int or not 0 < cpc <= 0xFFFF:
            raise ValueError(f"cpc_ms {cpc!r} is not in 1..65535")
        boards = list(self.boards) if hunt is None else list(hunt)
        for name in boards:
            self._board(name)
        digits = digits or ""
        dtmf_pcm = dtmf.generate(digits, on_ms=digit_on_ms, off_ms=digit_off_ms,
                                 level_dbm0=digit_level_dbm0) if digits else b""
        cid_pcm = b""
        if callerid is not None:
            if not isinstance(callerid, cid_codec.CallerId):
                raise ValueError(f"callerid must be a telephony.core.callerid.CallerId, not {callerid!r:.60}")
            cid_pcm = cid_codec.encode(callerid, self.callerid_standard)
        line = self._hunt(boards)
        now = trio.current_time()
        call = SimCall(board=line.board.name if line else None, line=line.number if line else None,
                       digits=digits, hangup=hangup, started_at=now)
        self.calls.append(call)
        del self.calls[:-1000]
        handle = CallHandle(call)
        if line is None:
            call.ended_by, call.ended_at = "no_line", now
            log.info("call %s: no idle line on %s", digits, ", ".join(boards))
            handle._done.set()
            return handle
        line.state = "ringing"
        line.call = handle
        handle._line = line
        plan = _Plan(dtmf_pcm + bytes(audio), cid_pcm, hangup, rings_max, digit_delay_ms / 1000,
                     cpc, after_drop, hangup_tone, smdi)
        self._nursery.start_soon(self._call_contained, handle, line, plan)
        return handle

    async def call(self, digits: str = "#1234", audio: bytes = b"", hunt: Iterable[str] | None = None,
                   hangup: str = "loop_drop", rings_max: int = 6,
                   callerid: cid_codec.CallerId | None = None, digit_delay_ms: int = 500,
                   **kw: Any) -> SimCall:
        """:meth:`start_call` and wait for the call's end."""
        return await self.start_call(digits, audio, hunt, hangup, rings_max, callerid,
                                     digit_delay_ms, **kw).wait()

    def _hunt(self, boards: list[str]) -> _Line | None:
        for name in boards:
            b = self.boards[name]
            if b.conn is None:
                continue
            for line in b.lines.values():
                if line.state == "idle" and line.call is None and not line.host_offhook and not line.alarm:
                    return line
        return None

    async def _wait_line(self, line: _Line, cond: Callable[[], bool], seconds: float) -> bool:
        """Wait until ``cond()`` (checked at every change of the line) or ``seconds``."""
        with trio.move_on_after(seconds):
            while not cond():
                await line.changed.wait()
        return cond()

    async def _call_contained(self, h: CallHandle, line: _Line, plan: _Plan) -> None:
        call = h.call
        try:
            await self._call(h, line, plan)
        except Exception as e:  # noqa: BLE001 - a failed call never ends the simulator
            self.task_failures.failed("voiceboard-call", e)
            call.ended_by = call.ended_by or f"failed: {e}"
        finally:
            call.heard = bytes(line.rx) if line.rx is not None else call.heard
            line.rx = None
            call.ended_at = trio.current_time()
            line.call = None
            if line.alarm:
                line.state = "alarm"
            elif not line.host_offhook:
                line.state = "idle"
            elif line.state in ("ringing", "host_onhook"):  # went off hook again meanwhile
                self._seize(line)
            h._done.set()
            log.info("call %s on %s/%s ended: %s", call.digits, call.board, call.line, call.ended_by)

    async def _call(self, h: CallHandle, line: _Line, plan: _Plan) -> None:
        call = h.call
        if plan.smdi is not None:
            try:
                await plan.smdi(call)
            except Exception as e:  # noqa: BLE001 - the call rings all the same
                self.task_failures.failed("voiceboard-smdi", e)
        outcome = await self._ring(h, line, plan)
        if not call.answered:
            call.ended_by = outcome
            return
        line.player.stop()

        def host_gone() -> bool:
            return not line.host_offhook

        def over() -> bool:  # the host hung up, or the line went into alarm
            return not line.host_offhook or line.alarm

        def finish() -> None:
            if line.alarm:
                call.ended_by = "alarm"
            else:
                call.ended_by, call.host_onhook_at = "host", trio.current_time()

        await self._wait_line(line, lambda: over() or h._abandon, plan.digit_delay)
        if over():
            return finish()
        if not h._abandon:
            line.player.play(plan.audio)
            await self._wait_line(line, lambda: over() or h._abandon or not line.player.playing,
                                  math.inf)
            if over():
                return finish()
        hangup = plan.hangup
        if hangup == "none":
            line.player.stop()
            await self._wait_line(line, lambda: over() or h._abandon, math.inf)
            if over():
                return finish()
            hangup = "tone"  # the caller hung up: the exchange plays its hang-up tone
        call.pbx_hangup_at = trio.current_time()
        call.ended_by = "pbx"
        line.state = "released"
        if hangup == "loop_drop":
            line.loop_dropped = True
            self._emit(line, "loop_drop", plan.cpc_ms)
            await self._wait_line(line, host_gone, plan.cpc_ms / 1000)
            line.loop_dropped = False
            if not host_gone():
                self._emit(line, "loop_on")
                if plan.after_drop == "silence":
                    line.player.stop()
                else:
                    line.player.loop(self.tone_pcm(plan.after_drop))
        else:
            line.player.loop(self.tone_pcm(plan.hangup_tone))
        if await self._wait_line(line, host_gone, self.release_s):
            call.host_onhook_at = trio.current_time()
        else:
            line.player.stop()  # the exchange gives up on the line: silence until on hook

    async def _ring(self, h: CallHandle, line: _Line, plan: _Plan) -> str:
        """Ring with the cadence until the host answers (``answered``), the caller abandons
        (``abandoned``), the line goes into alarm (``alarm``) or ``rings_max`` rings went
        unanswered (``no_answer``)."""
        call = h.call
        cadence = self.ring_cadence()

        def stop() -> bool:
            return line.state != "ringing" or h._abandon

        def outcome() -> str:
            if call.answered:
                return "answered"
            return "alarm" if line.state == "alarm" else "abandoned"

        for ring in range(1, plan.rings_max + 1):
            call.rings = ring
            for i, (on, off) in enumerate(cadence):
                self._emit(line, "ring_on")
                await self._wait_line(line, stop, on / 1000)
                self._emit(line, "ring_off")  # end of the burst, or ring trip
                if stop():
                    return outcome()
                if ring == 1 and i == len(cadence) - 1 and plan.callerid:
                    # the FSK burst starts 500 ms into the first silent interval
                    if await self._wait_line(line, stop, min(0.5, off / 1000)):
                        return outcome()
                    line.onhook_audio[:] = plan.callerid
                    call.callerid_sent = True
                    off = max(0, off - 500)
                if await self._wait_line(line, stop, off / 1000):
                    return outcome()
        return "no_answer"

    # ------------------------------------------------------------------ seizures

    def _seize(self, line: _Line) -> None:
        """The host took an idle line off hook: loop current and dial tone, then digits."""
        line.state = "seized"
        self._emit(line, "loop_on")
        line.player.loop(self.tone_pcm("dial"))
        now = trio.current_time()
        d = line.dial = _Dial(dtmf.DtmfDetector(), started=now, last_digit_at=now)
        if self._nursery is not None:
            self._nursery.start_soon(self._dial_contained, line, d)

    def _dial_audio(self, line: _Line, pcm: bytes) -> None:
        d = line.dial
        assert d is not None
        if len(d.audio) < _MAX_DIAL_S * RATE * 2:
            d.audio += pcm
        got = d.detector.feed(pcm)
        if not got:
            return
        if not d.digits:
            d.first_digit_sample = len(d.audio) // 2
            line.player.stop()  # the first digit ends dial tone
            line.state = "dialling"
        d.digits += "".join(got)
        d.last_digit_at = trio.current_time()
        d.changed.set()
        d.changed = trio.Event()

    async def _dial_contained(self, line: _Line, d: _Dial) -> None:
        try:
            await self._dialling(line, d)
        except Exception as e:  # noqa: BLE001 - one seizure never ends the simulator
            self.task_failures.failed("voiceboard-dialling", e)

    async def _dialling(self, line: _Line, d: _Dial) -> None:
        while line.dial is d:
            timeout = self.interdigit_s if d.digits else self.first_digit_s
            deadline = d.last_digit_at + timeout
            with trio.move_on_at(deadline):
                await d.changed.wait()
            if line.dial is not d:  # on hook, alarm
                if d.digits:
                    self._dialled(line, d, "abandoned", "")
                return
            final = trio.current_time() >= deadline
            verdict = self.verdict(d.digits, final=final)
            if verdict is None:
                continue
            line.dial = None
            kind, ext = verdict
            if d.digits:
                self._dialled(line, d, kind, ext)
            if kind in ("on", "off"):
                self.lamps[ext] = kind == "on"
                line.state = "confirmed"
                line.player.play(self.tone_pcm("confirm"))
                log.info("board %s line %d: lamp %s for %s", line.board.name, line.number, kind, ext)
            else:
                line.state = "reorder"
                line.player.loop(self.tone_pcm("reorder"))
            return

    def verdict(self, digits: str, *, final: bool) -> tuple[str, str] | None:
        """What the PBX does with ``digits`` dialled so far: ``(kind, extension)`` with kind a
        key of :attr:`feature_codes` or ``"reorder"``; None: wait for more (``final``: no
        more will come)."""
        for kind, code in self.feature_codes.items():
            if digits.startswith(code):
                ext = digits[len(code):]
                ended = ext.endswith("#")
                ext = ext[:-1] if ended else ext
                if (ext and not ext.isdigit()) or len(ext) > 8:
                    return ("reorder", "")
                if ended or final or len(ext) == 8:
                    return (kind, ext) if 2 <= len(ext) <= 8 else ("reorder", "")
                return None
        if not final and any(code.startswith(digits) for code in self.feature_codes.values()):
            return None
        return ("reorder", "")

    def _dialled(self, line: _Line, d: _Dial, result: str, ext: str) -> None:
        entry: dict[str, Any] = {"t": trio.current_time(), "board": line.board.name,
                                 "line": line.number, "digits": d.digits, "result": result,
                                 "extension": ext}
        if d.first_digit_sample is not None:
            at = d.first_digit_sample
            seg = d.audio[max(0, at - 3200) * 2:(at + 8000) * 2]
            entry.update(measure_dtmf(bytes(seg)) or {})
        self.dialled.append(entry)
        del self.dialled[:-1000]


@dataclass(frozen=True)
class _Plan:
    audio: bytes  # the in-band digits, then the caller's audio
    callerid: bytes
    hangup: str
    rings_max: int
    digit_delay: float
    cpc_ms: int
    after_drop: str
    hangup_tone: str = "reorder"
    smdi: Callable[[SimCall], Awaitable[Any]] | None = None


def measure_dtmf(pcm: bytes) -> dict[str, Any] | None:
    """Measure the first DTMF burst in ``pcm``: ``digit`` (nearest pair), ``low_hz``,
    ``high_hz`` (FFT peaks, zero-padded, interpolated), ``low_dbm0``, ``high_dbm0``,
    ``level_dbm0`` (the whole burst), ``twist_db`` (low minus high) and ``duration_ms``
    (5 ms resolution).  None when there is no burst."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    block = 40
    nb = x.size // block
    if nb < 4:
        return None
    energy = (x[:nb * block].reshape(nb, block) ** 2).mean(axis=1)
    floor = (DBM0_PEAK / math.sqrt(2) * 10 ** (-50 / 20)) ** 2
    peak = float(energy.max())
    if peak < floor:
        return None
    above = energy >= max(peak / 100, floor)
    i0 = int(np.argmax(above))
    i1 = i0
    while i1 < nb and above[i1]:
        i1 += 1
    a, b = (i0 + 1, i1 - 1) if i1 - i0 > 4 else (i0, i1)
    seg = x[a * block:b * block]
    window = np.hanning(seg.size)
    nfft = 1 << 17
    spec = np.abs(np.fft.rfft(seg * window, nfft))
    hz = np.arange(spec.size) * RATE / nfft

    def peak_in(lo: float, hi: float) -> tuple[float, float]:
        k0, k1 = np.searchsorted(hz, lo), np.searchsorted(hz, hi)
        k = k0 + int(np.argmax(spec[k0:k1]))
        y0, y1, y2 = (math.log(max(spec[j], 1e-12)) for j in (k - 1, k, k + 1))
        den = y0 - 2 * y1 + y2
        shift = 0.5 * (y0 - y2) / den if den else 0.0
        amp = 2 * math.exp(y1 - 0.25 * (y0 - y2) * shift) / window.sum()
        return (k + shift) * RATE / nfft, 20 * math.log10(max(amp, 1e-9) / DBM0_PEAK)

    low_hz, low_db = peak_in(600, 1050)
    high_hz, high_db = peak_in(1100, 1750)
    digit = min(dtmf.FREQS, key=lambda d: abs(dtmf.FREQS[d][0] - low_hz) + abs(dtmf.FREQS[d][1] - high_hz))
    rms = math.sqrt(float((seg ** 2).mean()))
    return {"digit": digit, "low_hz": round(low_hz, 2), "high_hz": round(high_hz, 2),
            "low_dbm0": round(low_db, 2), "high_dbm0": round(high_db, 2),
            "level_dbm0": round(20 * math.log10(rms * math.sqrt(2) / DBM0_PEAK), 2),
            "twist_db": round(low_db - high_db, 2), "duration_ms": (i1 - i0) * 5}


@asynccontextmanager
async def open_voiceboard(directory: str | os.PathLike, boards: dict[str, int] | None = None,
                          **kw: Any) -> AsyncIterator[VoiceBoardSim]:
    """A running :class:`VoiceBoardSim` for the block (its sockets in ``directory``)."""
    sim = VoiceBoardSim(directory, boards, **kw)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            yield sim
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # the simulator's tasks contain their failures: the group holds the block's own error
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


class BoardHost:
    """A scripted host on a :class:`SimBoard`, for tests and lab runs (not the analog driver):
    it reads the board in the background and keeps every event (with trio's time) and the
    audio of every line; :meth:`play` sends PCM in real time, a frame every 20 ms."""

    def __init__(self, board: SimBoard) -> None:
        self.board = board
        self.events: list[tuple[float, Event]] = []
        self.audio: dict[int, bytearray] = {}
        self.error: BoardError | None = None
        self._changed = trio.Event()

    async def read(self) -> None:
        """Read until the board fails (the error is kept in :attr:`error`)."""
        try:
            while True:
                item = await self.board.receive()
                if isinstance(item, Audio):
                    self.audio.setdefault(item.line, bytearray()).extend(item.pcm)
                else:
                    self.events.append((trio.current_time(), item))
                self._changed.set()
                self._changed = trio.Event()
        except BoardError as e:
            self.error = e
            self._changed.set()

    def events_of(self, line: int, kinds: Iterable[str] | None = None) -> list[tuple[float, Event]]:
        wanted = {LineEvent(k) for k in kinds} if kinds is not None else None
        return [(t, e) for t, e in self.events if e.line == line and (wanted is None or e.event in wanted)]

    async def wait_event(self, line: int, kind: str, count: int = 1) -> tuple[float, Event]:
        """The ``count``-th ``kind`` event of ``line`` (waiting for it)."""
        while len(found := self.events_of(line, [kind])) < count:
            if self.error is not None:
                raise self.error
            await self._changed.wait()
        return found[count - 1]

    def heard(self, line: int) -> bytes:
        return bytes(self.audio.get(line, b""))

    def clear(self, line: int) -> None:
        self.audio.pop(line, None)

    async def play(self, line: int, pcm: bytes) -> None:
        """Send ``pcm`` on ``line`` in 20 ms frames at the real rate (the last one padded)."""
        if len(pcm) % FRAME_BYTES:
            pcm = pcm + bytes(FRAME_BYTES - len(pcm) % FRAME_BYTES)
        next_at = trio.current_time()
        for i in range(0, len(pcm), FRAME_BYTES):
            await self.board.send_audio(line, pcm[i:i + FRAME_BYTES])
            next_at += TICK
            await trio.sleep_until(next_at)


@asynccontextmanager
async def open_host(path: str | os.PathLike) -> AsyncIterator[BoardHost]:
    """A :class:`BoardHost` on a :class:`SimBoard` opened on ``path``, reading for the block."""
    board = SimBoard(path)
    await board.open()
    host = BoardHost(board)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(host.read)
            yield host
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    finally:
        await board.aclose()
