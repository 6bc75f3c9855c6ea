"""The control-channel codec (telephony/core/control.py): framing, golden lines, validation, fuzz."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telephony.core.control import (
    FROM_SERVICE,
    MAX_LINE,
    NEED_DATA,
    TO_SERVICE,
    Closed,
    ControlConnection,
    ControlError,
    FieldError,
    FramingError,
    LocalFramingError,
    make,
    validate,
)

CALL = {"node": "a", "port": "loopback-1", "call_id": "c1", "calling": "4021",
        "called": "5000", "forwarding": "", "reason": "busy", "integration": "loopback"}

# (message, exact wire line) -- the byte form both sides must agree on
GOLDEN = [
    ({"op": "activate", "term": 8, "lease": 0.5}, b'{"op":"activate","term":8,"lease":0.5}\n'),
    ({"op": "renew", "term": 8, "lease": 0.5}, b'{"op":"renew","term":8,"lease":0.5}\n'),
    ({"op": "deactivate", "term": 8, "drain": True},
     b'{"op":"deactivate","term":8,"drain":true}\n'),
    ({"op": "refuse_call", "call_id": "c1", "reason": "manual mode"},
     b'{"op":"refuse_call","call_id":"c1","reason":"manual mode"}\n'),
    ({"op": "shutdown"}, b'{"op":"shutdown"}\n'),
    ({"op": "hello", "pid": 77, "node": "a", "ports": ["loopback-1"]},
     b'{"op":"hello","pid":77,"node":"a","ports":["loopback-1"]}\n'),
    ({"op": "health", "seq": 1, "state": "inactive", "term": None, "calls": 0,
      "ports": [{"name": "loopback-1", "kind": "loopback", "state": "idle"}]},
     b'{"op":"health","seq":1,"state":"inactive","term":null,"calls":0,"ports":'
     b'[{"name":"loopback-1","kind":"loopback","state":"idle"}]}\n'),
    ({"op": "health", "seq": 2, "state": "active", "term": 3, "calls": 0,
      "ports": [{"name": "sccp-1", "kind": "sccp", "state": "idle", "detail": "CiscoUM1-VI1 registered"}]},
     b'{"op":"health","seq":2,"state":"active","term":3,"calls":0,"ports":'
     b'[{"name":"sccp-1","kind":"sccp","state":"idle","detail":"CiscoUM1-VI1 registered"}]}\n'),
    ({"op": "activated", "term": 8}, b'{"op":"activated","term":8}\n'),
    ({"op": "deactivated", "term": 8, "calls": 2}, b'{"op":"deactivated","term":8,"calls":2}\n'),
    ({"op": "fenced", "term": 8, "reason": "lease ran out"},
     b'{"op":"fenced","term":8,"reason":"lease ran out"}\n'),
    ({"op": "error", "message": "stale term 6", "ref": "activate"},
     b'{"op":"error","message":"stale term 6","ref":"activate"}\n'),
    ({"op": "call_offered", "call": CALL},
     b'{"op":"call_offered","call":{"node":"a","port":"loopback-1","call_id":"c1",'
     b'"calling":"4021","called":"5000","forwarding":"","reason":"busy",'
     b'"integration":"loopback"}}\n'),
]


def events(conn: ControlConnection) -> list:
    out = []
    while True:
        ev = conn.next_event()
        if ev is NEED_DATA:
            return out
        out.append(ev)
        if isinstance(ev, Closed):
            return out


def test_counters_by_group_and_their_bounds():
    groups = {"smdi": {"records": 3, "protocol_errors": 0}, "messaging": {"messages": 1}}
    msg = make("counters", groups=groups)
    assert validate(msg, FROM_SERVICE) is msg and msg["groups"] == groups
    assert validate({"op": "counters", "groups": {}}, FROM_SERVICE)
    for bad, fragment in (
            ({"smdi": {"records": -1}}, "between 0 and"),
            ({"smdi": {"records": True}}, "must be an integer"),
            ({"smdi": {"records": 1.5}}, "must be an integer"),
            ({"smdi": {"": 1}}, "counter"),
            ({"": {"records": 1}}, "group"),
            ({"smdi": [1]}, "at most 64 counters"),
            ({"smdi": {f"c{i}": 0 for i in range(65)}}, "at most 64 counters"),
            ({f"g{i}": {} for i in range(17)}, "at most 16 groups"),
            ([], "at most 16 groups")):
        with pytest.raises(FieldError, match=fragment):
            validate({"op": "counters", "groups": bad}, FROM_SERVICE)


# ----------------------------------------------------------------------------- framing


@pytest.mark.parametrize("msg,line", GOLDEN, ids=[m["op"] for m, _ in GOLDEN])
def test_golden_lines_encode_and_decode(msg, line):
    conn = ControlConnection()
    assert conn.send(msg) == line
    conn.receive_data(line)
    assert events(conn) == [msg]
    table = TO_SERVICE if msg["op"] in TO_SERVICE else FROM_SERVICE
    assert validate(msg, table) is msg


def test_byte_by_byte_feeding_gives_the_same_messages():
    wire = b"".join(line for _, line in GOLDEN)
    conn = ControlConnection()
    got = []
    for i in range(len(wire)):
        conn.receive_data(wire[i:i + 1])
        got += events(conn)
    conn.receive_data(b"")
    got += events(conn)
    assert got == [m for m, _ in GOLDEN] + [Closed()]


def test_need_data_until_newline_and_closed_at_eof():
    conn = ControlConnection()
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b'{"op":"shutdown"}')
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"\n")
    assert conn.next_event() == {"op": "shutdown"}
    conn.receive_data(b"")
    assert conn.next_event() == Closed()


def test_incomplete_line_at_eof_is_an_error_event_then_closed():
    conn = ControlConnection()
    conn.receive_data(b'{"op":"shu')
    conn.receive_data(b"")
    ev = conn.next_event()
    assert isinstance(ev, ControlError) and ev.raw == b'{"op":"shu'
    assert conn.next_event() == Closed()


def test_data_after_eof_is_our_bug():
    conn = ControlConnection()
    conn.receive_data(b"")
    with pytest.raises(LocalFramingError):
        conn.receive_data(b"x")


@pytest.mark.parametrize("bad,why", [
    (b"not json", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"term": 3}', 'no string "op"'),
    (b'{"op": 3}', '"op" is not a string'),
    (b"\xff\xfe{}", "not UTF-8"),
    (b'{"op":"activate","term":8,"lease":NaN}', "not JSON"),
    (b"", "not JSON"),
    (b"[" * 100000, None),  # over-long, tested below with a bigger limit
])
def test_bad_line_is_an_error_event_and_the_next_line_still_parses(bad, why):
    if why is None:
        conn = ControlConnection(max_line=200000)
    else:
        conn = ControlConnection()
    conn.receive_data(bad + b'\n{"op":"shutdown"}\n')
    first, second = events(conn)
    assert isinstance(first, ControlError)
    assert first.raw == bad
    if why:
        assert why in first.reason
    assert second == {"op": "shutdown"}


def test_over_long_line_raises_and_stays_broken():
    conn = ControlConnection(max_line=64)
    conn.receive_data(b"x" * 65)
    with pytest.raises(FramingError):
        conn.next_event()
    with pytest.raises(FramingError):
        conn.next_event()


def test_over_long_line_with_its_newline_raises():
    conn = ControlConnection(max_line=64)
    conn.receive_data(b'{"op":"' + b"x" * 64 + b'"}\n')
    with pytest.raises(FramingError):
        conn.next_event()


def test_a_line_of_exactly_max_line_bytes_is_fine():
    msg = {"op": "x", "pad": ""}
    overhead = len(json.dumps(msg, separators=(",", ":")))
    msg["pad"] = "y" * (MAX_LINE - overhead)
    conn = ControlConnection()
    line = conn.send(msg)
    assert len(line) == MAX_LINE + 1
    conn.receive_data(line)
    assert conn.next_event() == msg
    msg["pad"] += "y"
    with pytest.raises(LocalFramingError):
        conn.send(msg)


@pytest.mark.parametrize("msg", [{"term": 1}, {"op": 1}, "shutdown",
                                 {"op": "x", "lease": float("nan")}, {"op": "x", "o": object()}])
def test_send_refuses_what_cannot_be_a_control_line(msg):
    with pytest.raises(LocalFramingError):
        ControlConnection().send(msg)


def test_send_escapes_newlines_inside_strings():
    conn = ControlConnection()
    line = conn.send({"op": "error", "message": "a\nb", "ref": None})
    assert line.count(b"\n") == 1
    conn.receive_data(line)
    assert conn.next_event()["message"] == "a\nb"


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("msg,fragment", [
    ({"op": "activate", "term": 8}, "lease is missing"),
    ({"op": "activate", "term": "8", "lease": 1.0}, "term must be an integer"),
    ({"op": "activate", "term": True, "lease": 1.0}, "term must be an integer"),
    ({"op": "activate", "term": -1, "lease": 1.0}, "term must be between"),
    ({"op": "activate", "term": 2, "lease": 0}, "lease must be above 0"),
    ({"op": "renew", "term": 2, "lease": "1"}, "lease must be a number"),
    ({"op": "deactivate", "term": 2, "drain": 1}, "drain must be true or false"),
    ({"op": "refuse_call", "call_id": "", "reason": "x"}, "call_id must not be empty"),
    ({"op": "refuse_call", "call_id": "c" * 65, "reason": "x"}, "at most 64"),
    ({"op": "dance"}, "unknown op"),
])
def test_validation_names_the_bad_field(msg, fragment):
    with pytest.raises(FieldError, match=fragment):
        validate(msg, TO_SERVICE)


@pytest.mark.parametrize("msg,fragment", [
    ({"op": "health", "seq": 1, "state": "sleeping", "term": None, "calls": 0, "ports": []},
     "state must be one of"),
    ({"op": "health", "seq": 1, "state": "active", "term": 2, "calls": 0,
      "ports": [{"name": "p", "kind": "k"}]}, r"ports\[0\]\.state is missing"),
    ({"op": "health", "seq": 1, "state": "active", "term": 2, "calls": 0,
      "ports": [{"name": "p", "kind": "k", "state": "down", "detail": "x" * 201}]},
     r"ports\[0\]\.detail is 201 characters long"),
    ({"op": "call_offered", "call": {**CALL, "reason": "bored"}}, "reason must be one of"),
    ({"op": "call", "event": "answered", "call": CALL, "term": "2"}, "term must be an integer"),
    ({"op": "hello", "pid": 0, "node": "a", "ports": []}, "pid must be between"),
])
def test_validation_of_service_messages(msg, fragment):
    with pytest.raises(FieldError, match=fragment):
        validate(msg, FROM_SERVICE)


def test_unknown_extra_fields_are_accepted():
    assert validate({"op": "activate", "term": 2, "lease": 1, "why": "x"}, TO_SERVICE)


def test_make_builds_checked_messages_for_both_directions():
    assert make("renew", term=3, lease=0.2) == {"op": "renew", "term": 3, "lease": 0.2}
    assert make("activated", term=3) == {"op": "activated", "term": 3}
    with pytest.raises(FieldError):
        make("deactivated", term=3)


# ----------------------------------------------------------------------------- fuzz


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=300) | st.sampled_from([line for _, line in GOLDEN]),
                max_size=12),
       st.integers(min_value=8, max_value=400))
def test_random_bytes_give_only_events_or_protocol_error(chunks, max_line):
    conn = ControlConnection(max_line=max_line)
    try:
        for chunk in chunks + [b""]:
            conn.receive_data(chunk)
            while True:
                ev = conn.next_event()
                if ev is NEED_DATA or isinstance(ev, Closed):
                    break
                assert isinstance(ev, (dict, ControlError))
                if isinstance(ev, dict):
                    assert isinstance(ev["op"], str)
                else:
                    assert len(ev.raw) <= max_line
    except FramingError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([m for m, _ in GOLDEN]), max_size=8),
       st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=10))
def test_any_split_of_good_lines_round_trips(msgs, cuts):
    sender, receiver = ControlConnection(), ControlConnection()
    wire = b"".join(sender.send(m) for m in msgs)
    got, i, k = [], 0, 0
    while i < len(wire):
        step = cuts[k % len(cuts)]
        receiver.receive_data(wire[i:i + step])
        got += events(receiver)
        i, k = i + step, k + 1
    assert got == msgs


def test_a_drivers_event_for_the_node_event_log():
    msg = make("event", level="warning", event="smdi_down", message="SMDI link /dev/ttyS0 lost: EIO")
    assert validate(msg, FROM_SERVICE) is msg
    for bad in ({"level": "panic", "event": "x", "message": "m"},
                {"level": "info", "event": "", "message": "m"},
                {"level": "info", "event": "x", "message": "m" * 1001},
                {"level": "info", "event": "x"}):
        with pytest.raises(FieldError):
            validate({"op": "event", **bad}, FROM_SERVICE)
