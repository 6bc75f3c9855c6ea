"""The mailbox PIN settings (``[messaging] pin_max_failures``, ``pin_lockout``,
``pin_lockout_max``): defaults, bounds, the rule between them, that both nodes must share
them, and that the messaging service reads the same values."""
from __future__ import annotations

import pytest

from failover.config import MUST_MATCH, load_config, shared_settings_digest
from telephony.settings import load_service_settings
from tests.failover.test_config import error_for, minimal, write

KEYS = ("messaging.pin_max_failures", "messaging.pin_lockout", "messaging.pin_lockout_max")


def test_defaults_are_five_failures_60_s_doubling_to_an_hour(tmp_path):
    m = load_config(write(tmp_path, minimal())).messaging
    assert (m.pin_max_failures, m.pin_lockout, m.pin_lockout_max) == (5, 60.0, 3600.0)


def test_the_service_reads_the_same_values(tmp_path):
    p = write(tmp_path, minimal(messaging={"pin_max_failures": 2, "pin_lockout": 10,
                                           "pin_lockout_max": 40}))
    m = load_service_settings(p).messaging
    assert (m.pin_max_failures, m.pin_lockout, m.pin_lockout_max) == (2, 10.0, 40.0)


def test_they_must_match_on_both_nodes(tmp_path):
    assert set(KEYS) <= set(MUST_MATCH)
    a = load_config(write(tmp_path, minimal(), "a.toml"))
    b = load_config(write(tmp_path, minimal(messaging={"pin_lockout": 61}), "b.toml"))
    assert shared_settings_digest(a) != shared_settings_digest(b)


@pytest.mark.parametrize("values, key", [
    ({"pin_max_failures": 0}, "messaging.pin_max_failures"),
    ({"pin_max_failures": 2.5}, "messaging.pin_max_failures"),
    ({"pin_lockout": 0}, "messaging.pin_lockout"),
    ({"pin_lockout_max": 10 ** 7}, "messaging.pin_lockout_max"),
    ({"pin_lockout": 600, "pin_lockout_max": 60}, "messaging.pin_lockout_max"),
])
def test_bad_values_name_the_key(tmp_path, values, key):
    e = error_for(tmp_path, minimal(messaging=values))
    assert key in str(e)
