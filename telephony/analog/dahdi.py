"""``DahdiBoard``: the board backend for FXO ports of a DAHDI analog card (a Digium TDM400P,
A4B, A8B or any card whose FXO modules DAHDI drives), one DAHDI channel per line.

Line ``i`` of the board is ``channels[i - 1]``.  ``open()`` opens ``/dev/dahdi/channel`` once per
channel (``O_RDWR | O_NONBLOCK``) and configures it with ioctls (the numbers and layouts are
:mod:`telephony.analog.core.dahdi_abi`):

* ``DAHDI_SPECIFY`` binds the descriptor to the channel number;
* ``DAHDI_SET_BLOCKSIZE`` and ``DAHDI_SET_BUFINFO``: ``block_ms`` of audio per read or write,
  about 80 ms of buffering each way, transmit policy "immediate";
* ``DAHDI_SETLAW`` (``DAHDI_LAW_DEFAULT``: the law the card's codec speaks, whatever an earlier
  user left) and ``DAHDI_SETLINEAR``: the kernel converts, so reads and writes carry 16-bit
  signed linear samples in the host's byte order, the house PCM on a little-endian host
  (swapped on a big-endian one);
* ``DAHDI_GET_PARAMS`` checks the signalling (an FXO port is signalled as an FXS one in DAHDI:
  ``fxsks`` or ``fxsls`` in ``/etc/dahdi/system.conf``) and that the card's law is ``law``;
* ``DAHDI_FLUSH`` empties the buffers and the event queue; ``DAHDI_HOOK`` puts it on hook.

Audio and events come from non-blocking reads.  While a signalling event waits in the
kernel's queue a read (or a write) fails with errno :data:`~telephony.analog.core.dahdi_abi.ELAST`;
the backend then fetches the events with ``DAHDI_GETEVENT`` and turns them into line events
with :class:`LineState` (the mapping is in docs/analog.md, "DAHDI").  One epoll descriptor
watches every channel (readable audio, ``POLLPRI`` for a pending event) and ``receive()`` waits
on it with ``trio.lowlevel.wait_readable``.  Loop supervision while off hook also polls
``rxisoffhook`` of ``DAHDI_GET_PARAMS`` (battery on the line), so a loop drop is seen with
``fxsls`` signalling too, where the kernel reports none.

A channel that disappears (``ENODEV``/``EIO`` on a read, write or ioctl, or the kernel's
``REMOVED`` event) becomes an ``ALARM`` on its line; its descriptor is closed and opened again
every ``reopen_s`` seconds, and ``ALARM_CLEAR`` follows when it is back.  Hook and audio on a
line in that state are dropped (counted).  A configuration that does not work at ``open()``
(no such device or channel, a channel in use or not configured, the wrong signalling) is a
:class:`~telephony.analog.board.BoardError` naming the channel and the fix, and nothing stays
open.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import platform
import select
import struct
import sys
from array import array
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Final

import trio

from telephony.analog.board import (
    FRAME_BYTES,
    Audio,
    BoardError,
    Event,
    LineEvent,
    check_frame,
    check_line,
)
from telephony.analog.core import dahdi_abi as abi

__all__ = ["DEVICE", "LAWS", "FXO_PORT_SIGNALLING", "EVENT_MAP", "MAX_CHANNEL", "parse_channels",
           "channel_list", "card_to_pcm", "pcm_to_card", "FrameAssembler", "LineState",
           "DahdiBoard"]

log = logging.getLogger("telephony.analog.dahdi")

DEVICE: Final = "/dev/dahdi/channel"
#: the board's law -> the law DAHDI_GET_PARAMS reports (``curlaw``) for a card that codes it
LAWS: Final = {"ulaw": abi.DAHDI_LAW_MULAW, "alaw": abi.DAHDI_LAW_ALAW}
#: the signalling of an FXO port: DAHDI names a channel by the signalling it speaks, and the
#: telephone end of a line (our end) speaks FXS signalling; kewlstart is the one that reports
#: the far end's disconnect, loopstart works with the backend's own loop polling
FXO_PORT_SIGNALLING: Final = frozenset({abi.DAHDI_SIG_FXSKS, abi.DAHDI_SIG_FXSLS})
MAX_CHANNEL: Final = abi.DAHDI_MAX_CHANNELS - 1  # DAHDI numbers channels below 1024
MAX_CHANNELS_TEXT: Final = 4096

#: what each kernel event means on a channel with FXS signalling (documentation and tests; the
#: state machine is :class:`LineState`)
EVENT_MAP: Final = {
    abi.DAHDI_EVENT_RINGBEGIN: "ring_on: ringing voltage detected",
    abi.DAHDI_EVENT_RINGOFFHOOK: "ring_off: the ring burst ended (no ring for 50 ms)",
    abi.DAHDI_EVENT_ONHOOK: "loop_drop: battery gone while off hook (kewlstart disconnect)",
    abi.DAHDI_EVENT_ALARM: "alarm: no battery on the line (red alarm)",
    abi.DAHDI_EVENT_NOALARM: "alarm_clear: battery back",
    abi.DAHDI_EVENT_REMOVED: "alarm: the channel was unregistered (card or driver gone)",
    abi.DAHDI_EVENT_POLARITY: "(counted) battery polarity reversed",
    abi.DAHDI_EVENT_RINGERON: "(counted) our own ringer: only on FXO-signalled channels",
    abi.DAHDI_EVENT_RINGEROFF: "(counted) our own ringer: only on FXO-signalled channels",
}

_ALARM_BATTERY = "battery"
_ALARM_LOST = "lost"
_INT = struct.Struct("=i")
_LOST_ERRNOS = frozenset({errno.ENODEV, errno.EIO, errno.ENXIO, errno.EBADF})


# ---------------------------------------------------------------------- pure helpers

def parse_channels(text: str) -> list[int]:
    """``"1-4,7"`` -> ``[1, 2, 3, 4, 7]`` (the syntax of DAHDI's system.conf).  Channels are
    1..1023, each once; anything else is a ``ValueError`` naming the bad part."""
    if not isinstance(text, str):
        raise ValueError(f"a channel list is text like '1-4,7', not {type(text).__name__}")
    if len(text) > MAX_CHANNELS_TEXT:
        raise ValueError(f"a channel list is at most {MAX_CHANNELS_TEXT} characters")
    out: list[int] = []
    for part in text.replace(" ", "").split(","):
        first, dash, last = part.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()) or not first.isascii() \
                or not last.isascii():
            raise ValueError(f"bad channel list {text!r}: {part!r} is not N or N-M")
        low, high = int(first), int(last) if dash else int(first)
        if low > high:
            raise ValueError(f"bad channel list {text!r}: range {part!r} runs backwards")
        if low < 1 or high > MAX_CHANNEL:
            raise ValueError(f"bad channel list {text!r}: channels are 1..{MAX_CHANNEL}")
        out.extend(range(low, high + 1))
    return channel_list(out)


def channel_list(channels: object) -> list[int]:
    """The channels of a board: a list text (:func:`parse_channels`) or integers 1..1023, at
    least one, each once, in the order given (line ``i`` is the ``i``-th)."""
    if isinstance(channels, str):
        return parse_channels(channels)
    try:
        items = list(channels)  # type: ignore[call-overload]
    except TypeError:
        raise ValueError(f"channels must be a list of channel numbers, not {channels!r}") from None
    if not items:
        raise ValueError("a DAHDI board needs at least one channel")
    if len(items) > MAX_CHANNEL:
        raise ValueError(f"at most {MAX_CHANNEL} channels")
    for c in items:
        if type(c) is not int or not 1 <= c <= MAX_CHANNEL:
            raise ValueError(f"channel {c!r} is not a DAHDI channel number 1..{MAX_CHANNEL}")
    seen: set[int] = set()
    for c in items:
        if c in seen:
            raise ValueError(f"channel {c} is listed twice")
        seen.add(c)
    return items


def card_to_pcm(data: bytes, byteorder: str = sys.byteorder) -> bytes:
    """Linear samples as the card gives them (the host's byte order) -> house PCM (little
    endian).  An odd length is a ``ValueError``."""
    if len(data) % 2:
        raise ValueError(f"16-bit samples come in pairs of bytes, not {len(data)} bytes")
    if byteorder == "little":
        return bytes(data)
    samples = array("h", data)
    samples.byteswap()
    return samples.tobytes()


def pcm_to_card(pcm: bytes, byteorder: str = sys.byteorder) -> bytes:
    """House PCM -> linear samples in the host's byte order (the swap is its own inverse)."""
    return card_to_pcm(pcm, byteorder)


class FrameAssembler:
    """Cuts the audio of one channel, in reads of any size, into 20 ms frames
    (:data:`~telephony.analog.board.FRAME_BYTES`).  Holds less than one frame between calls."""

    def __init__(self, frame_bytes: int = FRAME_BYTES) -> None:
        if frame_bytes <= 0 or frame_bytes % 2:
            raise ValueError(f"a frame is a positive even number of bytes, not {frame_bytes}")
        self.frame_bytes = frame_bytes
        self._buffer = bytearray()

    @property
    def held(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        cut = len(self._buffer) - len(self._buffer) % self.frame_bytes
        frames = [bytes(self._buffer[i:i + self.frame_bytes]) for i in range(0, cut, self.frame_bytes)]
        del self._buffer[:cut]
        return frames

    def reset(self) -> None:
        self._buffer.clear()


#: 20 ms frames passed up on hook after a ring ends (6 s: longer than the longest silence
#: between rings, North America's 4 s)
AFTER_RING_FRAMES = 300


@dataclass
class LineState:
    """What the kernel's events and the hook mean for one line (pure: no I/O, no clock).

    Every method returns the line events to report, in order.  ``offhook`` is our hook;
    ``ringing`` runs from ``RING_ON`` to ``RING_OFF`` (or until we go on hook); ``loop`` is
    the battery seen while off hook (None until the first sample after going off hook);
    ``alarms`` holds the reasons the line is unusable (no battery, channel lost).
    """

    offhook: bool = False
    ringing: bool = False
    #: 20 ms frames still passed up on hook after a ring ended: the caller-ID burst comes in
    #: the silence between the first and the second ring
    after_ring: int = 0
    loop: bool | None = None
    alarms: set[str] = field(default_factory=set)

    @property
    def alarmed(self) -> bool:
        return bool(self.alarms)

    @property
    def passes_audio(self) -> bool:
        """Audio goes up while off hook, while ringing and for :data:`AFTER_RING_FRAMES`
        after a ring ends (the caller-ID burst between the first and the second ring comes on
        hook, in the silence after the first ring)."""
        return not self.alarmed and (self.offhook or self.ringing or self.after_ring > 0)

    def passed(self, frames: int) -> None:
        """``frames`` frames went up: on hook between rings they use up the window."""
        if not (self.offhook or self.ringing):
            self.after_ring = max(0, self.after_ring - frames)

    def hook(self, offhook: bool) -> list[LineEvent]:
        self.offhook = offhook
        self.loop = None
        self.after_ring = 0
        if not offhook:
            self.ringing = False
        return []

    def loop_sample(self, present: bool) -> list[LineEvent]:
        """The battery while off hook (``rxisoffhook`` of DAHDI_GET_PARAMS)."""
        if not self.offhook or present == self.loop or (self.loop is None and not present):
            return []
        self.loop = present
        return [LineEvent.LOOP_ON if present else LineEvent.LOOP_DROP]

    def kernel_event(self, code: int) -> list[LineEvent]:
        """One event DAHDI_GETEVENT returned."""
        if code == abi.DAHDI_EVENT_RINGBEGIN:
            if self.ringing:
                return []
            self.ringing = True
            return [LineEvent.RING_ON]
        if code == abi.DAHDI_EVENT_RINGOFFHOOK:
            if self.ringing:
                self.ringing = False
                if not self.offhook:
                    self.after_ring = AFTER_RING_FRAMES
                return [LineEvent.RING_OFF]
            if self.offhook:
                return []  # the end of a ring we answered
            # a kernel built without RINGBEGIN reports a ring only by its end
            return [LineEvent.RING_ON, LineEvent.RING_OFF]
        if code == abi.DAHDI_EVENT_ONHOOK:
            if not self.offhook or self.loop is False:
                return []
            self.loop = False
            return [LineEvent.LOOP_DROP]
        if code == abi.DAHDI_EVENT_ALARM:
            return self.alarm(_ALARM_BATTERY, True)
        if code == abi.DAHDI_EVENT_NOALARM:
            return self.alarm(_ALARM_BATTERY, False)
        if code == abi.DAHDI_EVENT_REMOVED:
            return self.alarm(_ALARM_LOST, True)
        return []  # counted above: polarity, our own ringer, hook complete, digits, ...

    def alarm(self, reason: str, on: bool) -> list[LineEvent]:
        was = self.alarmed
        if on:
            self.alarms.add(reason)
        else:
            self.alarms.discard(reason)
        if self.alarmed == was:
            return []
        if self.alarmed:
            self.ringing = False
            self.after_ring = 0
            return [LineEvent.ALARM]
        return [LineEvent.ALARM_CLEAR]


# ---------------------------------------------------------------------- the backend

class _Channel:
    def __init__(self, line: int, number: int) -> None:
        self.line = line
        self.number = number
        self.fd = -1
        self.name = ""
        self.signalling = ""
        self.state = LineState()
        self.frames = FrameAssembler()
        self.send_lock = trio.Lock()
        self.lost_at = 0.0
        self.alarms_at_open = 0  # chan_alarms of DAHDI_GET_PARAMS when it was opened

    def __repr__(self) -> str:
        return f"line {self.line} (DAHDI channel {self.number})"


def _ioctl_int(fd: int, request: int, value: int = 0) -> int:
    """An ioctl whose argument is a pointer to an int (every int ioctl of DAHDI)."""
    return _INT.unpack(fcntl.ioctl(fd, request, _INT.pack(value)))[0]


class DahdiBoard:
    """FXO lines on DAHDI ``channels`` (a list of numbers, or text like ``"1-4,7"``).

    ``law``: the card's companding law (``open()`` checks that the card codes it);
    ``block_ms``: audio per kernel buffer (2, 4, 5, 10 or 20 ms; the host always gets 20 ms
    frames); ``device``: DAHDI's channel selector; ``reopen_s``: how often a lost channel is
    tried again; ``poll_s``: the longest ``receive()`` waits between looks at every channel
    (audio normally wakes it every block).
    """

    def __init__(self, channels: list[int] | str, law: str = "ulaw", block_ms: int = 20,
                 device: str | os.PathLike = DEVICE, *, reopen_s: float = 5.0,
                 poll_s: float = 0.1) -> None:
        self.channels = channel_list(channels)
        if law not in LAWS:
            raise ValueError(f"law must be one of {sorted(LAWS)}, not {law!r}")
        if type(block_ms) is not int or block_ms < 2 or 20 % block_ms:
            raise ValueError(f"block_ms must divide 20 (2, 4, 5, 10 or 20), not {block_ms!r}")
        if not reopen_s > 0 or not poll_s > 0:
            raise ValueError("reopen_s and poll_s must be positive")
        self.law = law
        self.block_ms = block_ms
        self.block_samples = block_ms * 8
        self.numbufs = max(4, 80 // block_ms)
        self.device = os.fspath(device)
        self.reopen_s = reopen_s
        self.poll_s = poll_s
        self.lines = len(self.channels)
        #: reads, frames in and out, audio dropped, events by name, channels lost and found
        self.counters: Counter[str] = Counter()
        self._chans = [_Channel(i + 1, c) for i, c in enumerate(self.channels)]
        self._pending: deque[Event | Audio] = deque()
        self._epoll: select.epoll | None = None

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"DahdiBoard({self.channels!r}, {state}, law={self.law})"

    @property
    def is_open(self) -> bool:
        return self._epoll is not None

    def channel_info(self, line: int) -> dict[str, object]:
        """The channel behind ``line``: number, name (e.g. ``WCTDM/0/0``), signalling, state."""
        ch = self._chans[check_line(line, self.lines) - 1]
        s = ch.state
        return {"channel": ch.number, "name": ch.name, "signalling": ch.signalling,
                "open": ch.fd >= 0, "offhook": s.offhook, "ringing": s.ringing, "loop": s.loop,
                "alarms": sorted(s.alarms)}

    # ------------------------------------------------------------------ Board

    async def open(self) -> None:
        """Open and configure every channel; all or nothing (BoardError naming the channel)."""
        await self.aclose()
        machine = platform.machine()
        if not abi.generic_ioctl_machine(machine):
            raise BoardError(f"the DAHDI backend computes ioctl numbers for the asm-generic "
                             f"encoding, which this machine ({machine}) does not use")
        epoll = select.epoll()
        try:
            for ch in self._chans:
                ch.state = LineState()
                ch.frames.reset()
                self._open_channel(ch)
                epoll.register(ch.fd, select.EPOLLIN | select.EPOLLPRI)
        except BaseException:
            epoll.close()
            for ch in self._chans:
                self._close_fd(ch)
            raise
        self._epoll = epoll
        self._pending.clear()
        for ch in self._chans:
            self._initial_alarm(ch)
        log.info("DAHDI board: channels %s, %s, %d ms blocks", self.channels, self.law, self.block_ms)
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        epoll, self._epoll = self._epoll, None
        if epoll is not None:
            trio.lowlevel.notify_closing(epoll.fileno())  # wakes a receive() waiting on it
            epoll.close()
        for ch in self._chans:
            if ch.fd >= 0:
                try:
                    _ioctl_int(ch.fd, abi.DAHDI_HOOK, abi.DAHDI_ONHOOK)
                except OSError:
                    pass  # closing hangs up anyway
            self._close_fd(ch)
            ch.state = LineState()
        await trio.lowlevel.checkpoint()

    async def receive(self) -> Event | Audio:
        await trio.lowlevel.checkpoint()
        while True:
            if self._pending:
                return self._pending.popleft()
            epoll = self._epoll
            if epoll is None:
                raise BoardError(f"the DAHDI board on channels {self.channels} is not open")
            try:
                with trio.move_on_after(self.poll_s):
                    await trio.lowlevel.wait_readable(epoll.fileno())
            except trio.ClosedResourceError:
                raise BoardError(f"the DAHDI board on channels {self.channels} was closed") from None
            if self._epoll is not epoll:
                continue  # closed (or reopened) meanwhile
            epoll.poll(0)  # consume the readiness; every channel is serviced below
            for ch in self._chans:
                self._service(ch)
            self._reopen_lost()

    async def set_hook(self, line: int, offhook: bool) -> None:
        ch = self._channel(line)
        if not isinstance(offhook, bool):
            raise ValueError(f"offhook must be a bool, not {offhook!r}")
        await trio.lowlevel.checkpoint()
        if ch.fd < 0:
            self.counters["hook_dropped"] += 1
            log.warning("%s is lost: hook %s not sent", ch, "off" if offhook else "on")
            return
        try:
            _ioctl_int(ch.fd, abi.DAHDI_HOOK, abi.DAHDI_OFFHOOK if offhook else abi.DAHDI_ONHOOK)
        except OSError as e:
            if e.errno in _LOST_ERRNOS:
                self._lose(ch, e)
                return
            raise BoardError(f"{ch}: DAHDI_HOOK {'off' if offhook else 'on'} hook failed: "
                             f"{e.strerror}") from e
        self._queue(ch, ch.state.hook(offhook))
        ch.frames.reset()
        if not offhook:  # audio read before going on hook is not handed up after it
            self._drop_audio(ch)
        self.counters["offhook" if offhook else "onhook"] += 1

    async def send_audio(self, line: int, pcm: bytes) -> None:
        ch = self._channel(line)
        data = pcm_to_card(check_frame(pcm))
        async with ch.send_lock:
            while data:
                if ch.fd < 0:
                    self.counters["audio_out_dropped"] += 1
                    await trio.lowlevel.checkpoint()
                    return
                fd = ch.fd
                try:
                    sent = os.write(fd, data[:self.block_samples * 2])
                except BlockingIOError:
                    await self._wait_writable(ch, fd)
                    continue
                except OSError as e:
                    if e.errno == abi.ELAST:
                        self._fetch_events(ch)  # the kernel refuses writes while one waits
                        await trio.lowlevel.checkpoint()
                        continue
                    if e.errno in _LOST_ERRNOS:
                        self._lose(ch, e)
                        continue
                    raise BoardError(f"{ch}: writing audio failed: {e.strerror}") from e
                data = data[sent:]
            self.counters["audio_out"] += 1
        await trio.lowlevel.checkpoint()

    # ------------------------------------------------------------------ inside

    def _channel(self, line: int) -> _Channel:
        if self._epoll is None:
            raise BoardError(f"the DAHDI board on channels {self.channels} is not open")
        return self._chans[check_line(line, self.lines) - 1]

    async def _wait_writable(self, ch: _Channel, fd: int) -> None:
        try:
            with trio.move_on_after(1.0) as scope:
                await trio.lowlevel.wait_writable(fd)
        except trio.ClosedResourceError:
            return  # the channel was lost or the board closed meanwhile: the caller sees it
        if scope.cancelled_caught:
            raise BoardError(f"{ch}: the card took no audio for 1 s (is the card's interrupt "
                             "running? see dahdi_test)")

    def _open_channel(self, ch: _Channel) -> None:
        """Open and configure ``ch``: BoardError naming the channel and the fix."""
        try:
            fd = os.open(self.device, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            hint = " (is DAHDI loaded: the card's driver and dahdi.ko?)" \
                if e.errno in (errno.ENOENT, errno.ENODEV, errno.ENXIO) else ""
            raise BoardError(f"cannot open {self.device} for DAHDI channel {ch.number}: "
                             f"{e.strerror}{hint}") from e
        ch.fd = fd
        step = "DAHDI_SPECIFY"
        try:
            _ioctl_int(fd, abi.DAHDI_SPECIFY, ch.number)
            step = "DAHDI_SET_BLOCKSIZE"
            _ioctl_int(fd, abi.DAHDI_SET_BLOCKSIZE, self.block_samples)
            step = "DAHDI_SET_BUFINFO"
            info = abi.DAHDI_BUFFERINFO
            fields = info.unpack(fcntl.ioctl(fd, abi.DAHDI_GET_BUFINFO, bytes(info.size)))
            fields.update(txbufpolicy=abi.DAHDI_POLICY_IMMEDIATE,
                          rxbufpolicy=abi.DAHDI_POLICY_IMMEDIATE, numbufs=self.numbufs,
                          bufsize=self.block_samples)
            fcntl.ioctl(fd, abi.DAHDI_SET_BUFINFO, info.pack(**fields))
            step = "DAHDI_SETLAW"  # the channel's own law: the one its codec speaks
            _ioctl_int(fd, abi.DAHDI_SETLAW, abi.DAHDI_LAW_DEFAULT)
            step = "DAHDI_SETLINEAR"
            _ioctl_int(fd, abi.DAHDI_SETLINEAR, 1)
            step = "DAHDI_GET_PARAMS"
            params = self._params(fd)
            step = "DAHDI_FLUSH"
            _ioctl_int(fd, abi.DAHDI_FLUSH, abi.DAHDI_FLUSH_ALL)
            step = "DAHDI_HOOK"
            _ioctl_int(fd, abi.DAHDI_HOOK, abi.DAHDI_ONHOOK)
        except OSError as e:
            self._close_fd(ch)
            raise BoardError(self._explain(ch, step, e)) from e
        ch.name = params["name"].split(b"\0", 1)[0].decode("ascii", "replace")
        ch.signalling = abi.signalling_name(params["sigtype"])
        problem = None
        if params["sigtype"] not in FXO_PORT_SIGNALLING:
            problem = (f"has {ch.signalling} signalling; an FXO port needs FXS signalling "
                       f"(fxsks={ch.number} in /etc/dahdi/system.conf, then dahdi_cfg)")
        elif params["curlaw"] != LAWS[self.law]:
            card = {v: k for k, v in LAWS.items()}.get(params["curlaw"], f"law {params['curlaw']}")
            problem = (f"codes {card}, not {self.law}: set the board's law to {card}, or the "
                       f"card's (the driver's alawoverride parameter, the span's deflaw)")
        elif self._block_size(fd) != self.block_samples:
            problem = f"did not take a block of {self.block_samples} samples"
        if problem:
            self._close_fd(ch)
            raise BoardError(f"DAHDI channel {ch.number} ({ch.name or '?'}) {problem}")
        ch.alarms_at_open = params["chan_alarms"]

    def _explain(self, ch: _Channel, step: str, e: OSError) -> str:
        n = ch.number
        what = {
            errno.ENOTTY: f"{self.device} is not DAHDI's channel device",
            errno.EINVAL: f"DAHDI has no channel {n} (dahdi_scan lists the card's channels)"
            if step == "DAHDI_SPECIFY" else None,
            errno.ENXIO: f"channel {n} is not configured: give it fxsks signalling in "
                         "/etc/dahdi/system.conf and run dahdi_cfg",
            errno.EBUSY: f"channel {n} is in use by another program (Asterisk?)",
            errno.ENODEV: f"channel {n} is gone (card or driver unloaded)",
        }.get(e.errno or 0)
        return f"DAHDI channel {n}: {step} failed: {e.strerror}" + (f": {what}" if what else "")

    def _params(self, fd: int) -> dict:
        return abi.DAHDI_PARAMS.unpack(
            fcntl.ioctl(fd, abi.DAHDI_GET_PARAMS, bytes(abi.DAHDI_PARAMS.size)))

    def _block_size(self, fd: int) -> int:
        return _ioctl_int(fd, abi.DAHDI_GET_BLOCKSIZE)

    def _initial_alarm(self, ch: _Channel) -> None:
        if ch.alarms_at_open:
            self._queue(ch, ch.state.alarm(_ALARM_BATTERY, True))

    def _close_fd(self, ch: _Channel) -> None:
        fd, ch.fd = ch.fd, -1
        if fd >= 0:
            if self._epoll is not None:
                try:
                    self._epoll.unregister(fd)
                except (OSError, ValueError):
                    pass
            trio.lowlevel.notify_closing(fd)
            os.close(fd)

    def _queue(self, ch: _Channel, events: list[LineEvent]) -> None:
        for event in events:
            self.counters[event.value] += 1
            self._pending.append(Event(ch.line, event))

    def _service(self, ch: _Channel) -> None:
        """Read what the channel has (audio, events), then sample the loop if off hook."""
        for _ in range(self.numbufs * 2 + 2):  # bounded: never more than the kernel holds
            if ch.fd < 0:
                return
            try:
                data = os.read(ch.fd, self.block_samples * 2)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == abi.ELAST:
                    self._fetch_events(ch)
                    continue
                if e.errno in _LOST_ERRNOS:
                    self._lose(ch, e)
                    return
                raise BoardError(f"{ch}: reading failed: {e.strerror}") from e
            if not data:
                self._lose(ch, OSError(errno.ENODEV, "end of file"))
                return
            self.counters["reads"] += 1
            self._audio(ch, data)
        if ch.fd >= 0 and ch.state.offhook:
            try:
                present = bool(self._params(ch.fd)["rxisoffhook"])
            except OSError as e:
                self._lose(ch, e)
                return
            self._queue(ch, ch.state.loop_sample(present))

    def _audio(self, ch: _Channel, data: bytes) -> None:
        if not ch.state.passes_audio:
            ch.frames.reset()
            self.counters["audio_in_dropped"] += 1
            return
        frames = ch.frames.feed(card_to_pcm(data))
        for frame in frames:
            self.counters["audio_in"] += 1
            self._pending.append(Audio(ch.line, frame))
        ch.state.passed(len(frames))

    def _fetch_events(self, ch: _Channel) -> None:
        for _ in range(abi.DAHDI_MAX_EVENTSIZE + 1):  # the kernel queues at most 64
            if ch.fd < 0:
                return
            try:
                code = _ioctl_int(ch.fd, abi.DAHDI_GETEVENT)
            except OSError as e:
                self._lose(ch, e)
                return
            if code == abi.DAHDI_EVENT_NONE:
                return
            log.debug("%s: %s", ch, abi.event_name(code))
            self.counters[f"event_{abi.event_name(code)}"] += 1
            self._queue(ch, ch.state.kernel_event(code))
            if code == abi.DAHDI_EVENT_REMOVED:
                self._lose(ch, OSError(errno.ENODEV, "the kernel removed the channel"))
                return

    def _drop_audio(self, ch: _Channel) -> None:
        kept = deque(x for x in self._pending if not (isinstance(x, Audio) and x.line == ch.line))
        self.counters["audio_in_dropped"] += len(self._pending) - len(kept)
        self._pending = kept

    def _lose(self, ch: _Channel, e: OSError) -> None:
        log.warning("%s lost: %s; trying again every %g s", ch, e.strerror or e, self.reopen_s)
        self.counters["channels_lost"] += 1
        self._close_fd(ch)
        ch.frames.reset()
        self._drop_audio(ch)
        ch.state.offhook = ch.state.ringing = False
        ch.state.loop = None
        ch.lost_at = trio.current_time()
        self._queue(ch, ch.state.alarm(_ALARM_LOST, True))

    def _reopen_lost(self) -> None:
        now = trio.current_time()
        for ch in self._chans:
            if ch.fd >= 0 or now - ch.lost_at < self.reopen_s or self._epoll is None:
                continue
            ch.lost_at = now
            try:
                self._open_channel(ch)
                self._epoll.register(ch.fd, select.EPOLLIN | select.EPOLLPRI)
            except (BoardError, OSError) as e:
                self._close_fd(ch)
                log.info("%s still lost: %s", ch, e)
                continue
            self.counters["channels_found"] += 1
            log.info("%s is back", ch)
            # the battery alarm is read afresh: ALARM_CLEAR only if the line is usable now
            ch.state.alarms.discard(_ALARM_BATTERY)
            if ch.alarms_at_open:
                ch.state.alarms.add(_ALARM_BATTERY)
            self._queue(ch, ch.state.alarm(_ALARM_LOST, False))
