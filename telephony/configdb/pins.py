"""Mailbox PINs and lockouts in the replicated configuration database (tables ``pins`` and
``pin_lockouts``, :mod:`telephony.configdb.core.schema`).

:class:`PinBook` reads them and builds the writes.  The messaging service writes with the term
it is active in (like the MWI ledger), so every failure, lockout and phone PIN change enters
the node's change log and replicates to the peer, which enforces the same lock after a
failover.  The operator's ``vmha db pin`` writes the same rows through the node manager
(:func:`set_pin_ops`, :func:`unlock_ops`, ...): the hash is made by the command, so the PIN
itself never reaches the node manager or the database.

Synchronous (SQLite); the service calls it from its database thread.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass

from telephony.configdb.db import ConfigDB
from telephony.core.pin import (
    SALT_BYTES,
    UNLOCKED,
    LockState,
    PinPolicy,
    after_failure,
    hash_pin,
)


@dataclass(frozen=True)
class PinEntry:
    """A subscriber's PIN row: ``record`` (the hash record, None: no PIN set) and the
    skip-PIN opt-in."""

    record: dict | None = None
    skip_pin_from_own_phone: bool = False


def new_record(pin: str) -> dict:
    """The hash record of ``pin`` with a fresh random salt (raises ``PinError``)."""
    return hash_pin(pin, secrets.token_bytes(SALT_BYTES))


def pin_row(extension: str, entry: PinEntry) -> dict:
    return {"extension": extension, "pin": entry.record,
            "skip_pin_from_own_phone": entry.skip_pin_from_own_phone}


def set_pin_ops(extension: str, record: dict | None, *, skip: bool, locked: bool) -> list[dict]:
    """The operations that give ``extension`` the PIN ``record`` (None: no PIN) with the
    skip opt-in ``skip``; ``locked``: a lockout row exists and is deleted with it (a new PIN
    starts with a clean slate)."""
    ops = [{"op": "put", "table": "pins",
            "row": pin_row(extension, PinEntry(record, skip))}]
    return ops + unlock_ops(extension, locked)


def unlock_ops(extension: str, locked: bool) -> list[dict]:
    return [{"op": "delete", "table": "pin_lockouts", "key": extension}] if locked else []


class PinBook:
    """Reads and writes of one database's PIN tables."""

    def __init__(self, db: ConfigDB, policy: PinPolicy | None = None) -> None:
        self.db = db
        self.policy = policy or PinPolicy()

    def entry(self, extension: str) -> PinEntry:
        row = self.db.get("pins", extension)
        if row is None:
            return PinEntry()
        return PinEntry(row["pin"], bool(row["skip_pin_from_own_phone"]))

    def lock_state(self, extension: str) -> LockState:
        row = self.db.get("pin_lockouts", extension)
        return UNLOCKED if row is None else LockState.from_dict(row["state"])

    def record_failure(self, extension: str, now: float, term: int) -> LockState:
        """One more wrong PIN: the new lockout record, written (and replicated)."""
        state = after_failure(self.lock_state(extension), now, self.policy)
        self.db.write(term, [{"op": "put", "table": "pin_lockouts",
                              "row": {"extension": extension, "state": state.to_dict(term)}}])
        return state

    def record_success(self, extension: str, term: int) -> None:
        """A right PIN: the failures and lockouts are forgotten."""
        if self.db.get("pin_lockouts", extension) is not None:
            self.db.write(term, unlock_ops(extension, True))

    def set_record(self, extension: str, record: dict | None, term: int) -> bool:
        """A new PIN hash (the subscriber changed it from the phone); the opt-in is kept."""
        skip = self.entry(extension).skip_pin_from_own_phone
        locked = self.db.get("pin_lockouts", extension) is not None
        self.db.write(term, set_pin_ops(extension, record, skip=skip, locked=locked))
        return True
