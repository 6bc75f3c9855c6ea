"""The two-decoder check of our SCCP encodings: tshark's skinny dissector and scapy's
``scapy.contrib.skinny``, each reading a pcap (written with :mod:`lab.pcap`), compared with the
messages our codec meant to send.

* :func:`tshark_pdus` runs ``tshark -T pdml`` with skinny reassembly on and returns one dict per
  PDU: ``id``, ``length``, ``version``, ``fields`` (tshark's fields under our field names),
  ``unmapped`` (tshark fields outside our layouts, with their shown value), ``decoded_to`` (the
  payload offset where tshark's last field ends) and ``warnings`` (expert info such as
  "Malformed Packet", plus payload bytes tshark left undecoded after its last field -- the
  dissector does not flag those itself).
* :func:`scapy_pdus` reassembles each TCP direction itself, cuts PDUs by the length field and
  decodes each with scapy's ``Skinny`` layer.  For the messages scapy has a class for, the
  fields it places at the same offsets as our layouts are mapped to our names (the rest of its
  class is listed in :data:`SCAPY_GAPS`); other ids give ``scapy: generic`` in ``notes``.
* :func:`check_pcap` compares both with the expected :class:`Message` list (in capture order)
  and returns the disagreements, an empty list meaning both decoders agree with the codec on
  every field each decodes and tshark raised no warning.

A missing tshark or scapy raises :class:`DecoderMissing`: the check never passes silently.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from telephony.sccp.core.messages import HEADER, MAX_FRAME, Message, MsgId

SKINNY_PORT = 2000


class DecoderMissing(RuntimeError):
    """tshark or scapy is not installed: the check cannot run."""


# ---- tshark ------------------------------------------------------------------------------

#: tshark field name (without ``skinny.``) -> our field name, for every message
TSHARK_NAMES = {
    "lineInstance": "line_instance", "callReference": "call_reference",
    "conferenceId": "conference_id", "passThroughPartyId": "pass_through_party_id",
    "milliSecondPacketSize": "packet_ms", "compressionType": "compression_type",
    "ecValue": "echo_cancellation", "g723BitRate": "g723_bitrate",
    "RFC2833PayloadType": "rfc2833_payload_type", "dtmfType": "dtmf_type",
    "remoteIpAddr.ipv4": "remote_ip", "remoteIpAddr.ipv6": "remote_ip",
    "remotePortNumber": "remote_port", "precedenceValue": "precedence", "ssValue": "silence_suppression",
    "maxFramesPerPacket": "max_frames_per_packet", "portHandlingFlag": "port_handling_flag",
    "mediaReceptionStatus": "status", "ipAddr.ipv4": "ip", "ipAddr.ipv6": "ip", "portNumber": "port",
    "DeviceName": "device_name", "reserved.for.future.use": "user_id", "instance": "instance",
    "stationIpAddr": "station_ip", "deviceType": "device_type", "maxStreams": "max_streams",
    "activeStreams": "active_streams", "protocolVer": "protocol_ver", "maxConferences": "max_conferences",
    "activeConferences": "active_conferences",
    "keepAliveInterval": "keepalive_interval", "dateTemplate": "date_template",
    "secondaryKeepAliveInterval": "secondary_keepalive_interval", "maxProtocolVer": "max_protocol_ver",
    "rtpMediaPort": "rtp_port", "kpButton": "button", "calledParty": "called_party",
    "stimulus": "stimulus", "stimulusInstance": "stimulus_instance", "lampMode": "lamp_mode",
    "callingPartyNumber": "calling_party", "lineNumber": "line_number", "lineDirNumber": "dir_number",
    "lineFullyQualifiedDisplayName": "display_name", "lineTextLabel": "display_alias",
    "lineDisplayOptions": "display_options", "alarmSeverity": "severity", "text": "text",
    "parm1": "parm1", "parm2": "parm2", "maxNumOfAvailLines": "max_lines", "tone": "tone",
    "tone.output.direction": "direction", "ringMode": "ring_mode", "ringDuration": "ring_duration",
    "speakerMode": "mode", "callingPartyName": "calling_party_name", "callingParty": "calling_party",
    "calledPartyName": "called_party_name", "callType": "call_type",
    "originalCalledPartyName": "original_called_party_name", "originalCalledParty": "original_called_party",
    "lastRedirectingPartyName": "last_redirecting_party_name",
    "lastRedirectingParty": "last_redirecting_party",
    "originalCdpnRedirectReason": "original_cdpn_redirect_reason",
    "lastRedirectingReason": "last_redirecting_reason", "cgpnVoiceMailbox": "cgpn_voice_mailbox",
    "cdpnVoiceMailbox": "cdpn_voice_mailbox", "originalCdpnVoiceMailbox": "original_cdpn_voice_mailbox",
    "lastRedirectingVoiceMailbox": "last_redirecting_voice_mailbox", "callInstance": "call_instance",
    "callSecurityStatus": "call_security_status", "buttonOffset": "button_offset",
    "buttonCount": "button_count", "totalButtonCount": "total_button_count", "resetType": "reset_type",
    "softKeySetIndex": "soft_key_set_index", "callState": "call_state", "privacy": "privacy",
    "precedenceLevel": "precedence_level", "precedenceDomain": "precedence_domain", "status": "status",
    "dialedNumber": "dialed_number",
}
#: per message: tshark names that mean something else there, or must be zero (None)
TSHARK_OVERRIDES: dict[MsgId, dict[str, str | None]] = {
    MsgId.OFF_HOOK_WITH_CGPN: {"cgpnVoiceMailbox": None, "lineInstance": None},
    MsgId.STOP_TONE: {"tone": None},  # from V17 a trailing tone, sent as 0
    # per entry: maxFramesPerPacket is collected into caps; the codec parameters are sent as zeros
    MsgId.CAPABILITIES_RES: {"maxFramesPerPacket": None, "g723BitRate": None, "codecMode": None,
                             "dynamicPayload": None, "codecParam1": None, "codecParam2": None},
}
#: tshark's request/response tracking, not wire fields
TSHARK_META = {"skinny.response_in", "skinny.response_to", "skinny.response_time"}
#: bit fields tshark shows bit by bit: prefix -> our field (the value is rebuilt from the masks)
TSHARK_BITS = {"PhoneFeatures.": "phone_features", "SoftKeyMask.": "valid_key_mask",
               "RestrictInformationType.": "party_pi_restriction_bits"}
#: V17 codec parameter bytes (in place of g723BitRate): name -> byte position in our u32
TSHARK_BYTES = {"codecMode": 0, "dynamicPayload": 1, "codecParam1": 2, "codecParam2": 3}
_BITS = re.compile(r"^([01. ]+) = ")


def _known(msg_id: int | None) -> MsgId | None:
    try:
        return MsgId(msg_id)
    except ValueError:
        return None


def _tshark() -> str:
    path = shutil.which("tshark")
    if path is None:
        raise DecoderMissing("tshark is not installed (Debian: apt-get install tshark): "
                             "the SCCP two-decoder check needs it")
    return path


def _int(show: str) -> int:
    return int(show, 0)


def _zeroish(show: str | None) -> bool:
    if show in (None, "", "::", "0.0.0.0", "00:00:00:00:00:00"):
        return True
    try:
        return _int(show) == 0
    except ValueError:
        return False


def tshark_pdus(pcap: str | Path, *, port: int = SKINNY_PORT) -> list[dict[str, Any]]:
    """Every skinny PDU tshark finds in ``pcap``, in capture order (see the module doc)."""
    cmd = [_tshark(), "-r", str(pcap), "-T", "pdml", "-o", "skinny.desegment:TRUE",
           "-o", "tcp.desegment_tcp_streams:TRUE", "-d", f"tcp.port=={port},skinny"]
    proc = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace")[-2000:]
        raise RuntimeError(f"tshark failed ({proc.returncode}): {err}")
    root = ET.fromstring(proc.stdout)
    pdus: list[dict[str, Any]] = []
    for packet in root.iter("packet"):
        current: dict[str, Any] | None = None
        for proto in packet.findall("proto"):
            name = proto.get("name", "")
            if name == "skinny":
                current = _tshark_pdu(proto)
                pdus.append(current)
            elif name.startswith("_ws") or name == "expert":
                messages = [f.get("show") or f.get("showname") or "?" for f in proto.iter("field")
                            if f.get("name") == "_ws.expert.message"] or [name]
                if current is None:  # not inside any PDU of this packet
                    current = {"id": None, "length": None, "version": None, "fields": {}, "unmapped": {},
                               "decoded_to": 0, "warnings": [], "notes": []}
                    pdus.append(current)
                current["warnings"].extend(f"tshark: {m}" for m in messages)
    return pdus


def _tshark_pdu(proto: ET.Element) -> dict[str, Any]:
    pdu: dict[str, Any] = {"fields": {}, "unmapped": {}, "warnings": [], "notes": [], "decoded_to": 0}
    base = None
    bits: dict[str, int] = {}
    byte_parts: dict[str, int] = {}
    caps: list[list[int]] = []
    buttons: list[list[int]] = []
    all_fields = list(proto.iter("field"))
    for f in all_fields:
        if f.get("name") == "skinny.data_length":
            base = int(f.get("pos", "0")) + HEADER
            pdu["length"] = _int(f.get("show", "0"))
        elif f.get("name") == "skinny.hdr_version":
            pdu["version"] = _int(f.get("show", "0"))
        elif f.get("name") == "skinny.messageId":
            pdu["id"] = _int(f.get("show", "0"))
    if base is None or "id" not in pdu:
        pdu.setdefault("id", None)
        pdu["warnings"].append("tshark: skinny PDU without header fields")
        return pdu
    msg_id = pdu["id"]
    overrides = TSHARK_OVERRIDES.get(_known(msg_id), {})
    for f in all_fields:
        name = f.get("name", "")
        if name in TSHARK_META:
            continue
        pos, size = f.get("pos"), f.get("size")
        if pos is not None and size is not None and int(pos) >= base:
            pdu["decoded_to"] = max(pdu["decoded_to"], int(pos) + int(size) - base)
        if name == "_ws.expert.message" or name == "_ws.malformed":
            pdu["warnings"].append(f"tshark: {f.get('show') or name}")
            continue
        if not name.startswith("skinny.") or name in ("skinny.data_length", "skinny.hdr_version",
                                                      "skinny.messageId"):
            continue
        short, show = name[len("skinny."):], f.get("show")
        prefix = next((p for p in TSHARK_BITS if short.startswith(p)), None)
        if prefix is not None:
            mask = _BITS.match(f.get("showname", ""))
            if mask is None:
                pdu["warnings"].append(f"tshark: cannot read the bit mask of {short}")
                continue
            pattern = mask.group(1).replace(" ", "")
            value = bits.setdefault(TSHARK_BITS[prefix], 0)
            for i, ch in enumerate(pattern):
                if ch == "1":
                    value |= 1 << (len(pattern) - 1 - i)
            bits[TSHARK_BITS[prefix]] = value
        elif msg_id == MsgId.CAPABILITIES_RES and short in ("payloadCapability", "maxFramesPerPacket"):
            if short == "payloadCapability":
                caps.append([_int(show), 0])
            elif caps:
                caps[-1][1] = _int(show)
        elif msg_id == MsgId.CAPABILITIES_RES and short == "capCount":
            pdu["fields"]["cap_count"] = _int(show)
        elif msg_id == MsgId.BUTTON_TEMPLATE_RES and short in ("instanceNumber", "buttonDefinition"):
            if short == "instanceNumber":
                buttons.append([_int(show), 0])
            elif buttons:
                buttons[-1][1] = _int(show)
        elif short in overrides and overrides[short] is None:
            pdu["unmapped"][short] = show
        elif short in TSHARK_BYTES:
            part = _int(show) << 8 * TSHARK_BYTES[short]
            byte_parts["g723_bitrate"] = byte_parts.get("g723_bitrate", 0) | part
        elif short == "ipv4or6":
            pdu["fields"]["ipv4or6"] = _int(show)
        elif short not in TSHARK_NAMES:
            pdu["unmapped"][short] = show
        else:
            ours = overrides.get(short) or TSHARK_NAMES[short]
            pdu["fields"][ours] = show  # typed when compared (a number may be a string field)
    pdu["fields"].update(bits)
    pdu["fields"].update(byte_parts)
    if msg_id == MsgId.CAPABILITIES_RES:
        pdu["fields"]["caps"] = tuple(tuple(c) for c in caps)
    if msg_id == MsgId.BUTTON_TEMPLATE_RES:
        pdu["fields"]["buttons"] = tuple(tuple(b) for b in buttons)
    payload = pdu["length"] - 4
    if pdu["decoded_to"] < payload:
        pdu["warnings"].append(f"tshark: {payload - pdu['decoded_to']} payload bytes after the last "
                               f"decoded field (offset {pdu['decoded_to']} of {payload})")
    return pdu


# ---- scapy -------------------------------------------------------------------------------

#: scapy class field -> our field, per message id (only fields at the same offset as ours)
SCAPY_NAMES: dict[MsgId, dict[str, str]] = {
    MsgId.KEEPALIVE_REQ: {}, MsgId.KEEPALIVE_ACK: {},
    MsgId.OFF_HOOK: {"unknown1": "line_instance", "unknown2": "call_reference"},
    MsgId.ON_HOOK: {"unknown1": "line_instance", "unknown2": "call_reference"},
    MsgId.CALL_STATE: {"state": "call_state", "instance": "line_instance", "callid": "call_reference",
                       "unknown1": "privacy", "unknown2": "precedence_level",
                       "unknown3": "precedence_domain"},
    MsgId.SET_RINGER: {"ring": "ring_mode", "unknown1": "ring_duration", "unknown2": "line_instance",
                       "unknown3": "call_reference"},
    MsgId.START_TONE: {"tone": "tone", "unknown1": "direction", "instance": "line_instance",
                       "callid": "call_reference"},
    MsgId.STOP_TONE: {"instance": "line_instance", "callid": "call_reference"},
    MsgId.SET_SPEAKER_MODE: {"ring": "mode"},
    MsgId.SET_LAMP: {"stimulus": "stimulus", "instance": "stimulus_instance", "mode": "lamp_mode"},
    MsgId.SELECT_SOFT_KEYS: {"instance": "line_instance", "callid": "call_reference",
                             "set": "soft_key_set_index", "map": "valid_key_mask"},
    MsgId.ACTIVATE_CALL_PLANE: {"instance": "line_instance"},
    MsgId.KEYPAD_BUTTON: {"key": "button", "instance": "line_instance", "callid": "call_reference"},
    MsgId.DIALED_NUMBER: {"number": "dialed_number", "instance": "line_instance", "callid": "call_reference"},
    MsgId.CALL_INFO: {
        "callername": "calling_party_name", "callernum": "calling_party", "calledname": "called_party_name",
        "callednum": "called_party", "lineinstance": "line_instance", "callid": "call_reference",
    },
    MsgId.OPEN_RECEIVE_CHANNEL: {
        "conference": "conference_id", "passthru": "pass_through_party_id", "rate": "packet_ms",
        "codec": "compression_type", "echo": "echo_cancellation", "unknown1": "g723_bitrate",
        "callid": "call_reference"},
    MsgId.OPEN_RECEIVE_CHANNEL_ACK: {"status": "status", "remote": "ip", "port": "port",
                                     "passthru": "pass_through_party_id", "callid": "call_reference"},
    MsgId.START_MEDIA_TRANSMISSION: {
        "conference": "conference_id", "passthru": "pass_through_party_id", "remote": "remote_ip",
        "port": "remote_port", "rate": "packet_ms", "codec": "compression_type", "precedence": "precedence",
        "silence": "silence_suppression", "maxframes": "max_frames_per_packet",
        "unknown1": "g723_bitrate", "callid": "call_reference"},
}
#: where scapy's class does not match the layout tshark and we use (documented, not compared)
SCAPY_GAPS = {
    MsgId.CALL_INFO: "scapy's class has no callType at offset 136, so every field after callReference "
                     "is 4 bytes off: only the first six fields are compared",
    MsgId.CLOSE_RECEIVE_CHANNEL: "scapy's class reads a 36-byte StartMedia-like layout and cannot decode "
                                 "the 16-byte message tshark and CallManager use: generic",
    MsgId.OPEN_RECEIVE_CHANNEL: "scapy's class stops at callReference: rfc2833_payload_type and dtmf_type "
                                "are not compared",
    MsgId.START_MEDIA_TRANSMISSION: "scapy's class stops at callReference (rfc2833_payload_type, dtmf_type "
                                    "not compared); it reads max_frames_per_packet as a u32 with the padding",
}
#: scapy layouts that apply only to header version < 0x11 (the V17 address form differs)
SCAPY_BASIC_ONLY = {MsgId.OPEN_RECEIVE_CHANNEL_ACK, MsgId.START_MEDIA_TRANSMISSION}


def _scapy():
    try:
        from scapy.contrib.skinny import Skinny
        from scapy.layers.inet import IP, TCP
        from scapy.utils import PcapReader
    except ImportError as exc:
        raise DecoderMissing(f"scapy is not installed ({exc}): pip install scapy==2.6.1; "
                             "the SCCP two-decoder check needs it") from exc
    return Skinny, IP, TCP, PcapReader


def scapy_pdus(pcap: str | Path, *, port: int = SKINNY_PORT) -> list[dict[str, Any]]:
    """Every PDU in ``pcap``'s TCP streams to/from ``port``, decoded by scapy, in the order
    their last byte was captured."""
    skinny_cls, ip_cls, tcp_cls, reader = _scapy()
    streams: dict[tuple, dict[str, Any]] = {}
    found: list[tuple[int, int, bytes]] = []
    with reader(str(pcap)) as packets:
        for index, pkt in enumerate(packets):
            if ip_cls not in pkt or tcp_cls not in pkt:
                continue
            tcp = pkt[tcp_cls]
            if port not in (tcp.sport, tcp.dport):
                continue
            key = (pkt[ip_cls].src, tcp.sport, pkt[ip_cls].dst, tcp.dport)
            flags = int(tcp.flags)
            state = streams.setdefault(key, {"next": None, "buf": b""})
            if flags & 0x02:  # SYN: the data starts at seq + 1
                state["next"] = (tcp.seq + 1) & 0xFFFFFFFF
                continue
            data = bytes(tcp.payload)
            if not data or state["next"] is None or tcp.seq != state["next"]:
                continue  # empty, before the handshake, or out of order/retransmitted
            state["next"] = (tcp.seq + len(data)) & 0xFFFFFFFF
            state["buf"] += data
            while len(state["buf"]) >= 4:
                length = int.from_bytes(state["buf"][:4], "little")
                if length < 4 or length > MAX_FRAME - 8:
                    found.append((index, 0, state["buf"][:MAX_FRAME]))
                    state["buf"] = b""
                    break
                if len(state["buf"]) < length + 8:
                    break
                found.append((index, 1, state["buf"][:length + 8]))
                state["buf"] = state["buf"][length + 8:]
    pdus = []
    for _, ok, frame in found:
        if not ok:
            pdus.append({"id": None, "fields": {}, "notes": [], "length": int.from_bytes(frame[:4], "little"),
                         "warnings": [f"scapy: bad length field in {frame[:12].hex()}"]})
            continue
        pdus.append(_scapy_pdu(skinny_cls(frame), frame))
    return pdus


def _scapy_pdu(pkt, frame: bytes) -> dict[str, Any]:
    msg_id, version = int(pkt.msg), int(pkt.res)
    pdu: dict[str, Any] = {"id": msg_id, "length": int(pkt.len), "version": version, "fields": {},
                           "warnings": [], "notes": []}
    layer = pkt.payload
    names = SCAPY_NAMES.get(_known(msg_id))
    if names is None or (version >= 0x11 and msg_id in SCAPY_BASIC_ONLY):
        pdu["notes"].append("scapy: generic")
        if _known(msg_id) in SCAPY_GAPS:
            pdu["notes"].append(SCAPY_GAPS[MsgId(msg_id)])
        return pdu
    if type(layer).__name__ in ("Raw", "NoPayload", "Padding", "SkinnyMessageGeneric") and names:
        pdu["warnings"].append(f"scapy: no class decoded message 0x{msg_id:04X}")
        return pdu
    for theirs, ours in names.items():
        value = layer.getfieldval(theirs)
        if isinstance(value, bytes):
            value = value.split(b"\0", 1)[0].decode("ascii", "replace")
        pdu["fields"][ours] = value
    if MsgId(msg_id) in SCAPY_GAPS:
        pdu["notes"].append(SCAPY_GAPS[MsgId(msg_id)])
    return pdu


# ---- the check ---------------------------------------------------------------------------

def _typed(value: Any, like: Any) -> Any:
    """tshark shows every value as text: read it as a number where the codec has one."""
    if isinstance(like, int) and isinstance(value, str):
        try:
            return _int(value)
        except ValueError:
            return value
    return value


def _compare(who: str, index: int, msg: Message, pdu: dict[str, Any], *, complete: bool) -> list[str]:
    where = f"PDU {index} ({msg.name})"
    out = [f"{where}: {w}" for w in pdu.get("warnings", ())]
    if pdu.get("id") != msg.id:
        out.append(f"{where}: {who} saw message id {pdu.get('id')!r}, expected 0x{int(msg.id):04X}")
        return out
    try:
        size = len(msg.encode()) - 8
    except ValueError as exc:  # decoded from bytes the codec would never send (text >= 0x80)
        out.append(f"{where}: the codec cannot encode this message again: {exc}")
        return out
    if pdu.get("length") != size:
        out.append(f"{where}: {who} saw length field {pdu.get('length')}, the codec encodes {size}")
    if pdu.get("version") not in (None, msg.version):
        out.append(f"{where}: {who} saw header version {pdu.get('version')}, expected {msg.version}")
    fields = dict(pdu.get("fields", {}))
    if "ipv4or6" in fields:
        address = msg.fields.get("ip", msg.fields.get("remote_ip", ""))
        if fields.pop("ipv4or6") != (1 if ":" in address else 0):
            out.append(f"{where}: {who} ipv4or6 does not match address {address!r}")
    if "cap_count" in fields and fields.pop("cap_count") != len(msg.fields.get("caps", ())):
        out.append(f"{where}: {who} capCount differs from {len(msg.fields.get('caps', ()))}")
    for name, value in fields.items():
        if name not in msg.fields:
            out.append(f"{where}: {who} decoded {name}={value!r}, which is not in our layout")
        elif _typed(value, msg.fields[name]) != msg.fields[name]:
            out.append(f"{where}: {who} {name}={_typed(value, msg.fields[name])!r}, "
                       f"codec says {msg.fields[name]!r}")
    if complete:
        missing = sorted(set(msg.fields) - set(fields))
        if missing:
            out.append(f"{where}: {who} did not decode {', '.join(missing)}")
    for name, show in pdu.get("unmapped", {}).items():
        if not _zeroish(show):
            out.append(f"{where}: {who} field {name}={show!r} is outside our layout and not zero")
    return out


def check_pcap(pcap: str | Path, expected: list[Message], *, port: int = SKINNY_PORT) -> list[str]:
    """Disagreements between tshark, scapy and ``expected`` (the messages in capture order)."""
    problems: list[str] = []
    for who, pdus, complete in (("tshark", tshark_pdus(pcap, port=port), True),
                                ("scapy", scapy_pdus(pcap, port=port), False)):
        if len(pdus) != len(expected):
            problems.append(f"{who} found {len(pdus)} PDUs, expected {len(expected)}")
        for index, (msg, pdu) in enumerate(zip(expected, pdus, strict=False)):
            problems.extend(_compare(who, index, msg, pdu, complete=complete))
    return problems
