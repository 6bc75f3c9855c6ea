"""Mailbox PINs, pure part: the PIN's form, the scrypt record and its bounds, the lockout rule."""
from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telephony.core.pin import (
    MAX_MEMORY,
    UNLOCKED,
    LockState,
    PinError,
    PinPolicy,
    after_failure,
    check_pin,
    check_record,
    hash_pin,
    public_view,
    remaining,
    verify_pin,
)

SALT = bytes(range(16))
# cheap parameters for the many-case tests; the default ones are checked once below
CHEAP = dict(n=2 ** 10, r=1, p=1)


@pytest.mark.parametrize("pin", ["0000", "1234", "123456789012", "0012"])
def test_good_pins(pin):
    assert check_pin(pin) == pin


@pytest.mark.parametrize("pin", ["", "123", "1234567890123", "12a4", "12 34", "١٢٣٤", None, 1234,
                                 "1234#", "*123"])
def test_bad_pins_are_refused_without_repeating_them(pin):
    with pytest.raises(PinError) as e:
        check_pin(pin)
    assert str(pin) not in str(e.value) or pin in ("", None)


def test_the_default_record_is_scrypt_n16384_r8_p1_with_a_16_byte_salt():
    rec = hash_pin("4321", SALT)
    assert set(rec) == {"alg", "n", "r", "p", "salt", "hash"}
    assert (rec["alg"], rec["n"], rec["r"], rec["p"]) == ("scrypt", 2 ** 14, 8, 1)
    assert rec["salt"] == SALT.hex() and len(rec["hash"]) == 64
    # the hash is scrypt itself (another implementation's call gives the same bytes)
    assert rec["hash"] == hashlib.scrypt(b"4321", salt=SALT, n=2 ** 14, r=8, p=1, dklen=32).hex()
    assert verify_pin("4321", rec) and not verify_pin("4322", rec)
    assert "4321" not in json.dumps(rec)


def test_the_parameters_travel_with_the_hash():
    old = hash_pin("2468", SALT, **CHEAP)
    assert (old["n"], old["r"]) == (1024, 1)
    assert verify_pin("2468", old) and not verify_pin("2469", old)


def test_another_salt_gives_another_hash():
    assert hash_pin("2468", SALT, **CHEAP)["hash"] != hash_pin("2468", bytes(16), **CHEAP)["hash"]


def test_a_malformed_pin_never_matches():
    rec = hash_pin("2468", SALT, **CHEAP)
    for pin in ("", "246", "2468#", None, 2468):
        assert verify_pin(pin, rec) is False


@pytest.mark.parametrize("change, fragment", [
    (dict(alg="bcrypt"), "alg"),
    (dict(n=1025), "power of 2"),
    (dict(n=2 ** 21), "n must be"),
    (dict(n=2 ** 20, r=8), "128 \\* r \\* n"),
    (dict(r=0), "r must be"),
    (dict(p=17), "p must be"),
    (dict(n=True), "n must be"),
    (dict(salt="00" * 8), "salt"),
    (dict(salt="zz" * 16), "salt"),
    (dict(salt="AB" * 16), "salt"),
    (dict(hash="0" * 63), "hash"),
    (dict(extra=1), "exactly"),
])
def test_a_bad_record_is_refused_before_any_hashing(change, fragment):
    rec = {**hash_pin("2468", SALT, **CHEAP), **change}
    with pytest.raises(PinError, match=fragment):
        check_record(rec)
    with pytest.raises(PinError):
        verify_pin("2468", rec)


def test_memory_bound():
    check_record({**hash_pin("2468", SALT, **CHEAP), "n": MAX_MEMORY // (128 * 8), "r": 8})


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=40),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c,
                                                                        max_size=7)))
def test_fuzzed_records_are_refused_with_pin_error_only(value):
    try:
        check_record(value)
    except PinError:
        return
    assert isinstance(value, dict)  # a record that passes is well formed, and verifiable
    verify_pin("1234", value)


def test_public_view_has_no_salt_or_hash():
    rec = hash_pin("2468", SALT, **CHEAP)
    assert public_view(rec) == {"alg": "scrypt", "n": 1024, "r": 1, "p": 1}
    assert public_view(None) is None


# ============================================================================ lockout


def test_five_failures_lock_for_60_s_then_doubling_to_an_hour():
    policy = PinPolicy()
    s, now = UNLOCKED, 1_000_000.0
    lengths = []
    for _ in range(9):
        for i in range(5):
            assert remaining(s, now) == 0
            s = after_failure(s, now, policy)
            if i < 4:
                assert s.failures == i + 1 and remaining(s, now) == 0
        lengths.append(remaining(s, now))
        assert s.failures == 0
        now = s.locked_until  # the lock runs out
    assert lengths == [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]


def test_policy_is_configurable_and_checked():
    p = PinPolicy(max_failures=2, lockout_s=10, lockout_max_s=25)
    s = after_failure(after_failure(UNLOCKED, 0, p), 0, p)
    assert remaining(s, 0) == 10
    s = after_failure(after_failure(s, 10, p), 10, p)
    assert remaining(s, 10) == 20
    s = after_failure(after_failure(s, 30, p), 30, p)
    assert remaining(s, 30) == 25
    for bad in (dict(max_failures=0), dict(max_failures=True), dict(lockout_s=0),
                dict(lockout_s=float("nan")), dict(lockout_s=100, lockout_max_s=50)):
        with pytest.raises(ValueError):
            PinPolicy(**bad)


def test_lock_state_round_trips_and_missing_is_unlocked():
    s = LockState(3, 2, 1234567)
    assert LockState.from_dict(s.to_dict(term=8)) == s
    assert s.to_dict(8)["term"] == 8
    assert LockState.from_dict(None) is UNLOCKED
