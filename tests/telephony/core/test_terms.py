"""telephony/core/terms.py: the one term check and the one StaleTerm, refined by each core so
that every existing ``except`` still catches its refusals."""
from __future__ import annotations

import pytest

from failover.core import state
from telephony.core.activation import Activation, ActivationError, StaleActivationTerm
from telephony.core.mwi import MemoryMwiLedger, MwiError, MwiPlanner, StaleMwiTerm
from telephony.core.terms import Role, StaleTerm, check_term, term_parity
from telephony.notify import MemoryNotificationLedger, NotifyError


@pytest.mark.parametrize("term", [0, 1, 2, 2**63])
def test_check_term_returns_a_good_term(term):
    assert check_term(term) == term


@pytest.mark.parametrize("term", [-1, True, False, 1.0, "2", None])
def test_check_term_raises_the_callers_error(term):
    with pytest.raises(ValueError, match=r"term must be an integer >= 0, not "):
        check_term(term)
    with pytest.raises(MwiError, match="term must be an integer"):
        check_term(term, MwiError)
    with pytest.raises(NotifyError, match="term must be an integer"):
        check_term(term, NotifyError)


def test_the_refinements_are_stale_terms_and_their_cores_errors():
    assert issubclass(StaleActivationTerm, StaleTerm) and issubclass(StaleActivationTerm,
                                                                     ActivationError)
    assert issubclass(StaleMwiTerm, StaleTerm) and issubclass(StaleMwiTerm, MwiError)
    assert issubclass(StaleMwiTerm, ValueError)
    assert not issubclass(StaleActivationTerm, ValueError)  # as before: not a ValueError


def test_every_core_raises_a_stale_term():
    a = Activation()
    a.activate(4, 1.0, now=0.0)
    with pytest.raises(StaleTerm, match="stale term 2"):
        a.renew(2, 1.0, now=0.1)
    p = MwiPlanner(MemoryMwiLedger())
    p.set_term(5)
    with pytest.raises(StaleTerm, match="older than the current term 5"):
        p.set_term(3)
    ledger = MemoryMwiLedger()
    ledger.put([], 7)
    with pytest.raises(StaleTerm, match="term 7 has written"):
        ledger.put([], 6)


def test_the_memory_ledgers_check_terms_with_their_own_error():
    with pytest.raises(MwiError, match="term must be"):
        MemoryMwiLedger().put([], -1)
    with pytest.raises(NotifyError, match="term must be"):
        MemoryNotificationLedger().claim("k", "2")


def test_roles_and_their_term_parity():
    assert [r.label for r in Role] == ["primary", "secondary"]
    assert term_parity(Role.PRIMARY) == 0 and term_parity(Role.SECONDARY) == 1
    assert Role["PRIMARY"] is Role.PRIMARY and int(Role.SECONDARY) == 1


def test_the_node_manager_uses_the_same_roles():
    assert state.Role is Role and state.term_parity is term_parity
    assert state.next_term(Role.PRIMARY, 3) == 4 and state.next_term(Role.SECONDARY, 3) == 5
