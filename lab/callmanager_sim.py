"""The CallManager **simulator**'s engine (nobody has a Cisco CallManager here): real SCCP over
TCP with the project's codec (:mod:`telephony.sccp.core.messages`), for the voice-mail ports'
driver.  The process form, the control socket and the sync client are in
:mod:`lab.callmanager`; docs/sccp.md ("The CallManager simulator") says what it models.

::

    sim = CallManagerSim(devices=["CiscoUM1-VI1", "CiscoUM1-VI2"], pilot="5000", keepalive=2)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(sim.run, "127.0.0.1", 0)
        await sim.wait_registered(["CiscoUM1-VI1"], timeout=10)
        result = await sim.call("4021", last_redirecting="1002", reason=2, wav="hello.wav",
                                hang_up_after=3.0)
        result["device"], result["answered"], result["wav"], result["rtp"]["jitter_ms"]
        sim.lamps()    # {"6001": True}
        nursery.cancel_scope.cancel()

It never dies of what a station sends: a frame it cannot trust closes that station's
connection only, anything else odd is counted and ignored.
"""
from __future__ import annotations

import logging
import re
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio

from lab.callmanager_dialplan import call_type_of, mwi_verdict, parse_devices, port_name
from lab.pcap import PcapWriter
from lab.rtp_peer import RtpPeer
from telephony.core import media
from telephony.runtime.tasks import TaskFailures, python_logger
from telephony.sccp.core.messages import (
    CallState,
    CallType,
    Compression,
    Framer,
    LampMode,
    Message,
    MsgId,
    ProtocolError,
    RingMode,
    Stimulus,
    Tone,
    digit_of,
    encode,
)

__all__ = ["CallManagerSim", "port_name", "parse_devices"]

log = logging.getLogger("lab.callmanager")

RFC2833_PT = 101  # the telephone-event payload type offered
LINE = 1  # the one line instance of a voice-mail port
AUTH_TIMEOUT = 30.0  # a connection that does not register by then is closed (as Asterisk does)
MAX_CALLS_KEPT = 1000
MAX_LAMP_EVENTS = 10_000
_COMPRESSION = {"ulaw": Compression.G711_ULAW, "alaw": Compression.G711_ALAW}
_CALL_MSGS = (MsgId.OFF_HOOK, MsgId.ON_HOOK, MsgId.OPEN_RECEIVE_CHANNEL_ACK)


@dataclass
class _Dial:
    """A station off hook with no call: the MWI dialogue."""

    ref: int
    cgpn: str | None  # OffHookWithCgpn's number: "callmanager" style
    deadline: float
    digits: str = ""
    done: bool = False
    tone: bool = True  # dial tone (or reorder) playing


@dataclass
class _Call:
    ref: int
    events: trio.MemorySendChannel
    inbox: trio.MemoryReceiveChannel


@dataclass(eq=False)
class _Session:
    sid: int
    stream: trio.SocketStream
    peer: tuple[str, int]
    local: tuple[str, int]
    opened: float
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    lock: trio.Lock = field(default_factory=trio.Lock)
    pcap: Any = None
    device: str | None = None
    registered: bool = False
    since: float = 0.0  # wall clock of the registration
    last_keepalive: float = 0.0
    protocol_ver: int = 0
    caps: tuple = ()
    call: _Call | None = None
    dial: _Dial | None = None
    close_reason: str = ""
    gone: bool = False
    counts: Counter = field(default_factory=Counter)

    @property
    def busy(self) -> bool:
        return self.call is not None or self.dial is not None

    def close(self, reason: str) -> None:
        if not self.close_reason:
            self.close_reason = reason
        self.scope.cancel()


class CallManagerSim:
    """A CallManager **simulator** serving SCCP stations (the voice-mail ports).

    ``devices``: the device names it knows, in hunt order (a list, or ``{name: DN}``);
    ``pilot``: the number the hunted calls are for; ``keepalive``: the interval (whole seconds)
    it gives in RegisterAck (a station silent for ``keepalive_misses`` x that is dropped);
    ``extensions``: the subscriber extensions MWI may be set for (empty: any 1..24 digits);
    ``mwi_on``/``mwi_off``: the MWI codes (a CME prefix, or CallManager's MWI DNs);
    ``ring_timeout``: seconds a port may ring before the next is tried; ``rtp_host``: the
    address of the simulator's RTP sockets; ``record_dir``: where the WAVs of what ports sent
    go (a new temporary directory if None); ``pcap``: a file that gets every SCCP byte."""

    def __init__(self, devices: Iterable[str] | dict[str, str] | str, *, pilot: str = "5000",
                 keepalive: int = 30, keepalive_misses: int = 3, pcap: str | Path | None = None,
                 mwi_on: str = "2222", mwi_off: str = "2221", extensions: Iterable[str] = (),
                 ring_timeout: float = 10.0, rtp_host: str = "127.0.0.1",
                 record_dir: str | Path | None = None, interdigit: float = 3.0,
                 media_timeout: float = 5.0) -> None:
        self.devices = parse_devices([f"{k}={v}" for k, v in devices.items()] if isinstance(devices, dict)
                                     else devices)
        for what, num in (("pilot", pilot), ("mwi_on", mwi_on), ("mwi_off", mwi_off)):
            if not (isinstance(num, str) and re.fullmatch(r"[0-9*]{1,23}", num)):
                raise ValueError(f"{what} must be 1..23 digits, not {num!r}")
        if mwi_on.startswith(mwi_off) or mwi_off.startswith(mwi_on):
            raise ValueError(f"mwi_on {mwi_on!r} and mwi_off {mwi_off!r}: one is a prefix of the other")
        self.extensions = {str(e) for e in extensions}
        for e in self.extensions:
            if not re.fullmatch(r"[0-9]{1,24}", e):
                raise ValueError(f"bad extension {e!r}: 1..24 digits")
        if not (isinstance(keepalive, int) and 1 <= keepalive <= 3600):
            raise ValueError(f"keepalive must be whole seconds from 1 to 3600, not {keepalive!r}")
        if not (isinstance(keepalive_misses, int) and keepalive_misses >= 1):
            raise ValueError("keepalive_misses must be >= 1")
        for what, v in (("ring_timeout", ring_timeout), ("interdigit", interdigit),
                        ("media_timeout", media_timeout)):
            if not (isinstance(v, (int, float)) and 0 < v <= 3600):
                raise ValueError(f"{what} must be seconds from 0 to 3600, not {v!r}")
        self.pilot, self.mwi_on, self.mwi_off = pilot, mwi_on, mwi_off
        self.keepalive, self.keepalive_misses = keepalive, keepalive_misses
        self.ring_timeout, self.interdigit, self.media_timeout = ring_timeout, interdigit, media_timeout
        self.rtp_host = rtp_host
        self.pcap_path = Path(pcap) if pcap is not None else None
        self._record_dir = Path(record_dir) if record_dir is not None else None
        self._pcap: Any = None
        self._sessions: set[_Session] = set()
        self._registered: dict[str, _Session] = {}
        self._history: dict[str, dict[str, Any]] = {
            d: {"state": "never", "since": None, "registrations": 0, "last_outcome": ""}
            for d in self.devices}
        self._lamps: dict[str, bool] = {}
        self.lamp_events: list[dict[str, Any]] = []
        self._calls: list[dict[str, Any]] = []
        self.counts: Counter = Counter()
        self._changed = trio.Event()
        self._next_sid = 0
        self._next_ref = 16777216  # CM's call references look like this (0x01000000)
        self.port: int | None = None
        self.task_failures = TaskFailures(python_logger(log))
        self._stopped = trio.Event()

    # ------------------------------------------------------------------ running

    async def run(self, host: str = "127.0.0.1", port: int = 0, *,
                  task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve SCCP on ``host:port`` (0: any free port) until cancelled or :meth:`stop`;
        ``task_status.started(port)`` once listening."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.port = listeners[0].socket.getsockname()[1]
        if self.pcap_path is not None:
            self._pcap = PcapWriter(self.pcap_path)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._ticker)
                nursery.start_soon(trio.serve_listeners, self._handle, listeners)
                task_status.started(self.port)
                await self._stopped.wait()
                nursery.cancel_scope.cancel()
        finally:
            for s in list(self._sessions):
                s.close("simulator stopped")
            if self._pcap is not None:
                self._pcap.close()
                self._pcap = None

    def stop(self) -> None:
        """End :meth:`run` (its connections are closed)."""
        self._stopped.set()

    async def wait_stopped(self) -> None:
        """Return once :meth:`stop` was called."""
        await self._stopped.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def record_dir(self) -> Path:
        if self._record_dir is None:
            self._record_dir = Path(tempfile.mkdtemp(prefix="callmanager-"))
        self._record_dir.mkdir(parents=True, exist_ok=True)
        return self._record_dir

    # ------------------------------------------------------------------ connections

    async def _handle(self, stream: trio.SocketStream) -> None:
        """One station connection; contains every failure of its own."""
        try:
            peer = stream.socket.getpeername()[:2]
            local = stream.socket.getsockname()[:2]
        except OSError:
            await stream.aclose()
            return
        self._next_sid += 1
        s = _Session(self._next_sid, stream, peer, local, trio.current_time())
        if self._pcap is not None:
            s.pcap = self._pcap.stream(client=peer, server=local)
        self._sessions.add(s)
        self.counts["connections"] += 1
        try:
            with s.scope:
                await self._read(s)
        except Exception as e:  # noqa: BLE001 - one station's trouble stays with it
            self.task_failures.failed("session", e)
            s.close_reason = s.close_reason or f"error: {e}"
        finally:
            self._gone(s)
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _read(self, s: _Session) -> None:
        framer = Framer()
        while True:
            try:
                data = await s.stream.receive_some(4096)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                s.close_reason = s.close_reason or "connection reset"
                return
            if not data:
                s.close_reason = s.close_reason or "closed by station"
                return
            if s.pcap is not None and self._pcap is not None:  # (not after run() closed the file)
                s.pcap.client_sent(data)
            for item in framer.feed(data):
                if isinstance(item, ProtocolError):
                    self.counts["protocol_errors"] += 1
                    s.counts["protocol_errors"] += 1
                    log.info("station %s: %s", s.device or s.peer, item.reason)
                    if item.fatal:
                        s.close_reason = f"protocol error: {item.reason}"
                        return
                    continue
                s.counts[item.name] += 1
                try:
                    await self._dispatch(s, item)
                except Exception as e:  # noqa: BLE001 - a bug in one message's handling
                    self.task_failures.failed("dispatch", e)
                if s.close_reason:
                    return

    def _gone(self, s: _Session) -> None:
        self._sessions.discard(s)
        if s.gone:
            return
        s.gone = True
        if s.call is not None and not _full(s.call.events):
            s.call.events.send_nowait(("lost", None))
        if s.device is not None and self._registered.get(s.device) is s:
            del self._registered[s.device]
            h = self._history[s.device]
            h.update(state="unregistered", since=time.time(), last_outcome=s.close_reason or "closed")
            if s.close_reason != "replaced":  # (counted when the new registration came)
                self.counts["unregistered" if s.close_reason == "unregistered" else "dropped"] += 1
        self._notify()

    async def send_raw(self, s: _Session, data: bytes) -> bool:
        async with s.lock:
            try:
                await s.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return False
            if s.pcap is not None and self._pcap is not None:
                s.pcap.server_sent(data)
            return True

    async def _send(self, s: _Session, msg_id: MsgId, **fields: Any) -> bool:
        return await self.send_raw(s, encode(msg_id, **fields))

    async def _ticker(self) -> None:
        while True:
            await trio.sleep(0.05)
            now = trio.current_time()
            for s in list(self._sessions):
                try:
                    if s.registered and now - s.last_keepalive > self.keepalive_misses * self.keepalive:
                        self.counts["keepalive_timeouts"] += 1
                        s.close("keepalive timeout")
                    elif not s.registered and now - s.opened > AUTH_TIMEOUT:
                        s.close("did not register")
                    elif s.dial is not None and not s.dial.done and now >= s.dial.deadline:
                        await self._dial_decide(s, final=True)
                except Exception as e:  # noqa: BLE001
                    self.task_failures.failed("ticker", e)

    # ------------------------------------------------------------------ station messages

    async def _dispatch(self, s: _Session, msg: Message) -> None:
        mid = msg.id
        if mid == MsgId.REGISTER_REQ:
            await self._register(s, msg)
        elif mid == MsgId.KEEPALIVE_REQ:
            s.last_keepalive = trio.current_time()
            await self._send(s, MsgId.KEEPALIVE_ACK)
        elif mid == MsgId.ALARM:
            self.counts["alarms"] += 1
        elif not s.registered:
            self.counts["ignored_before_register"] += 1
        elif mid == MsgId.UNREGISTER_REQ:
            await self._send(s, MsgId.UNREGISTER_ACK, status=0)
            s.close_reason = "unregistered"
        elif mid == MsgId.CAPABILITIES_RES:
            s.caps = tuple(tuple(c) for c in msg["caps"])
        elif mid == MsgId.BUTTON_TEMPLATE_REQ:
            await self._send(s, MsgId.BUTTON_TEMPLATE_RES, button_offset=0, button_count=1,
                             total_button_count=1, buttons=((LINE, 0x09),))
        elif mid == MsgId.LINE_STAT_REQ:
            await self._send(s, MsgId.LINE_STAT_RES, line_number=msg["line_number"],
                             dir_number=self.devices.get(s.device or "", ""),
                             display_name=s.device or "", display_alias=s.device or "")
        elif mid in _CALL_MSGS and msg["call_reference"] and msg["call_reference"] not in (
                s.call.ref if s.call else None, s.dial.ref if s.dial else None):
            self.counts["stale"] += 1  # about a call that is over (a late answer, a late hang-up)
        elif s.call is not None and mid in _CALL_MSGS:
            if _full(s.call.events):
                self.counts["call_events_dropped"] += 1
            else:
                s.call.events.send_nowait((mid, msg))
        elif mid in (MsgId.OFF_HOOK, MsgId.OFF_HOOK_WITH_CGPN) and s.dial is None:
            await self._dial_start(s, msg)
        elif mid == MsgId.KEYPAD_BUTTON and s.dial is not None:
            await self._dial_digit(s, msg)
        elif mid == MsgId.ENBLOC_CALL and s.dial is not None and not s.dial.done:
            s.dial.digits += msg["called_party"]
            await self._dial_decide(s, final=True)
        elif mid == MsgId.ON_HOOK and s.dial is not None:
            d, s.dial = s.dial, None
            if not d.done:
                self.counts["mwi_abandoned"] += 1
            if d.tone:
                await self._send(s, MsgId.STOP_TONE, line_instance=LINE, call_reference=d.ref)
            await self._send(s, MsgId.CALL_STATE, call_state=CallState.ON_HOOK, line_instance=LINE,
                             call_reference=d.ref)
        else:
            self.counts[f"ignored {msg.name}"] += 1

    async def _register(self, s: _Session, msg: Message) -> None:
        name = msg["device_name"]
        if s.registered and name != s.device:  # one connection, one device
            self.counts["ignored RegisterReq"] += 1
            return
        if name not in self.devices:
            self.counts["rejected"] += 1
            shown = "".join(c if " " <= c <= "~" else "?" for c in name)
            await self._send(s, MsgId.REGISTER_REJECT, text=f"No Authority: {shown}"[:31])
            s.close_reason = "rejected"
            return
        old = self._registered.get(name)
        if old is not None and old is not s:
            self.counts["replaced"] += 1
            old.close("replaced")
            self._gone(old)  # now, so that the new one is not removed when the old one ends
        s.device, s.registered = name, True
        s.last_keepalive = trio.current_time()
        s.protocol_ver = msg["protocol_ver"]
        self._registered[name] = s
        h = self._history[name]
        h.update(state="registered", since=time.time(), last_outcome="registered")
        h["registrations"] += 1
        self.counts["registrations"] += 1
        await self._send(s, MsgId.REGISTER_ACK, keepalive_interval=self.keepalive, date_template="M/D/YA",
                         secondary_keepalive_interval=self.keepalive,
                         max_protocol_ver=min(max(s.protocol_ver, 0), 16), phone_features=0)
        await self._send(s, MsgId.CAPABILITIES_REQ)
        self._notify()

    # ------------------------------------------------------------------ MWI dialogue

    def _ref(self) -> int:
        self._next_ref += 1
        return self._next_ref

    async def _dial_start(self, s: _Session, msg: Message) -> None:
        cgpn = msg["calling_party"] if msg.id == MsgId.OFF_HOOK_WITH_CGPN else None
        s.dial = _Dial(self._ref(), cgpn, trio.current_time() + self.interdigit)
        self.counts["offhooks"] += 1
        await self._send(s, MsgId.CALL_STATE, call_state=CallState.OFF_HOOK, line_instance=LINE,
                         call_reference=s.dial.ref)
        await self._send(s, MsgId.START_TONE, tone=Tone.INSIDE_DIAL, direction=0, line_instance=LINE,
                         call_reference=s.dial.ref)

    async def _dial_digit(self, s: _Session, msg: Message) -> None:
        d = s.dial
        assert d is not None
        if d.done:
            self.counts["digits_after_result"] += 1
            return
        try:
            digit = digit_of(msg["button"])
        except ValueError:
            digit = "?"
        if d.tone and not d.digits:
            d.tone = False
            await self._send(s, MsgId.STOP_TONE, line_instance=LINE, call_reference=d.ref)
        d.digits += digit
        d.deadline = trio.current_time() + self.interdigit
        await self._dial_decide(s, final=False)

    def mwi_verdict(self, digits: str, cgpn: str | None, *, final: bool) -> tuple[bool, str] | str | None:
        """:func:`lab.callmanager_dialplan.mwi_verdict` with this simulator's codes and extensions."""
        return mwi_verdict(digits, cgpn, final=final, mwi_on=self.mwi_on, mwi_off=self.mwi_off,
                           extensions=self.extensions)

    async def _dial_decide(self, s: _Session, *, final: bool) -> None:
        d = s.dial
        if d is None or d.done:
            return
        verdict = self.mwi_verdict(d.digits, d.cgpn, final=final)
        if verdict is None:
            return
        d.done = True
        style = "callmanager" if d.cgpn is not None else "cme"
        if isinstance(verdict, str):
            self.counts["mwi_refused"] += 1
            self._lamp_event(s, style, d.digits, None, None, verdict)
            d.tone = True
            await self._send(s, MsgId.START_TONE, tone=Tone.REORDER, direction=0, line_instance=LINE,
                             call_reference=d.ref)
            await self._send(s, MsgId.CALL_STATE, call_state=CallState.CONGESTION, line_instance=LINE,
                             call_reference=d.ref)
            return
        on, ext = verdict
        self._lamps[ext] = on
        self.counts["mwi_on" if on else "mwi_off"] += 1
        self._lamp_event(s, style, d.digits, ext, on, "")
        s.dial = None  # CM clears the call: the station's later OnHook finds it idle
        await self._send(s, MsgId.CALL_STATE, call_state=CallState.PROCEED, line_instance=LINE,
                         call_reference=d.ref)
        await self._send(s, MsgId.CALL_STATE, call_state=CallState.ON_HOOK, line_instance=LINE,
                         call_reference=d.ref)

    def _lamp_event(self, s: _Session, style: str, digits: str, ext: str | None, on: bool | None,
                    refused: str) -> None:
        if len(self.lamp_events) < MAX_LAMP_EVENTS:
            self.lamp_events.append({"t": time.time(), "device": s.device, "style": style, "digits": digits,
                                     "extension": ext, "on": on, "refused": refused})
        self._notify()

    # ------------------------------------------------------------------ control API

    def registrations(self) -> dict[str, dict[str, Any]]:
        """Every known device: ``state`` (never/registered/unregistered), ``since`` (wall
        clock), ``registrations`` (count), ``last_outcome``, and while registered ``peer``,
        ``busy``, ``protocol_ver``, ``caps``."""
        out = {}
        for name, h in self._history.items():
            r = dict(h)
            s = self._registered.get(name)
            if s is not None:
                r.update(peer=f"{s.peer[0]}:{s.peer[1]}", busy=s.busy, protocol_ver=s.protocol_ver,
                         caps=[list(c) for c in s.caps])
            out[name] = r
        return out

    async def wait_registered(self, devices: Iterable[str] | None = None, timeout: float = 10.0,
                              ) -> dict[str, dict[str, Any]]:
        """Wait until every one of ``devices`` (default: all) is registered; TimeoutError if
        not within ``timeout`` seconds."""
        want = list(self.devices) if devices is None else list(devices)
        for d in want:
            if d not in self.devices:
                raise ValueError(f"unknown device {d!r}")
        with trio.move_on_after(timeout):
            while not all(d in self._registered for d in want):
                await self._changed.wait()
            return self.registrations()
        missing = [d for d in want if d not in self._registered]
        raise TimeoutError(f"not registered after {timeout} s: {', '.join(missing)}")

    def lamps(self) -> dict[str, bool]:
        return dict(self._lamps)

    def calls(self) -> list[dict[str, Any]]:
        return list(self._calls)

    def stats(self) -> dict[str, Any]:
        return {"registered": sorted(self._registered), "connections_open": len(self._sessions),
                "counts": dict(self.counts), "lamps": self.lamps(), "lamp_events": len(self.lamp_events),
                "calls": len(self._calls), "task_failures": self.task_failures.stats()}

    def _session_of(self, device: str) -> _Session:
        if device not in self.devices:
            raise ValueError(f"unknown device {device!r}")
        s = self._registered.get(device)
        if s is None:
            raise ValueError(f"device {device} is not registered")
        return s

    async def inject(self, device: str, data: bytes) -> int:
        """Raw bytes to a registered device's connection (garbage, oversized frames)."""
        if not isinstance(data, (bytes, bytearray)) or not data:
            raise ValueError("data must be non-empty bytes")
        s = self._session_of(device)
        self.counts["injected"] += 1
        return len(data) if await self.send_raw(s, bytes(data)) else 0

    async def reset(self, device: str, reset_type: int = 1) -> bool:
        """Send Reset (1 reset, 2 restart) to a registered device."""
        if reset_type not in (1, 2, 3):
            raise ValueError(f"reset type must be 1, 2 or 3, not {reset_type!r}")
        s = self._session_of(device)
        self.counts["resets"] += 1
        return await self._send(s, MsgId.RESET, reset_type=reset_type)

    async def call(self, calling: str = "", *, called: str | None = None, calling_name: str = "",
                   call_type: str | int | None = None, original_called: str = "", last_redirecting: str = "",
                   reason: int = 0, original_reason: int | None = None, wav: str | Path | None = None,
                   record_s: float = 60.0, hang_up_after: float | None = None, digits: str = "",
                   digits_at: float | list[float] = 1.0, rfc2833: bool = False, codec: str = "ulaw",
                   device: str | None = None) -> dict[str, Any]:
        """Place one call to the pilot (or to ``device``) and return when it is over.

        Hunts ``devices`` in order (first registered and idle), ringing each until it answers
        (OffHook), declines (OnHook) or ``ring_timeout`` passes.  Once answered the caller's
        audio (``wav``, then silence; ``digits`` in-band, or as RFC 4733 events with
        ``rfc2833``) is streamed and what the port sends is recorded, until the caller hangs up
        (``hang_up_after`` seconds after the answer) or the port does, at most ``record_s``.
        The result: ``result`` ("answered"/"no port"), ``answered``, ``device``, ``port``
        (``sccp-N``), ``tried`` ([device, outcome] in hunt order), ``ended_by`` ("caller",
        "port", "lost", "no media", "media refused"), ``wav`` (what the port sent), ``rtp``
        (:meth:`lab.rtp_peer.RtpPeer.stats`), ``call_reference``."""
        if device is not None and device not in self.devices:
            raise ValueError(f"unknown device {device!r}")
        if codec not in _COMPRESSION:
            raise ValueError(f"codec must be one of {', '.join(_COMPRESSION)}, not {codec!r}")
        if not (isinstance(record_s, (int, float)) and 0 < record_s <= 3600):
            raise ValueError(f"record_s must be seconds from 0 to 3600, not {record_s!r}")
        if hang_up_after is not None and not (isinstance(hang_up_after, (int, float)) and 0 <= hang_up_after):
            raise ValueError(f"hang_up_after must be seconds >= 0, not {hang_up_after!r}")
        called = self.pilot if called is None else called
        for what, num in (("calling", calling), ("called", called), ("original_called", original_called),
                          ("last_redirecting", last_redirecting)):
            if not (isinstance(num, str) and re.fullmatch(r"[\x20-\x7e]{0,23}", num)):
                raise ValueError(f"{what} must be at most 23 printable characters, not {num!r}")
        if not (isinstance(calling_name, str) and re.fullmatch(r"[\x20-\x7e]{0,39}", calling_name)):
            raise ValueError(f"calling_name must be at most 39 printable characters, not {calling_name!r}")
        for what, code in (("reason", reason), ("original_reason", original_reason)):
            if code is not None and not (isinstance(code, int) and 0 <= code < 2**32):
                raise ValueError(f"{what} must be an unsigned 32-bit number, not {code!r}")
        ctype = call_type_of(call_type, bool(original_called or last_redirecting))
        RtpPeer.digit_schedule(digits, digits_at)  # checks them
        pcm = b""
        if wav is not None:
            try:
                pcm = media.pcm_of(await trio.Path(wav).read_bytes())
            except OSError as e:
                raise ValueError(f"cannot read {wav}: {e.strerror}") from None
        if ctype == CallType.FORWARD and not original_called:
            original_called = last_redirecting  # one hop: the first number dialled forwarded
        fields = dict(calling_party_name=calling_name, calling_party=calling, called_party=called,
                      call_type=ctype, original_called_party=original_called,
                      last_redirecting_party=last_redirecting,
                      original_cdpn_redirect_reason=reason if original_reason is None else original_reason,
                      last_redirecting_reason=reason, original_cdpn_voice_mailbox=original_called,
                      last_redirecting_voice_mailbox=last_redirecting, call_instance=1)
        try:
            peer = await RtpPeer.open(self.rtp_host, max_record_s=record_s)
        except OSError as e:
            raise ValueError(f"cannot open an RTP socket on {self.rtp_host}: {e.strerror}") from None
        self.counts["calls"] += 1
        tried: list[list[str]] = []
        result: dict[str, Any] = {
            "call": self.counts["calls"], "calling": calling, "called": called, "call_type": int(ctype),
            "result": "no port", "answered": False, "device": None, "port": None, "tried": tried,
            "ended_by": None, "wav": None, "rtp": None, "call_reference": None}
        try:
            for name in [device] if device is not None else list(self.devices):
                s = self._registered.get(name)
                if s is None or s.busy:
                    tried.append([name, "unregistered" if s is None else "busy"])
                    continue
                c = self._new_call(s)
                outcome = await self._ring(s, c, fields)
                tried.append([name, outcome])
                if outcome == "answered":
                    result.update(result="answered", answered=True, device=name, port=port_name(name),
                                  call_reference=c.ref)
                    await self._connected(s, c, peer, result, pcm, codec=codec, record_s=record_s,
                                          hang_up_after=hang_up_after, digits=digits, digits_at=digits_at,
                                          rfc2833=rfc2833)
                    break
        finally:
            peer.close()
        self.counts["answered" if result["answered"] else "no_port"] += 1
        self._keep_call(result)
        return result

    def _new_call(self, s: _Session) -> _Call:
        send, receive = trio.open_memory_channel(32)
        s.call = _Call(self._ref(), send, receive)
        return s.call

    async def _ring(self, s: _Session, c: _Call, fields: dict[str, Any]) -> str:
        """Ring one station: "answered", "declined", "no answer" or "lost"."""
        ref = c.ref
        await self._send(s, MsgId.SET_RINGER, ring_mode=RingMode.INSIDE, ring_duration=1, line_instance=LINE,
                         call_reference=ref)
        await self._send(s, MsgId.CALL_STATE, call_state=CallState.RING_IN, line_instance=LINE,
                         call_reference=ref)
        await self._send(s, MsgId.CALL_INFO, line_instance=LINE, call_reference=ref, **fields)
        await self._send(s, MsgId.SET_LAMP, stimulus=Stimulus.LINE, stimulus_instance=LINE,
                         lamp_mode=LampMode.BLINK)
        await self._send(s, MsgId.ACTIVATE_CALL_PLANE, line_instance=LINE)
        outcome = "no answer"
        with trio.move_on_after(self.ring_timeout):
            while True:
                kind, _ = await c.inbox.receive()
                if kind == "lost":
                    s.call = None
                    return "lost"
                if kind == MsgId.OFF_HOOK:
                    return "answered"
                if kind == MsgId.ON_HOOK:
                    outcome = "declined"
                    break
        s.call = None
        await self._send(s, MsgId.SET_RINGER, ring_mode=RingMode.OFF, ring_duration=1, line_instance=LINE,
                         call_reference=ref)
        await self._send(s, MsgId.CALL_STATE, call_state=CallState.ON_HOOK, line_instance=LINE,
                         call_reference=ref)
        await self._send(s, MsgId.SET_LAMP, stimulus=Stimulus.LINE, stimulus_instance=LINE,
                         lamp_mode=LampMode.OFF)
        return outcome

    async def _connected(self, s: _Session, c: _Call, peer: RtpPeer, result: dict[str, Any], pcm: bytes, *,
                         codec: str, record_s: float, hang_up_after: float | None, digits: str,
                         digits_at: float | list[float], rfc2833: bool) -> None:
        ref, party, comp = c.ref, self._ref(), _COMPRESSION[codec]
        media_ids = dict(conference_id=ref, pass_through_party_id=party, call_reference=ref)
        await self._send(s, MsgId.SET_RINGER, ring_mode=RingMode.OFF, ring_duration=1, line_instance=LINE,
                         call_reference=ref)
        await self._send(s, MsgId.CALL_STATE, call_state=CallState.OFF_HOOK, line_instance=LINE,
                         call_reference=ref)
        await self._send(s, MsgId.OPEN_RECEIVE_CHANNEL, packet_ms=20, compression_type=comp,
                         echo_cancellation=0, g723_bitrate=0, rfc2833_payload_type=RFC2833_PT, dtmf_type=0,
                         **media_ids)
        await self._send(s, MsgId.STOP_TONE, line_instance=LINE, call_reference=ref)
        await self._send(s, MsgId.CALL_STATE, call_state=CallState.CONNECTED, line_instance=LINE,
                         call_reference=ref)
        ended_by = None
        try:
            ack = None
            with trio.move_on_after(self.media_timeout):
                while ended_by is None and ack is None:
                    kind, msg = await c.inbox.receive()
                    if kind == "lost":
                        ended_by = "lost"
                    elif kind == MsgId.ON_HOOK:
                        ended_by = "port"
                    elif kind == MsgId.OPEN_RECEIVE_CHANNEL_ACK:
                        ack = msg
            if ended_by is None and ack is None:
                ended_by = "no media"
            elif ack is not None and ack["status"] != 0:
                ended_by = f"media refused (status {ack['status']})"
            elif ack is not None:
                try:
                    peer.start(ack["ip"], ack["port"], codec=codec, packet_ms=20, rfc2833_pt=RFC2833_PT)
                except ValueError as e:
                    ended_by = f"bad media address: {e}"
            if ended_by is None:
                await self._send(s, MsgId.START_MEDIA_TRANSMISSION, remote_ip=peer.host,
                                 remote_port=peer.port, packet_ms=20, compression_type=comp, precedence=0,
                                 silence_suppression=0, max_frames_per_packet=1, g723_bitrate=0,
                                 rfc2833_payload_type=RFC2833_PT, dtmf_type=0, **media_ids)
                limit = record_s if hang_up_after is None else min(hang_up_after, record_s)
                ended_by = await self._media(c, peer, pcm, limit, digits, digits_at, rfc2833)
            s.call = None
            if ended_by != "lost":
                await self._send(s, MsgId.CLOSE_RECEIVE_CHANNEL, port_handling_flag=0, **media_ids)
                await self._send(s, MsgId.STOP_MEDIA_TRANSMISSION, port_handling_flag=0, **media_ids)
                await self._send(s, MsgId.CALL_STATE, call_state=CallState.ON_HOOK, line_instance=LINE,
                                 call_reference=ref)
                await self._send(s, MsgId.SET_LAMP, stimulus=Stimulus.LINE, stimulus_instance=LINE,
                                 lamp_mode=LampMode.OFF)
        finally:
            s.call = None
            result["ended_by"] = ended_by
            result["rtp"] = peer.stats()
            path = self.record_dir() / f"call-{result['call']}-{s.device}.wav"
            path.write_bytes(media.wav_bytes(peer.recorded()))
            result["wav"] = str(path)

    async def _media(self, c: _Call, peer: RtpPeer, pcm: bytes, limit: float, digits: str,
                     digits_at: float | list[float], rfc2833: bool) -> str:
        """RTP both ways until the caller hangs up (``limit`` s) or the port does."""
        ended = "caller"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._contained, "rtp-receive", peer.receive)
            nursery.start_soon(self._contained, "rtp-play", partial(
                peer.play, pcm, seconds=limit, digits=digits, digits_at=digits_at, rfc2833=rfc2833))
            with trio.move_on_after(limit):
                while True:
                    kind, _ = await c.inbox.receive()
                    if kind in ("lost", MsgId.ON_HOOK):
                        ended = "lost" if kind == "lost" else "port"
                        break
            nursery.cancel_scope.cancel()
        return ended

    async def _contained(self, task: str, fn: Any) -> None:
        try:
            await fn()
        except Exception as e:  # noqa: BLE001 - a media task's failure ends only that task
            self.task_failures.failed(task, e)

    def _keep_call(self, result: dict[str, Any]) -> None:
        if len(self._calls) >= MAX_CALLS_KEPT:
            del self._calls[0]
        self._calls.append(result)
        self._notify()


def _full(ch: trio.MemorySendChannel) -> bool:
    st = ch.statistics()
    return st.current_buffer_used >= st.max_buffer_size

