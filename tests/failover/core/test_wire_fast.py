"""The STATUS frame's fast path (``struct``) in failover/core/wire.py builds the same bytes
as the ``construct`` definition and reads the same values from any body, the lenient end
(older and newer versions) included; what it does not take goes to ``construct``."""
from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from failover.core.state import Mode, Role, ServiceHealth, State
from failover.core.wire import _FLAG_NAMES, _STATUS_READ, STATUS_BODY, Status, _build_status, _read_status

U16, U32, U64 = (st.integers(0, 2**n - 1) for n in (16, 32, 64))
statuses = st.builds(
    Status, node=st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=32),
    role=st.sampled_from(Role), state=st.sampled_from(State), term=U64,
    service=st.sampled_from(ServiceHealth), mode=st.sampled_from(Mode), eligible=st.booleans(),
    licensed=st.booleans(), hold=st.booleans(), shutting_down=st.booleans(), calls=U16,
    health=st.integers(0, 100), ports=U16, repl_pos=U64, ping_interval_ms=U32,
    uptime_ms=U64, settings=U64)


def construct_build(msg: Status) -> bytes:
    fields = {k: v for k, v in vars(msg).items() if k not in _FLAG_NAMES}
    fields["flags"] = {name: getattr(msg, name) for name in _FLAG_NAMES}
    return STATUS_BODY.build(fields)


def construct_read(body: bytes) -> Status | None:
    """What the receiver made of ``body`` before the fast path (None: dropped as parse)."""
    try:
        f = _STATUS_READ.parse(body)
    except Exception:  # noqa: BLE001 - any construct or decode error is a dropped frame
        return None
    if 0 < len(f.rest) < 8 or (len(f.rest) > 8 and f.rest[8] > 100):
        return None
    f.settings = int.from_bytes(f.rest[:8], "little")
    f.health = f.rest[8] if len(f.rest) > 8 else 100
    return Status(**{k: f[k] for k in Status.__dataclass_fields__ if k not in _FLAG_NAMES},
                  **{k: f.flags[k] for k in _FLAG_NAMES})


@settings(max_examples=300)
@given(statuses)
def test_built_bytes_and_values_read_are_construct_s(msg):
    body = _build_status(msg)
    assert body == construct_build(msg)
    assert _read_status(body) == construct_read(body) == msg
    # the versions before settings and before health, and a later one with more fields
    for cut in (body[:-9], body[:-1], body + b"\x07later"):
        assert _read_status(cut) == construct_read(cut)


@settings(max_examples=300)
@given(statuses, st.integers(0, 80), st.binary(max_size=4))
def test_a_damaged_body_reads_as_construct_reads_it_or_goes_to_construct(msg, at, junk):
    body = bytearray(_build_status(msg))
    at = min(at, len(body) - 1)
    body[at:at + len(junk)] = junk
    fast = _read_status(bytes(body))
    assert fast is None or fast == construct_read(bytes(body))


def test_values_the_fast_path_does_not_take_go_to_construct():
    good = dict(node="alpha", role=Role.PRIMARY, state=State.ACTIVE, term=1,
                service=ServiceHealth.RUNNING, calls=0, ports=0, repl_pos=0,
                ping_interval_ms=100, uptime_ms=0)
    assert _build_status(Status(**good)) == construct_build(Status(**good))
    for bad in ({"node": ""}, {"node": "x" * 33}, {"node": "é"}, {"health": 101},
                {"health": -1}, {"calls": 65536}, {"term": -1}, {"term": 1.5}, {"role": 9}):
        assert _build_status(Status(**{**good, **bad})) is None, bad
    assert _read_status(b"") is None and _read_status(b"\x00") is None
    assert _read_status(os.urandom(3)) is None
