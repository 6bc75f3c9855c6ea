"""Our SCCP encodings read back by two independent decoders (tshark's skinny dissector and
scapy's contrib layer), and proof that the check notices a wrong value, a trailing-garbage frame,
a truncated payload and a missing PDU."""
from __future__ import annotations

import sys

import pytest

from lab import skinny_check
from lab.pcap import MSS, PcapWriter
from lab.skinny_check import DecoderMissing, check_pcap, scapy_pdus, tshark_pdus
from telephony.sccp.core.messages import HEADER, Message, MsgId, decode, make

M = MsgId
CLIENT, SERVER = ("10.0.0.2", 40000), ("10.0.0.1", 2000)

#: station -> CallManager ids (the rest go CallManager -> station)
STATION_IDS = {M.REGISTER_REQ, M.KEEPALIVE_REQ, M.IP_PORT, M.KEYPAD_BUTTON, M.ENBLOC_CALL, M.STIMULUS,
               M.OFF_HOOK, M.ON_HOOK, M.LINE_STAT_REQ, M.BUTTON_TEMPLATE_REQ, M.CAPABILITIES_RES, M.ALARM,
               M.OPEN_RECEIVE_CHANNEL_ACK, M.OFF_HOOK_WITH_CGPN, M.UNREGISTER_REQ, M.REGISTER_AVAILABLE_LINES}

FORWARDED_CALL = dict(
    calling_party_name="Alice Caller", calling_party="5551234", called_party_name="Voice Mail",
    called_party="5000", line_instance=1, call_reference=16777217, call_type=3,
    original_called_party_name="Bob Office", original_called_party="1002",
    last_redirecting_party_name="Bob Desk", last_redirecting_party="1003", original_cdpn_redirect_reason=2,
    last_redirecting_reason=15, cgpn_voice_mailbox="5551234", cdpn_voice_mailbox="5000",
    original_cdpn_voice_mailbox="1002", last_redirecting_voice_mailbox="1003", call_instance=2,
    call_security_status=1, party_pi_restriction_bits=0x5)
MEDIA = dict(conference_id=11, pass_through_party_id=99, remote_ip="10.0.0.9", remote_port=30000,
             packet_ms=20, compression_type=4, precedence=184, silence_suppression=1, max_frames_per_packet=2,
             g723_bitrate=0x04030201, call_reference=5, rfc2833_payload_type=101, dtmf_type=4)

KEEPALIVE = make(M.KEEPALIVE_REQ)
CALL = make(M.CALL_INFO, **FORWARDED_CALL)
BLINK = make(M.SET_LAMP, stimulus=9, stimulus_instance=1, lamp_mode=5)
ANSWER = make(M.OFF_HOOK, line_instance=1, call_reference=16777217)

#: one message of every id (and the V17 forms) with representative non-zero values
EVERY = [
    make(M.REGISTER_REQ, device_name="CiscoUM1-VI1", user_id=3, instance=1, station_ip="10.15.15.178",
         device_type=7, max_streams=5, active_streams=1, protocol_ver=11, phone_features=0x8560,
         max_conferences=2, active_conferences=1),
    make(M.REGISTER_ACK, keepalive_interval=30, date_template="M/D/YA", secondary_keepalive_interval=60,
         max_protocol_ver=11, phone_features=0x0210),
    make(M.CAPABILITIES_REQ),
    make(M.CAPABILITIES_RES, caps=((4, 40), (2, 40), (11, 6))),
    make(M.BUTTON_TEMPLATE_REQ),
    make(M.BUTTON_TEMPLATE_RES, button_offset=0, total_button_count=2, buttons=((1, 9), (1, 0x0F))),
    make(M.LINE_STAT_REQ, line_number=1),
    make(M.LINE_STAT_RES, line_number=1, dir_number="5001", display_name="VM port 1", display_alias="VM1",
         display_options=15),
    make(M.REGISTER_AVAILABLE_LINES, max_lines=2),
    make(M.IP_PORT, rtp_port=20000),
    KEEPALIVE, make(M.KEEPALIVE_ACK),
    make(M.SET_RINGER, ring_mode=2, ring_duration=1, line_instance=1, call_reference=16777217),
    make(M.CALL_STATE, call_state=4, line_instance=1, call_reference=16777217, privacy=1, precedence_level=4,
         precedence_domain=2),
    CALL,
    BLINK,
    make(M.SELECT_SOFT_KEYS, line_instance=1, call_reference=16777217, soft_key_set_index=3,
         valid_key_mask=0xFFF7),
    make(M.ACTIVATE_CALL_PLANE, line_instance=1),
    ANSWER,
    make(M.OPEN_RECEIVE_CHANNEL, conference_id=11, pass_through_party_id=99, packet_ms=20, compression_type=4,
         echo_cancellation=1, g723_bitrate=2, call_reference=5, rfc2833_payload_type=101, dtmf_type=4),
    make(M.OPEN_RECEIVE_CHANNEL, version=0x11, conference_id=12, pass_through_party_id=98, packet_ms=30,
         compression_type=2, echo_cancellation=1, g723_bitrate=0x01020304, call_reference=6,
         rfc2833_payload_type=96, dtmf_type=3),
    make(M.STOP_TONE, line_instance=1, call_reference=5),
    make(M.STOP_TONE, version=0x11, line_instance=2, call_reference=6),
    make(M.OPEN_RECEIVE_CHANNEL_ACK, status=0, ip="10.0.0.2", port=20002, pass_through_party_id=99,
         call_reference=5),
    make(M.OPEN_RECEIVE_CHANNEL_ACK, version=0x11, status=0, ip="10.0.0.2", port=20002,
         pass_through_party_id=99, call_reference=5),
    make(M.OPEN_RECEIVE_CHANNEL_ACK, version=0x11, status=255, ip="2001:db8::2", port=20004,
         pass_through_party_id=98, call_reference=6),
    make(M.START_MEDIA_TRANSMISSION, **MEDIA),
    make(M.START_MEDIA_TRANSMISSION, version=0x11, **MEDIA),
    make(M.START_MEDIA_TRANSMISSION, version=0x11, **{**MEDIA, "remote_ip": "2001:db8::9"}),
    make(M.KEYPAD_BUTTON, button=14, line_instance=1, call_reference=5),
    make(M.ON_HOOK, line_instance=1, call_reference=5),
    make(M.CLOSE_RECEIVE_CHANNEL, conference_id=11, pass_through_party_id=99, call_reference=5,
         port_handling_flag=1),
    make(M.STOP_MEDIA_TRANSMISSION, conference_id=11, pass_through_party_id=99, call_reference=5,
         port_handling_flag=1),
    make(M.OFF_HOOK_WITH_CGPN, calling_party="6001"),
    make(M.START_TONE, tone=0x21, direction=1, line_instance=1, call_reference=7),
    make(M.ENBLOC_CALL, called_party="22226001"),
    make(M.STIMULUS, stimulus=9, line_instance=1, call_reference=7),
    make(M.DIALED_NUMBER, dialed_number="22226001", line_instance=1, call_reference=7),
    make(M.SET_SPEAKER_MODE, mode=1),
    make(M.DISPLAY_TEXT, text="MWI on 6001"),
    make(M.SET_LAMP, stimulus=0x0F, stimulus_instance=1, lamp_mode=2),
    make(M.ALARM, severity=2, text="Name=CiscoUM1-VI1 Load=1.0", parm1=1, parm2=0x0A0F0FB2),
    make(M.RESET, reset_type=2),
    make(M.UNREGISTER_REQ), make(M.UNREGISTER_ACK, status=1),
    make(M.REGISTER_REJECT, text="No Authority: CiscoUM1-VI9"),
]

#: ids scapy 2.6.1 has a usable class for (the others are decoded as "generic")
SCAPY_CLASSES = {M.KEEPALIVE_REQ, M.KEEPALIVE_ACK, M.OFF_HOOK, M.ON_HOOK, M.CALL_STATE, M.SET_RINGER,
                 M.START_TONE, M.STOP_TONE, M.SET_SPEAKER_MODE, M.SET_LAMP, M.SELECT_SOFT_KEYS,
                 M.ACTIVATE_CALL_PLANE, M.KEYPAD_BUTTON, M.DIALED_NUMBER, M.CALL_INFO, M.OPEN_RECEIVE_CHANNEL,
                 M.OPEN_RECEIVE_CHANNEL_ACK, M.START_MEDIA_TRANSMISSION}


def send(stream, msg: Message, data: bytes | None = None) -> None:
    data = msg.encode() if data is None else data
    (stream.client_sent if msg.id in STATION_IDS else stream.server_sent)(data)


def write_every(path) -> list[Message]:
    """EVERY in capture order, with several PDUs in one segment, a PDU split over three segments
    and a write larger than one segment."""
    with PcapWriter(path) as writer:
        stream = writer.stream(client=CLIENT, server=SERVER)
        expected: list[Message] = []
        for msg in EVERY:
            send(stream, msg)
            expected.append(msg)
        # several station PDUs in one segment
        burst = [KEEPALIVE, make(M.KEYPAD_BUTTON, button=2, line_instance=1, call_reference=7),
                 make(M.ON_HOOK, line_instance=1, call_reference=7)]
        stream.client_sent(b"".join(m.encode() for m in burst))
        expected += burst
        # one CallInfo cut into three segments, the last one carrying the first 8 bytes of a SetLamp
        # (tshark 4.0.17 needs the length and version of a PDU in one segment: see lab.skinny_check)
        info, lamp = CALL.encode(), BLINK.encode()
        stream.segments("server", [info[:8], info[8:200], info[200:] + lamp[:12]])
        stream.segments("server", [lamp[12:]])
        expected += [CALL, BLINK]
        # a write larger than one segment (five CallInfos, 1940 bytes)
        assert len(info) * 5 > MSS
        stream.server_sent(info * 5)
        expected += [CALL] * 5
    return expected


def test_every_message_agrees_with_tshark_and_scapy(tmp_path):
    assert {m.id for m in EVERY} == set(MsgId)
    pcap = tmp_path / "every.pcap"
    expected = write_every(pcap)
    assert check_pcap(pcap, expected) == []
    shark, scapy = tshark_pdus(pcap), scapy_pdus(pcap)
    assert [p["id"] for p in shark] == [p["id"] for p in scapy] == [int(m.id) for m in expected]
    for msg, tp, sp in zip(expected, shark, scapy, strict=True):
        assert tp["warnings"] == [] and sp["warnings"] == [], msg.name
        assert set(tp["fields"]) >= set(msg.fields), msg.name  # tshark decodes every field we send
        assert tp["decoded_to"] == len(msg.encode()) - HEADER, msg.name
        if msg.id in SCAPY_CLASSES and not (msg.version >= 0x11 and msg.id in skinny_check.SCAPY_BASIC_ONLY):
            assert "scapy: generic" not in sp["notes"] and (sp["fields"] or not msg.fields), msg.name
        else:
            assert "scapy: generic" in sp["notes"], msg.name
    call = next(p for p in shark if p["id"] == M.CALL_INFO)
    assert call["fields"]["last_redirecting_party"] == "1003" and int(call["fields"]["call_type"], 0) == 3
    assert next(p for p in scapy if p["id"] == M.CALL_INFO)["fields"]["calling_party"] == "5551234"


def test_a_wrong_expected_value_is_reported_by_both_decoders(tmp_path):
    pcap = tmp_path / "wrong.pcap"
    sent = [BLINK, CALL]  # SetLamp (blink), CallInfo
    with PcapWriter(pcap) as writer:
        stream = writer.stream(client=CLIENT, server=SERVER)
        for msg in sent:
            send(stream, msg)
    wrong = [make(M.SET_LAMP, stimulus=9, stimulus_instance=1, lamp_mode=2),
             make(M.CALL_INFO, **{**FORWARDED_CALL, "calling_party": "5551235"})]
    problems = check_pcap(pcap, wrong)
    assert any("tshark lamp_mode=5, codec says 2" in p for p in problems), problems
    assert any("scapy lamp_mode=5, codec says 2" in p for p in problems), problems
    assert any("tshark calling_party='5551234', codec says '5551235'" in p for p in problems), problems
    assert any("scapy calling_party='5551234'" in p for p in problems), problems
    assert len(problems) == 4, problems
    assert check_pcap(pcap, sent) == []


def test_trailing_garbage_and_truncation_are_detected(tmp_path):
    pcap = tmp_path / "bad.pcap"
    lamp = BLINK.encode()
    garbage = (len(lamp) - 8 + 4).to_bytes(4, "little") + lamp[4:] + b"\xde\xad\xbe\xef"
    media = make(M.START_MEDIA_TRANSMISSION, **MEDIA)
    cut = media.encode()[:HEADER + 60]
    cut = (len(cut) - 8).to_bytes(4, "little") + cut[4:]
    with PcapWriter(pcap) as writer:
        stream = writer.stream(client=CLIENT, server=SERVER)
        stream.server_sent(garbage)
        stream.server_sent(cut)
        stream.server_sent(CALL.encode())
    problems = check_pcap(pcap, [BLINK, media, CALL])
    text = "\n".join(problems)
    assert "PDU 0 (SetLamp): tshark: 4 payload bytes after the last decoded field" in text, text
    assert "PDU 0 (SetLamp): tshark saw length field 20, the codec encodes 16" in text, text
    assert "PDU 1 (StartMediaTransmission): tshark: Malformed Packet" in text, text
    assert "PDU 1 (StartMediaTransmission): tshark did not decode" in text, text
    assert "PDU 1 (StartMediaTransmission): scapy saw length field 64" in text, text
    assert "PDU 2" not in text  # the frames after them are still read correctly
    # our own decoder accepts both (extra bytes ignored, missing ones zero): only the check sees them
    assert decode(garbage).fields == BLINK.fields
    assert decode(cut)["rfc2833_payload_type"] == 0


def test_a_missing_pdu_is_detected(tmp_path):
    pcap = tmp_path / "short.pcap"
    with PcapWriter(pcap) as writer:
        stream = writer.stream(client=CLIENT, server=SERVER)
        send(stream, KEEPALIVE)
        stream.client_sent(ANSWER.encode()[:10])  # an OffHook whose end never arrives
    problems = check_pcap(pcap, [KEEPALIVE, ANSWER])
    assert "tshark found 1 PDUs, expected 2" in problems and "scapy found 1 PDUs, expected 2" in problems


def test_a_missing_tshark_is_an_error_not_a_skip(tmp_path, monkeypatch):
    monkeypatch.setattr(skinny_check.shutil, "which", lambda name: None)
    with pytest.raises(DecoderMissing, match="tshark is not installed"):
        tshark_pdus(tmp_path / "none.pcap")


def test_a_missing_scapy_is_an_error_not_a_skip(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "scapy.contrib.skinny", None)
    with pytest.raises(DecoderMissing, match="scapy is not installed"):
        scapy_pdus(tmp_path / "none.pcap")
