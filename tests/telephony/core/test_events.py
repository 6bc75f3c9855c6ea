"""Call-arrival events and integration profiles."""
from __future__ import annotations

import pytest

from integrations.base import IntegrationProfile, MwiMethod, NumberRule
from integrations.loopback import LOOPBACK
from telephony.core.events import CallArrival, Reason

GOOD = {"node": "a", "port": "loopback-1", "call_id": "c1", "calling": "4021", "called": "5000",
        "forwarding": "4000", "reason": "no_answer", "integration": "loopback"}


def test_round_trip():
    call = CallArrival.from_dict(GOOD)
    assert call.reason is Reason.NO_ANSWER
    assert call.to_dict() == GOOD
    assert CallArrival.from_dict(call.to_dict()) == call


def test_reason_values_are_the_contract():
    assert [r.value for r in Reason] == ["direct", "busy", "no_answer", "all", "unknown"]


def test_empty_numbers_are_allowed_but_not_empty_ids():
    CallArrival.from_dict({**GOOD, "calling": "", "forwarding": ""})
    with pytest.raises(ValueError, match="call_id must not be empty"):
        CallArrival.from_dict({**GOOD, "call_id": ""})


@pytest.mark.parametrize("change,fragment", [
    ({"reason": "bored"}, "reason must be one of direct, busy"),
    ({"reason": 3}, "reason must be one of"),
    ({"calling": "1" * 65}, "calling is 65 characters long; at most 64"),
    ({"called": 5000}, "called must be a string"),
    ({"port": "p\n1"}, "control characters"),
])
def test_from_dict_rejects_bad_fields_clearly(change, fragment):
    with pytest.raises(ValueError, match=fragment):
        CallArrival.from_dict({**GOOD, **change})


def test_from_dict_rejects_missing_fields_and_non_objects():
    d = dict(GOOD)
    del d["integration"], d["node"]
    with pytest.raises(ValueError, match="lacks node, integration"):
        CallArrival.from_dict(d)
    with pytest.raises(ValueError, match="JSON object"):
        CallArrival.from_dict(["a"])


def test_calls_are_frozen():
    call = CallArrival.from_dict(GOOD)
    with pytest.raises(AttributeError):
        call.port = "x"  # type: ignore[misc]


def test_loopback_profile_is_data():
    assert LOOPBACK.port_kind == "loopback" and LOOPBACK.mwi_method is MwiMethod.NONE
    assert LOOPBACK.normalise("calling", "+1 (555) 010-0199") == "+15550100199"
    with pytest.raises(ValueError, match="longer than 32"):
        LOOPBACK.normalise("called", "1" * 33)


def test_number_rules_apply_in_order_to_their_fields_only():
    p = IntegrationProfile("pbx", "sip", 8, MwiMethod.SIP_NOTIFY, number_rules=(
        NumberRule(r"^9", "", fields=("called",)),  # trunk prefix on the called number
        NumberRule(r"^0+", "+"),
    ))
    assert p.normalise("called", "9005") == "+5"
    assert p.normalise("calling", "9005") == "9005"
    with pytest.raises(ValueError):
        NumberRule("x", "", fields=("nope",))
