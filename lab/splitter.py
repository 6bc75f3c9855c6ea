"""A software SMDI data splitter: one PBX serial link shared by N voice-mail nodes.

    python -m lab.splitter --pbx PATH --port NAME=PATH [--port NAME=PATH ...] --log FILE

This simulates a B&B-style "SMDI splitter" (docs/protocols.md section 1.6), hardware no one has here.
Every PATH is a tty device, normally the far end of a ``socat`` pty pair (see
``lab.smdi``):

* everything read from the PBX device is written to every port device that is open
  (one writer, N readers);
* everything read from any port device is written to the PBX device (the backchannel; the
  ports' chunks are merged in the order they were read).

Every chunk read is logged to FILE as one JSON line, flushed at once::

    {"t": <time.monotonic()>, "wall": <time.time()>, "from": "pbx" | NAME, "hex": "<bytes>", "to": [names]}

``to`` lists the devices the chunk was queued for (the open ones).  State changes are logged too::

    {"t": ..., "wall": ..., "event": "up" | "down", "name": "pbx" | NAME, ...}
    {"t": ..., "wall": ..., "event": "overflow", "name": NAME, "dropped": <bytes>, "pending": <bytes>}
    {"t": ..., "wall": ..., "event": "drained", "name": NAME}   (pending output empty again after an overflow)
    {"t": ..., "wall": ..., "event": "stop"}

A device that disappears (its socat pair was stopped: a read returns 0 or EIO, a write EIO, or
the open fails) is closed, logged ``down``, and reopened by path every 50 ms until it is back
(``up``); a reopened link may point at a new /dev/pts/N.  Data for a device that is not open is
dropped, like a reader that is not connected on a real splitter.  Output that a device does
not drain is kept up to ``--max-pending`` bytes per device; the excess is dropped and logged as
``overflow`` (at most once a second per device, with the byte count).

Prints ``ready`` on stdout once every device that exists has been opened.  Exits 0, with all
descriptors closed, on SIGTERM or SIGINT.  Single-threaded poll loop, stdlib only.
"""
from __future__ import annotations

import argparse
import errno
import json
import math
import os
import select
import signal
import sys
import termios
import time
import tty
from typing import Any, TextIO

PBX = "pbx"
MAX_PENDING = 1 << 20
RETRY_S = 0.05
READ_SIZE = 65536
OVERFLOW_LOG_S = 1.0

_IN = select.POLLIN | select.POLLPRI
_GONE = select.POLLHUP | select.POLLERR | select.POLLNVAL


class Device:
    """One tty end: its path, its descriptor while open, and its pending output."""

    def __init__(self, name: str, path: str) -> None:
        self.name = name
        self.path = path
        self.fd: int | None = None
        self.out = bytearray()
        self.next_try = 0.0
        self.dropped = 0  # overflow bytes not logged yet
        self.overflowed = False  # dropped output since the pending output last drained
        self.overflow_logged = -math.inf


class Splitter:
    def __init__(
        self,
        pbx: str,
        ports: list[tuple[str, str]],
        log: TextIO,
        *,
        max_pending: int = MAX_PENDING,
        retry_s: float = RETRY_S,
    ) -> None:
        self.pbx = Device(PBX, pbx)
        self.ports = [Device(name, path) for name, path in ports]
        self.devices = [self.pbx, *self.ports]
        self.logf = log
        self.max_pending = max_pending
        self.retry_s = retry_s
        self.stopping = False

    # -- log ---------------------------------------------------------------------------------

    def log(self, **record: Any) -> None:
        line = json.dumps({"t": time.monotonic(), "wall": time.time(), **record}, separators=(",", ":"))
        self.logf.write(line + "\n")
        self.logf.flush()

    # -- open / close --------------------------------------------------------------------------

    def try_open(self, dev: Device, *, first: bool = False) -> None:
        try:
            fd = os.open(dev.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as exc:
            dev.next_try = time.monotonic() + self.retry_s
            if first:
                self.log(event="down", name=dev.name, reason=errno.errorcode.get(exc.errno, str(exc)))
            return
        try:
            tty.setraw(fd, termios.TCSANOW)
        except (termios.error, OSError) as exc:
            os.close(fd)
            if first:
                raise SystemExit(f"splitter: {dev.path} is not a tty: {exc}") from None
            dev.next_try = time.monotonic() + self.retry_s
            return
        dev.fd = fd
        dev.out.clear()
        self.log(event="up", name=dev.name, tty=_ttyname(fd))

    def mark_down(self, dev: Device, reason: str) -> None:
        if dev.fd is None:
            return
        try:
            os.close(dev.fd)
        except OSError:
            pass
        dev.fd = None
        self._log_overflow(dev)
        dev.overflowed = False
        lost = len(dev.out)
        dev.out.clear()
        dev.next_try = time.monotonic() + self.retry_s
        self.log(event="down", name=dev.name, reason=reason, **({"lost": lost} if lost else {}))

    def close_all(self) -> None:
        for dev in self.devices:
            self._log_overflow(dev)
            if dev.fd is not None:
                try:
                    os.close(dev.fd)
                except OSError:
                    pass
                dev.fd = None

    # -- data ----------------------------------------------------------------------------------

    def on_readable(self, dev: Device, gone: bool) -> None:
        assert dev.fd is not None
        try:
            data = os.read(dev.fd, READ_SIZE)
        except BlockingIOError:
            if gone:
                self.mark_down(dev, "hangup")
            return
        except OSError as exc:
            self.mark_down(dev, errno.errorcode.get(exc.errno, str(exc)))
            return
        if not data:
            self.mark_down(dev, "eof")
            return
        targets = [p for p in self.ports if p.fd is not None] if dev is self.pbx else (
            [self.pbx] if self.pbx.fd is not None else []
        )
        self.log(**{"from": dev.name, "hex": data.hex(), "to": [t.name for t in targets]})
        for target in targets:
            self.send(target, data)

    def send(self, dev: Device, data: bytes) -> None:
        if not dev.out:
            data = data[self._write(dev, data):]
            if dev.fd is None or not data:
                return
        room = self.max_pending - len(dev.out)
        if len(data) > room:
            dev.dropped += len(data) - max(room, 0)
            dev.overflowed = True
            data = data[: max(room, 0)]
            if time.monotonic() - dev.overflow_logged >= OVERFLOW_LOG_S:
                self._log_overflow(dev)
        dev.out += data

    def flush(self, dev: Device) -> None:
        n = self._write(dev, dev.out)
        if dev.fd is not None:
            del dev.out[:n]
            if not dev.out and dev.overflowed:
                self._log_overflow(dev)
                dev.overflowed = False
                self.log(event="drained", name=dev.name)

    def _write(self, dev: Device, data: bytes | bytearray) -> int:
        assert dev.fd is not None
        try:
            return os.write(dev.fd, data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            self.mark_down(dev, errno.errorcode.get(exc.errno, str(exc)))
            return 0

    def _log_overflow(self, dev: Device) -> None:
        if dev.dropped:
            self.log(event="overflow", name=dev.name, dropped=dev.dropped, pending=len(dev.out))
            dev.dropped = 0
            dev.overflow_logged = time.monotonic()

    # -- loop ----------------------------------------------------------------------------------

    def run(self, ready: TextIO | None = None) -> None:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)

        def on_signal(signum: int, frame: object) -> None:
            self.stopping = True

        old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            for dev in self.devices:
                self.try_open(dev, first=True)
            if ready is not None:
                ready.write("ready\n")
                ready.flush()
            while not self.stopping:
                self._step(wake_r)
        finally:
            self.close_all()
            self.log(event="stop")
            signal.set_wakeup_fd(old_wakeup)
            for s, h in old_handlers.items():
                signal.signal(s, h)
            os.close(wake_r)
            os.close(wake_w)

    def _step(self, wake_r: int) -> None:
        now = time.monotonic()
        deadlines: list[float] = []
        for dev in self.devices:
            if dev.fd is None and dev.next_try <= now:
                self.try_open(dev)
            if dev.fd is None:
                deadlines.append(dev.next_try)
            if dev.dropped:
                if now - dev.overflow_logged >= OVERFLOW_LOG_S:
                    self._log_overflow(dev)
                else:
                    deadlines.append(dev.overflow_logged + OVERFLOW_LOG_S)
        poller = select.poll()
        poller.register(wake_r, select.POLLIN)
        by_fd: dict[int, Device] = {}
        for dev in self.devices:
            if dev.fd is not None:
                by_fd[dev.fd] = dev
                poller.register(dev.fd, _IN | (select.POLLOUT if dev.out else 0))
        timeout_ms = None
        if deadlines:
            timeout_ms = max(0, math.ceil((min(deadlines) - time.monotonic()) * 1000))
        events = poller.poll(timeout_ms)
        for fd, ev in events:
            if fd == wake_r:
                try:
                    while os.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
                continue
            dev = by_fd[fd]
            if dev.fd != fd:  # closed (and maybe reopened) earlier in this round
                continue
            if ev & (_IN | _GONE):
                self.on_readable(dev, gone=bool(ev & _GONE))
            if dev.fd == fd and ev & select.POLLOUT and dev.out:
                self.flush(dev)


def _ttyname(fd: int) -> str | None:
    try:
        return os.ttyname(fd)
    except OSError:
        return None


def _port(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    if name == PBX:
        raise argparse.ArgumentTypeError(f"port name {PBX!r} is reserved for the PBX side")
    return name, path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lab.splitter",
        description="Software SMDI data splitter: PBX data to every port, "
                    "ports' data merged back to the PBX.",
    )
    parser.add_argument("--pbx", required=True, metavar="PATH", help="the PBX side tty")
    parser.add_argument("--port", required=True, action="append", type=_port, metavar="NAME=PATH",
                        help="a voice-mail node's tty (repeat for each node)")
    parser.add_argument("--log", required=True, metavar="FILE",
                        help="JSON-lines log of every chunk and event")
    parser.add_argument("--max-pending", type=int, default=MAX_PENDING, metavar="BYTES",
                        help="pending output kept per device before dropping (default 1 MiB)")
    parser.add_argument("--retry", type=float, default=RETRY_S, metavar="SECONDS",
                        help="reopen interval for a device that is gone (default 0.05)")
    args = parser.parse_args(argv)
    names = [name for name, _ in args.port]
    if len(set(names)) != len(names):
        parser.error(f"port names must be unique: {names}")
    if args.max_pending < 1:
        parser.error("--max-pending must be positive")
    with open(args.log, "a", encoding="utf-8") as log:
        splitter = Splitter(args.pbx, args.port, log, max_pending=args.max_pending, retry_s=args.retry)
        splitter.run(ready=sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
