"""The station machine of one SCCP voice-mail port: registration, keepalive, the incoming call
(ring, CallInfo, answer, media, both hang-ups), the outbound MWI call, and a property test that
random CallManager traffic and API calls never break its promises.

Golden bytes are written out by hand from the layouts of docs/protocols.md (12-byte header:
length = 4 + payload, header version 0, message id; then little-endian u32 fields)."""
from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telephony.sccp.core.callinfo import CallDetails
from telephony.sccp.core.messages import Framer, Message, MsgId, ProtocolError, decode, encode
from telephony.sccp.core.station import (
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
    Station,
    StationConfig,
    StationState,
    StopMedia,
    Unregistered,
)

REF = 0x01000001  # CUCM's first call reference (16777217)
REF_LE = b"\x01\x00\x00\x01"
KEEPALIVE = b"\x04\x00\x00\x00" b"\x00\x00\x00\x00" b"\x00\x00\x00\x00"


def cm(msg_id: MsgId, **fields) -> Message:
    """A message from CallManager as the Framer gives it (every field present)."""
    return decode(encode(msg_id, **fields))


def sent(actions) -> list[Message]:
    return [decode(a.data) for a in actions if isinstance(a, Send)]


def events(actions) -> list:
    """Everything but Send."""
    return [a for a in actions if not isinstance(a, Send)]


def config(**kw) -> StationConfig:
    return StationConfig("CiscoUM1-VI1", "10.0.0.5", **kw)


def registered(keepalive=30, **kw) -> Station:
    st = Station(config(**kw))
    st.connected(0.0)
    assert st.received(cm(MsgId.REGISTER_ACK, keepalive_interval=keepalive), 0.0) == [
        Registered(float(keepalive))]
    st.received(cm(MsgId.CAPABILITIES_REQ), 0.0)
    return st


def ring(st: Station, now=1.0, ref=REF, **info) -> list:
    """RingIn then CallInfo for ``ref``: returns the actions of both."""
    out = st.received(cm(MsgId.SET_RINGER, ring_mode=2, ring_duration=1, line_instance=1,
                         call_reference=ref), now)
    out += st.received(cm(MsgId.CALL_STATE, call_state=4, line_instance=1, call_reference=ref), now)
    fields = {"calling_party": "1001", "called_party": "5000", "last_redirecting_party": "1002",
              "call_type": 3, "last_redirecting_reason": 2, "line_instance": 1, "call_reference": ref}
    fields.update(info)
    return out + st.received(cm(MsgId.CALL_INFO, **fields), now)


def connected_call(now=1.0) -> Station:
    st = registered()
    ring(st, now)
    st.answer(now)
    st.received(cm(MsgId.OPEN_RECEIVE_CHANNEL, conference_id=5, pass_through_party_id=9, packet_ms=20,
                   compression_type=4, call_reference=REF), now)
    st.received(cm(MsgId.CALL_STATE, call_state=5, line_instance=1, call_reference=REF), now)
    st.media_open("10.0.0.5", 20000, now)
    st.received(cm(MsgId.START_MEDIA_TRANSMISSION, remote_ip="10.0.0.9", remote_port=30000, packet_ms=20,
                   compression_type=4, call_reference=REF), now)
    assert st.state is StationState.CONNECTED
    return st


def clear(st: Station, now, ref=REF, state=2) -> list:
    return st.received(cm(MsgId.CALL_STATE, call_state=state, line_instance=1, call_reference=ref), now)


# -- registration ---------------------------------------------------------------------------

def test_connected_sends_the_register_request():
    st = Station(config())
    assert st.state is StationState.DOWN and not st.registered and st.next_deadline() is None
    out = st.connected(100.0)
    payload = (b"CiscoUM1-VI1\0\0\0\0"          # device name[16]
               b"\0\0\0\0" b"\x01\0\0\0"         # user id, instance
               b"\x0a\x00\x00\x05"               # station IP 10.0.0.5, network order
               b"\x07\0\0\0" b"\0\0\0\0" b"\0\0\0\0"   # device type 7, max/active streams
               b"\x0b\x00" b"\x00\x02"           # protocol 11, phone features: RFC 2833
               + b"\0" * 80)                     # conferences and the zeroed tail
    assert out == [Send(b"\x80\0\0\0" b"\0\0\0\0" b"\x01\0\0\0" + payload)]
    assert st.state is StationState.REGISTERING and not st.registered
    assert st.next_deadline() == 110.0  # register_timeout before the first keepalive (30 s)


def test_register_ack_registers_with_callmanagers_keepalive():
    st = Station(config())
    st.connected(0.0)
    assert st.received(cm(MsgId.REGISTER_ACK, keepalive_interval=20, date_template="M/D/YA",
                          max_protocol_ver=20), 1.0) == [Registered(20.0)]
    assert st.state is StationState.REGISTERED and st.registered and st.idle
    assert st.next_deadline() == 21.0
    assert st.received(cm(MsgId.REGISTER_ACK, keepalive_interval=5), 2.0) == []  # a repeat: ignored


@pytest.mark.parametrize("cm_interval, cap, expected", [(60, 15.0, 15.0), (10, 15.0, 10.0), (0, None, 30.0),
                                                        (0, 12.0, 12.0)])
def test_keepalive_interval_capped_or_defaulted(cm_interval, cap, expected):
    st = Station(config(keepalive_max=cap))
    st.connected(0.0)
    assert st.received(cm(MsgId.REGISTER_ACK, keepalive_interval=cm_interval), 0.0) == [Registered(expected)]


def test_capabilities_answered_then_button_template_and_line_asked_once():
    st = Station(config())
    st.connected(0.0)
    st.received(cm(MsgId.REGISTER_ACK, keepalive_interval=30), 0.0)
    out = st.received(cm(MsgId.CAPABILITIES_REQ), 0.1)
    caps = (b"\x28\0\0\0" b"\0\0\0\0" b"\x10\0\0\0" b"\x02\0\0\0"
            b"\x04\0\0\0" b"\x14\0\0\0" + b"\0" * 8 +   # G.711 mu-law, 20 ms
            b"\x02\0\0\0" b"\x14\0\0\0" + b"\0" * 8)    # G.711 A-law, 20 ms
    assert out == [Send(caps),
                   Send(b"\x04\0\0\0" b"\0\0\0\0" b"\x0e\0\0\0"),                     # ButtonTemplateReq
                   Send(b"\x08\0\0\0" b"\0\0\0\0" b"\x0b\0\0\0" b"\x01\0\0\0")]      # LineStatReq line 1
    assert st.received(cm(MsgId.CAPABILITIES_REQ), 0.2) == [Send(caps)]  # asked again: answered again


def test_configured_codecs_and_packet_size_in_capabilities():
    st = Station(config(codecs=(2,), packet_ms=30))
    st.connected(0.0)
    st.received(cm(MsgId.REGISTER_ACK, keepalive_interval=30), 0.0)
    (caps, *_), = [sent(st.received(cm(MsgId.CAPABILITIES_REQ), 0.1))]
    assert caps["caps"] == ((2, 30),)


def test_line_stat_res_gives_the_directory_number():
    st = registered()
    st.received(cm(MsgId.LINE_STAT_RES, line_number=1, dir_number="5001\x07", display_name="VM"), 1.0)
    assert st.directory_number == "5001"


def test_register_reject_gives_up_this_server():
    st = Station(config())
    st.connected(0.0)
    out = st.received(cm(MsgId.REGISTER_REJECT, text="No Authority: CiscoUM1-VI1"), 0.5)
    assert out == [Rejected("No Authority: CiscoUM1-VI1"), Disconnect("rejected: No Authority: CiscoUM1-VI1")]
    assert st.state is StationState.DOWN and st.next_deadline() is None
    assert st.received(cm(MsgId.REGISTER_ACK, keepalive_interval=30), 0.6) == []  # too late: ignored


def test_register_timeout():
    st = Station(config(register_timeout=10.0))
    st.connected(0.0)
    assert st.tick(9.99) == []
    assert st.tick(10.0) == [Disconnect("register timeout")]
    assert st.state is StationState.DOWN


def test_nothing_but_registration_traffic_before_the_ack():
    st = Station(config())
    st.connected(0.0)
    assert st.received(cm(MsgId.CAPABILITIES_REQ), 0.1) == []
    assert ring(st, 0.2) == []
    assert st.dial("22226001", 0.3) == [DialResult(False, "not registered")]
    assert st.answer(0.4) == [] and st.hang_up(0.4) == [] and st.media_failed(0.4) == []
    assert st.state is StationState.REGISTERING


def test_keepalive_before_the_ack_at_the_default_interval():
    st = Station(config(register_timeout=100.0, keepalive_default=30.0))
    st.connected(0.0)
    assert st.tick(30.0) == [Send(KEEPALIVE)]


def test_reconnecting_starts_over():
    st = registered()
    out = st.connected(5.0)
    assert events(out) == [Unregistered("connection lost: reconnected")]
    assert [m.id for m in sent(out)] == [MsgId.REGISTER_REQ]
    assert st.state is StationState.REGISTERING


# -- keepalive ----------------------------------------------------------------------------------

def test_keepalive_every_interval_and_the_ack_clears_the_misses():
    st = registered(keepalive=30)
    assert st.next_deadline() == 30.0
    assert st.tick(29.9) == []
    assert st.tick(30.0) == [Send(KEEPALIVE)]
    assert st.next_deadline() == 60.0
    assert st.received(cm(MsgId.KEEPALIVE_ACK), 30.1) == []
    for t in (60.0, 90.0, 120.0):  # answered every time: never lost
        assert st.tick(t) == [Send(KEEPALIVE)]
        st.received(cm(MsgId.KEEPALIVE_ACK), t + 0.1)
    assert st.keepalives_sent == 4 and st.keepalives_missed == 0 and st.registered


@pytest.mark.parametrize("misses", [1, 2, 3])
def test_keepalive_lost_after_the_configured_misses(misses):
    st = registered(keepalive=10, keepalive_misses=misses)
    for i in range(1, misses + 1):
        assert st.tick(10.0 * i) == [Send(KEEPALIVE)]
    out = st.tick(10.0 * (misses + 1))
    assert out == [Unregistered("keepalive lost"), Disconnect("keepalive lost")]
    assert st.state is StationState.DOWN and st.keepalives_missed == misses - 1


def test_keepalive_lost_during_a_call_ends_it_first():
    st = connected_call()
    st.tick(30.0)
    st.tick(60.0)
    assert st.tick(90.0) == [StopMedia(), CallEnded("lost"), Unregistered("keepalive lost"),
                             Disconnect("keepalive lost")]


# -- reset, unregister, loss, protocol errors -------------------------------------------------

def test_reset_from_callmanager():
    st = registered()
    out = st.received(cm(MsgId.RESET, reset_type=2), 5.0)
    assert out == [ResetRequested(2), Unregistered("reset by CallManager"),
                   Disconnect("reset by CallManager")]
    assert st.state is StationState.DOWN


def test_reset_during_a_call():
    st = connected_call()
    assert st.received(cm(MsgId.RESET, reset_type=1), 5.0) == [
        StopMedia(), CallEnded("lost"), ResetRequested(1), Unregistered("reset by CallManager"),
        Disconnect("reset by CallManager")]


def test_reset_during_an_mwi_call():
    st = registered()
    st.dial("2222", 2.0)
    assert events(st.received(cm(MsgId.RESET, reset_type=2), 2.1))[:2] == [DialResult(False, "reset"),
                                                                          ResetRequested(2)]


def test_unregister_and_the_ack():
    st = registered()
    assert st.unregister(5.0) == [Send(b"\x04\0\0\0" b"\0\0\0\0" b"\x27\0\0\0")]
    assert st.state is StationState.UNREGISTERING and st.registered
    assert st.unregister(5.1) == []
    assert ring(st, 5.2) == [] and st.ignored_rings == 1  # no new call while leaving
    assert st.received(cm(MsgId.UNREGISTER_ACK, status=0), 5.3) == [Unregistered("unregistered"),
                                                                     Disconnect("unregistered")]
    assert st.state is StationState.DOWN


def test_unregister_without_an_ack_times_out():
    st = registered(unregister_timeout=2.0)
    st.unregister(5.0)
    assert st.next_deadline() == 7.0
    assert st.tick(7.0) == [Unregistered("unregistered"), Disconnect("unregister timeout")]


def test_unregister_during_a_call_hangs_it_up_first():
    st = connected_call()
    out = st.unregister(5.0)
    assert [m.id for m in sent(out)] == [MsgId.ON_HOOK, MsgId.UNREGISTER_REQ]
    assert events(out) == [StopMedia(), CallEnded("station")]


def test_unregister_while_registering_just_disconnects():
    st = Station(config())
    st.connected(0.0)
    assert st.unregister(1.0) == [Disconnect("unregistered")]


def test_lost_connection():
    st = registered()
    assert st.lost(3.0, "reset by peer") == [Unregistered("connection lost: reset by peer")]
    assert st.state is StationState.DOWN
    assert st.lost(3.1, "again") == []
    assert st.received(cm(MsgId.KEEPALIVE_ACK), 3.2) == [] and st.tick(1000.0) == []


def test_lost_during_a_call():
    st = connected_call()
    assert st.lost(3.0, "eof") == [StopMedia(), CallEnded("lost"), Unregistered("connection lost: eof")]


def test_protocol_errors_non_fatal_counted_fatal_disconnects():
    st = registered()
    assert st.received(ProtocolError("unknown message id 0x0999", False, 0x999), 1.0) == []
    assert st.protocol_errors == 1 and st.registered
    out = st.received(ProtocolError("length field 9999 outside 4..1992: framing lost", True), 2.0)
    assert out == [Unregistered("protocol error: length field 9999 outside 4..1992: framing lost"),
                   Disconnect("protocol error: length field 9999 outside 4..1992: framing lost")]


def test_framer_output_drives_the_station():
    st = Station(config())
    st.connected(0.0)
    stream = encode(MsgId.REGISTER_ACK, keepalive_interval=30) + encode(MsgId.CAPABILITIES_REQ)
    out = []
    for item in Framer().feed(stream):
        out += st.received(item, 0.1)
    assert events(out) == [Registered(30.0)]
    assert [m.id for m in sent(out)] == [MsgId.CAPABILITIES_RES, MsgId.BUTTON_TEMPLATE_REQ,
                                         MsgId.LINE_STAT_REQ]


# -- incoming call -------------------------------------------------------------------------------

def offer(ref=REF, line=1, **kw) -> Offer:
    d = {"calling": "1001", "called": "5000", "last_redirecting": "1002", "call_type": 3, "last_reason": 2,
         "call_reference": ref, "line_instance": line}
    d.update(kw)
    return Offer(CallDetails(**d))


RING_MSGS = {
    "ringer": cm(MsgId.SET_RINGER, ring_mode=2, ring_duration=1, line_instance=1, call_reference=REF),
    "ringin": cm(MsgId.CALL_STATE, call_state=4, line_instance=1, call_reference=REF),
    "info": cm(MsgId.CALL_INFO, calling_party="1001", called_party="5000", last_redirecting_party="1002",
               call_type=3, last_redirecting_reason=2, line_instance=1, call_reference=REF),
}


@pytest.mark.parametrize("order", list(itertools.permutations(RING_MSGS)))
def test_ringer_ring_in_and_call_info_in_any_order_give_one_offer(order):
    st = registered()
    out = []
    for name in order:
        out += st.received(RING_MSGS[name], 1.0)
    assert out == [offer()]
    assert st.state is StationState.RINGING and st.call_reference == REF


def test_ringing_without_call_info_is_offered_after_the_wait():
    st = registered(ring_info_wait=0.5)
    assert st.received(RING_MSGS["ringin"], 1.0) == []
    assert st.next_deadline() == 1.5
    assert st.tick(1.49) == []
    assert st.tick(1.5) == [Offer(CallDetails(call_reference=REF, line_instance=1))]
    assert st.received(RING_MSGS["info"], 1.6) == []  # too late: offered once only


def test_call_info_for_another_call_does_not_complete_the_ring():
    st = registered()
    st.received(cm(MsgId.CALL_INFO, calling_party="9999", call_reference=REF + 1), 0.9)
    assert st.received(RING_MSGS["ringin"], 1.0) == []
    assert st.received(cm(MsgId.CALL_INFO, calling_party="8888", call_reference=REF + 2), 1.1) == []
    assert st.stray_messages == 1
    assert st.received(RING_MSGS["info"], 1.2) == [offer()]


def test_call_info_without_a_reference_names_the_ringing_call():
    st = registered()
    st.received(RING_MSGS["ringin"], 1.0)
    out = st.received(Message(MsgId.CALL_INFO, {"calling_party": "1001", "called_party": "5000"}), 1.1)
    assert out == [Offer(CallDetails(calling="1001", called="5000", call_reference=REF))]


def test_an_old_call_info_while_idle_does_not_name_a_later_call():
    """A CallInfo cut short while the port is idle decodes with reference 0 and no numbers; a
    ring long after it must wait for its own CallInfo, not take the old one."""
    st = registered(ring_info_wait=0.5)
    st.received(cm(MsgId.CALL_INFO, calling_party="7777"), 0.1)
    assert st.received(RING_MSGS["ringin"], 5.0) == []
    assert st.received(RING_MSGS["info"], 5.1) == [offer()]


def test_a_call_info_without_a_reference_before_the_ring_names_no_call():
    """Even just before a ring: a CallInfo with no reference (garbage cut short) is not kept."""
    st = registered(ring_info_wait=0.5)
    st.received(cm(MsgId.CALL_INFO, calling_party="7777"), 4.9)
    assert st.received(RING_MSGS["ringin"], 5.0) == []
    assert st.received(RING_MSGS["info"], 5.1) == [offer()]


def test_a_call_info_just_before_its_ring_is_kept():
    st = registered(ring_info_wait=0.5)
    assert st.received(RING_MSGS["info"], 4.8) == []
    assert st.received(RING_MSGS["ringin"], 5.0) == [offer()]


def test_a_second_ring_while_busy_is_ignored_and_counted():
    st = registered()
    ring(st)
    assert ring(st, 1.1, ref=REF + 1) == []
    assert st.ignored_rings == 1 and st.call_reference == REF and st.stray_messages == 1


def test_answer_sends_off_hook():
    st = registered()
    ring(st)
    out = st.answer(1.2)
    assert out == [Send(b"\x0c\0\0\0" b"\0\0\0\0" b"\x06\0\0\0" b"\x01\0\0\0" + REF_LE)]
    assert st.state is StationState.ANSWERING
    assert st.answer(1.3) == []


def test_answer_before_the_offer_does_nothing():
    st = registered()
    st.received(RING_MSGS["ringin"], 1.0)
    assert st.answer(1.1) == [] and st.decline(1.1) == [] and st.hang_up(1.1) == []
    assert st.state is StationState.RINGING


def test_media_setup_and_connected():
    st = registered()
    ring(st)
    st.answer(1.0)
    out = st.received(cm(MsgId.OPEN_RECEIVE_CHANNEL, conference_id=5, pass_through_party_id=9, packet_ms=20,
                         compression_type=4, call_reference=REF, rfc2833_payload_type=101), 1.1)
    assert out == [OpenMedia(REF, 9, 4, 20, 101)]
    assert st.received(cm(MsgId.CALL_STATE, call_state=5, line_instance=1, call_reference=REF), 1.1) == [
        Connected()]
    assert st.received(cm(MsgId.CALL_STATE, call_state=5, line_instance=1, call_reference=REF), 1.2) == []
    ack = st.media_open("10.0.0.5", 20000, 1.2)
    assert ack == [Send(b"\x18\0\0\0" b"\0\0\0\0" b"\x22\0\0\0"
                        b"\0\0\0\0"            # status OK
                        b"\x0a\x00\x00\x05"    # 10.0.0.5
                        b"\x20\x4e\0\0"        # port 20000
                        b"\x09\0\0\0" + REF_LE)]
    assert st.media_open("10.0.0.5", 20000, 1.25) == []  # nothing pending any more
    out = st.received(cm(MsgId.START_MEDIA_TRANSMISSION, remote_ip="10.0.0.9", remote_port=30000,
                         packet_ms=20, compression_type=4, call_reference=REF), 1.3)
    assert out == [StartMedia("10.0.0.9", 30000, 4, 20, 0)]
    assert st.state is StationState.CONNECTED


def test_media_messages_with_odd_packet_size_or_payload_type_are_normalised():
    st = registered()
    ring(st)
    st.answer(1.0)
    out = st.received(cm(MsgId.OPEN_RECEIVE_CHANNEL, pass_through_party_id=9, packet_ms=0, compression_type=2,
                         call_reference=REF, rfc2833_payload_type=8), 1.1)
    assert out == [OpenMedia(REF, 9, 2, 20, 0)]


def test_media_failed_refuses_the_channel_and_hangs_up():
    st = registered()
    ring(st)
    st.answer(1.0)
    st.received(cm(MsgId.OPEN_RECEIVE_CHANNEL, pass_through_party_id=9, packet_ms=20, compression_type=4,
                   call_reference=REF), 1.1)
    out = st.media_failed(1.2)
    assert out == [Send(b"\x18\0\0\0" b"\0\0\0\0" b"\x22\0\0\0" b"\x08\0\0\0" b"\0\0\0\0" b"\0\0\0\0"
                        b"\x09\0\0\0" + REF_LE),                                   # OutOfSockets
                   Send(b"\x0c\0\0\0" b"\0\0\0\0" b"\x07\0\0\0" b"\x01\0\0\0" + REF_LE),  # OnHook
                   StopMedia()]
    assert st.state is StationState.CLOSING
    assert clear(st, 1.3) == [CallEnded("station")]
    assert st.idle


def test_another_codec_is_refused_and_the_call_hung_up():
    st = registered()
    ring(st)
    st.answer(1.0)
    out = st.received(cm(MsgId.OPEN_RECEIVE_CHANNEL, pass_through_party_id=9, packet_ms=20,
                         compression_type=11, call_reference=REF), 1.1)
    assert out == [Send(b"\x18\0\0\0" b"\0\0\0\0" b"\x22\0\0\0" b"\x06\0\0\0" b"\0\0\0\0" b"\0\0\0\0"
                        b"\x09\0\0\0" + REF_LE),                                   # InvalidCodec
                   Send(b"\x0c\0\0\0" b"\0\0\0\0" b"\x07\0\0\0" b"\x01\0\0\0" + REF_LE)]
    assert clear(st, 1.2) == [CallEnded("station")]


def test_start_media_with_another_codec_hangs_up():
    st = registered()
    ring(st)
    st.answer(1.0)
    out = st.received(cm(MsgId.START_MEDIA_TRANSMISSION, remote_ip="10.0.0.9", remote_port=30000,
                         compression_type=12, call_reference=REF), 1.1)
    assert [m.id for m in sent(out)] == [MsgId.ON_HOOK] and st.state is StationState.CLOSING


def test_start_media_with_nowhere_to_send_is_ignored():
    st = registered()
    ring(st)
    st.answer(1.0)
    assert st.received(cm(MsgId.START_MEDIA_TRANSMISSION, remote_ip="0.0.0.0", remote_port=30000,
                          compression_type=4, call_reference=REF), 1.1) == []
    assert st.received(cm(MsgId.START_MEDIA_TRANSMISSION, remote_ip="10.0.0.9", remote_port=0,
                          compression_type=4, call_reference=REF), 1.1) == []
    assert st.protocol_errors == 2


def test_media_messages_for_another_call_are_ignored():
    st = registered()
    ring(st)
    st.answer(1.0)
    assert st.received(cm(MsgId.OPEN_RECEIVE_CHANNEL, pass_through_party_id=9, packet_ms=20,
                          compression_type=4, call_reference=REF + 7), 1.1) == []
    assert st.stray_messages == 1
    # a short OpenReceiveChannel that lacks the reference is taken as the port's (one call per port)
    short = Message(MsgId.OPEN_RECEIVE_CHANNEL, {"pass_through_party_id": 3, "compression_type": 4})
    out = st.received(short, 1.2)
    assert out == [OpenMedia(REF, 3, 4, 20, 0)]


def test_caller_hangs_up():
    st = connected_call()
    assert st.received(cm(MsgId.CLOSE_RECEIVE_CHANNEL, conference_id=5, pass_through_party_id=9,
                          call_reference=REF), 9.0) == [StopMedia()]
    assert st.received(cm(MsgId.STOP_MEDIA_TRANSMISSION, conference_id=5, pass_through_party_id=9,
                          call_reference=REF), 9.0) == []
    assert clear(st, 9.0) == [CallEnded("caller")]
    assert st.idle and st.call_reference is None
    assert clear(st, 9.1) == [] and st.hang_up(9.2) == []


def test_caller_clear_without_media_stop_still_stops_media():
    st = connected_call()
    assert clear(st, 9.0, state=0) == [StopMedia(), CallEnded("caller")]  # CallState Idle


def test_clear_for_another_call_is_ignored():
    st = connected_call()
    assert clear(st, 9.0, ref=REF + 1) == []
    assert st.state is StationState.CONNECTED


def test_station_hangs_up():
    st = connected_call()
    out = st.hang_up(9.0)
    assert out == [Send(b"\x0c\0\0\0" b"\0\0\0\0" b"\x07\0\0\0" b"\x01\0\0\0" + REF_LE), StopMedia()]
    assert st.state is StationState.CLOSING and st.hang_up(9.0) == []
    assert st.received(cm(MsgId.CLOSE_RECEIVE_CHANNEL, call_reference=REF), 9.1) == []
    assert st.received(cm(MsgId.STOP_MEDIA_TRANSMISSION, call_reference=REF), 9.1) == []
    assert clear(st, 9.1) == [CallEnded("station")]
    assert clear(st, 9.2) == []
    assert st.idle


def test_station_hangs_up_and_callmanager_never_clears():
    st = connected_call()
    st.hang_up(9.0)
    assert st.next_deadline() == 13.0  # clear_timeout 4 s (before the keepalive at 30 s)
    assert st.tick(13.0) == [CallEnded("station")]
    assert st.idle


def test_answered_call_never_connected_is_given_up():
    st = registered(answer_timeout=5.0)
    ring(st)
    st.answer(1.0)
    assert st.next_deadline() == 6.0
    assert st.tick(6.0) == [Send(b"\x0c\0\0\0" b"\0\0\0\0" b"\x07\0\0\0" b"\x01\0\0\0" + REF_LE)]
    assert clear(st, 6.1) == [CallEnded("station")]


def test_connected_call_has_no_answer_timeout():
    st = connected_call(now=1.0)
    assert st.next_deadline() == 30.0  # only the keepalive
    assert st.tick(29.0) == [] and st.state is StationState.CONNECTED


def test_call_info_for_the_next_call_while_closing_is_kept_for_its_ring():
    st = connected_call()
    st.hang_up(5.0)
    st.received(cm(MsgId.CALL_INFO, calling_party="1009", called_party="5000", call_reference=REF + 1), 5.1)
    assert clear(st, 5.2) == [CallEnded("station")]
    out = st.received(cm(MsgId.CALL_STATE, call_state=4, line_instance=1, call_reference=REF + 1), 5.3)
    assert out == [Offer(CallDetails(calling="1009", called="5000", call_reference=REF + 1))]


def test_decline_while_ringing():
    st = registered()
    ring(st)
    assert st.decline(1.1) == [Send(b"\x0c\0\0\0" b"\0\0\0\0" b"\x07\0\0\0" b"\x01\0\0\0" + REF_LE)]
    assert clear(st, 1.2) == [CallEnded("station")]
    assert st.idle
    assert ring(st, 2.0, ref=REF + 1) == [offer(ref=REF + 1)]  # the port takes the next call


def test_caller_gives_up_while_ringing():
    st = registered()
    ring(st)
    assert clear(st, 3.0) == [CallEnded("caller")]


def test_ring_withdrawn_before_the_offer_ends_silently():
    st = registered()
    st.received(RING_MSGS["ringin"], 1.0)
    assert clear(st, 1.1) == []
    assert st.idle and st.tick(1.6) == []


def test_call_info_strings_are_cleaned():
    st = registered()
    (o,) = ring(st, calling_party="10\x1b01", calling_party_name="\x07Bob ")
    assert (o.info.calling, o.info.calling_name) == ("1001", "Bob")


def test_bad_media_open_arguments_are_refused_and_change_nothing():
    st = registered()
    ring(st)
    st.answer(1.0)
    st.received(cm(MsgId.OPEN_RECEIVE_CHANNEL, pass_through_party_id=9, compression_type=4,
                   call_reference=REF), 1.1)
    for ip, port in (("nowhere", 20000), ("10.0.0.5", 0), ("10.0.0.5", 70000), ("::1", 20000),
                     ("10.0.0.5", True)):
        with pytest.raises(ValueError, match="media_open"):
            st.media_open(ip, port, 1.2)
    assert len(st.media_open("10.0.0.5", 20000, 1.3)) == 1  # still pending


@pytest.mark.parametrize("now", [float("nan"), float("inf"), "1", None])
def test_a_bad_clock_value_is_refused(now):
    st = registered()
    with pytest.raises(ValueError, match="now"):
        st.tick(now)


def test_received_refuses_what_is_not_a_message():
    st = registered()
    with pytest.raises(TypeError):
        st.received(b"\x04\0\0\0", 1.0)


def test_down_station_ignores_everything():
    st = Station(config())
    assert st.received(cm(MsgId.REGISTER_ACK, keepalive_interval=30), 0.0) == []
    assert st.received(ProtocolError("x", True), 0.0) == []
    assert st.tick(1e9) == [] and st.unregister(0.0) == [] and st.hang_up(0.0) == []


# -- outbound MWI call ------------------------------------------------------------------------------

def off_hook_bytes(ref_le=b"\0\0\0\0") -> bytes:
    return b"\x0c\0\0\0" b"\0\0\0\0" b"\x06\0\0\0" b"\x01\0\0\0" + ref_le


def keypad(button: int) -> bytes:
    return b"\x10\0\0\0" b"\0\0\0\0" b"\x03\0\0\0" + bytes([button]) + b"\0\0\0" b"\x01\0\0\0" + REF_LE


def dial_tone(st, now=2.1, tone=0x21, ref=REF):
    return st.received(cm(MsgId.START_TONE, tone=tone, direction=0, line_instance=1, call_reference=ref), now)


def test_mwi_call_dials_after_dial_tone_and_hangs_up_when_judged():
    st = registered()
    assert st.dial("2*#9", 2.0) == [Send(off_hook_bytes())]
    assert st.state is StationState.OUTBOUND
    assert dial_tone(st) == [Send(keypad(2)), Send(keypad(14)), Send(keypad(15)), Send(keypad(9))]
    assert st.call_reference == REF
    out = st.received(cm(MsgId.CALL_STATE, call_state=3, line_instance=1, call_reference=REF), 2.3)  # RingOut
    assert out == [DialResult(True, "ringout"),
                   Send(b"\x0c\0\0\0" b"\0\0\0\0" b"\x07\0\0\0" b"\x01\0\0\0" + REF_LE)]
    assert st.state is StationState.CLOSING
    assert clear(st, 2.4) == []  # no CallEnded for an MWI call
    assert st.idle


def test_mwi_call_as_the_subscriber_uses_off_hook_with_calling_party():
    st = registered()
    out = st.dial("2222", 2.0, calling_party="6001")
    assert out == [Send(b"\x38\0\0\0" b"\0\0\0\0" b"\x24\0\0\0" b"6001" + b"\0" * 48)]
    assert len(dial_tone(st)) == 4


def test_call_state_off_hook_counts_as_dial_tone_and_digits_go_once():
    st = registered()
    st.dial("22", 2.0)
    out = st.received(cm(MsgId.CALL_STATE, call_state=1, line_instance=1, call_reference=REF), 2.1)
    assert out == [Send(keypad(2)), Send(keypad(2))]
    assert dial_tone(st, tone=0x22) == []


@pytest.mark.parametrize("msg, detail", [
    (cm(MsgId.START_TONE, tone=0x25, call_reference=REF), "reorder"),
    (cm(MsgId.START_TONE, tone=0x23, call_reference=REF), "busy"),
    (cm(MsgId.CALL_STATE, call_state=6, call_reference=REF), "busy"),
    (cm(MsgId.CALL_STATE, call_state=7, call_reference=REF), "congestion"),
    (cm(MsgId.CALL_STATE, call_state=14, call_reference=REF), "invalid number"),
])
def test_mwi_call_failures(msg, detail):
    st = registered()
    st.dial("22226001", 2.0)
    dial_tone(st)
    out = st.received(msg, 2.5)
    assert events(out) == [DialResult(False, detail)]
    assert [m.id for m in sent(out)] == [MsgId.ON_HOOK]


@pytest.mark.parametrize("msg, detail", [
    (cm(MsgId.CALL_STATE, call_state=12, call_reference=REF), "proceed"),
    (cm(MsgId.CALL_STATE, call_state=5, call_reference=REF), "connected"),
    (cm(MsgId.START_TONE, tone=0x24, call_reference=REF), "alerting"),
])
def test_mwi_call_successes(msg, detail):
    st = registered()
    st.dial("22226001", 2.0)
    dial_tone(st)
    assert events(st.received(msg, 2.5)) == [DialResult(True, detail)]


def test_progress_before_the_digits_are_sent_is_not_a_success():
    st = registered()
    st.dial("2222", 2.0)
    assert st.received(cm(MsgId.CALL_STATE, call_state=12, line_instance=1, call_reference=REF), 2.1) == []
    assert st.received(cm(MsgId.START_TONE, tone=0x24, call_reference=REF), 2.1) == []
    assert st.state is StationState.OUTBOUND
    assert len(dial_tone(st, 2.2)) == 4


def test_a_reorder_before_dial_tone_fails_the_call():
    st = registered()
    st.dial("2222", 2.0)
    assert events(dial_tone(st, tone=0x25)) == [DialResult(False, "reorder")]


def test_callmanager_clearing_after_the_whole_number_is_success():
    st = registered()
    st.dial("22226001", 2.0)
    dial_tone(st)
    assert clear(st, 2.5) == [DialResult(True, "cleared")]  # the line is on hook: no OnHook sent
    assert st.idle


def test_callmanager_clearing_before_the_digits_is_failure():
    st = registered()
    st.dial("22226001", 2.0)
    assert clear(st, 2.5) == [DialResult(False, "cleared before dialling")]


def test_mwi_call_without_dial_tone_times_out():
    st = registered(outbound_timeout=8.0)
    st.dial("2222", 2.0)
    assert st.next_deadline() == 10.0
    out = st.tick(10.0)
    on_hook = b"\x0c\0\0\0" b"\0\0\0\0" b"\x07\0\0\0" b"\x01\0\0\0" b"\0\0\0\0"  # no reference known
    assert out == [DialResult(False, "no dial tone"), Send(on_hook)]
    assert st.tick(14.0) == [] and st.idle  # CallManager never cleared: idle after clear_timeout


def test_mwi_call_never_judged_times_out():
    st = registered(outbound_timeout=8.0)
    st.dial("2222", 2.0)
    dial_tone(st)
    assert events(st.tick(10.0)) == [DialResult(False, "timeout")]


def test_dial_refused_when_busy_or_unregistered():
    st = registered()
    ring(st)
    assert st.dial("2222", 2.0) == [DialResult(False, "port busy")]
    assert Station(config()).dial("2222", 2.0) == [DialResult(False, "not registered")]


@pytest.mark.parametrize("digits, cgpn", [("", None), ("22x2", None), ("2" * 25, None), (2222, None),
                                          ("2222", ""), ("2222", "60 01"), ("2222", "6" * 25)])
def test_bad_dial_arguments_are_refused_and_change_nothing(digits, cgpn):
    st = registered()
    with pytest.raises(ValueError):
        st.dial(digits, 2.0, calling_party=cgpn)
    assert st.idle


def test_a_ring_during_the_mwi_call_is_ignored():
    st = registered()
    st.dial("2222", 2.0)
    dial_tone(st)
    assert ring(st, 2.2, ref=REF + 1) == []
    assert st.ignored_rings == 1 and st.state is StationState.OUTBOUND


def test_mwi_call_lost_or_hung_up():
    st = registered()
    st.dial("2222", 2.0)
    assert st.lost(2.1, "eof") == [DialResult(False, "lost"), Unregistered("connection lost: eof")]
    st = registered()
    st.dial("2222", 2.0)
    out = st.hang_up(2.1)
    assert events(out) == [DialResult(False, "hung up")] and [m.id for m in sent(out)] == [MsgId.ON_HOOK]


def test_media_requests_during_the_mwi_call_are_ignored():
    st = registered()
    st.dial("2222", 2.0)
    dial_tone(st)
    assert st.received(cm(MsgId.OPEN_RECEIVE_CHANNEL, pass_through_party_id=9, compression_type=4,
                          call_reference=REF), 2.2) == []


# -- configuration --------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, words", [
    ({"device_name": ""}, "device_name"),
    ({"device_name": "CiscoUM1-VI1-TOO-LONG"}, "device_name"),
    ({"device_name": "Cisco UM1"}, "device_name"),
    ({"station_ip": "10.0.0"}, "station_ip"),
    ({"protocol_ver": 17}, "protocol_ver"),
    ({"line_instance": 0}, "line_instance"),
    ({"codecs": (4, 11)}, "codecs"),
    ({"codecs": ()}, "codecs"),
    ({"codecs": (4, 4)}, "codecs"),
    ({"packet_ms": 25}, "packet_ms"),
    ({"register_timeout": 0}, "register_timeout"),
    ({"keepalive_max": -1.0}, "keepalive_max"),
    ({"keepalive_misses": 0}, "keepalive_misses"),
    ({"ring_info_wait": float("nan")}, "ring_info_wait"),
])
def test_bad_configuration_is_refused(kw, words):
    args = {"device_name": "CiscoUM1-VI1", "station_ip": "10.0.0.5", **kw}
    with pytest.raises(ValueError, match=words):
        StationConfig(**args)


# -- property: random CallManager traffic and API calls ---------------------------------------------

REFS = st.sampled_from([REF, REF, REF, REF + 1, 0, 0xFFFF_FFFF])
STATES = st.sampled_from([4, 4, 5, 2, 0, 1, 3, 12, 6, 7, 14]) | st.integers(0, 18)
TEXT = st.sampled_from(["", "1001", "5000", "1002"]) | st.text(
    st.characters(min_codepoint=1, max_codepoint=127), max_size=24)
CM_FIELDS = {
    MsgId.REGISTER_ACK: {"keepalive_interval": st.integers(0, 200), "max_protocol_ver": st.integers(0, 30)},
    MsgId.REGISTER_REJECT: {"text": TEXT},
    MsgId.CAPABILITIES_REQ: {},
    MsgId.KEEPALIVE_ACK: {},
    MsgId.RESET: {"reset_type": st.integers(0, 4)},
    MsgId.UNREGISTER_ACK: {"status": st.integers(0, 2)},
    MsgId.LINE_STAT_RES: {"line_number": st.integers(0, 2), "dir_number": TEXT},
    MsgId.SET_RINGER: {"ring_mode": st.integers(1, 3), "line_instance": st.integers(0, 2),
                       "call_reference": REFS},
    MsgId.SET_LAMP: {"stimulus": st.sampled_from([9, 15]), "lamp_mode": st.integers(1, 5)},
    MsgId.CALL_STATE: {"call_state": STATES, "line_instance": st.just(1), "call_reference": REFS},
    MsgId.CALL_INFO: {"calling_party": TEXT, "called_party": TEXT, "last_redirecting_party": TEXT,
                      "call_type": st.integers(0, 4), "last_redirecting_reason": st.integers(0, 20),
                      "call_reference": REFS},
    MsgId.START_TONE: {"tone": st.sampled_from([0x21, 0x22, 0x23, 0x24, 0x25, 0]) | st.integers(0, 255),
                       "call_reference": REFS},
    MsgId.OPEN_RECEIVE_CHANNEL: {"pass_through_party_id": st.integers(0, 99),
                                 "packet_ms": st.sampled_from([20, 0, 30]),
                                 "compression_type": st.sampled_from([4, 4, 2, 11]), "call_reference": REFS,
                                 "rfc2833_payload_type": st.sampled_from([0, 101])},
    MsgId.START_MEDIA_TRANSMISSION: {"remote_ip": st.sampled_from(["10.0.0.9", "10.0.0.9", "0.0.0.0"]),
                                     "remote_port": st.sampled_from([30000, 0]),
                                     "compression_type": st.sampled_from([4, 4, 2, 12]),
                                     "packet_ms": st.integers(0, 40), "call_reference": REFS},
    MsgId.STOP_MEDIA_TRANSMISSION: {"call_reference": REFS},
    MsgId.CLOSE_RECEIVE_CHANNEL: {"call_reference": REFS},
    MsgId.DISPLAY_TEXT: {"text": TEXT},
}
#: the call messages come up more often than the rest
CM_IDS = [*sorted(CM_FIELDS), *[MsgId.CALL_STATE] * 6, *[MsgId.CALL_INFO] * 2, *[MsgId.START_TONE] * 2,
          MsgId.OPEN_RECEIVE_CHANNEL, MsgId.START_MEDIA_TRANSMISSION, *[MsgId.KEEPALIVE_ACK] * 3]


@st.composite
def cm_frame(draw) -> bytes:
    """A CallManager frame: valid, or (one in four) its payload cut short, the length field
    still right."""
    msg_id = draw(st.sampled_from(CM_IDS))
    fields = draw(st.fixed_dictionaries(CM_FIELDS[msg_id]))
    frame = encode(msg_id, **fields)
    if draw(st.integers(0, 3)) == 0:
        cut = draw(st.integers(12, len(frame)))
        frame = (cut - 8).to_bytes(4, "little") + frame[4:cut]
    return frame


FRAME = st.tuples(st.just("frame"), cm_frame())
API = st.tuples(st.just("api"), st.sampled_from(["answer", "answer", "answer", "decline", "hang_up",
                                                 "media_open", "media_open", "media_failed"]))
RARE_API = st.tuples(st.just("api"), st.sampled_from(["unregister", "connected", "lost"]))
RING = st.tuples(st.just("ring"), REFS, st.booleans())  # RingIn and CallInfo, in either order
MEDIA = st.tuples(st.just("media"), REFS, st.booleans())  # the answered call's media, in either order
STEPS = st.one_of(
    FRAME, FRAME, FRAME, FRAME, API, API, API, RING, RING, MEDIA, RARE_API,
    st.tuples(st.just("perr"), st.integers(0, 9)),  # a ProtocolError event: fatal one time in ten
    st.tuples(st.just("dial"), st.sampled_from(["22226001", "#", "2221"]), st.sampled_from([None, "6001"])),
    st.tuples(st.just("tick"), st.floats(0.0, 1.0)),
    st.tuples(st.just("tick"), st.floats(0.0, 1.0)),
    st.tuples(st.just("tick"), st.floats(0.0, 15.0)),
)
BEFORE_REGISTRATION = {MsgId.REGISTER_REQ, MsgId.KEEPALIVE_REQ, MsgId.ALARM}


class Model:
    """What the driver may rely on, checked against each list of actions."""

    def __init__(self):
        self.up = self.registered = self.media = False
        self.offers = self.dials = 0

    def check(self, actions, st_: Station) -> None:
        for a in actions:
            if isinstance(a, Send):
                assert self.up, "sent on a connection that is not up"
                msg = decode(a.data)  # every frame is one the codec accepts
                if not self.registered:
                    assert msg.id in BEFORE_REGISTRATION, msg.name
            elif isinstance(a, Registered):
                assert self.up and not self.registered
                self.registered = True
            elif isinstance(a, Unregistered):
                assert self.registered
                self.registered = False
            elif isinstance(a, Disconnect):
                assert self.up
                self.up = self.registered = False
            elif isinstance(a, Offer):
                assert self.registered and self.offers == 0 and self.dials == 0, "a second call"
                self.offers += 1
            elif isinstance(a, CallEnded):
                assert self.offers == 1 and not self.media
                self.offers -= 1
            elif isinstance(a, DialResult):
                assert self.dials == 1 and not self.media
                self.dials -= 1
            elif isinstance(a, OpenMedia | StartMedia):
                assert self.offers == 1
                self.media = True
            elif isinstance(a, StopMedia):
                assert self.media, "StopMedia without media"
                self.media = False
        assert st_.registered == self.registered
        assert (st_.next_deadline() is None) == (st_.state is StationState.DOWN)
        if st_.state is StationState.DOWN:
            assert self.offers == self.dials == 0 and not self.media and not self.up
        assert self.offers + self.dials <= 1


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(STEPS, min_size=5, max_size=80), misses=st.integers(1, 3),
       start_registered=st.integers(0, 4))
def test_random_traffic_never_breaks_the_promises(steps, misses, start_registered):
    station = Station(config(keepalive_misses=misses, ring_info_wait=0.5, outbound_timeout=8.0))
    model = Model()
    framer = Framer()
    now = 0.0
    if start_registered:  # most runs start registered, so that calls happen
        steps = [("api", "connected"), ("frame", encode(MsgId.REGISTER_ACK, keepalive_interval=30)),
                 ("frame", encode(MsgId.CAPABILITIES_REQ)), *steps]
    for step in steps:
        now += 0.01
        kind, arg = step[0], step[1]
        if kind in ("frame", "ring", "media") and not model.up:
            # nothing arrives on a closed connection: the driver connects again and registers
            framer = Framer()
            model.up = True
            out = station.connected(now)
            model.check(out, station)
            out = station.received(cm(MsgId.REGISTER_ACK, keepalive_interval=30), now)
        elif kind in ("frame", "ring", "media"):
            if kind == "ring":
                frames = [encode(MsgId.CALL_STATE, call_state=4, line_instance=1, call_reference=arg),
                          encode(MsgId.CALL_INFO, calling_party="1001", call_reference=arg)]
                arg = b"".join(frames if step[2] else frames[::-1])
            elif kind == "media":
                frames = [encode(MsgId.OPEN_RECEIVE_CHANNEL, pass_through_party_id=7, packet_ms=20,
                                 compression_type=4, call_reference=arg),
                          encode(MsgId.CALL_STATE, call_state=5, line_instance=1, call_reference=arg),
                          encode(MsgId.START_MEDIA_TRANSMISSION, remote_ip="10.0.0.9", remote_port=30000,
                                 compression_type=4, packet_ms=20, call_reference=arg)]
                arg = b"".join(frames if step[2] else frames[::-1])
            out = []
            for item in framer.feed(arg):
                out += station.received(item, now)
        elif kind == "perr":
            out = station.received(ProtocolError("test", fatal=arg == 0), now) if model.up else []
        elif kind == "tick":
            now += arg
            out = station.tick(now)
        elif kind == "dial":
            out = station.dial(arg, now, calling_party=step[2])
            if any(isinstance(a, DialResult) for a in out):  # refused at once: busy or unregistered
                assert len(out) == 1 and not out[0].ok and out[0].detail in ("port busy", "not registered")
                out = []
            else:
                model.dials += 1  # exactly one DialResult owed from here
        elif arg == "connected":
            framer = Framer()
            model.up = True  # (a reconnect first settles what the old connection owed)
            out = station.connected(now)
        elif arg == "lost":
            model.up = False  # nothing can be sent any more
            out = station.lost(now, "eof")
        elif arg == "media_open":
            out = station.media_open("10.0.0.5", 20000, now)
        else:
            out = getattr(station, arg)(now)
        model.check(out, station)
    model.up = False
    model.check(station.lost(now + 1, "end"), station)  # the connection goes: nothing stays owed
    assert model.offers == model.dials == 0 and not model.media and not model.registered


@settings(max_examples=200, deadline=None)
@given(chunks=st.lists(st.binary(max_size=300), max_size=20))
def test_any_bytes_from_callmanager_are_survived(chunks):
    station = registered()
    framer = Framer()
    now = 1.0
    for chunk in chunks:
        now += 0.5
        for item in framer.feed(chunk):
            for a in station.received(item, now):
                if isinstance(a, Send):
                    decode(a.data)
        station.tick(now)


def test_actions_are_frozen_values_of_one_family():
    from dataclasses import FrozenInstanceError

    from telephony.sccp.core.actions import Action
    st = registered()
    out = ring(st) + st.answer(1.0)
    assert out and all(isinstance(a, Action) for a in out)
    with pytest.raises(FrozenInstanceError):
        out[0].info = None
    assert len({Disconnect("x"), Disconnect("x"), StopMedia(), StopMedia()}) == 2  # hashable values
