"""CallInfo → CallDetails → the fields of a CallArrival: forwarded versus direct, the forwarding
number, the redirect-reason table, and the cleaning that keeps every string a valid
call-arrival field whatever CallManager sends."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telephony.core.events import MAX_FIELD, CallArrival, Reason
from telephony.sccp.core.callinfo import (
    REDIRECT_REASONS,
    CallDetails,
    arrival_fields,
    clean_text,
    reason_table,
)
from telephony.sccp.core.messages import Framer, Message, MsgId, decode, encode


def call_info(**fields) -> Message:
    """A CallInfo as it comes off the wire (encoded, then decoded: every field present)."""
    return decode(encode(MsgId.CALL_INFO, **fields))


def test_details_from_a_forwarded_call_info():
    d = CallDetails.from_message(call_info(
        calling_party_name="Alice", calling_party="1001", called_party="5000",
        original_called_party="1002", last_redirecting_party="1003", call_type=3,
        original_cdpn_redirect_reason=15, last_redirecting_reason=2, call_reference=16777217,
        line_instance=1, cdpn_voice_mailbox="1002"))
    assert d == CallDetails(calling="1001", calling_name="Alice", called="5000", original_called="1002",
                            last_redirecting="1003", call_type=3, original_reason=15, last_reason=2,
                            call_reference=16777217, line_instance=1)
    assert d.forwarded


def test_forwarded_call_keys_on_the_last_redirecting_number_and_its_reason():
    d = CallDetails(calling="1001", called="5000", original_called="1002", last_redirecting="1003",
                    call_type=3, original_reason=15, last_reason=1)
    assert arrival_fields(d) == {"calling": "1001", "called": "5000", "forwarding": "1003",
                                 "reason": Reason.BUSY}


def test_forwarding_falls_back_to_the_original_called_number():
    d = CallDetails(calling="1001", called="5000", original_called="1002", call_type=3, last_reason=2)
    assert arrival_fields(d) == {"calling": "1001", "called": "5000", "forwarding": "1002",
                                 "reason": Reason.NO_ANSWER}


def test_reason_falls_back_to_the_original_reason_then_unknown():
    d = CallDetails(called="5000", last_redirecting="1003", last_reason=99, original_reason=15)
    assert arrival_fields(d)["reason"] is Reason.ALL
    d = CallDetails(called="5000", last_redirecting="1003", last_reason=0, original_reason=10)
    assert arrival_fields(d)["reason"] is Reason.ALL
    d = CallDetails(called="5000", last_redirecting="1003", last_reason=7, original_reason=0)
    assert arrival_fields(d)["reason"] is Reason.UNKNOWN


def test_a_redirecting_number_alone_makes_the_call_forwarded():
    # call type 1 (inbound) but CallManager names a redirecting party
    d = CallDetails(calling="1001", called="5000", last_redirecting="1004", call_type=1)
    assert d.forwarded
    assert arrival_fields(d)["forwarding"] == "1004"


def test_forward_call_type_alone_makes_the_call_forwarded_even_without_numbers():
    d = CallDetails(calling="1001", called="5000", call_type=3, last_reason=1)
    assert arrival_fields(d) == {"calling": "1001", "called": "5000", "forwarding": "",
                                 "reason": Reason.BUSY}


def test_a_direct_call_has_no_forwarding_number_and_reason_direct():
    # an original called number on a direct call is the number dialled: not a forwarding
    d = CallDetails(calling="1001", called="5000", original_called="5000", call_type=1, last_reason=2)
    assert arrival_fields(d) == {"calling": "1001", "called": "5000", "forwarding": "",
                                 "reason": Reason.DIRECT}


def test_the_default_table():
    assert dict(REDIRECT_REASONS) == {1: Reason.BUSY, 2: Reason.NO_ANSWER, 10: Reason.ALL, 15: Reason.ALL}
    with pytest.raises(TypeError):
        REDIRECT_REASONS[3] = Reason.BUSY  # read-only: configure with reason_table()


def test_a_configured_table_replaces_the_default():
    table = reason_table({"4": "busy", 5: "no_answer"})
    assert table == {4: Reason.BUSY, 5: Reason.NO_ANSWER}
    d = CallDetails(called="5000", last_redirecting="1003", last_reason=1, original_reason=5)
    assert arrival_fields(d, table)["reason"] is Reason.NO_ANSWER


@pytest.mark.parametrize("table, words", [
    ({"x": "busy"}, "code 'x'"),
    ({-1: "busy"}, "code -1"),
    ({2**32: "busy"}, "code"),
    ({True: "busy"}, "code True"),
    ({1: "direct"}, "maps to 'direct'"),
    ({1: "engaged"}, "maps to 'engaged'"),
    ([(1, "busy")], "must be a table"),
])
def test_a_bad_table_is_refused_with_its_entry_named(table, words):
    with pytest.raises(ValueError, match=words):
        reason_table(table)


def test_strings_are_cleaned_of_control_characters_and_bounded():
    d = CallDetails(calling="10\x0001", calling_name=" Al\x07ice\x1b[2J ", called="5" * 100,
                    last_redirecting="\x7f\x7f")
    assert d.calling == "1001"
    assert d.calling_name == "Alice[2J"
    assert d.called == "5" * MAX_FIELD
    assert d.last_redirecting == ""
    assert not d.forwarded


def test_integers_outside_u32_or_not_integers_become_zero():
    d = CallDetails(call_type="3", last_reason=-1, original_reason=2**40, call_reference=True)
    assert (d.call_type, d.last_reason, d.original_reason, d.call_reference) == (0, 0, 0, 0)


def test_a_short_call_info_gives_empty_fields():
    frame = encode(MsgId.CALL_INFO, calling_party="1001", called_party="5000", call_reference=9)
    short = bytearray(frame[:12 + 70])  # cut inside calledPartyName
    short[0:4] = (len(short) - 8).to_bytes(4, "little")
    (msg,) = Framer().feed(bytes(short))
    d = CallDetails.from_message(msg)
    assert (d.calling, d.called, d.call_reference, d.call_type) == ("1001", "", 0, 0)
    assert arrival_fields(d)["reason"] is Reason.DIRECT


def test_a_hand_built_message_missing_fields_still_gives_details():
    d = CallDetails.from_message(Message(MsgId.CALL_INFO, {"calling_party": "1001", "call_type": 3}))
    assert d == CallDetails(calling="1001", call_type=3)


def test_clean_text():
    assert clean_text("  a\tb\r\n ") == "ab"
    assert clean_text(b"12\x0034") == "1234"
    assert clean_text(None) == "" and clean_text(5) == ""
    assert clean_text("x" * 10, limit=4) == "xxxx"
    assert clean_text("\ufffd1001") == "\ufffd1001"  # the codec's replacement for a non-ASCII byte


@given(fields=st.fixed_dictionaries({
    "calling_party_name": st.text(max_size=60), "calling_party": st.text(max_size=60),
    "called_party": st.text(max_size=60), "original_called_party": st.text(max_size=60),
    "last_redirecting_party": st.text(max_size=60),
    "call_type": st.integers(-5, 2**33), "original_cdpn_redirect_reason": st.integers(-5, 2**33),
    "last_redirecting_reason": st.integers(-5, 2**33)}))
def test_any_details_make_a_valid_call_arrival(fields):
    d = CallDetails.from_message(Message(MsgId.CALL_INFO, fields))
    a = CallArrival(node="a", port="sccp-1", call_id="c1", integration="cucm-sccp", **arrival_fields(d))
    if d.forwarded:
        assert a.reason is not Reason.DIRECT
        assert a.forwarding == (d.last_redirecting or d.original_called)
    else:
        assert (a.reason, a.forwarding) == (Reason.DIRECT, "")


@given(payload=st.binary(max_size=400))
def test_any_call_info_payload_decodes_into_valid_arrival_fields(payload):
    frame = (len(payload) + 4).to_bytes(4, "little") + b"\0\0\0\0" + MsgId.CALL_INFO.to_bytes(4, "little")
    for item in Framer().feed(frame + payload):
        if isinstance(item, Message):
            fields = arrival_fields(CallDetails.from_message(item))
            CallArrival(node="a", port="p", call_id="c", integration="i", **fields)
