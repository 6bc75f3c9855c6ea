"""A PBX's SMDI side — a **simulator** (nobody has a circuit-switched PBX here) that speaks the
real wire format on a real serial port: it sends call-detail records (``MD``) and reads the
voice-mail system's MWI commands, answering ``MWI<station> INV`` for stations it does not know,
as a switch does.  Used by tests, benchmarks, the demo and lab runs against a data splitter
(:mod:`lab.smdi`).

::

    async with PbxSimulator(lab.pbx_tty, invalid={"5559999"}).running() as pbx:
        await pbx.call_record(terminal=5, call_type="B", forwarding="5551002", calling="5551001")
        await pbx.wait_commands(1)
        pbx.commands   # [(trio time, MwiCommand(on=True, number="5551002", raw=...)), ...]

**It reads at the line rate.**  A pty has no baud rate: the kernel hands the reader every byte
as soon as it is written.  The simulator therefore consumes what the voice-mail side sends no
faster than ``baudrate`` / ``bits_per_char`` bytes a second (9600 baud, 10 bits a character:
960 bytes/s), at most ``fifo`` bytes at a time, as a switch's UART does: a sender that writes
faster fills the pty's and socat's buffers and then waits in its write, as it would behind a
real UART.  A command counts as received (the time in ``commands``) when its last byte has
come off the simulated wire.  The line clock runs on from the previous chunk when bytes were
already waiting (no drift from late wake-ups) and from the moment they arrived otherwise.
``line_rate=False``: read as fast as the pty delivers (the old behaviour).
"""
from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import trio

from telephony.runtime.tasks import TaskFailures, python_logger
from telephony.smdi.core.codec import (
    CommandReader,
    MwiCommand,
    ProtocolError,
    encode_call_record,
    encode_mwi_failure,
)

log = logging.getLogger("lab.smdi_pbx")


class PbxSimulator:
    """The switch end of an SMDI link on ``device`` (a tty path, opened raw with pyserial; a
    pty ignores the rate and framing).  ``invalid``/``blocked``: stations answered with
    ``INV``/``BLK``."""

    def __init__(self, device: str | os.PathLike, *, invalid: Iterable[str] = (),
                 blocked: Iterable[str] = (), baudrate: int = 9600, bits_per_char: float = 10,
                 line_rate: bool = True, fifo: int = 16) -> None:
        if not (baudrate > 0 and bits_per_char > 0 and fifo >= 1):
            raise ValueError("baudrate and bits_per_char must be > 0 and fifo >= 1")
        self.device = str(device)
        self.line_rate = line_rate
        self.char_time = bits_per_char / baudrate
        self.fifo = int(fifo)
        self._line_free = float("-inf")  # when the simulated wire has delivered all it read
        self.invalid = set(invalid)
        self.blocked = set(blocked)
        self.baudrate = baudrate
        self.commands: list[tuple[float, MwiCommand]] = []
        self.errors: list[ProtocolError] = []
        self.received = bytearray()  # every byte the voice-mail side sent, in order
        self._ser = None
        self._stream: trio.lowlevel.FdStream | None = None
        self._changed = trio.Event()
        #: failures of the reader (a failure answer that could not be written, a bug): it
        #: records them and reads on, so nothing escapes ``running()`` from it
        self.task_failures = TaskFailures(python_logger(log))

    @asynccontextmanager
    async def running(self) -> AsyncIterator["PbxSimulator"]:
        """Open the port, read it in the background; closed at the end of the block."""
        import serial

        def opener():
            ser = serial.Serial(self.device, self.baudrate, timeout=0)
            ser.reset_input_buffer()
            return ser

        self._ser = await trio.to_thread.run_sync(opener)
        self._stream = trio.lowlevel.FdStream(os.dup(self._ser.fileno()))
        try:
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read_loop)
                    yield self
                    nursery.cancel_scope.cancel()
            except BaseExceptionGroup as group:
                # the reader never raises: the group holds the block's own error, which the
                # caller gets as it was raised (not wrapped by this helper's nursery)
                if len(group.exceptions) == 1:
                    raise group.exceptions[0] from None
                raise
        finally:
            await self._stream.aclose()
            self._ser.close()

    async def _read_loop(self) -> None:
        """Read the line for ever; a failure of one turn (an ``INV`` answer that cannot be
        written, a bug) is recorded and reading goes on."""
        reader = CommandReader()
        while True:
            try:
                await self._read_some(reader)
            except Exception as e:  # noqa: BLE001 - the PBX side stays up
                self.task_failures.failed("pbxsim-reader", e)
                await trio.sleep(0.05)

    async def _read_some(self, reader: CommandReader) -> None:
        assert self._stream is not None
        if self.line_rate:
            await self._read_at_line_rate(reader)
            return
        try:
            data = await self._stream.receive_some(4096)
        except (OSError, trio.BrokenResourceError):
            await trio.sleep(0.05)  # the splitter is restarting; keep the PBX side up
            return
        if not data:
            await trio.sleep(0.05)
            return
        self.received += data
        await self._events(reader.feed(data), trio.current_time())

    async def _events(self, events, now: float) -> None:
        try:
            for ev in events:
                if isinstance(ev, MwiCommand):
                    self.commands.append((now, ev))
                    cause = ("INV" if ev.number in self.invalid
                             else "BLK" if ev.number in self.blocked else None)
                    if cause is not None:
                        await self.send(encode_mwi_failure(ev.number, cause))
                else:
                    self.errors.append(ev)
        finally:
            self._changed.set()
            self._changed = trio.Event()

    async def _read_at_line_rate(self, reader: CommandReader) -> None:
        """At most ``fifo`` bytes off the line, each taking one character time."""
        assert self._stream is not None
        fd = self._stream.fileno()
        try:
            try:
                data = os.read(fd, self.fifo)
            except BlockingIOError:
                data = b""
            waiting = bool(data)  # bytes were queued behind the ones just received
            if not data:  # (a tty opened with VMIN 0 reads b"" when it has nothing)
                await trio.lowlevel.wait_readable(fd)
                data = os.read(fd, self.fifo)
        except BlockingIOError:
            return
        except OSError:
            await trio.sleep(0.05)  # the splitter is restarting; keep the PBX side up
            return
        if not data:  # readable but empty: hung up
            await trio.sleep(0.05)
            return
        now = trio.current_time()
        ct = self.char_time
        if waiting and self._line_free > float("-inf"):
            # they came in while the previous chunk was on the wire: the line runs on from
            # there (a wake-up up to one chunk late does not slow the simulated line)
            start = max(self._line_free, now - self.fifo * ct)
        else:
            start = max(self._line_free, now)
        for i in range(len(data)):
            self.received += data[i:i + 1]
            events = reader.feed(data[i:i + 1])
            if events:  # a command is complete when its last byte has come off the wire
                await trio.sleep_until(start + (i + 1) * ct)
                await self._events(events, trio.current_time())
        self._line_free = start + len(data) * ct
        await trio.sleep_until(self._line_free)

    async def send(self, data: bytes) -> None:
        """Raw bytes onto the line (garbage tests use this)."""
        assert self._stream is not None
        await self._stream.send_all(data)

    async def call_record(self, terminal: int, call_type: str, forwarding: str = "",
                          calling: str = "", *, desk: int = 1) -> bytes:
        data = encode_call_record(terminal, call_type, forwarding, calling, desk=desk)
        await self.send(data)
        return data

    async def wait_commands(self, n: int, timeout: float = 20.0) -> list[MwiCommand]:
        """Wait until at least ``n`` commands arrived (a hang guard: raises TimeoutError)."""
        with trio.move_on_after(timeout):
            while len(self.commands) < n:
                await self._changed.wait()
            return [c for _, c in self.commands]
        raise TimeoutError(f"{len(self.commands)} MWI commands arrived, waited for {n}")

    def lamps(self) -> dict[str, bool]:
        """The lamp state the switch would show: the last command per station."""
        out: dict[str, bool] = {}
        for _, c in self.commands:
            out[c.number] = c.on
        return out
