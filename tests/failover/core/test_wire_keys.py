"""Key ids in the HELLO of the node link (failover/core/wire.py) and of the replication channel
(failover/core/replwire.py): several accepted keys, the acceptor answering with the dialer's
key, the HELLO of the version before key ids, and fuzzing of the HELLO parser."""
from __future__ import annotations

import hashlib
import hmac
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from failover.core import replwire as rw
from failover.core import wire
from failover.core.fields import key_id
from failover.core.replwire import Channel, DbSchema, ReplConnection
from failover.core.state import Mode, Role, ServiceHealth, State
from failover.core.wire import Command, CommandKind, LinkConnection, Status

K_OLD = bytes(range(32))
K_NEW = bytes(range(100, 132))
K_OTHER = bytes(range(200, 232))
N_D = bytes.fromhex("d0" * 16)
N_A = bytes.fromhex("a0" * 16)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def spec_id(key: bytes) -> bytes:
    return hmac.new(key, b"vmha-key-id-1", hashlib.sha256).digest()[:8]


def link(dialer: bool, keys, **kw) -> LinkConnection:
    return LinkConnection(keys=keys, node="alpha" if dialer else "beta",
                          role=Role.PRIMARY if dialer else Role.SECONDARY, dialer=dialer,
                          nonce=N_D if dialer else N_A, expected_peer="beta" if dialer else "alpha",
                          **kw)


def repl(dialer: bool, keys, **kw) -> ReplConnection:
    return ReplConnection(keys=keys, node="alpha" if dialer else "beta",
                          role=Role.PRIMARY if dialer else Role.SECONDARY,
                          channel=Channel.DB if dialer else None, dialer=dialer,
                          nonce=N_D if dialer else N_A, expected_peer="beta" if dialer else "alpha",
                          **kw)


MAKERS = {"link": (link, wire.RemoteLinkError, wire.LocalLinkError),
          "repl": (repl, rw.RemoteReplError, rw.LocalReplError)}


def handshake(make, d_keys, a_keys):
    d, a = make(True, d_keys), make(False, a_keys)
    a.receive_data(d.hello())
    a.next_event()
    d.receive_data(a.hello())
    d.next_event()
    return d, a


def status() -> Status:
    return Status(node="alpha", role=Role.PRIMARY, state=State.ACTIVE, term=3,
                  service=ServiceHealth.RUNNING, mode=Mode.AUTOMATIC, eligible=True, licensed=True,
                  hold=False, shutting_down=False, calls=0, ports=1, repl_pos=0,
                  ping_interval_ms=1000, uptime_ms=5)


def test_key_id_is_the_documented_hmac():
    assert key_id(K_NEW) == spec_id(K_NEW) and len(key_id(K_NEW)) == 8
    assert key_id(K_NEW) != key_id(K_OLD)


@pytest.mark.parametrize("kind", MAKERS)
@pytest.mark.parametrize("d_keys, a_keys, used", [
    ((K_NEW,), (K_NEW, K_OLD), K_NEW),           # both rotated, peer still accepts the old one
    ((K_OLD,), (K_NEW, K_OLD), K_OLD),           # the dialer has not got the new file yet
    ((K_NEW, K_OLD), (K_OLD,), None),            # the acceptor has not: refused with K_NEW ...
    ((K_OLD, K_NEW), (K_OLD,), K_OLD),           # ... and the dialer's next attempt uses K_OLD
], ids=["both-rotated", "dialer-not-yet", "acceptor-not-yet", "dialer-falls-back"])
def test_acceptor_answers_with_the_dialers_key(kind, d_keys, a_keys, used):
    make, remote, _ = MAKERS[kind]
    d, a = make(True, d_keys), make(False, a_keys)
    hello = d.hello()
    assert d.key_id == spec_id(d_keys[0])
    assert hello[-40:-32] == spec_id(d_keys[0])  # the id sits right before the MAC
    a.receive_data(hello)
    if used is None:
        with pytest.raises(remote, match="do not accept"):
            a.next_event()
        assert not a.established and a.key_id is None
        return
    a.next_event()
    answer = a.hello()
    assert answer[-40:-32] == spec_id(used) and a.key_id == spec_id(used)
    d.receive_data(answer)
    d.next_event()
    assert d.established and a.established
    # the session keys are derived from the key in use: sealed frames go through
    if kind == "link":
        c = Command(CommandKind.TAKE_OVER, 4, "x")
        a.receive_data(d.send(c))
        assert a.next_event() == c
    else:
        m = DbSchema(version=3)
        a.receive_data(d.send(m))
        assert a.next_event() == m
        d.receive_data(a.send(m))
        assert d.next_event() == m


@pytest.mark.parametrize("kind", MAKERS)
def test_dialer_refuses_an_answer_with_another_accepted_key(kind):
    """The acceptor must answer with the dialer's key, not just any key the dialer knows."""
    make, remote, _ = MAKERS[kind]
    d = make(True, (K_NEW, K_OLD))
    d.hello()
    other_d = make(True, (K_OLD,))
    a = make(False, (K_OLD,))
    a.receive_data(other_d.hello())
    a.next_event()
    d.receive_data(a.hello())  # signed with K_OLD, which d accepts but did not sign with
    with pytest.raises(remote, match="do not accept"):
        d.next_event()


@pytest.mark.parametrize("kind", MAKERS)
def test_known_id_with_a_bad_mac_is_refused(kind):
    make, remote, _ = MAKERS[kind]
    hello = bytearray(make(True, (K_NEW,)).hello())
    hello[-1] ^= 1
    a = make(False, (K_NEW, K_OLD))
    a.receive_data(bytes(hello))
    with pytest.raises(remote, match="MAC mismatch for key id"):
        a.next_event()


def legacy_link_hello(key: bytes) -> bytes:
    """A node-link HELLO of the version before key ids, built from the old design page."""
    body = b"\x05alpha" + bytes([Role.PRIMARY]) + N_D
    signed = b"VM\x01\x01" + struct.pack("<H", len(body) + 32) + body
    return signed + hmac.new(key, b"vmha-hello-1" + signed, hashlib.sha256).digest()


def legacy_repl_hello(key: bytes) -> bytes:
    body = b"\x05alpha" + bytes([Role.PRIMARY, Channel.DB]) + N_D
    signed = b"VR\x01\x01" + struct.pack("<I", len(body) + 32) + body
    return signed + hmac.new(key, b"vmha-repl-hello-1" + signed, hashlib.sha256).digest()


@pytest.mark.parametrize("kind, build", [("link", legacy_link_hello), ("repl", legacy_repl_hello)])
def test_hello_of_the_version_before_key_ids_is_accepted_and_answered_alike(kind, build):
    make, remote, _ = MAKERS[kind]
    a = make(False, (K_NEW, K_OLD))
    a.receive_data(build(K_OLD))
    a.next_event()
    assert a.key_id == spec_id(K_OLD)
    answer = a.hello()
    # the answer has no key id either: the body ends nonce + MAC, as the old program expects
    node_role = b"\x04beta" + bytes([Role.SECONDARY]) + (b"" if kind == "link" else bytes([Channel.DB]))
    header = len(answer) - len(node_role) - 16 - 32
    assert answer[header:-32] == node_role + N_A
    label = b"vmha-hello-1" if kind == "link" else b"vmha-repl-hello-1"
    assert answer[-32:] == hmac.new(K_OLD, label + answer[:-32], hashlib.sha256).digest()
    # and one signed with a key the acceptor does not hold is refused
    b = make(False, (K_NEW,))
    b.receive_data(build(K_OTHER))
    with pytest.raises(remote, match="without key id"):
        b.next_event()


@pytest.mark.parametrize("kind, build", [("link", legacy_link_hello), ("repl", legacy_repl_hello)])
def test_dialer_does_not_take_an_answer_without_key_id(kind, build):
    make, remote, _ = MAKERS[kind]
    d = make(True, (K_OLD,))
    d.hello()
    legacy = build(K_OLD)  # the right form for an acceptor's answer only in the older version
    d.receive_data(legacy)
    with pytest.raises(remote, match="malformed"):
        d.next_event()


@pytest.mark.parametrize("kind", MAKERS)
@pytest.mark.parametrize("keys", [(), [K_NEW] * 0, (K_NEW, K_NEW), (K_NEW, b""), (K_NEW, "text"),
                                  K_NEW, (K_NEW,) * 5, None])
def test_bad_key_sets_are_refused(kind, keys):
    make, _, local = MAKERS[kind]
    with pytest.raises(local):
        make(True, keys)


@pytest.mark.parametrize("kind", MAKERS)
@FUZZ
@given(d_keys=st.lists(st.sampled_from([K_OLD, K_NEW, K_OTHER]), min_size=1, max_size=3, unique=True),
       a_keys=st.lists(st.sampled_from([K_OLD, K_NEW, K_OTHER]), min_size=1, max_size=3, unique=True))
def test_handshake_succeeds_iff_the_dialers_first_key_is_accepted(kind, d_keys, a_keys):
    make, remote, _ = MAKERS[kind]
    d, a = make(True, tuple(d_keys)), make(False, tuple(a_keys))
    a.receive_data(d.hello())
    if d_keys[0] not in a_keys:
        with pytest.raises(remote):
            a.next_event()
        return
    a.next_event()
    d.receive_data(a.hello())
    d.next_event()
    assert d.established and a.established and d.key_id == a.key_id == spec_id(d_keys[0])


@pytest.mark.parametrize("kind", MAKERS)
@FUZZ
@given(data=st.binary(max_size=120), cut=st.integers(min_value=0, max_value=80),
       flip=st.integers(min_value=0, max_value=1000))
def test_mutated_hellos_only_raise_the_protocol_error(kind, data, cut, flip):
    """A HELLO cut, extended or with a bit flipped is refused with the codec's own error (or,
    for the untouched one, accepted); nothing else escapes and nothing is established."""
    make, remote, _ = MAKERS[kind]
    hello = bytearray(make(True, (K_NEW,)).hello())
    i = flip % (len(hello) * 8)
    hello[i // 8] ^= 1 << (i % 8)
    header = 6 if kind == "link" else 8
    body = bytes(hello[header:])[:cut] + data
    frame = bytes(hello[:header]) + body
    fixed = bytearray(frame)
    if kind == "link":
        fixed[4:6] = struct.pack("<H", len(body))
    else:
        fixed[4:8] = struct.pack("<I", len(body))
    for candidate in (frame, bytes(fixed)):
        a = make(False, (K_NEW, K_OLD))
        try:
            a.receive_data(candidate)
            event = a.next_event()
        except remote:
            assert not a.established
            continue
        if event is rw.NEED_DATA:  # a length that asks for more: nothing happened yet
            assert not a.established and a.key_id is None
            continue
        a.hello()
        assert a.established and a.key_id in (spec_id(K_NEW), spec_id(K_OLD))
