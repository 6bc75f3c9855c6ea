"""Terms, the fencing tokens of the active node: the checks every core shares.  Pure.

A term is an integer >= 0 (never a bool), and terms only move forward: a request that carries
a term older than one already seen is refused and changes nothing.

:class:`StaleTerm` is the one "stale term" error.  A core refines it with its own error
family, so that a caller catches either the refusal as such (``except StaleTerm``) or every
error of that core (the activation lease's ``StaleActivationTerm`` is an ``ActivationError``,
the MWI planner's ``StaleMwiTerm`` an ``MwiError``, a ``ValueError``).
"""
from __future__ import annotations

__all__ = ["StaleTerm", "check_term"]


class StaleTerm(Exception):
    """A request carried a term older than one already seen; it was refused, nothing changed."""


def check_term(term: object, error: type[Exception] = ValueError) -> int:
    """``term`` if it is an integer >= 0 (an ``int``, not a bool or an ``int`` subclass), else
    raise ``error`` (the caller's own bad-input error) naming the value."""
    if type(term) is not int or term < 0:
        raise error(f"term must be an integer >= 0, not {term!r}")
    return term
