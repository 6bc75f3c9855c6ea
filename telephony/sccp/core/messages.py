"""SCCP ("Skinny") wire codec: framing and every message a voice-mail port exchanges with
CallManager.  Pure (sans-IO): bytes in, messages and error events out.

Framing (docs/protocols.md, SCCP): every message is a 12-byte header of three little-endian
u32 -- ``length`` (4 + payload bytes, i.e. everything after the first 8), ``version`` (the
header version; 0 is "Basic") and the message id -- then a fixed payload layout per id.
Integers are little-endian; IPv4 addresses are 4 bytes in network order; strings are
NUL-padded ASCII in fixed-size fields.

What the codec guarantees:

* :func:`encode` builds one whole frame from keyword fields.  Unknown field names, values out
  of range for their width, strings too long for their field or not ASCII (or holding a NUL)
  raise :class:`ValueError`; a field left out is sent as 0, ``""`` or ``0.0.0.0``.
* :func:`decode` takes one whole frame and returns a :class:`Message` holding *every* field of
  the layout.  A short payload is accepted (CallManager itself has been seen to receive an
  OnHook with no payload): the missing bytes decode as 0 / ``""``.  Bytes beyond the layout are
  ignored.  Strings end at the first NUL; a byte that is not ASCII decodes as U+FFFD.
* :class:`Framer` turns a TCP byte stream into messages and :class:`ProtocolError` events and
  never raises for any input.  It holds at most :data:`MAX_FRAME` bytes, decides nothing before
  a whole 12-byte header is in, and gives the same events however the stream is cut into reads.
  A length field below 4 or above ``MAX_FRAME - 8`` is fatal: the framing is lost, the buffer
  is dropped, the framer ignores the rest of the stream and the connection should be closed.
  An unknown message id with a sane length, or a count field over its maximum, is reported
  (not fatal) and the frame skipped.

Header versions: every layout is the Basic one, used whatever the header version, except from
version 0x11 ("V17") up, where OpenReceiveChannelAck and StartMediaTransmission carry a u32
address type (0 IPv4, 1 IPv6) and a 16-byte address instead of the 4-byte IPv4 address, and
OpenReceiveChannel, StartMediaTransmission and StopTone grow tails that are sent as zeros
(:data:`LAYOUTS_V17`).  :func:`encode` and :func:`decode` switch on the ``version`` given or
received.  A port registers with protocol version <= 16 and sends version 0, which keeps every
address 4 bytes.

Payload sizes are the ones tshark's skinny dissector decodes completely, with no "Malformed"
mark and no undecoded tail, at header versions 0 and 0x11 (docs/protocols.md has the layouts).
Fields a layout carries that we do not use (encryption info, stream ids, mixing mode, ...) are
padding: sent as zeros, ignored when received.
"""
from __future__ import annotations

import ipaddress
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from types import MappingProxyType
from typing import Any

from construct import Adapter, Array, Bytes, ConstructError, Int8ul, Int16ul, Int32ul, Padding, Struct, this

MAX_FRAME = 2000  # bytes on the wire, header included
HEADER = 12
V17 = 0x11  # first header version with the IPv4-or-IPv6 address form
MAX_CAPS = 18
MAX_BUTTONS = 42

_HEADER = struct.Struct("<III")
_LIMITS = {"u8": 0xFF, "u16": 0xFFFF, "u32": 0xFFFFFFFF}


class MsgId(IntEnum):
    KEEPALIVE_REQ = 0x0000
    REGISTER_REQ = 0x0001
    IP_PORT = 0x0002
    KEYPAD_BUTTON = 0x0003
    ENBLOC_CALL = 0x0004
    STIMULUS = 0x0005
    OFF_HOOK = 0x0006
    ON_HOOK = 0x0007
    LINE_STAT_REQ = 0x000B
    BUTTON_TEMPLATE_REQ = 0x000E
    CAPABILITIES_RES = 0x0010
    ALARM = 0x0020
    OPEN_RECEIVE_CHANNEL_ACK = 0x0022
    OFF_HOOK_WITH_CGPN = 0x0024
    UNREGISTER_REQ = 0x0027
    REGISTER_AVAILABLE_LINES = 0x002D
    REGISTER_ACK = 0x0081
    START_TONE = 0x0082
    STOP_TONE = 0x0083
    SET_RINGER = 0x0085
    SET_LAMP = 0x0086
    SET_SPEAKER_MODE = 0x0088
    START_MEDIA_TRANSMISSION = 0x008A
    STOP_MEDIA_TRANSMISSION = 0x008B
    CALL_INFO = 0x008F
    LINE_STAT_RES = 0x0092
    BUTTON_TEMPLATE_RES = 0x0097
    DISPLAY_TEXT = 0x0099
    CAPABILITIES_REQ = 0x009B
    REGISTER_REJECT = 0x009D
    RESET = 0x009F
    KEEPALIVE_ACK = 0x0100
    OPEN_RECEIVE_CHANNEL = 0x0105
    CLOSE_RECEIVE_CHANNEL = 0x0106
    SELECT_SOFT_KEYS = 0x0110
    CALL_STATE = 0x0111
    ACTIVATE_CALL_PLANE = 0x0116
    UNREGISTER_ACK = 0x0118
    DIALED_NUMBER = 0x011D


_KNOWN_IDS = frozenset(m.value for m in MsgId)


# ---- value tables --------------------------------------------------------------------------

class CallState(IntEnum):
    IDLE = 0
    OFF_HOOK = 1
    ON_HOOK = 2
    RING_OUT = 3
    RING_IN = 4
    CONNECTED = 5
    BUSY = 6
    CONGESTION = 7
    HOLD = 8
    CALL_WAITING = 9
    CALL_TRANSFER = 10
    CALL_PARK = 11
    PROCEED = 12
    CALL_REMOTE_MULTILINE = 13
    INVALID_NUMBER = 14
    HOLD_REVERT = 15
    WHISPER = 16
    REMOTE_HOLD = 17


class CallType(IntEnum):
    INBOUND = 1
    OUTBOUND = 2
    FORWARD = 3


class Tone(IntEnum):
    SILENCE = 0x00
    INSIDE_DIAL = 0x21
    OUTSIDE_DIAL = 0x22
    BUSY = 0x23
    ALERTING = 0x24
    REORDER = 0x25
    ZIP = 0x32
    NO_TONE = 0x7F


class LampMode(IntEnum):
    OFF = 1
    ON = 2
    WINK = 3
    FLASH = 4
    BLINK = 5


class Stimulus(IntEnum):
    LINE = 0x09
    VOICEMAIL = 0x0F


class RingMode(IntEnum):
    OFF = 1
    INSIDE = 2
    OUTSIDE = 3
    FEATURE = 4
    FLASH_ONLY = 5
    PRECEDENCE = 6


class Compression(IntEnum):
    G711_ALAW = 2
    G711_ULAW = 4
    G729 = 11
    G729A = 12
    G729B = 15


class ReceiveStatus(IntEnum):
    OK = 0
    UNKNOWN = 1
    NOT_ENOUGH_CHANNELS = 2
    CODEC_TOO_COMPLEX = 3
    INVALID_PARTY_ID = 4
    INVALID_CALL_REF = 5
    INVALID_CODEC = 6
    INVALID_PACKET_SIZE = 7
    OUT_OF_SOCKETS = 8
    ENCODER_OR_DECODER_FAILED = 9
    INVALID_DYNAMIC_PAYLOAD_TYPE = 10
    REQUESTED_IP_ADDR_TYPE_UNAVAILABLE = 11
    DEVICE_ON_HOOK = 255


class ResetType(IntEnum):
    RESET = 1
    RESTART = 2
    APPLY_CONFIG = 3


_BUTTONS = {**{str(d): d for d in range(10)}, "A": 10, "B": 11, "C": 12, "D": 13, "*": 14, "#": 15}
_DIGITS = {v: k for k, v in _BUTTONS.items()}


def button_of(digit: str) -> int:
    """The KeypadButton value of a dial digit: "0"-"9", "A"-"D" (10-13), "*" 14, "#" 15."""
    try:
        return _BUTTONS[digit]
    except (KeyError, TypeError):
        raise ValueError(f"not a keypad digit: {digit!r}") from None


def digit_of(button: int) -> str:
    """The dial digit of a KeypadButton value (the inverse of :func:`button_of`)."""
    try:
        return _DIGITS[button]
    except (KeyError, TypeError):
        raise ValueError(f"not a keypad button value: {button!r}") from None


# ---- events and errors ---------------------------------------------------------------------

class SccpError(ValueError):
    """A frame that cannot be decoded (raised by :func:`decode`)."""

    def __init__(self, reason: str, *, msg_id: int | None = None, fatal: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.msg_id = msg_id
        self.fatal = fatal


@dataclass(frozen=True)
class ProtocolError:
    """Something wrong on the wire: an event, not an exception."""

    reason: str
    fatal: bool  # True: the stream cannot be trusted any more (bad length)
    msg_id: int | None = None
    data: bytes = b""  # the offending frame (at most MAX_FRAME bytes; the header if fatal)


@dataclass(frozen=True)
class Message:
    """One decoded message: every field of its layout, by our (snake_case) names."""

    id: MsgId
    fields: Mapping[str, Any]
    version: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", MsgId(self.id))
        object.__setattr__(self, "fields", MappingProxyType(dict(self.fields)))

    def __getitem__(self, name: str) -> Any:
        return self.fields[name]

    @property
    def name(self) -> str:
        """tshark's name of the message, e.g. ``CallInfo``."""
        return layout_for(self.id, self.version).name

    def encode(self) -> bytes:
        """This message as a whole frame."""
        return encode(self.id, version=self.version, **self.fields)


# ---- construct building blocks -------------------------------------------------------------

class _Text(Adapter):
    """A NUL-padded ASCII string of a fixed size (checked before building)."""

    def __init__(self, size: int) -> None:
        super().__init__(Bytes(size))
        self.size = size

    def _decode(self, obj, context, path):
        return bytes(obj).split(b"\0", 1)[0].decode("ascii", "replace")

    def _encode(self, obj, context, path):
        return obj.encode("ascii").ljust(self.size, b"\0")


class _Ip4(Adapter):
    """An IPv4 address, 4 bytes in network order, as a dotted string."""

    def __init__(self) -> None:
        super().__init__(Bytes(4))

    def _decode(self, obj, context, path):
        return str(ipaddress.IPv4Address(bytes(obj)))

    def _encode(self, obj, context, path):
        return ipaddress.IPv4Address(obj).packed


class _Ip46(Adapter):
    """From V17: u32 address type (0 IPv4, 1 IPv6) + 16 address bytes, as one string."""

    def __init__(self) -> None:
        super().__init__(Struct("kind" / Int32ul, "addr" / Bytes(16)))

    def _decode(self, obj, context, path):
        if obj.kind == 1:
            return str(ipaddress.IPv6Address(bytes(obj.addr)))
        return str(ipaddress.IPv4Address(bytes(obj.addr[:4])))

    def _encode(self, obj, context, path):
        addr = ipaddress.ip_address(obj)
        if addr.version == 6:
            return {"kind": 1, "addr": addr.packed}
        return {"kind": 0, "addr": addr.packed.ljust(16, b"\0")}


@dataclass(frozen=True)
class Field:
    """One field of a layout: ``kind`` is u8/u16/u32/text/ip4/ip46/pad."""

    name: str | None
    kind: str
    size: int = 4


def u32(name: str) -> Field:
    return Field(name, "u32", 4)


def u16(name: str) -> Field:
    return Field(name, "u16", 2)


def u8(name: str) -> Field:
    return Field(name, "u8", 1)


def text(name: str, size: int) -> Field:
    return Field(name, "text", size)


def ip4(name: str) -> Field:
    return Field(name, "ip4", 4)


def ip46(name: str) -> Field:
    return Field(name, "ip46", 20)


def pad(size: int) -> Field:
    return Field(None, "pad", size)


def _construct_of(f: Field):
    if f.kind == "pad":
        return Padding(f.size)
    sub = {"u8": Int8ul, "u16": Int16ul, "u32": Int32ul}.get(f.kind)
    if sub is None:
        sub = {"text": lambda: _Text(f.size), "ip4": _Ip4, "ip46": _Ip46}[f.kind]()
    return f.name / sub


def _check(f: Field, value: Any) -> Any:
    """Validate one field value for encoding; returns it (ValueError if it does not fit)."""
    if f.kind in _LIMITS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{f.name}: expected an int, got {value!r}")
        if not 0 <= value <= _LIMITS[f.kind]:
            raise ValueError(f"{f.name}: {value} out of range for {f.kind}")
        return int(value)
    if f.kind == "text":
        if not isinstance(value, str):
            raise ValueError(f"{f.name}: expected a str, got {value!r}")
        if not value.isascii() or "\0" in value:
            raise ValueError(f"{f.name}: {value!r} is not NUL-free ASCII")
        if len(value) > f.size:
            raise ValueError(f"{f.name}: {value!r} longer than {f.size} bytes")
        return value
    if not isinstance(value, str):
        raise ValueError(f"{f.name}: expected an address string, got {value!r}")
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{f.name}: not an IP address: {value!r}") from None
    if f.kind == "ip4" and addr.version != 4:
        raise ValueError(f"{f.name}: {value!r} is not IPv4 (this layout has 4 address bytes)")
    return str(addr)


_DEFAULTS = {"u8": 0, "u16": 0, "u32": 0, "text": "", "ip4": "0.0.0.0", "ip46": "0.0.0.0"}


class Layout:
    """A fixed payload layout: field list, construct Struct, size."""

    def __init__(self, name: str, fields: list[Field]) -> None:
        self.name = name
        self.fields = tuple(fields)
        self.named = tuple(f for f in fields if f.name is not None)
        self.names = tuple(f.name for f in self.named)
        self.struct = Struct(*(_construct_of(f) for f in fields))
        self.size = sum(f.size for f in fields)

    def defaults(self) -> dict[str, Any]:
        return {f.name: _DEFAULTS[f.kind] for f in self.named}

    def offsets(self) -> dict[str, tuple[int, int]]:
        """Field name -> (payload offset, size)."""
        out, at = {}, 0
        for f in self.fields:
            if f.name is not None:
                out[f.name] = (at, f.size)
            at += f.size
        return out

    def check(self, given: Mapping[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(given) - set(self.names))
        if unknown:
            raise ValueError(f"{self.name} has no field(s) {', '.join(unknown)}; "
                             f"it has: {', '.join(self.names) or 'none'}")
        values = self.defaults()
        for f in self.named:
            if f.name in given:
                values[f.name] = _check(f, given[f.name])
        return values

    def build(self, given: Mapping[str, Any]) -> bytes:
        return self.struct.build(self.check(given))

    def parse(self, payload: bytes) -> dict[str, Any]:
        data = payload[:self.size].ljust(self.size, b"\0")
        parsed = self.struct.parse(data)
        return {name: parsed[name] for name in self.names}


class CapsLayout(Layout):
    """CapabilitiesRes: u32 count, then count entries of 16 bytes (u32 compression type, u32
    max frames per packet, 8 bytes of codec parameters, sent as zeros)."""

    def __init__(self) -> None:
        super().__init__("CapabilitiesRes", [])
        self.names = ("caps",)
        self.size = 4 + 16 * MAX_CAPS
        entry = Struct("compression_type" / Int32ul, "max_frames_per_packet" / Int32ul, Padding(8))
        self.struct = Struct("count" / Int32ul, "caps" / Array(this.count, entry))

    def defaults(self) -> dict[str, Any]:
        return {"caps": ()}

    def check(self, given: Mapping[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(given) - {"caps"})
        if unknown:
            raise ValueError(f"CapabilitiesRes has no field(s) {', '.join(unknown)}; it has: caps")
        caps = given.get("caps", ())
        if not isinstance(caps, (tuple, list)) or len(caps) > MAX_CAPS:
            raise ValueError(f"caps: expected at most {MAX_CAPS} (compression_type, max_frames) pairs")
        out = []
        for entry in caps:
            if not isinstance(entry, (tuple, list)) or len(entry) != 2:
                raise ValueError(f"caps: entry {entry!r} is not a (compression_type, max_frames) pair")
            out.append((_check(u32("compression_type"), entry[0]),
                        _check(u32("max_frames_per_packet"), entry[1])))
        return {"caps": tuple(out)}

    def build(self, given: Mapping[str, Any]) -> bytes:
        caps = self.check(given)["caps"]
        return self.struct.build({"count": len(caps), "caps": [
            {"compression_type": c, "max_frames_per_packet": m} for c, m in caps]})

    def parse(self, payload: bytes) -> dict[str, Any]:
        count = struct.unpack("<I", payload[:4].ljust(4, b"\0"))[0]
        if count > MAX_CAPS:
            raise SccpError(f"CapabilitiesRes with {count} capabilities (at most {MAX_CAPS})",
                            msg_id=MsgId.CAPABILITIES_RES)
        parsed = self.struct.parse(payload[:4 + 16 * count].ljust(4 + 16 * count, b"\0"))
        return {"caps": tuple((e.compression_type, e.max_frames_per_packet) for e in parsed.caps)}


class ButtonsLayout(Layout):
    """ButtonTemplateRes: u32 offset, u32 count, u32 total, then count 2-byte entries
    (u8 instance, u8 definition); at most 42."""

    def __init__(self) -> None:
        super().__init__("ButtonTemplateRes", [])
        self.names = ("button_offset", "button_count", "total_button_count", "buttons")
        self.size = 12 + 2 * MAX_BUTTONS
        entry = Struct("instance" / Int8ul, "definition" / Int8ul)
        self.struct = Struct("button_offset" / Int32ul, "button_count" / Int32ul,
                             "total_button_count" / Int32ul, "buttons" / Array(this.button_count, entry))

    def defaults(self) -> dict[str, Any]:
        return {"button_offset": 0, "button_count": 0, "total_button_count": 0, "buttons": ()}

    def check(self, given: Mapping[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(given) - set(self.names))
        if unknown:
            raise ValueError(f"ButtonTemplateRes has no field(s) {', '.join(unknown)}; it has: "
                             + ", ".join(self.names))
        buttons = given.get("buttons", ())
        if not isinstance(buttons, (tuple, list)) or len(buttons) > MAX_BUTTONS:
            raise ValueError(f"buttons: expected at most {MAX_BUTTONS} (instance, definition) pairs")
        out = []
        for entry in buttons:
            if not isinstance(entry, (tuple, list)) or len(entry) != 2:
                raise ValueError(f"buttons: entry {entry!r} is not an (instance, definition) pair")
            out.append((_check(u8("instance"), entry[0]), _check(u8("definition"), entry[1])))
        count = given.get("button_count", len(out))
        if count != len(out):
            raise ValueError(f"button_count {count!r} but {len(out)} buttons given")
        return {"button_offset": _check(u32("button_offset"), given.get("button_offset", 0)),
                "button_count": len(out),
                "total_button_count": _check(u32("total_button_count"),
                                             given.get("total_button_count", len(out))),
                "buttons": tuple(out)}

    def build(self, given: Mapping[str, Any]) -> bytes:
        values = self.check(given)
        return self.struct.build({**values, "buttons": [
            {"instance": i, "definition": d} for i, d in values["buttons"]]})

    def parse(self, payload: bytes) -> dict[str, Any]:
        head = payload[:12].ljust(12, b"\0")
        count = struct.unpack("<III", head)[1]
        if count > MAX_BUTTONS:
            raise SccpError(f"ButtonTemplateRes with {count} buttons (at most {MAX_BUTTONS})",
                            msg_id=MsgId.BUTTON_TEMPLATE_RES)
        size = 12 + 2 * count
        parsed = self.struct.parse(payload[:size].ljust(size, b"\0"))
        return {"button_offset": parsed.button_offset, "button_count": parsed.button_count,
                "total_button_count": parsed.total_button_count,
                "buttons": tuple((e.instance, e.definition) for e in parsed.buttons)}


# ---- the layouts ---------------------------------------------------------------------------

_LINE_CALL = [u32("line_instance"), u32("call_reference")]
_MEDIA_STOP = [u32("conference_id"), u32("pass_through_party_id"), u32("call_reference"),
               u32("port_handling_flag")]
_ENCRYPTION = 48  # algorithm u32, key length u16, salt length u16, key[16], salt[16], 2 x u32


_OPEN_RECEIVE = [
    u32("conference_id"), u32("pass_through_party_id"), u32("packet_ms"), u32("compression_type"),
    u32("echo_cancellation"), u32("g723_bitrate"), u32("call_reference"),
    pad(_ENCRYPTION), pad(4), pad(4),  # encryption info, streamPassThroughId, associatedStreamId
    u32("rfc2833_payload_type"), u32("dtmf_type")]


def _start_media(address: Field) -> list[Field]:
    return [u32("conference_id"), u32("pass_through_party_id"), address, u32("remote_port"),
            u32("packet_ms"), u32("compression_type"), u32("precedence"), u32("silence_suppression"),
            u16("max_frames_per_packet"), pad(2), u32("g723_bitrate"), u32("call_reference"),
            pad(_ENCRYPTION), pad(4), pad(4),  # encryption info, streamPassThroughId, associatedStreamId
            u32("rfc2833_payload_type"), u32("dtmf_type"), pad(4)]  # mixingMode


def _receive_ack(address: Field) -> list[Field]:
    return [u32("status"), address, u32("port"), u32("pass_through_party_id"), u32("call_reference")]


LAYOUTS: dict[MsgId, Layout] = {
    MsgId.KEEPALIVE_REQ: Layout("KeepAliveReq", []),
    # 124 bytes: tshark decodes activeConferences and the tail only when the length is > 100
    MsgId.REGISTER_REQ: Layout("RegisterReq", [
        text("device_name", 16), u32("user_id"), u32("instance"), ip4("station_ip"), u32("device_type"),
        u32("max_streams"), u32("active_streams"), u8("protocol_ver"), pad(1), u16("phone_features"),
        u32("max_conferences"), u32("active_conferences"),
        pad(72)]),  # mac[12], ipV4AddressScope, maxNumberOfLines, ipV6 address[16], scope, firmware[32]
    MsgId.IP_PORT: Layout("IpPort", [u32("rtp_port")]),
    MsgId.KEYPAD_BUTTON: Layout("KeypadButton", [u32("button"), *_LINE_CALL]),
    MsgId.ENBLOC_CALL: Layout("EnblocCall", [text("called_party", 24)]),
    MsgId.STIMULUS: Layout("Stimulus", [u32("stimulus"), *_LINE_CALL, pad(4)]),  # stimulusStatus
    MsgId.OFF_HOOK: Layout("OffHook", _LINE_CALL),
    MsgId.ON_HOOK: Layout("OnHook", _LINE_CALL),
    MsgId.LINE_STAT_REQ: Layout("LineStatReq", [u32("line_number")]),
    MsgId.BUTTON_TEMPLATE_REQ: Layout("ButtonTemplateReq", []),
    MsgId.CAPABILITIES_RES: CapsLayout(),
    MsgId.ALARM: Layout("Alarm", [u32("severity"), text("text", 80), u32("parm1"), u32("parm2")]),
    MsgId.OPEN_RECEIVE_CHANNEL_ACK: Layout("OpenReceiveChannelAck", _receive_ack(ip4("ip"))),
    # cgpnVoiceMailbox[24] and lineInstance follow the number; tshark needs all 52 bytes
    MsgId.OFF_HOOK_WITH_CGPN: Layout("OffHookWithCallingPartyNumber",
                                      [text("calling_party", 24), pad(24), pad(4)]),
    MsgId.UNREGISTER_REQ: Layout("UnregisterReq", []),
    MsgId.REGISTER_AVAILABLE_LINES: Layout("RegisterAvailableLines", [u32("max_lines")]),
    MsgId.REGISTER_ACK: Layout("RegisterAck", [
        u32("keepalive_interval"), text("date_template", 6), pad(2), u32("secondary_keepalive_interval"),
        u8("max_protocol_ver"), pad(1), u16("phone_features")]),
    MsgId.START_TONE: Layout("StartTone", [u32("tone"), u32("direction"), *_LINE_CALL]),
    MsgId.STOP_TONE: Layout("StopTone", _LINE_CALL),
    MsgId.SET_RINGER: Layout("SetRinger", [u32("ring_mode"), u32("ring_duration"), *_LINE_CALL]),
    MsgId.SET_LAMP: Layout("SetLamp", [u32("stimulus"), u32("stimulus_instance"), u32("lamp_mode")]),
    MsgId.SET_SPEAKER_MODE: Layout("SetSpeakerMode", [u32("mode")]),
    MsgId.START_MEDIA_TRANSMISSION: Layout("StartMediaTransmission", _start_media(ip4("remote_ip"))),
    MsgId.STOP_MEDIA_TRANSMISSION: Layout("StopMediaTransmission", _MEDIA_STOP),
    MsgId.CALL_INFO: Layout("CallInfo", [
        text("calling_party_name", 40), text("calling_party", 24),
        text("called_party_name", 40), text("called_party", 24),
        u32("line_instance"), u32("call_reference"), u32("call_type"),
        text("original_called_party_name", 40), text("original_called_party", 24),
        text("last_redirecting_party_name", 40), text("last_redirecting_party", 24),
        u32("original_cdpn_redirect_reason"), u32("last_redirecting_reason"),
        text("cgpn_voice_mailbox", 24), text("cdpn_voice_mailbox", 24),
        text("original_cdpn_voice_mailbox", 24), text("last_redirecting_voice_mailbox", 24),
        u32("call_instance"), u32("call_security_status"), u32("party_pi_restriction_bits")]),
    MsgId.LINE_STAT_RES: Layout("LineStatRes", [
        u32("line_number"), text("dir_number", 24), text("display_name", 40), text("display_alias", 40),
        u32("display_options")]),
    MsgId.BUTTON_TEMPLATE_RES: ButtonsLayout(),
    MsgId.DISPLAY_TEXT: Layout("DisplayText", [text("text", 32)]),
    MsgId.CAPABILITIES_REQ: Layout("CapabilitiesReq", []),
    MsgId.REGISTER_REJECT: Layout("RegisterReject", [text("text", 32)]),
    MsgId.RESET: Layout("Reset", [u32("reset_type")]),
    MsgId.KEEPALIVE_ACK: Layout("KeepAliveAck", []),
    MsgId.OPEN_RECEIVE_CHANNEL: Layout("OpenReceiveChannel", _OPEN_RECEIVE),
    MsgId.CLOSE_RECEIVE_CHANNEL: Layout("CloseReceiveChannel", _MEDIA_STOP),
    MsgId.SELECT_SOFT_KEYS: Layout("SelectSoftKeys", [
        *_LINE_CALL, u32("soft_key_set_index"), u32("valid_key_mask")]),
    MsgId.CALL_STATE: Layout("CallState", [
        u32("call_state"), *_LINE_CALL, u32("privacy"), u32("precedence_level"), u32("precedence_domain")]),
    MsgId.ACTIVATE_CALL_PLANE: Layout("ActivateCallPlane", [u32("line_instance")]),
    MsgId.UNREGISTER_ACK: Layout("UnregisterAck", [u32("status")]),
    MsgId.DIALED_NUMBER: Layout("DialedNumber", [text("dialed_number", 24), *_LINE_CALL]),
}

#: layouts that differ from header version 0x11 (V17) up: the address form, and tails that
#: tshark expects from V17 on (sent as zeros)
LAYOUTS_V17: dict[MsgId, Layout] = {
    # mixingMode, partyDirection, source address (type + 16 bytes), source port,
    # requestedIpAddrType, audioLevelAdjustment
    MsgId.OPEN_RECEIVE_CHANNEL: Layout("OpenReceiveChannel", [*_OPEN_RECEIVE, pad(40)]),
    MsgId.STOP_TONE: Layout("StopTone", [*_LINE_CALL, pad(4)]),  # tone
    MsgId.OPEN_RECEIVE_CHANNEL_ACK: Layout("OpenReceiveChannelAck", _receive_ack(ip46("ip"))),
    MsgId.START_MEDIA_TRANSMISSION: Layout("StartMediaTransmission",
                                           [*_start_media(ip46("remote_ip")), pad(4)]),  # partyDirection
}


def layout_for(msg_id: int, version: int = 0) -> Layout:
    """The payload layout of ``msg_id`` under header ``version`` (KeyError if unknown)."""
    if version >= V17 and msg_id in LAYOUTS_V17:
        return LAYOUTS_V17[msg_id]
    return LAYOUTS[msg_id]


# ---- encode / decode -----------------------------------------------------------------------

def encode(msg_id: MsgId, *, version: int = 0, **fields: Any) -> bytes:
    """One whole frame (header + payload).  ValueError for an unknown id or field, or a value
    that does not fit its field."""
    try:
        mid = MsgId(msg_id)
    except ValueError:
        raise ValueError(f"unknown SCCP message id {msg_id!r}") from None
    if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version <= 0xFFFFFFFF:
        raise ValueError(f"header version {version!r} is not a u32")
    layout = layout_for(mid, version)
    try:
        payload = layout.build(fields)
    except ConstructError as exc:  # not expected: values are checked first
        raise ValueError(f"{layout.name}: {exc}") from None
    if HEADER + len(payload) > MAX_FRAME:
        raise ValueError(f"{layout.name}: frame of {HEADER + len(payload)} bytes exceeds {MAX_FRAME}")
    return _HEADER.pack(4 + len(payload), version, mid) + payload


def make(msg_id: MsgId, *, version: int = 0, **fields: Any) -> Message:
    """The :class:`Message` that :func:`encode` of the same arguments would put on the wire
    (every field present, defaults filled in)."""
    return decode(encode(msg_id, version=version, **fields))


def decode(frame: bytes) -> Message:
    """Decode one whole frame; raises :class:`SccpError`."""
    frame = bytes(frame)
    if len(frame) < HEADER:
        raise SccpError(f"frame of {len(frame)} bytes is shorter than the {HEADER}-byte header", fatal=True)
    length, version, msg_id = _HEADER.unpack_from(frame)
    if length < 4 or length > MAX_FRAME - 8:
        raise SccpError(f"length field {length} outside 4..{MAX_FRAME - 8}", msg_id=msg_id, fatal=True)
    if length + 8 != len(frame):
        raise SccpError(f"length field {length} does not match a frame of {len(frame)} bytes",
                        msg_id=msg_id, fatal=True)
    return _decode_payload(msg_id, version, frame[HEADER:])


def _decode_payload(msg_id: int, version: int, payload: bytes) -> Message:
    if msg_id not in _KNOWN_IDS:
        raise SccpError(f"unknown message id 0x{msg_id:04X} ({len(payload)} payload bytes)", msg_id=msg_id)
    layout = layout_for(msg_id, version)
    try:
        fields = layout.parse(payload)
    except (ConstructError, ValueError) as exc:
        if isinstance(exc, SccpError):
            raise
        raise SccpError(f"{layout.name}: {exc}", msg_id=msg_id) from None
    return Message(MsgId(msg_id), fields, version)


class Framer:
    """Stream -> messages.  ``feed()`` never raises and keeps at most :data:`MAX_FRAME` bytes.

    Events do not depend on how the stream was cut into reads.  After a fatal error (a length
    field outside 4..``MAX_FRAME - 8``) the framing is lost for good: the buffer is dropped, and
    so is everything fed afterwards (``lost`` is True) until :meth:`reset` -- the connection
    should be closed.
    """

    def __init__(self) -> None:
        self._buf = b""
        self.lost = False

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for the rest of a frame."""
        return len(self._buf)

    def reset(self) -> None:
        """Start afresh (a new connection)."""
        self._buf = b""
        self.lost = False

    def feed(self, data: bytes) -> list[Message | ProtocolError]:
        if self.lost:
            return []
        out: list[Message | ProtocolError] = []
        buf = self._buf + bytes(data)
        at = 0
        while len(buf) - at >= HEADER:  # nothing is decided before a whole header is in
            length, _, msg_id = _HEADER.unpack_from(buf, at)
            if length < 4 or length > MAX_FRAME - 8:
                out.append(ProtocolError(f"length field {length} outside 4..{MAX_FRAME - 8}: framing lost",
                                         True, msg_id, bytes(buf[at:at + HEADER])))
                self._buf = b""
                self.lost = True
                return out
            if len(buf) - at < length + 8:
                break
            frame = buf[at:at + length + 8]
            at += length + 8
            version = _HEADER.unpack_from(frame)[1]
            try:
                out.append(_decode_payload(msg_id, version, frame[HEADER:]))
            except Exception as exc:  # noqa: BLE001 - feed() must never raise; report the frame
                out.append(ProtocolError(str(exc), False, msg_id, frame))
        self._buf = buf[at:]
        return out
