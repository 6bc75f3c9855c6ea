"""The fork server's two parsers, fuzzed: its reading of a spawn request (``_spawn``: anything
but a JSON object with an ``id`` and an ``argv`` of strings is answered ``spawn_failed`` and
forks nothing) and the driver's reading of the fork server's messages (``parse_event``: only
the three events with their fields, anything else is None).  No process is forked here:
``os.fork`` is replaced by one that records the call and fails."""
from __future__ import annotations

import json
import socket
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from telephony.sip import forkserver

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                max_size=4),
                    max_leaves=12)
REQUESTS = st.one_of(
    st.binary(max_size=300),
    JSON.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"op": st.just("spawn"), "id": JSON, "argv": JSON})
    .map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"id": st.integers(), "argv": st.lists(st.text(max_size=8), max_size=4)})
    .map(lambda v: json.dumps(v).encode()),
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
)


@settings(max_examples=400, deadline=None)
@given(data=REQUESTS)
def test_a_spawn_request_forks_only_when_it_is_one(data):
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    forks: list[int] = []

    def no_fork() -> int:
        forks.append(1)
        raise OSError("no fork in this test")

    try:
        with mock.patch.object(forkserver.os, "fork", no_fork):
            forkserver._spawn(ours, data, lambda: None, lambda argv: 0)
        theirs.setblocking(False)
        answer = json.loads(theirs.recv(forkserver.MAX_MESSAGE))
        try:
            req = json.loads(data)
        except (ValueError, RecursionError):
            req = None
        valid = (isinstance(req, dict) and "id" in req and isinstance(req.get("argv"), list)
                 and all(isinstance(a, str) for a in req["argv"]))
        assert answer["ev"] == "spawn_failed"
        assert forks == ([1] if valid else []), (data, answer)
        assert answer["error"].startswith("fork:" if valid else "bad request:")
        assert len(answer["error"]) <= 500
    finally:
        ours.close()
        theirs.close()


@settings(max_examples=400, deadline=None)
@given(data=REQUESTS | st.fixed_dictionaries(
    {"ev": st.sampled_from(["spawned", "spawn_failed", "exited", "other"]), "id": JSON, "pid": JSON,
     "code": JSON, "error": JSON}).map(lambda v: json.dumps(v).encode()))
def test_the_driver_reads_only_well_formed_events(data):
    msg = forkserver.parse_event(data)
    if msg is None:
        return
    assert msg["ev"] in ("spawned", "spawn_failed", "exited")
    for key in ("pid", "code"):
        if key in msg:
            assert type(msg[key]) is int
    if msg["ev"] == "spawned":
        assert type(msg["id"]) is int
    if msg["ev"] == "spawn_failed":
        assert msg["id"] is None or type(msg["id"]) is int
        assert isinstance(msg["error"], str) and len(msg["error"]) <= 500


def test_the_three_events_read_back():
    for msg in ({"ev": "spawned", "id": 3, "pid": 77}, {"ev": "exited", "pid": 77, "code": -9},
                {"ev": "spawn_failed", "id": 3, "error": "fork: no memory"},
                {"ev": "spawn_failed", "id": None, "error": "bad request: x"}):
        assert forkserver.parse_event(json.dumps(msg).encode()) == msg
    assert forkserver.parse_event(b'{"ev": "exited", "pid": true, "code": 0}') is None
    assert forkserver.parse_event(b'[1, 2]') is None
