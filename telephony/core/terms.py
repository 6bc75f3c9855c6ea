"""Terms, the fencing tokens of the active node: the pair's two roles, the parity of their
terms, and the checks every core shares.  Pure.

A term is an integer >= 0 (never a bool), and terms only move forward: a request that carries
a term older than one already seen is refused and changes nothing.  The primary takes even
terms and the secondary odd ones (:func:`term_parity`), so two nodes never share a term.

:class:`StaleTerm` is the one "stale term" error.  A core refines it with its own error
family, so that a caller catches either the refusal as such (``except StaleTerm``) or every
error of that core (the activation lease's ``StaleActivationTerm`` is an ``ActivationError``,
the MWI planner's ``StaleMwiTerm`` an ``MwiError``, a ``ValueError``).
"""
from __future__ import annotations

from enum import IntEnum

__all__ = ["Role", "term_parity", "StaleTerm", "check_term"]


class Role(IntEnum):
    """The two nodes of the pair (the node manager's and the configuration database's)."""

    PRIMARY = 0
    SECONDARY = 1

    @property
    def label(self) -> str:
        return self.name.lower()


def term_parity(role: Role) -> int:
    """Primary terms are even, secondary terms odd: two nodes never share a term."""
    return 0 if role is Role.PRIMARY else 1


class StaleTerm(Exception):
    """A request carried a term older than one already seen; it was refused, nothing changed."""


def check_term(term: object, error: type[Exception] = ValueError) -> int:
    """``term`` if it is an integer >= 0 (an ``int``, not a bool or an ``int`` subclass), else
    raise ``error`` (the caller's own bad-input error) naming the value."""
    if type(term) is not int or term < 0:
        raise error(f"term must be an integer >= 0, not {term!r}")
    return term
