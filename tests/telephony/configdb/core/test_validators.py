"""telephony/configdb/core/validators.py: every column check on plain values, without SQLite
(the database's own tests see the same checks through writes)."""
from __future__ import annotations

import json

import pytest

from telephony.configdb.core.validators import (
    MAX_JSON,
    MWI_METHODS,
    BadValue,
    dump_json,
    is_int,
    v_actions,
    v_any_json,
    v_date,
    v_email,
    v_extension,
    v_label,
    v_lamp_state,
    v_ledger_key,
    v_mailbox,
    v_mwi,
    v_notify,
    v_notify_state,
    v_rule_key,
    v_rules,
    v_stream_path,
)

RULE = {"days": [0, 4], "start": "09:00", "end": "17:30"}
LAMP = {"on": True, "new": 1, "old": 0, "confirmed": False, "term": 2}

GOOD = [
    (v_extension, ["1", "1001", "9" * 32]),
    (v_label, ["x", "Main menu", "é" * 200]),
    (v_mailbox, ["1", "mb-1001", "A.b_c", "m" * 64]),
    (v_mwi, list(MWI_METHODS)),
    (v_email, ["ann@example.com", "a.b+c@mail.example.org", "x@a-b.co"]),
    (v_stream_path, ["greeting.wav", "a/b/c.wav", "ü.wav"]),
    (v_notify, [[], [{"type": "email", "address": "ann@example.com"}]]),
    (v_actions, [{}, {"0": "operator", "*": "Main", "#": "x"}]),
    (v_rules, [[], [RULE], [{"days": [6], "start": "00:00", "end": "24:00"}]]),
    (v_date, ["2024-02-29", "2025-12-25"]),
    (v_rule_key, ["a", "greeting.max_s", "x-1_2"]),
    (v_any_json, [None, True, 1, 1.5, "s", [1, [2]], {"a": {"b": None}}]),
    (v_lamp_state, [LAMP]),
    (v_notify_state, [{"term": 0, "sent": False}, {"term": 7, "sent": True}]),
    (v_ledger_key, ["call-1.a.2@vmha>ann@example.com", "!" * 400]),
]

BAD = [
    (v_extension, [("12a", "1 to 32 digits"), ("", "1 to 32 digits"), ("1" * 33, "digits"),
                   (1001, "must be a string")]),
    (v_label, [("", "1 to 200"), ("x" * 201, "1 to 200"), (" x", "white space"),
               ("a\tb", "control characters"), (None, "must be a string")]),
    (v_mailbox, [("_x", "not starting"), ("a/b", "A-Z"), ("m" * 65, "1 to 64")]),
    (v_mwi, [("pager", "one of sip, smdi, sccp, dtmf, none")]),
    (v_email, [("ann@", "e-mail"), ("a b@x.org", "e-mail"), ("ann@localhost", "e-mail"),
               ("a" * 250 + "@x.org", "e-mail")]),
    (v_stream_path, [("", "1 to 1024"), ("/abs.wav", "relative path"), ("a\\b", "backslash"),
                     ("a//b", "components"), ("../x", "components"), ("a\nb", "control")]),
    (v_notify, [("ann@example.com", "must be a list"),
                ([{"type": "sms", "address": "1"}], "type must be 'email'"),
                ([{"type": "email"}], "exactly 'type' and 'address'"),
                ([{"type": "email", "address": "x"}], "item 0: address 'x' is not an e-mail"),
                ([{"type": "email", "address": "a@b.org"}] * 17, "at most 16")]),
    (v_actions, [(["x"], "must be an object"), ({"A": "x"}, "key 'A'"), ({"12": "x"}, "key '12'"),
                 ({"1": ""}, "target of '1'")]),
    (v_rules, [({"days": [1]}, "must be a list"), ([{"days": [1]}], "exactly 'days'"),
               ([{**RULE, "days": []}], "non-empty"), ([{**RULE, "days": [7]}], "0..6"),
               ([{**RULE, "days": [True]}], "0..6"), ([{**RULE, "days": [1, 1]}], "distinct"),
               ([{**RULE, "start": "9:00"}], "start '9:00' is not HH:MM"),
               ([{**RULE, "end": "24:01"}], "end '24:01'"),
               ([{**RULE, "start": "17:30"}], "must be before end"), ([RULE] * 65, "at most 64")]),
    (v_date, [("2024-2-1", "YYYY-MM-DD"), ("2023-02-29", "not a calendar date"),
              (20240101, "must be a string")]),
    (v_rule_key, [("Bad", "starting with a letter"), ("1x", "starting"), ("a b", "a-z")]),
    (v_any_json, [({1, 2}, "set is not a JSON value"), (float("nan"), "NaN"),
                  (float("inf"), "infinity"), ({1: "a"}, "key 1 is not a string"),
                  (b"x", "bytes is not")]),
    (v_lamp_state, [({**LAMP, "extra": 1}, "exactly the keys"), ({**LAMP, "new": -1}, "new must"),
                    ({**LAMP, "term": True}, "term must"), ({**LAMP, "on": 1}, "on must be true"),
                    ({**LAMP, "old": 2**63}, "old must")]),
    (v_notify_state, [({"term": 1}, "exactly the keys"), ({"term": "1", "sent": True}, "term")]),
    (v_ledger_key, [("", "1 to 400"), ("a b", "without spaces"), ("x" * 401, "1 to 400"),
                    ("é", "printable ASCII")]),
]


@pytest.mark.parametrize("check, values", GOOD, ids=[c.__name__ for c, _ in GOOD])
def test_good_values_pass(check, values):
    for v in values:
        assert check(v) is None, v


@pytest.mark.parametrize("check, cases", BAD, ids=[c.__name__ for c, _ in BAD])
def test_bad_values_raise_a_bad_value_saying_why(check, cases):
    for value, fragment in cases:
        with pytest.raises(BadValue, match=fragment):
            check(value)


def test_bad_value_is_a_value_error():
    assert issubclass(BadValue, ValueError)


def test_json_nesting_is_bounded():
    deep = 0
    for _ in range(32):
        deep = [deep]
    v_any_json(deep)  # the innermost value 32 levels down: the limit
    with pytest.raises(BadValue, match="nested too deeply"):
        v_any_json([deep])


def test_dump_json_is_canonical():
    assert dump_json({"b": 1, "a": ["é", None]}) == '{"a":["é",null],"b":1}'
    assert json.loads(dump_json({"x": [1.5, True]})) == {"x": [1.5, True]}
    with pytest.raises(ValueError):
        dump_json(float("nan"))
    assert MAX_JSON == 64 * 1024


def test_is_int_means_a_plain_int():
    assert is_int(0) and is_int(-3) and is_int(2**70)
    assert not is_int(True) and not is_int(1.0) and not is_int("1") and not is_int(None)
