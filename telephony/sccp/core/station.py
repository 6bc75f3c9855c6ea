"""One SCCP voice-mail port's station machine (docs/sccp.md, "Contract: the station machine"
and "The station machine").  Pure: every input carries ``now`` (seconds on any monotonic
clock), every method returns the list of :class:`Action` objects to carry out, in order.  The
driver owns the socket, the RTP endpoint and the clock.

States (:class:`StationState`; docs/sccp.md draws them): DOWN -connected()-> REGISTERING
-RegisterAck-> REGISTERED (idle); idle -RingIn-> RINGING -answer()-> ANSWERING -CallState
Connected-> CONNECTED; idle -dial()-> OUTBOUND; our OnHook (hang_up, decline, a media failure,
an MWI call judged) -> CLOSING until CallManager clears the call; CallManager's clear (CallState
OnHook or Idle) -> idle; unregister() -> UNREGISTERING; a reject, a timeout, a Reset, lost
keepalives, a fatal protocol error or lost() -> DOWN.

Invariants the driver can rely on: at most one call per port; every :class:`Offer` is followed
by exactly one :class:`CallEnded`; every :meth:`Station.dial` gives exactly one
:class:`DialResult`; every :class:`OpenMedia` or :class:`StartMedia` is followed by one
:class:`StopMedia` before the call's :class:`CallEnded` (or the loss of the connection);
nothing but RegisterReq and KeepAliveReq is sent before RegisterAck.
"""
from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from telephony.sccp.core import messages as wire
from telephony.sccp.core.actions import (
    Action,
    CallEnded,
    Connected,
    DialResult,
    Disconnect,
    Offer,
    OpenMedia,
    Registered,
    Rejected,
    ResetRequested,
    Send,
    StartMedia,
    StopMedia,
    Unregistered,
)
from telephony.sccp.core.callinfo import CallDetails, clean_text
from telephony.sccp.core.messages import Message, MsgId, ProtocolError, button_of, encode

__all__ = [
    "Action", "CallEnded", "Connected", "DialResult", "Disconnect", "OpenMedia", "Offer",
    "Registered", "Rejected", "ResetRequested", "Send", "StartMedia", "Station", "StationConfig",
    "StationState", "StopMedia", "Unregistered", "G711",
]

#: the only codecs a port takes (the RTP endpoint speaks G.711 only)
G711 = frozenset({int(wire.Compression.G711_ULAW), int(wire.Compression.G711_ALAW)})

_PHONE_FEATURE_RFC2833 = 0x0200  # RegisterReq phoneFeatures: RFC 2833 digits understood
_CLEARED = frozenset({int(wire.CallState.IDLE), int(wire.CallState.ON_HOOK)})
_DIAL_TONES = frozenset({int(wire.Tone.INSIDE_DIAL), int(wire.Tone.OUTSIDE_DIAL)})
_FAIL_TONES = {int(wire.Tone.REORDER): "reorder", int(wire.Tone.BUSY): "busy"}
_FAIL_STATES = {int(wire.CallState.BUSY): "busy", int(wire.CallState.CONGESTION): "congestion",
                int(wire.CallState.INVALID_NUMBER): "invalid number"}
_OK_STATES = {int(wire.CallState.RING_OUT): "ringout", int(wire.CallState.PROCEED): "proceed",
              int(wire.CallState.CONNECTED): "connected"}
_PENDING_INFO = 4  # CallInfo messages kept while waiting for their RingIn
_DIGITS = frozenset("0123456789*#ABCD")
_MAX_DIGITS = 24
_MAX_CGPN = 24  # callingParty[24]
_MIN_KEEPALIVE = 1.0


# -- configuration and state --------------------------------------------------------------

def _seconds(name: str, value: Any, *, positive: bool = True) -> None:
    if (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
            or (positive and value <= 0)):
        raise ValueError(f"{name} must be a {'positive' if positive else 'finite'} number of seconds, "
                         f"got {value!r:.40}")


@dataclass(frozen=True)
class StationConfig:
    device_name: str                 # "CiscoUM1-VI1"
    station_ip: str                  # advertised in RegisterReq
    device_type: int = 7
    protocol_ver: int = 11           # <= 16: every IPv4 layout stays 4 bytes
    line_instance: int = 1
    codecs: tuple[int, ...] = (int(wire.Compression.G711_ULAW), int(wire.Compression.G711_ALAW))
    register_timeout: float = 10.0   # no RegisterAck/Reject: give up this server
    keepalive_default: float = 30.0  # until RegisterAck says otherwise
    keepalive_max: float | None = None   # cap on CM's interval (None: CM's as sent)
    keepalive_misses: int = 2        # unanswered keepalives before the server is lost
    ring_info_wait: float = 0.5      # ringing without CallInfo this long: offer with no numbers
    outbound_timeout: float = 8.0    # an MWI call not judged by then: failed
    packet_ms: int = 20              # advertised in CapabilitiesRes (max frames per packet)
    answer_timeout: float = 5.0      # after our OffHook, CallState Connected awaited this long
    clear_timeout: float = 4.0       # after our OnHook, CM's clear awaited this long
    unregister_timeout: float = 2.0  # UnregisterAck awaited this long

    def __post_init__(self) -> None:
        name = self.device_name
        if (not isinstance(name, str) or not 1 <= len(name) <= 15
                or not all(0x21 <= ord(c) <= 0x7E for c in name)):
            raise ValueError(f"device_name must be 1..15 printable ASCII characters, got {name!r:.40}")
        try:
            ipaddress.IPv4Address(self.station_ip)
        except (ValueError, TypeError):
            raise ValueError(f"station_ip must be a dotted IPv4 address, got {self.station_ip!r:.40}") \
                from None
        for key, lo, hi in (("device_type", 0, 0xFFFF_FFFF), ("protocol_ver", 0, 16),
                            ("line_instance", 1, 0xFFFF), ("keepalive_misses", 1, 100)):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ValueError(f"{key} must be an integer {lo}..{hi}, got {v!r:.40}")
        if self.packet_ms not in (10, 20, 30):
            raise ValueError(f"packet_ms must be 10, 20 or 30, got {self.packet_ms!r:.40}")
        codecs = tuple(self.codecs) if isinstance(self.codecs, tuple | list) else ()
        if not codecs or len(set(codecs)) != len(codecs) or not all(c in G711 for c in codecs):
            raise ValueError(f"codecs must name G.711 mu-law (4) and/or A-law (2) once each, "
                             f"got {self.codecs!r:.60}")
        object.__setattr__(self, "codecs", tuple(int(c) for c in codecs))
        for key in ("register_timeout", "keepalive_default", "ring_info_wait", "outbound_timeout",
                    "answer_timeout", "clear_timeout", "unregister_timeout"):
            _seconds(key, getattr(self, key))
        if self.keepalive_max is not None:
            _seconds("keepalive_max", self.keepalive_max)


class StationState(StrEnum):
    DOWN = "down"                    # no connection
    REGISTERING = "registering"      # RegisterReq sent
    REGISTERED = "registered"        # idle: may ring, may dial
    RINGING = "ringing"              # a call rings (offered, or waiting for its CallInfo)
    ANSWERING = "answering"          # OffHook sent, media being set up
    CONNECTED = "connected"          # CallState Connected seen
    OUTBOUND = "outbound"            # an MWI call of dial()
    CLOSING = "closing"              # OnHook sent, waiting for CallManager to clear the call
    UNREGISTERING = "unregistering"  # UnregisterReq sent


_MEDIA_STATES = frozenset({StationState.ANSWERING, StationState.CONNECTED})


@dataclass
class _Call:
    outbound: bool
    ref: int | None                  # None: not known yet (an outbound call before CM names it)
    offered: bool = False            # Offer emitted: owes one CallEnded
    info: CallDetails | None = None
    media: bool = False              # OpenMedia/StartMedia emitted: owes one StopMedia
    open_pending: tuple[int, int] | None = None   # (pass_through_party_id, codec) awaiting media_open
    connected: bool = False
    digits: str = ""
    dialled: bool = False            # every KeypadButton sent
    deadline: float = math.inf       # ring_info_wait / outbound_timeout / clear_timeout


def _int(msg: Message, name: str) -> int:
    """An integer field; missing or not an integer: 0 (a short payload)."""
    v = msg.fields.get(name, 0)
    return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 0xFFFF_FFFF else 0


def _packet_ms(value: int) -> int:
    return value if value in (10, 20, 30) else 20


def _rfc2833(value: int) -> int:
    return value if 96 <= value <= 127 else 0


class Station:
    """The machine of one port; see the module doc."""

    def __init__(self, config: StationConfig) -> None:
        if not isinstance(config, StationConfig):
            raise TypeError(f"config must be a StationConfig, got {type(config).__name__}")
        self.config = config
        self.state = StationState.DOWN
        #: seconds between keepalives (RegisterAck's, capped; keepalive_default before it)
        self.keepalive_interval = config.keepalive_default
        #: the line's directory number from LineStatRes ("" until known)
        self.directory_number = ""
        self.protocol_errors = 0     # non-fatal ProtocolError events (ignored)
        self.ignored_rings = 0       # RingIn for another call while this port is busy
        self.stray_messages = 0      # call messages naming another call reference
        self.keepalives_sent = 0
        self.keepalives_missed = 0   # keepalives outstanding when the next one fell due
        self._call: _Call | None = None
        self._pending_info: OrderedDict[int, tuple[CallDetails, float]] = OrderedDict()
        self._ka_due = math.inf
        self._ka_outstanding = 0
        self._deadline = math.inf    # register or unregister timeout
        self._caps_answered = False
        self._handlers = {  # every other message is ignored (SetRinger, SetLamp, DisplayText, ...)
            MsgId.REGISTER_ACK: self._on_register_ack, MsgId.REGISTER_REJECT: self._on_register_reject,
            MsgId.CAPABILITIES_REQ: self._on_capabilities_req, MsgId.KEEPALIVE_ACK: self._on_keepalive_ack,
            MsgId.RESET: self._on_reset, MsgId.UNREGISTER_ACK: self._on_unregister_ack,
            MsgId.LINE_STAT_RES: self._on_line_stat_res, MsgId.CALL_INFO: self._on_call_info,
            MsgId.CALL_STATE: self._on_call_state, MsgId.START_TONE: self._on_start_tone,
            MsgId.OPEN_RECEIVE_CHANNEL: self._on_open_receive_channel,
            MsgId.START_MEDIA_TRANSMISSION: self._on_start_media,
            MsgId.STOP_MEDIA_TRANSMISSION: self._on_stop_media,
            MsgId.CLOSE_RECEIVE_CHANNEL: self._on_stop_media}

    # -- read-only views ----------------------------------------------------------------

    @property
    def registered(self) -> bool:
        return self.state not in (StationState.DOWN, StationState.REGISTERING)

    @property
    def idle(self) -> bool:
        """Registered with no call: may ring, may dial, may re-home."""
        return self.state is StationState.REGISTERED

    @property
    def call_reference(self) -> int | None:
        """CallManager's reference of the port's call (None: no call, or not known yet)."""
        return self._call.ref if self._call else None

    @property
    def counters(self) -> dict[str, int]:
        return {"protocol_errors": self.protocol_errors, "ignored_rings": self.ignored_rings,
                "stray_messages": self.stray_messages, "keepalives_sent": self.keepalives_sent,
                "keepalives_missed": self.keepalives_missed}

    def next_deadline(self) -> float | None:
        """The earliest time :meth:`tick` has something to do (None: nothing timed)."""
        if self.state is StationState.DOWN:
            return None
        t = min(self._ka_due, self._deadline, self._call.deadline if self._call else math.inf)
        return t if math.isfinite(t) else None

    # -- connection ---------------------------------------------------------------------

    def connected(self, now: float) -> list[Action]:
        """The TCP connection is up: register.  (Called while connected, it first ends what the
        old connection carried, as :meth:`lost` would.)"""
        _check_now(now)
        out = self.lost(now, "reconnected") if self.state is not StationState.DOWN else []
        c = self.config
        self.state = StationState.REGISTERING
        self._deadline = now + c.register_timeout
        self.keepalive_interval = c.keepalive_default
        self._ka_due = now + self.keepalive_interval
        self._ka_outstanding = 0
        self._caps_answered = False
        self._pending_info.clear()
        out.append(Send(encode(
            MsgId.REGISTER_REQ, device_name=c.device_name, user_id=0, instance=1,
            station_ip=c.station_ip, device_type=c.device_type, max_streams=0, active_streams=0,
            protocol_ver=c.protocol_ver, phone_features=_PHONE_FEATURE_RFC2833)))
        return out

    def lost(self, now: float, why: str) -> list[Action]:
        """The other side closed or reset the connection (nothing more can be sent)."""
        _check_now(now)
        if self.state is StationState.DOWN:
            return []
        return self._down(now, f"connection lost: {clean_text(why) or 'closed'}", disconnect=None)

    def unregister(self, now: float) -> list[Action]:
        """Leave CallManager gracefully: a call in progress is hung up first, then UnregisterReq;
        UnregisterAck (or ``unregister_timeout``) ends the connection."""
        _check_now(now)
        if self.state is StationState.DOWN or self.state is StationState.UNREGISTERING:
            return []
        if self.state is StationState.REGISTERING:
            return self._down(now, "unregistered", disconnect="unregistered")
        out = self._abandon_call(now, ended_by="station", dial_detail="unregistered", on_hook=True)
        out.append(self._send(MsgId.UNREGISTER_REQ))
        self.state = StationState.UNREGISTERING
        self._deadline = now + self.config.unregister_timeout
        return out

    # -- input from CallManager ---------------------------------------------------------

    def received(self, item: Message | ProtocolError, now: float) -> list[Action]:
        """One item from the codec's Framer."""
        _check_now(now)
        if isinstance(item, ProtocolError):
            if item.fatal and self.state is not StationState.DOWN:
                return self._down(now, f"protocol error: {clean_text(item.reason)}")
            self.protocol_errors += 1
            return []
        if not isinstance(item, Message):
            raise TypeError(f"received() takes a Message or ProtocolError, got {type(item).__name__}")
        if self.state is StationState.DOWN:
            return []
        handler = self._handlers.get(item.id)
        return handler(item, now) if handler else []

    def _on_register_ack(self, msg: Message, now: float) -> list[Action]:
        if self.state is not StationState.REGISTERING:
            return []
        c = self.config
        interval = float(_int(msg, "keepalive_interval")) or c.keepalive_default
        if c.keepalive_max is not None:
            interval = min(interval, c.keepalive_max)
        self.keepalive_interval = max(interval, _MIN_KEEPALIVE)
        self.state = StationState.REGISTERED
        self._deadline = math.inf
        self._ka_due = now + self.keepalive_interval
        self._ka_outstanding = 0
        return [Registered(self.keepalive_interval)]

    def _on_register_reject(self, msg: Message, now: float) -> list[Action]:
        if self.state is not StationState.REGISTERING:
            return []
        text = clean_text(msg.fields.get("text", "")) or "rejected"
        return [Rejected(text), *self._down(now, f"rejected: {text}")]

    def _on_capabilities_req(self, msg: Message, now: float) -> list[Action]:
        if not self.registered:
            return []  # nothing but registration traffic before RegisterAck
        c = self.config
        out = [Send(encode(MsgId.CAPABILITIES_RES, caps=tuple((codec, c.packet_ms) for codec in c.codecs)))]
        if not self._caps_answered:
            self._caps_answered = True
            out.append(self._send(MsgId.BUTTON_TEMPLATE_REQ))
            out.append(self._send(MsgId.LINE_STAT_REQ, line_number=c.line_instance))
        return out

    def _on_keepalive_ack(self, msg: Message, now: float) -> list[Action]:
        self._ka_outstanding = 0
        return []

    def _on_reset(self, msg: Message, now: float) -> list[Action]:
        out = self._abandon_call(now, ended_by="lost", dial_detail="reset", on_hook=False)
        return [*out, ResetRequested(_int(msg, "reset_type")), *self._down(now, "reset by CallManager")]

    def _on_unregister_ack(self, msg: Message, now: float) -> list[Action]:
        if self.state is not StationState.UNREGISTERING:
            return []
        return self._down(now, "unregistered")

    def _on_line_stat_res(self, msg: Message, now: float) -> list[Action]:
        if _int(msg, "line_number") == self.config.line_instance:
            self.directory_number = clean_text(msg.fields.get("dir_number", ""), 24)
        return []

    # -- incoming call ----------------------------------------------------------------------

    def _on_call_info(self, msg: Message, now: float) -> list[Action]:
        if not self.registered:
            return []
        info = CallDetails.from_message(msg)
        call = self._call
        if call is None or (info.call_reference and info.call_reference != call.ref):
            if call is not None:
                self.stray_messages += 1
            # CallInfo before its RingIn: keep it, but only with its call reference (one
            # without, or cut short, names no call; the ringing call would take it otherwise)
            if self.state is not StationState.UNREGISTERING and info.call_reference:
                self._pending_info[info.call_reference] = (info, now)
                self._pending_info.move_to_end(info.call_reference)
                while len(self._pending_info) > _PENDING_INFO:
                    self._pending_info.popitem(last=False)
            return []
        if call.outbound:
            return []  # CallManager describes the MWI call too: nothing to do with it
        if self.state is StationState.RINGING and not call.offered:
            return self._offer(call, info)
        return []  # a later CallInfo for an offered call: the service already has its numbers

    def _offer(self, call: _Call, info: CallDetails) -> list[Action]:
        if info.call_reference != call.ref:  # a CallInfo without a reference: name ours
            info = replace(info, call_reference=call.ref or 0)
        call.info = info
        call.offered = True
        call.deadline = math.inf
        return [Offer(info)]

    def _on_call_state(self, msg: Message, now: float) -> list[Action]:
        if not self.registered:
            return []
        cs = _int(msg, "call_state")
        ref = _int(msg, "call_reference")
        call = self._call
        if cs == wire.CallState.RING_IN:
            return self._ring_in(ref, now)
        if call is None:
            return []
        if call.outbound:
            return self._outbound_state(call, cs, ref, now)
        if ref != call.ref:
            self.stray_messages += 1
            return []
        if cs in _CLEARED:
            return self._cleared(now)
        if cs == wire.CallState.CONNECTED and self.state is StationState.ANSWERING and not call.connected:
            call.connected = True
            call.deadline = math.inf
            self.state = StationState.CONNECTED
            return [Connected()]
        return []

    def _ring_in(self, ref: int, now: float) -> list[Action]:
        call = self._call
        if call is not None or self.state is not StationState.REGISTERED:
            if call is None or ref != call.ref:
                self.ignored_rings += 1
            return []
        call = self._call = _Call(outbound=False, ref=ref)
        self.state = StationState.RINGING
        # a CallInfo that came before its ring counts only with the ring's call reference and
        # only if it came just before it (within ring_info_wait): an old one names no new call
        kept = self._pending_info.pop(ref, None) if ref else None
        self._pending_info.clear()
        info = kept[0] if kept is not None and now - kept[1] <= self.config.ring_info_wait else None
        if info is not None:
            return self._offer(call, info)
        call.deadline = now + self.config.ring_info_wait
        return []

    def _cleared(self, now: float) -> list[Action]:
        """CallManager cleared the port's call (CallState OnHook or Idle): the line is on hook."""
        call = self._call
        assert call is not None
        out: list[Action] = []
        if call.outbound:
            if self.state is StationState.OUTBOUND:
                if call.dialled:
                    out.append(DialResult(True, "cleared"))
                else:
                    out.append(DialResult(False, "cleared before dialling"))
        else:
            if call.media:
                out.append(StopMedia())
            if call.offered:
                by = "station" if self.state is StationState.CLOSING else "caller"
                out.append(CallEnded(by))
        self._idle()
        return out

    # -- media ------------------------------------------------------------------------------

    def _media_call(self, msg: Message) -> _Call | None:
        """The port's call if ``msg`` is a media message for it (its reference, or none)."""
        call = self._call
        if call is None or call.outbound or self.state not in _MEDIA_STATES:
            return None
        ref = _int(msg, "call_reference")
        if ref not in (call.ref, 0):
            self.stray_messages += 1
            return None
        return call

    def _on_open_receive_channel(self, msg: Message, now: float) -> list[Action]:
        call = self._media_call(msg)
        if call is None:
            return []
        codec = _int(msg, "compression_type")
        ppid = _int(msg, "pass_through_party_id")
        if codec not in G711:
            return [self._ack(call, ppid, wire.ReceiveStatus.INVALID_CODEC), *self._hang_up_call(now)]
        call.open_pending = (ppid, codec)
        call.media = True
        return [OpenMedia(call.ref or 0, ppid, codec, _packet_ms(_int(msg, "packet_ms")),
                          _rfc2833(_int(msg, "rfc2833_payload_type")))]

    def _on_start_media(self, msg: Message, now: float) -> list[Action]:
        call = self._media_call(msg)
        if call is None:
            return []
        codec = _int(msg, "compression_type")
        if codec not in G711:
            return self._hang_up_call(now)
        ip = msg.fields.get("remote_ip", "")
        port = _int(msg, "remote_port")
        if not _valid_ip(ip) or ip == "0.0.0.0" or not 1 <= port <= 65535:
            self.protocol_errors += 1  # nowhere to send: ignore it
            return []
        call.media = True
        return [StartMedia(ip, port, codec, _packet_ms(_int(msg, "packet_ms")),
                           _rfc2833(_int(msg, "rfc2833_payload_type")))]

    def _on_stop_media(self, msg: Message, now: float) -> list[Action]:
        call = self._media_call(msg)
        if call is None or not call.media:
            return []
        call.media = False
        call.open_pending = None
        return [StopMedia()]

    def media_open(self, ip: str, port: int, now: float) -> list[Action]:
        """The RTP receiver asked for by :class:`OpenMedia` listens on ``ip``:``port``."""
        _check_now(now)
        if not _valid_ip(ip) or isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ValueError(f"media_open needs a dotted IPv4 address and a port 1..65535, "
                             f"got {ip!r:.40}:{port!r:.20}")
        call = self._call
        if call is None or call.open_pending is None or self.state not in _MEDIA_STATES:
            return []
        ppid, _codec = call.open_pending
        call.open_pending = None
        return [self._ack(call, ppid, wire.ReceiveStatus.OK, ip, port)]

    def media_failed(self, now: float) -> list[Action]:
        """No RTP receiver could be opened: refuse the channel and hang up."""
        _check_now(now)
        call = self._call
        if call is None or call.open_pending is None or self.state not in _MEDIA_STATES:
            return []
        ppid, _codec = call.open_pending
        call.open_pending = None
        return [self._ack(call, ppid, wire.ReceiveStatus.OUT_OF_SOCKETS), *self._hang_up_call(now)]

    def _ack(self, call: _Call, ppid: int, status: int, ip: str = "0.0.0.0", port: int = 0) -> Send:
        return self._send(MsgId.OPEN_RECEIVE_CHANNEL_ACK, status=status, ip=ip, port=port,
                          pass_through_party_id=ppid, call_reference=call.ref or 0)

    # -- the service's decisions -------------------------------------------------------------

    def answer(self, now: float) -> list[Action]:
        """Answer the offered call: OffHook."""
        _check_now(now)
        call = self._call
        if self.state is not StationState.RINGING or call is None or not call.offered:
            return []
        self.state = StationState.ANSWERING
        call.deadline = now + self.config.answer_timeout
        return [self._off_hook(call)]

    def decline(self, now: float) -> list[Action]:
        """Refuse the offered call while it rings: OnHook (CallManager hunts on)."""
        _check_now(now)
        call = self._call
        if self.state is not StationState.RINGING or call is None or not call.offered:
            return []
        return self._hang_up_call(now)

    def hang_up(self, now: float) -> list[Action]:
        """Hang up the port's call (incoming: CallEnded("station") follows CallManager's clear;
        an MWI call in progress: DialResult(False, "hung up"))."""
        _check_now(now)
        call = self._call
        if call is None or self.state is StationState.CLOSING:
            return []
        if call.outbound:
            return [DialResult(False, "hung up"), *self._hang_up_call(now)]
        if self.state is StationState.RINGING and not call.offered:
            return []
        return self._hang_up_call(now)

    def _hang_up_call(self, now: float) -> list[Action]:
        """OnHook for the port's call, stop its media, and wait for CallManager to clear it."""
        call = self._call
        assert call is not None
        out: list[Action] = [self._send(MsgId.ON_HOOK, line_instance=self.config.line_instance,
                                        call_reference=call.ref or 0)]
        if call.media:
            call.media = False
            out.append(StopMedia())
        call.open_pending = None
        call.deadline = now + self.config.clear_timeout
        self.state = StationState.CLOSING
        return out

    def _off_hook(self, call: _Call) -> Send:
        return self._send(MsgId.OFF_HOOK, line_instance=self.config.line_instance,
                          call_reference=call.ref or 0)

    # -- outbound (MWI) call -------------------------------------------------------------------

    def dial(self, digits: str, now: float, *, calling_party: str | None = None) -> list[Action]:
        """An MWI call: go off hook (OffHookWithCgpn ``calling_party`` when given: the port calls
        as the subscriber), wait for dial tone, send ``digits`` as KeypadButtons, then judge the
        outcome (:class:`DialResult`) and hang up.  Bad digits raise ValueError."""
        _check_now(now)
        if (not isinstance(digits, str) or not 1 <= len(digits) <= _MAX_DIGITS
                or not set(digits) <= _DIGITS):
            raise ValueError(f"digits must be 1..{_MAX_DIGITS} of 0-9 * # A-D, got {digits!r:.40}")
        if calling_party is not None and (
                not isinstance(calling_party, str) or not 1 <= len(calling_party) <= _MAX_CGPN
                or not all(0x21 <= ord(ch) <= 0x7E for ch in calling_party)):
            raise ValueError(f"calling_party must be 1..{_MAX_CGPN} printable ASCII characters, "
                             f"got {calling_party!r:.40}")
        if not self.registered or self.state is StationState.UNREGISTERING:
            return [DialResult(False, "not registered")]
        if self.state is not StationState.REGISTERED:
            return [DialResult(False, "port busy")]
        call = self._call = _Call(outbound=True, ref=None, digits=digits,
                                  deadline=now + self.config.outbound_timeout)
        self.state = StationState.OUTBOUND
        if calling_party is not None:
            return [self._send(MsgId.OFF_HOOK_WITH_CGPN, calling_party=calling_party)]
        return [self._off_hook(call)]

    def _outbound_ref(self, call: _Call, ref: int) -> bool:
        """Whether a message naming ``ref`` is about the MWI call (learning its reference)."""
        if call.ref is None:
            if ref:
                call.ref = ref
            return True
        if ref in (call.ref, 0):
            return True
        self.stray_messages += 1
        return False

    def _outbound_state(self, call: _Call, cs: int, ref: int, now: float) -> list[Action]:
        if not self._outbound_ref(call, ref):
            return []
        if cs in _CLEARED:
            return self._cleared(now)
        if self.state is StationState.CLOSING:
            return []
        if cs == wire.CallState.OFF_HOOK:
            return self._dial_digits(call)
        if cs in _FAIL_STATES:
            return self._judged(call, False, _FAIL_STATES[cs], now)
        if cs in _OK_STATES and call.dialled:
            return self._judged(call, True, _OK_STATES[cs], now)
        return []

    def _on_start_tone(self, msg: Message, now: float) -> list[Action]:
        call = self._call
        if call is None or not call.outbound or self.state is not StationState.OUTBOUND:
            return []
        if not self._outbound_ref(call, _int(msg, "call_reference")):
            return []
        tone = _int(msg, "tone")
        if tone in _DIAL_TONES:
            return self._dial_digits(call)
        if tone in _FAIL_TONES:
            return self._judged(call, False, _FAIL_TONES[tone], now)
        if tone == wire.Tone.ALERTING and call.dialled:
            return self._judged(call, True, "alerting", now)
        return []

    def _dial_digits(self, call: _Call) -> list[Action]:
        if call.dialled:
            return []
        call.dialled = True
        line = self.config.line_instance
        return [self._send(MsgId.KEYPAD_BUTTON, button=button_of(d), line_instance=line,
                           call_reference=call.ref or 0) for d in call.digits]

    def _judged(self, call: _Call, ok: bool, detail: str, now: float) -> list[Action]:
        return [DialResult(ok, detail), *self._hang_up_call(now)]

    # -- timers -------------------------------------------------------------------------------

    def tick(self, now: float) -> list[Action]:
        """Run the timers due at ``now``: register/unregister timeout, keepalive, the ring's wait
        for CallInfo, the MWI call's timeout, the wait for CallManager's clear."""
        _check_now(now)
        if self.state is StationState.DOWN:
            return []
        if now >= self._deadline:
            if self.state is StationState.REGISTERING:
                return self._down(now, "register timeout")
            return self._down(now, "unregistered", disconnect="unregister timeout")
        out: list[Action] = []
        if now >= self._ka_due:
            if self._ka_outstanding >= self.config.keepalive_misses:
                return self._down(now, "keepalive lost")
            if self._ka_outstanding:
                self.keepalives_missed += 1
            self._ka_outstanding += 1
            self.keepalives_sent += 1
            self._ka_due = now + self.keepalive_interval
            out.append(self._send(MsgId.KEEPALIVE_REQ))
        call = self._call
        if call is not None and now >= call.deadline:
            if self.state is StationState.RINGING:
                out += self._offer(call, CallDetails(call_reference=call.ref or 0,
                                                     line_instance=self.config.line_instance))
            elif self.state is StationState.OUTBOUND:
                detail = "timeout" if call.dialled else "no dial tone"
                out += self._judged(call, False, detail, now)
            elif self.state is StationState.ANSWERING:  # never connected: give the call up
                out += self._hang_up_call(now)
            elif self.state is StationState.CLOSING:
                out += self._cleared(now)
        return out

    # -- endings --------------------------------------------------------------------------------

    def _abandon_call(self, now: float, *, ended_by: str, dial_detail: str, on_hook: bool) -> list[Action]:
        """End the port's call without CallManager: the actions the call still owes."""
        call = self._call
        out: list[Action] = []
        if call is None:
            return out
        if on_hook and self.state is not StationState.CLOSING and self.registered:
            if not (self.state is StationState.RINGING and not call.offered):
                out.append(self._send(MsgId.ON_HOOK, line_instance=self.config.line_instance,
                                      call_reference=call.ref or 0))
        if call.outbound:
            if self.state is StationState.OUTBOUND:
                out.append(DialResult(False, dial_detail))
        else:
            if call.media:
                out.append(StopMedia())
            if call.offered:
                out.append(CallEnded("station" if self.state is StationState.CLOSING else ended_by))
        self._call = None
        return out

    def _down(self, now: float, reason: str, disconnect: str | None = "") -> list[Action]:
        """The connection ends: what the call owes, Unregistered if registered, Disconnect
        (``disconnect`` "" → the reason; None → none: the connection is already gone)."""
        out = self._abandon_call(now, ended_by="lost", dial_detail="lost", on_hook=False)
        if self.registered:
            out.append(Unregistered(reason))
        if disconnect is not None:
            out.append(Disconnect(disconnect or reason))
        self.state = StationState.DOWN
        self._call = None
        self._pending_info.clear()
        self._ka_due = math.inf
        self._ka_outstanding = 0
        self._deadline = math.inf
        return out

    def _idle(self) -> None:
        self._call = None
        if self.state is not StationState.UNREGISTERING:
            self.state = StationState.REGISTERED

    def _send(self, msg_id: MsgId, **fields: Any) -> Send:
        return Send(encode(msg_id, **fields))


def _valid_ip(ip: Any) -> bool:
    try:
        ipaddress.IPv4Address(ip)
    except (ValueError, TypeError):
        return False
    return isinstance(ip, str)


def _check_now(now: Any) -> None:
    _seconds("now", now, positive=False)
