"""The ``drivers`` field of the control channel's ``health`` message (telephony/core/control.py):
each driver's and the store's score, checked like every other field."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telephony.core.control import FROM_SERVICE, FieldError, make, validate

BASE = {"op": "health", "seq": 1, "state": "active", "term": 2, "calls": 0,
        "ports": [{"name": "sip-1", "kind": "sip", "state": "down"}]}


def test_drivers_are_optional_and_checked():
    assert validate(dict(BASE), FROM_SERVICE)  # a service of the version before
    assert validate({**BASE, "drivers": None}, FROM_SERVICE)
    good = [{"name": "sip", "score": 0, "detail": "0/1 ports usable; down: sip-1"},
            {"name": "store", "score": 100, "detail": ""}]
    assert make("health", **{k: v for k, v in BASE.items() if k != "op"}, drivers=good)["drivers"] == good


@pytest.mark.parametrize("drivers, what", [
    ({"name": "sip"}, "must be a list"),
    ([{"name": "sip", "score": 101, "detail": ""}], "between 0 and 100"),
    ([{"name": "sip", "score": -1, "detail": ""}], "between 0 and 100"),
    ([{"name": "sip", "score": True, "detail": ""}], "must be an integer"),
    ([{"name": "sip", "score": 50.5, "detail": ""}], "must be an integer"),
    ([{"name": "", "score": 50, "detail": ""}], "drivers[0].name"),
    ([{"name": "sip", "score": 50, "detail": "x" * 201}], "drivers[0].detail"),
    ([{"name": "sip", "score": 50}], "drivers[0].detail is missing"),
    ([{"name": "sip", "score": 50, "detail": "a\nb"}], "drivers[0].detail"),
    ([{"name": f"d{i}", "score": 50, "detail": ""} for i in range(33)], "at most 32"),
])
def test_bad_drivers_are_refused(drivers, what):
    with pytest.raises(FieldError) as e:
        validate({**BASE, "drivers": drivers}, FROM_SERVICE)
    assert what in str(e.value)


@given(st.one_of(st.none(), st.integers(), st.text(max_size=5),
                 st.lists(st.dictionaries(st.sampled_from(["name", "score", "detail", "x"]),
                                          st.one_of(st.integers(-5, 105), st.text(max_size=8),
                                                    st.none(), st.booleans()), max_size=4),
                          max_size=4)))
def test_fuzzed_drivers_are_accepted_or_refused_with_field_error(drivers):
    msg = {**BASE, "drivers": drivers}
    try:
        validate(msg, FROM_SERVICE)
    except FieldError:
        return
    assert drivers is None or all(0 <= d["score"] <= 100 and not isinstance(d["score"], bool)
                                  for d in drivers)
