"""The SCCP codec against hand-written wire bytes, and the framer's guarantees.

The golden frames below are written from the layout tables (docs/protocols.md, SCCP) with the
helpers ``le``/``txt``/``zero`` of this file (Python's ``int.to_bytes`` and ``str.encode``),
never with the codec under test.
"""
from __future__ import annotations

import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telephony.sccp.core.messages import (
    HEADER,
    LAYOUTS,
    LAYOUTS_V17,
    MAX_FRAME,
    CallState,
    CallType,
    Compression,
    Framer,
    LampMode,
    Message,
    MsgId,
    ProtocolError,
    ReceiveStatus,
    ResetType,
    RingMode,
    SccpError,
    Stimulus,
    Tone,
    button_of,
    decode,
    digit_of,
    encode,
    layout_for,
    make,
)


def le(n: int, size: int = 4) -> str:
    return n.to_bytes(size, "little").hex()


def txt(s: str, size: int) -> str:
    return s.encode("ascii").ljust(size, b"\0").hex()


def zero(n: int) -> str:
    return "00" * n


def ip(addr: str) -> str:
    return ipaddress.ip_address(addr).packed.hex()


def frame(msg_id: int, *payload: str, version: int = 0) -> bytes:
    body = bytes.fromhex("".join(payload))
    return bytes.fromhex(le(len(body) + 4) + le(version) + le(msg_id)) + body


M = MsgId
CALL_INFO = dict(
    calling_party_name="Alice Caller", calling_party="5551234", called_party_name="Voice Mail",
    called_party="5000", line_instance=1, call_reference=16777217, call_type=3,
    original_called_party_name="Bob", original_called_party="1002", last_redirecting_party_name="Bob Desk",
    last_redirecting_party="1002", original_cdpn_redirect_reason=2, last_redirecting_reason=15,
    cgpn_voice_mailbox="5551234", cdpn_voice_mailbox="5000", original_cdpn_voice_mailbox="1002",
    last_redirecting_voice_mailbox="1002", call_instance=1, call_security_status=1,
    party_pi_restriction_bits=5)

#: (id, fields, version, expected frame) -- one or more per message id
GOLDEN = [
    (M.KEEPALIVE_REQ, {}, 0, bytes.fromhex("04000000 00000000 00000000")),
    (M.KEEPALIVE_ACK, {}, 0, bytes.fromhex("04000000 00000000 00010000")),
    (M.REGISTER_REQ, dict(device_name="CiscoUM1-VI1", instance=1, station_ip="10.15.15.178", device_type=7,
                          max_streams=5, active_streams=1, protocol_ver=11, phone_features=0x8560,
                          max_conferences=2, active_conferences=1), 0,
     bytes.fromhex("80000000 00000000 01000000" + txt("CiscoUM1-VI1", 16) + "00000000" "01000000"
                   + "0a0f0fb2" "07000000" "05000000" "01000000" "0b" "00" "6085" "02000000" "01000000"
                   + zero(72))),
    (M.IP_PORT, dict(rtp_port=20000), 0, bytes.fromhex("08000000 00000000 02000000 204e0000")),
    (M.KEYPAD_BUTTON, dict(button=14, line_instance=1, call_reference=16777217), 0,
     bytes.fromhex("10000000 00000000 03000000 0e000000 01000000 01000001")),
    (M.ENBLOC_CALL, dict(called_party="22226001"), 0, frame(0x04, txt("22226001", 24))),
    (M.STIMULUS, dict(stimulus=9, line_instance=1, call_reference=7), 0,
     bytes.fromhex("14000000 00000000 05000000 09000000 01000000 07000000 00000000")),
    (M.OFF_HOOK, dict(line_instance=1, call_reference=16777217), 0,
     bytes.fromhex("0c000000 00000000 06000000 01000000 01000001")),
    (M.ON_HOOK, dict(line_instance=2, call_reference=3), 0,
     bytes.fromhex("0c000000 00000000 07000000 02000000 03000000")),
    (M.LINE_STAT_REQ, dict(line_number=1), 0, bytes.fromhex("08000000 00000000 0b000000 01000000")),
    (M.BUTTON_TEMPLATE_REQ, {}, 0, bytes.fromhex("04000000 00000000 0e000000")),
    (M.CAPABILITIES_RES, dict(caps=((4, 40), (2, 40))), 0,
     bytes.fromhex("28000000 00000000 10000000 02000000" "04000000 28000000" + zero(8)
                   + "02000000 28000000" + zero(8))),
    (M.ALARM, dict(severity=2, text="Name=CiscoUM1-VI1", parm1=1, parm2=0x0A0F0FB2), 0,
     frame(0x20, le(2), txt("Name=CiscoUM1-VI1", 80), le(1), "b20f0f0a")),
    (M.OPEN_RECEIVE_CHANNEL_ACK, dict(status=0, ip="10.0.0.2", port=20002, pass_through_party_id=99,
                                      call_reference=5), 0,
     bytes.fromhex("18000000 00000000 22000000 00000000 0a000002 224e0000 63000000 05000000")),
    (M.OPEN_RECEIVE_CHANNEL_ACK, dict(status=0, ip="10.0.0.2", port=20002, pass_through_party_id=99,
                                      call_reference=5), 0x11,
     bytes.fromhex("28000000 11000000 22000000 00000000 00000000 0a000002" + zero(12)
                   + "224e0000 63000000 05000000")),
    (M.OPEN_RECEIVE_CHANNEL_ACK, dict(status=255, ip="2001:db8::2", port=20004, pass_through_party_id=98,
                                      call_reference=6), 0x16,
     bytes.fromhex("28000000 16000000 22000000 ff000000 01000000 20010db8000000000000000000000002"
                   "244e0000 62000000 06000000")),
    (M.OFF_HOOK_WITH_CGPN, dict(calling_party="6001"), 0, frame(0x24, txt("6001", 24), zero(28))),
    (M.UNREGISTER_REQ, {}, 0, bytes.fromhex("04000000 00000000 27000000")),
    (M.REGISTER_AVAILABLE_LINES, dict(max_lines=2), 0, bytes.fromhex("08000000 00000000 2d000000 02000000")),
    (M.REGISTER_ACK, dict(keepalive_interval=30, date_template="M/D/YA", secondary_keepalive_interval=60,
                          max_protocol_ver=11, phone_features=0x0210), 0,
     bytes.fromhex("18000000 00000000 81000000 1e000000" + "4d2f442f5941" + "0000" + "3c000000"
                   + "0b 00 1002")),
    (M.START_TONE, dict(tone=0x21, direction=1, line_instance=1, call_reference=4), 0,
     bytes.fromhex("14000000 00000000 82000000 21000000 01000000 01000000 04000000")),
    (M.STOP_TONE, dict(line_instance=1, call_reference=4), 0,
     bytes.fromhex("0c000000 00000000 83000000 01000000 04000000")),
    (M.SET_RINGER, dict(ring_mode=2, ring_duration=1, line_instance=1, call_reference=4), 0,
     bytes.fromhex("14000000 00000000 85000000 02000000 01000000 01000000 04000000")),
    (M.SET_LAMP, dict(stimulus=0x0F, stimulus_instance=1, lamp_mode=2), 0,  # VM lamp on, instance 1
     bytes.fromhex("10 00 00 00 00 00 00 00 86 00 00 00 0f 00 00 00 01 00 00 00 02 00 00 00")),
    (M.SET_SPEAKER_MODE, dict(mode=1), 0, bytes.fromhex("08000000 00000000 88000000 01000000")),
    (M.START_MEDIA_TRANSMISSION, dict(
        conference_id=11, pass_through_party_id=99, remote_ip="10.0.0.9", remote_port=30000, packet_ms=20,
        compression_type=4, precedence=184, silence_suppression=1, max_frames_per_packet=2, g723_bitrate=3,
        call_reference=5, rfc2833_payload_type=101, dtmf_type=4), 0,
     bytes.fromhex("74000000 00000000 8a000000 0b000000 63000000 0a000009 30750000 14000000 04000000"
                   "b8000000 01000000 0200 0000 03000000 05000000" + zero(48) + zero(8)
                   + "65000000 04000000" + zero(4))),
    (M.START_MEDIA_TRANSMISSION, dict(
        conference_id=11, pass_through_party_id=99, remote_ip="10.0.0.9", remote_port=30000, packet_ms=20,
        compression_type=4, call_reference=5, rfc2833_payload_type=101), 0x11,
     bytes.fromhex("88000000 11000000 8a000000 0b000000 63000000 00000000 0a000009" + zero(12)
                   + "30750000 14000000 04000000 00000000 00000000 0000 0000 00000000 05000000"
                   + zero(48) + zero(8) + "65000000 00000000" + zero(8))),
    (M.STOP_MEDIA_TRANSMISSION, dict(conference_id=11, pass_through_party_id=99, call_reference=5,
                                     port_handling_flag=1), 0,
     bytes.fromhex("14000000 00000000 8b000000 0b000000 63000000 05000000 01000000")),
    (M.CALL_INFO, CALL_INFO, 0, frame(
        0x8F, txt("Alice Caller", 40), txt("5551234", 24), txt("Voice Mail", 40), txt("5000", 24),
        le(1), le(16777217), le(3), txt("Bob", 40), txt("1002", 24), txt("Bob Desk", 40), txt("1002", 24),
        le(2), le(15), txt("5551234", 24), txt("5000", 24), txt("1002", 24), txt("1002", 24),
        le(1), le(1), le(5))),
    (M.LINE_STAT_RES, dict(line_number=1, dir_number="5001", display_name="VM port 1", display_alias="VM1",
                           display_options=15), 0,
     frame(0x92, le(1), txt("5001", 24), txt("VM port 1", 40), txt("VM1", 40), le(15))),
    (M.BUTTON_TEMPLATE_RES, dict(button_offset=0, total_button_count=2, buttons=((1, 9), (1, 0x0F))), 0,
     bytes.fromhex("14000000 00000000 97000000 00000000 02000000 02000000 0109 010f")),
    (M.DISPLAY_TEXT, dict(text="Hello"), 0, frame(0x99, txt("Hello", 32))),
    (M.CAPABILITIES_REQ, {}, 0, bytes.fromhex("04000000 00000000 9b000000")),
    (M.REGISTER_REJECT, dict(text="No Authority: CiscoUM1-VI9"), 0,
     frame(0x9D, txt("No Authority: CiscoUM1-VI9", 32))),
    (M.RESET, dict(reset_type=2), 0, bytes.fromhex("08000000 00000000 9f000000 02000000")),
    (M.OPEN_RECEIVE_CHANNEL, dict(conference_id=11, pass_through_party_id=99, packet_ms=20,
                                  compression_type=4, echo_cancellation=1, call_reference=5,
                                  rfc2833_payload_type=101, dtmf_type=4), 0,
     bytes.fromhex("60000000 00000000 05010000 0b000000 63000000 14000000 04000000 01000000 00000000"
                   "05000000" + zero(48) + zero(8) + "65000000 04000000")),
    (M.OPEN_RECEIVE_CHANNEL, dict(conference_id=11, pass_through_party_id=99, packet_ms=20,
                                  compression_type=4, call_reference=5, dtmf_type=4), 0x11,
     bytes.fromhex("88000000 11000000 05010000 0b000000 63000000 14000000 04000000 00000000 00000000"
                   "05000000" + zero(48) + zero(8) + "00000000 04000000" + zero(40))),
    (M.STOP_TONE, dict(line_instance=1, call_reference=4), 0x11,
     bytes.fromhex("10000000 11000000 83000000 01000000 04000000 00000000")),
    (M.CLOSE_RECEIVE_CHANNEL, dict(conference_id=11, pass_through_party_id=99, call_reference=5), 0,
     bytes.fromhex("14000000 00000000 06010000 0b000000 63000000 05000000 00000000")),
    (M.SELECT_SOFT_KEYS, dict(line_instance=1, call_reference=5, soft_key_set_index=3, valid_key_mask=0xFFF7),
     0, bytes.fromhex("14000000 00000000 10010000 01000000 05000000 03000000 f7ff0000")),
    (M.CALL_STATE, dict(call_state=4, line_instance=1, call_reference=5, precedence_level=4,
                        precedence_domain=2), 0,
     bytes.fromhex("1c000000 00000000 11010000 04000000 01000000 05000000 00000000 04000000 02000000")),
    (M.ACTIVATE_CALL_PLANE, dict(line_instance=1), 0, bytes.fromhex("08000000 00000000 16010000 01000000")),
    (M.UNREGISTER_ACK, dict(status=0), 0, bytes.fromhex("08000000 00000000 18010000 00000000")),
    (M.DIALED_NUMBER, dict(dialed_number="22226001", line_instance=1, call_reference=5), 0,
     frame(0x11D, txt("22226001", 24), le(1), le(5))),
]


def test_every_message_id_has_a_golden_frame():
    assert {g[0] for g in GOLDEN} == set(MsgId)
    assert {g[0] for g in GOLDEN if g[2] >= 0x11} == set(LAYOUTS_V17)
    assert len(MsgId) == 39


@pytest.mark.parametrize(("msg_id", "fields", "version", "wire"), GOLDEN,
                         ids=[f"{g[0].name}-v{g[2]}" for g in GOLDEN])
def test_golden_encode(msg_id, fields, version, wire):
    assert encode(msg_id, version=version, **fields).hex(" ") == wire.hex(" ")


@pytest.mark.parametrize(("msg_id", "fields", "version", "wire"), GOLDEN,
                         ids=[f"{g[0].name}-v{g[2]}" for g in GOLDEN])
def test_golden_decode(msg_id, fields, version, wire):
    msg = decode(wire)
    assert msg.id == msg_id and msg.version == version
    layout = layout_for(msg_id, version)
    assert set(msg.fields) == set(layout.names)
    for name, value in msg.fields.items():
        if name in fields:
            assert value == fields[name], name
        elif name == "button_count":
            assert value == len(fields["buttons"])
        else:  # not given: the default
            assert value in (0, "", "0.0.0.0", ()), name


def test_payload_sizes_are_the_ones_tshark_decodes_cleanly():
    sizes = {m: len(encode(m)) - HEADER for m in MsgId}
    assert sizes[M.REGISTER_REQ] == 124  # the long form (> 100 bytes after the first 8)
    assert sizes[M.OPEN_RECEIVE_CHANNEL] == 92
    assert sizes[M.START_MEDIA_TRANSMISSION] == 112
    assert sizes[M.CALL_INFO] == 384
    assert sizes[M.LINE_STAT_RES] == 112
    assert sizes[M.OFF_HOOK_WITH_CGPN] == 52
    assert sizes[M.STIMULUS] == 16
    assert len(encode(M.START_MEDIA_TRANSMISSION, version=0x11)) - HEADER == 132
    assert len(encode(M.OPEN_RECEIVE_CHANNEL_ACK, version=0x11)) - HEADER == 36
    assert len(encode(M.OPEN_RECEIVE_CHANNEL, version=0x11)) - HEADER == 132
    assert len(encode(M.STOP_TONE, version=0x11)) - HEADER == 12


def test_real_phones_offhook_bytes():
    # a 7960's OffHook, and a 7962's with header version 0x16 (V22)
    m7960 = decode(bytes.fromhex("0c000000 00000000 06000000 00000000 00000000"))
    m7962 = decode(bytes.fromhex("0c000000 16000000 06000000 00000000 00000000"))
    assert m7960.id == m7962.id == M.OFF_HOOK
    assert (m7960.version, m7962.version) == (0, 0x16)
    assert dict(m7960.fields) == dict(m7962.fields) == {"line_instance": 0, "call_reference": 0}


def test_onhook_with_no_payload_is_accepted():
    msg = decode(bytes.fromhex("04000000 00000000 07000000"))
    assert msg.id == M.ON_HOOK and dict(msg.fields) == {"line_instance": 0, "call_reference": 0}


def test_message_api():
    msg = make(M.CALL_INFO, **CALL_INFO)
    assert msg.name == "CallInfo" and msg["last_redirecting_party"] == "1002"
    assert msg.encode() == encode(M.CALL_INFO, **CALL_INFO)
    with pytest.raises(TypeError):
        msg.fields["calling_party"] = "x"  # type: ignore[index]
    assert Message(0x86, {"stimulus": 15, "stimulus_instance": 1, "lamp_mode": 2}) == make(
        M.SET_LAMP, stimulus=Stimulus.VOICEMAIL, stimulus_instance=1, lamp_mode=LampMode.ON)
    assert make(M.KEEPALIVE_ACK).name == "KeepAliveAck"


def test_value_tables():
    assert (CallState.RING_IN, CallState.CONNECTED, CallState.PROCEED) == (4, 5, 12)
    assert (CallState.IDLE, CallState.INVALID_NUMBER) == (0, 14)
    assert (CallType.INBOUND, CallType.OUTBOUND, CallType.FORWARD) == (1, 2, 3)
    assert (Tone.INSIDE_DIAL, Tone.REORDER, Tone.ZIP, Tone.NO_TONE) == (0x21, 0x25, 0x32, 0x7F)
    assert (LampMode.OFF, LampMode.BLINK, Stimulus.LINE, Stimulus.VOICEMAIL) == (1, 5, 9, 0x0F)
    assert (RingMode.OFF, RingMode.INSIDE, RingMode.OUTSIDE) == (1, 2, 3)
    assert (Compression.G711_ALAW, Compression.G711_ULAW) == (2, 4)
    assert (Compression.G729, Compression.G729A) == (11, 12)
    assert (ReceiveStatus.OK, ReceiveStatus.DEVICE_ON_HOOK) == (0, 255)
    assert (ResetType.RESET, ResetType.RESTART) == (1, 2)


def test_keypad_digits():
    assert [button_of(d) for d in "0123456789ABCD*#"] == list(range(16))
    assert "".join(digit_of(b) for b in range(16)) == "0123456789ABCD*#"
    for bad in ("", "E", "a", "**", None, 5):
        with pytest.raises(ValueError):
            button_of(bad)  # type: ignore[arg-type]
    for bad in (-1, 16, 99, None, "1"):
        with pytest.raises(ValueError):
            digit_of(bad)  # type: ignore[arg-type]


# ---- encoding errors -----------------------------------------------------------------------

@pytest.mark.parametrize(("msg_id", "fields"), [
    (M.SET_LAMP, {"lamp": 2}),                                # unknown field
    (M.KEEPALIVE_REQ, {"x": 1}),
    (M.SET_LAMP, {"lamp_mode": -1}),
    (M.SET_LAMP, {"lamp_mode": 1 << 32}),
    (M.SET_LAMP, {"lamp_mode": True}),
    (M.SET_LAMP, {"lamp_mode": "2"}),
    (M.SET_LAMP, {"lamp_mode": 2.0}),
    (M.REGISTER_REQ, {"protocol_ver": 256}),                  # u8
    (M.REGISTER_REQ, {"phone_features": 0x10000}),            # u16
    (M.START_MEDIA_TRANSMISSION, {"max_frames_per_packet": 0x10000}),
    (M.REGISTER_REQ, {"device_name": "CiscoUM1-VI10000X"}),   # 17 > 16
    (M.REGISTER_REQ, {"device_name": "Cisco\u00e9"}),          # not ASCII
    (M.REGISTER_REQ, {"device_name": "a\0b"}),                # NUL inside
    (M.REGISTER_REQ, {"device_name": b"SEP1"}),               # bytes, not str
    (M.REGISTER_REQ, {"station_ip": "10.0.0.256"}),
    (M.REGISTER_REQ, {"station_ip": "::1"}),                  # IPv6 in a 4-byte field
    (M.REGISTER_REQ, {"station_ip": 0x0A000001}),
    (M.OPEN_RECEIVE_CHANNEL_ACK, {"ip": "2001:db8::1"}),      # needs version >= 0x11
    (M.CALL_INFO, {"calling_party": "1" * 25}),
    (M.CAPABILITIES_RES, {"caps": [(4, 40)] * 19}),
    (M.CAPABILITIES_RES, {"caps": [(4,)]}),
    (M.CAPABILITIES_RES, {"caps": [(4, -1)]}),
    (M.CAPABILITIES_RES, {"caps": 4}),
    (M.BUTTON_TEMPLATE_RES, {"buttons": [(1, 9)] * 43}),
    (M.BUTTON_TEMPLATE_RES, {"buttons": [(1, 256)]}),
    (M.BUTTON_TEMPLATE_RES, {"buttons": [(1, 9)], "button_count": 2}),
])
def test_encode_rejects(msg_id, fields):
    with pytest.raises(ValueError):
        encode(msg_id, **fields)


def test_encode_rejects_unknown_ids_and_bad_versions():
    for bad in (0x004C, 0x9999, -1):
        with pytest.raises(ValueError, match="unknown SCCP message id"):
            encode(bad)
    for version in (-1, 1 << 32, True, "0"):
        with pytest.raises(ValueError):
            encode(M.KEEPALIVE_REQ, version=version)


def test_strings_may_fill_their_field():
    wire = encode(M.REGISTER_ACK, date_template="M/D/YA")  # exactly 6 bytes, no NUL
    assert decode(wire)["date_template"] == "M/D/YA"
    assert decode(encode(M.DISPLAY_TEXT, text="x" * 32))["text"] == "x" * 32


def test_decoded_strings_stop_at_nul_and_never_raise_on_non_ascii():
    wire = frame(0x99, ("41ff42" + "00" + "43" * 28).ljust(64, "0"))
    assert decode(wire)["text"] == "A\ufffdB"


# ---- decoding errors -----------------------------------------------------------------------

def test_decode_errors():
    with pytest.raises(SccpError, match="shorter"):
        decode(b"\x04\0\0\0\0\0\0\0")
    with pytest.raises(SccpError, match="does not match"):
        decode(bytes.fromhex("08000000 00000000 86000000"))
    with pytest.raises(SccpError, match="outside"):
        decode(bytes.fromhex("03000000 00000000 00000000"))
    with pytest.raises(SccpError, match="unknown message id 0x004C") as info:
        decode(bytes.fromhex("04000000 00000000 4c000000"))
    assert info.value.msg_id == 0x4C and not info.value.fatal
    with pytest.raises(SccpError, match="19 capabilities"):
        decode(bytes.fromhex("08000000 00000000 10000000 13000000"))
    with pytest.raises(SccpError, match="43 buttons"):
        decode(bytes.fromhex("10000000 00000000 97000000 00000000 2b000000 2b000000"))


# ---- short and long payloads ---------------------------------------------------------------

def truncated(wire: bytes, keep: int) -> bytes:
    return (len(wire) - 8 - (len(wire) - HEADER - keep)).to_bytes(4, "little") + wire[4:HEADER + keep]


@pytest.mark.parametrize(("msg_id", "fields", "version", "wire"), GOLDEN,
                         ids=[f"{g[0].name}-v{g[2]}" for g in GOLDEN])
def test_every_truncation_decodes_missing_bytes_as_zero(msg_id, fields, version, wire):
    payload = len(wire) - HEADER
    for keep in range(payload + 1):
        short = truncated(wire, keep)
        assert int.from_bytes(short[:4], "little") == 4 + keep
        zeroed = wire[:HEADER + keep] + bytes(payload - keep)  # the same frame, missing bytes as 0
        assert decode(short).fields == decode(zeroed).fields, keep
        events = Framer().feed(short)
        assert len(events) == 1 and isinstance(events[0], Message), (keep, events)
    # e.g. a CallInfo cut after the calling number: the rest is empty / 0
    if msg_id == M.CALL_INFO:
        cut = decode(truncated(wire, 64))
        assert (cut["calling_party"], cut["called_party"], cut["call_type"]) == ("5551234", "", 0)


@pytest.mark.parametrize(("msg_id", "fields", "version", "wire"), GOLDEN,
                         ids=[f"{g[0].name}-v{g[2]}" for g in GOLDEN])
def test_extra_payload_bytes_are_ignored(msg_id, fields, version, wire):
    longer = (int.from_bytes(wire[:4], "little") + 40).to_bytes(4, "little") + wire[4:] + b"\xAA" * 40
    assert decode(longer).fields == decode(wire).fields


# ---- round trip --------------------------------------------------------------------------

def field_strategy(kind: str, size: int):
    if kind in ("u8", "u16", "u32"):
        return st.integers(0, {"u8": 0xFF, "u16": 0xFFFF, "u32": 0xFFFFFFFF}[kind])
    if kind == "text":
        return st.text(st.characters(min_codepoint=1, max_codepoint=127), max_size=size)
    if kind == "ip4":
        return st.ip_addresses(v=4).map(str)
    return st.ip_addresses().map(str)  # ip46


def message_strategy(msg_id: MsgId, version: int):
    layout = layout_for(msg_id, version)
    if msg_id == M.CAPABILITIES_RES:
        pair = st.tuples(st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFFFFFF))
        return st.fixed_dictionaries({"caps": st.lists(pair, max_size=18).map(tuple)})
    if msg_id == M.BUTTON_TEMPLATE_RES:
        pair = st.tuples(st.integers(0, 255), st.integers(0, 255))
        return st.fixed_dictionaries({"button_offset": st.integers(0, 0xFFFFFFFF),
                                      "total_button_count": st.integers(0, 0xFFFFFFFF),
                                      "buttons": st.lists(pair, max_size=42).map(tuple)})
    return st.fixed_dictionaries({f.name: field_strategy(f.kind, f.size) for f in layout.named})


ALL_FORMS = [(m, 0) for m in MsgId] + [(m, 0x11) for m in LAYOUTS_V17]


@pytest.mark.parametrize(("msg_id", "version"), ALL_FORMS, ids=[f"{m.name}-v{v}" for m, v in ALL_FORMS])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip(msg_id, version, data):
    fields = data.draw(message_strategy(msg_id, version))
    wire = encode(msg_id, version=version, **fields)
    assert int.from_bytes(wire[:4], "little") == len(wire) - 8 and len(wire) <= MAX_FRAME
    msg = decode(wire)
    assert (msg.id, msg.version) == (msg_id, version)
    for name, value in fields.items():
        assert msg[name] == value, name
    assert msg.encode() == wire


def test_layout_tables_are_consistent():
    for msg_id, layout in [*LAYOUTS.items(), *LAYOUTS_V17.items()]:
        assert len(set(layout.names)) == len(layout.names), msg_id
        if layout.fields:
            assert layout.struct.sizeof() == layout.size, msg_id
    offsets = LAYOUTS[M.CALL_INFO].offsets()
    assert offsets["last_redirecting_party"] == (244, 24) and offsets["party_pi_restriction_bits"] == (380, 4)
    assert LAYOUTS[M.OPEN_RECEIVE_CHANNEL].offsets()["rfc2833_payload_type"] == (84, 4)
    assert LAYOUTS[M.START_MEDIA_TRANSMISSION].offsets()["dtmf_type"] == (104, 4)
    assert LAYOUTS_V17[M.START_MEDIA_TRANSMISSION].offsets()["remote_port"] == (28, 4)


# ---- framing -----------------------------------------------------------------------------

def golden(msg_id: MsgId, version: int = 0) -> bytes:
    return next(g[3] for g in GOLDEN if g[0] == msg_id and g[2] == version)


STREAM = [golden(m) for m in (M.KEEPALIVE_REQ, M.REGISTER_REQ, M.CAPABILITIES_RES, M.CALL_INFO, M.SET_LAMP)]


def test_several_pdus_in_one_read():
    events = Framer().feed(b"".join(STREAM))
    assert [e.id for e in events] == [decode(w).id for w in STREAM]
    assert events == [decode(w) for w in STREAM]


def test_every_split_point_gives_the_same_messages():
    data = b"".join(STREAM)
    want = [decode(w) for w in STREAM]
    for cut in range(len(data) + 1):
        framer = Framer()
        got = framer.feed(data[:cut]) + framer.feed(data[cut:])
        assert got == want, cut
        assert framer.buffered == 0


def test_every_pair_of_split_points_in_a_small_stream():
    data = golden(M.KEEPALIVE_REQ) + golden(M.SET_LAMP) + golden(M.OFF_HOOK)
    want = [decode(data[:12]), decode(data[12:36]), decode(data[36:])]
    for a in range(len(data) + 1):
        for b in range(a, len(data) + 1):
            framer = Framer()
            assert framer.feed(data[:a]) + framer.feed(data[a:b]) + framer.feed(data[b:]) == want, (a, b)


def test_byte_by_byte_and_buffer_bound():
    big = bytes.fromhex(le(MAX_FRAME - 8) + le(0) + le(0x8F)) + b"\x41" * (MAX_FRAME - 12)
    framer = Framer()
    events = []
    for i in range(len(big)):
        events += framer.feed(big[i:i + 1])
        assert framer.buffered <= MAX_FRAME
    assert len(events) == 1 and events[0].id == M.CALL_INFO and events[0]["calling_party_name"] == "A" * 40


@pytest.mark.parametrize("length", [0, 3, MAX_FRAME - 7, 0xFFFFFFFF])
def test_bad_length_is_fatal_and_drops_the_buffer(length):
    framer = Framer()
    good = golden(M.SET_LAMP)
    bad = length.to_bytes(4, "little") + bytes.fromhex("00000000 86000000") + b"\x01" * 30
    events = framer.feed(good + bad + good)
    assert events[0] == decode(good)
    err = events[1]
    assert isinstance(err, ProtocolError) and err.fatal and err.msg_id == 0x86
    assert err.data == bad[:HEADER] and len(events) == 2
    assert framer.buffered == 0 and framer.lost
    assert framer.feed(good) == []  # framing is lost for good
    framer.reset()
    assert framer.feed(good) == [decode(good)]


def test_largest_legal_frame_is_accepted():
    frame_max = bytes.fromhex(le(MAX_FRAME - 8) + le(0) + le(0x86)) + bytes(MAX_FRAME - 12)
    assert len(frame_max) == MAX_FRAME
    events = Framer().feed(frame_max)
    assert len(events) == 1 and isinstance(events[0], Message) and events[0].id == M.SET_LAMP


def test_unknown_id_is_reported_and_skipped():
    unknown = bytes.fromhex("08000000 00000000 4c000000 01000000")  # MwiNotification: not ours
    caps_bad = bytes.fromhex("08000000 00000000 10000000 ff000000")
    good = golden(M.SET_LAMP)
    events = Framer().feed(unknown + caps_bad + good)
    assert isinstance(events[0], ProtocolError) and not events[0].fatal
    assert events[0].msg_id == 0x4C and events[0].data == unknown and "0x004C" in events[0].reason
    assert isinstance(events[1], ProtocolError) and not events[1].fatal and events[1].msg_id == 0x10
    assert events[2] == decode(good)


@settings(max_examples=400, deadline=None)
@given(chunks=st.lists(st.binary(max_size=700), max_size=12))
def test_fuzz_feed_never_raises_and_stays_bounded(chunks):
    framer = Framer()
    whole = Framer()
    got = []
    for chunk in chunks:
        got += framer.feed(chunk)
        assert framer.buffered <= MAX_FRAME
        for event in got:
            assert isinstance(event, (Message, ProtocolError))
            if isinstance(event, ProtocolError):
                assert len(event.data) <= MAX_FRAME
    assert got == whole.feed(b"".join(chunks))  # independent of how the stream was cut


@settings(max_examples=200, deadline=None)
@given(msgs=st.lists(st.sampled_from([g[3] for g in GOLDEN]), min_size=1, max_size=6),
       cuts=st.lists(st.integers(0, 3000), max_size=6))
def test_fuzz_valid_streams_survive_any_cutting(msgs, cuts):
    data = b"".join(msgs)
    points = sorted({c % (len(data) + 1) for c in cuts})
    framer = Framer()
    got = []
    last = 0
    for p in [*points, len(data)]:
        got += framer.feed(data[last:p])
        last = p
    assert got == [decode(m) for m in msgs]


#: tshark 4.0.17's names (``tshark -G values``, field skinny.messageId), written out here
TSHARK_NAMES = {
    0x0000: "KeepAliveReq", 0x0001: "RegisterReq", 0x0002: "IpPort", 0x0003: "KeypadButton",
    0x0004: "EnblocCall", 0x0005: "Stimulus", 0x0006: "OffHook", 0x0007: "OnHook", 0x000B: "LineStatReq",
    0x000E: "ButtonTemplateReq", 0x0010: "CapabilitiesRes", 0x0020: "Alarm", 0x0022: "OpenReceiveChannelAck",
    0x0024: "OffHookWithCallingPartyNumber", 0x0027: "UnregisterReq", 0x002D: "RegisterAvailableLines",
    0x0081: "RegisterAck", 0x0082: "StartTone", 0x0083: "StopTone", 0x0085: "SetRinger", 0x0086: "SetLamp",
    0x0088: "SetSpeakerMode", 0x008A: "StartMediaTransmission", 0x008B: "StopMediaTransmission",
    0x008F: "CallInfo", 0x0092: "LineStatRes", 0x0097: "ButtonTemplateRes", 0x0099: "DisplayText",
    0x009B: "CapabilitiesReq", 0x009D: "RegisterReject", 0x009F: "Reset", 0x0100: "KeepAliveAck",
    0x0105: "OpenReceiveChannel", 0x0106: "CloseReceiveChannel", 0x0110: "SelectSoftKeys",
    0x0111: "CallState", 0x0116: "ActivateCallPlane", 0x0118: "UnregisterAck", 0x011D: "DialedNumber",
}


def test_names_are_tsharks():
    assert {int(m): make(m).name for m in MsgId} == TSHARK_NAMES
    for m in LAYOUTS_V17:
        assert make(m, version=0x11).name == TSHARK_NAMES[m]


@settings(max_examples=500, deadline=None)
@given(msg_id=st.sampled_from(list(MsgId)),
       version=st.one_of(st.sampled_from([0, 0x11, 0x16]), st.integers(0, 2**32 - 1)),
       payload=st.binary(max_size=400))
def test_fuzz_any_payload_of_a_known_id_decodes_or_is_a_clean_error(msg_id, version, payload):
    wire = bytes.fromhex(le(len(payload) + 4) + le(version) + le(msg_id)) + payload
    try:
        msg = decode(wire)
    except SccpError as exc:
        assert msg_id in (M.CAPABILITIES_RES, M.BUTTON_TEMPLATE_RES) and not exc.fatal
        events = Framer().feed(wire)
        assert len(events) == 1 and isinstance(events[0], ProtocolError) and not events[0].fatal
        return
    assert set(msg.fields) == set(layout_for(msg_id, version).names)
    assert Framer().feed(wire) == [msg]
    for value in msg.fields.values():
        assert isinstance(value, (int, str, tuple))
