"""``SimBoard``: the board backend that talks to the voice-board simulator (``lab/voiceboard.py``)
over its Unix socket (the wire of :mod:`telephony.analog.core.simwire`).

``open()`` connects and reads the simulator's ``HELLO`` (line count, law, name); ``receive()``
returns line events and 20 ms PCM frames (G.711 from the wire decoded with
:mod:`telephony.core.g711`); ``set_hook`` and ``send_audio`` write ``HOOK`` and ``AUDIO``
frames.  Audio is passed up only for a line this host holds off hook, or one that is ringing
(the simulator sends the on-hook caller-ID burst between the first and second ring).

Failures are :class:`~telephony.analog.board.BoardError`: a socket that cannot be reached, a
simulator that closes or resets the connection (or refuses it: one host per board), a protocol
error in what it sends (the connection is closed; frames decoded before the bad one are still
delivered).  The driver above closes the board and opens it again.  ``receive()`` is for one
task at a time; ``set_hook``/``send_audio`` may be called from any task.
"""
from __future__ import annotations

import logging
import os
from collections import Counter, deque

import trio

from telephony.analog.board import Audio, BoardError, Event, LineEvent, check_frame, check_line
from telephony.analog.core import simwire
from telephony.core import g711

__all__ = ["SimBoard"]

log = logging.getLogger("telephony.analog.simboard")

_READ = 65536


class SimBoard:
    """A board served by the simulator at ``path`` (a Unix socket).  ``lines``, ``law`` and
    ``name`` are what its ``HELLO`` said (0 lines before the first ``open()``).
    ``hello_timeout``: seconds ``open()`` waits for the ``HELLO``."""

    def __init__(self, path: str | os.PathLike, *, hello_timeout: float = 5.0) -> None:
        self.path = os.fspath(path)
        self.hello_timeout = hello_timeout
        self.lines = 0
        self.law = "ulaw"
        self.name = ""
        #: frames in and out, audio dropped for on-hook lines, protocol errors
        self.counters: Counter[str] = Counter()
        self._stream: trio.SocketStream | None = None
        self._decoder: simwire.Decoder | None = None
        self._pending: deque[Event | Audio] = deque()
        self._failure: BoardError | None = None
        self._send_lock = trio.Lock()
        self._offhook: set[int] = set()
        self._ringing: set[int] = set()

    def __repr__(self) -> str:
        state = "open" if self._stream is not None else "closed"
        return f"SimBoard({self.path!r}, {state}, lines={self.lines}, law={self.law})"

    @property
    def is_open(self) -> bool:
        return self._stream is not None

    async def open(self) -> None:
        """Connect and read ``HELLO``.  Opening an open board closes it first (a fresh
        connection: every line on hook)."""
        await self.aclose()
        try:
            stream = await trio.open_unix_socket(self.path)
        except OSError as e:
            raise BoardError(f"cannot connect to the board simulator at {self.path}: "
                             f"{e.strerror or e}") from e
        decoder = simwire.Decoder(simwire.TO_HOST)
        self._stream, self._decoder = stream, decoder
        self._pending.clear()
        self._failure = None
        self._offhook.clear()
        self._ringing.clear()
        try:
            with trio.fail_after(self.hello_timeout):
                while decoder.hello is None:
                    frames = await self._read()
                    # the frames after HELLO in the same read are kept for receive()
                    for frame in frames:
                        self._queue(frame)
        except trio.TooSlowError:
            await self.aclose()
            raise BoardError(f"the board simulator at {self.path} sent no HELLO in "
                             f"{self.hello_timeout} s") from None
        except BoardError as e:
            await self.aclose()
            if "closed the connection" in str(e):  # a refused second host sees this
                raise BoardError(f"{e} before its HELLO (does another host hold this board?)") from e
            raise
        hello = decoder.hello
        self.lines, self.law, self.name = hello.lines, hello.law, hello.name
        log.info("board %s at %s: %d lines, %s", self.name or "?", self.path, self.lines, self.law)

    async def aclose(self) -> None:
        stream, self._stream = self._stream, None
        self._offhook.clear()
        self._ringing.clear()
        if stream is not None:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def receive(self) -> Event | Audio:
        while not self._pending:
            if self._failure is not None:
                raise self._failure
            for frame in await self._read():
                self._queue(frame)
        return self._pending.popleft()

    async def set_hook(self, line: int, offhook: bool) -> None:
        self._check_open()
        check_line(line, self.lines)
        if not isinstance(offhook, bool):
            raise ValueError(f"offhook must be a bool, not {offhook!r}")
        await self._send(simwire.encode(simwire.Hook(line, offhook), self.lines))
        self._ringing.discard(line)
        if offhook:
            self._offhook.add(line)
        else:
            self._offhook.discard(line)

    async def send_audio(self, line: int, pcm: bytes) -> None:
        self._check_open()
        check_line(line, self.lines)
        data = g711.encode(self.law, check_frame(pcm))
        await self._send(simwire.encode(simwire.AudioFrame(line, data), self.lines))
        self.counters["audio_out"] += 1

    # ------------------------------------------------------------------ inside

    def _check_open(self) -> None:
        if self._stream is None:
            raise BoardError(f"the board at {self.path} is not open")

    async def _read(self) -> list[simwire.Frame]:
        stream, decoder = self._stream, self._decoder
        if stream is None or decoder is None:
            raise BoardError(f"the board at {self.path} is not open")
        try:
            data = await stream.receive_some(_READ)
        except trio.ClosedResourceError:
            raise BoardError(f"the board at {self.path} was closed") from None
        except (trio.BrokenResourceError, OSError) as e:
            await self.aclose()
            raise BoardError(f"the connection to the board simulator at {self.path} failed: "
                             f"{e.__cause__ or e}") from e
        if not data:
            await self.aclose()
            raise BoardError(f"the board simulator at {self.path} closed the connection")
        try:
            return decoder.feed(data)
        except simwire.WireError as e:
            self.counters["protocol_errors"] += 1
            log.warning("board at %s: %s; closing the connection", self.path, e)
            await self.aclose()
            self._failure = BoardError(f"the board simulator at {self.path} broke the protocol: {e}")
            if not e.frames:
                raise self._failure from e
            return e.frames

    def _queue(self, frame: simwire.Frame) -> None:
        if isinstance(frame, simwire.EventFrame):
            event = LineEvent(frame.event)
            if event is LineEvent.RING_ON:
                self._ringing.add(frame.line)
            self.counters["events_in"] += 1
            self._pending.append(Event(frame.line, event, frame.ms))
        elif isinstance(frame, simwire.AudioFrame):
            if frame.line in self._offhook or frame.line in self._ringing:
                self.counters["audio_in"] += 1
                self._pending.append(Audio(frame.line, g711.decode(self.law, frame.data)))
            else:
                self.counters["audio_dropped"] += 1

    async def _send(self, data: bytes) -> None:
        async with self._send_lock:
            stream = self._stream
            if stream is None:
                raise BoardError(f"the board at {self.path} is not open")
            try:
                await stream.send_all(data)
            except trio.ClosedResourceError:
                raise BoardError(f"the board at {self.path} was closed") from None
            except (trio.BrokenResourceError, OSError) as e:
                await self.aclose()
                raise BoardError(f"the connection to the board simulator at {self.path} failed: "
                                 f"{e.__cause__ or e}") from e
