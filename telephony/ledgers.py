"""The MWI and notification ledgers stored in the replicated configuration database
(``telephony.configdb`` tables ``mwi_ledger`` and ``notifications``).

The messaging service opens the node's database itself (SQLite allows several processes; each
write is a ``BEGIN IMMEDIATE`` transaction) and writes with the term it is active in, so every
ledger change enters the node's change log and replicates to the peer like an operator's
change.  A write from a term older than the log's newest term is refused by the database: a
deposed service cannot overwrite what the new active node decided.

These classes are synchronous (SQLite calls); callers run them in a worker thread.
"""
from __future__ import annotations

from collections.abc import Iterable

from telephony.configdb import ConfigDB, ConfigDBError
from telephony.core.mwi import LampState, StaleMwiTerm


class DbMwiLedger:
    """:class:`telephony.core.mwi.MwiLedger` on the ``mwi_ledger`` table."""

    def __init__(self, db: ConfigDB) -> None:
        self.db = db

    @staticmethod
    def _state(row: dict) -> LampState:
        s = row["state"]
        return LampState(mailbox=row["mailbox"], extension=row["extension"], on=s["on"],
                         new=s["new"], old=s["old"], confirmed=s["confirmed"])

    def get(self, mailbox: str) -> LampState | None:
        row = self.db.get("mwi_ledger", mailbox)
        return None if row is None else self._state(row)

    def get_many(self, mailboxes: Iterable[str]) -> dict[str, LampState]:
        want = set(mailboxes)
        return {r["mailbox"]: self._state(r) for r in self.db.list("mwi_ledger") if r["mailbox"] in want}

    def put(self, states: list[LampState], term: int) -> None:
        if not states:
            return
        ops = [{"op": "put", "table": "mwi_ledger", "row": {
            "mailbox": s.mailbox, "extension": s.extension,
            "state": {"on": s.on, "new": s.new, "old": s.old, "confirmed": s.confirmed, "term": term}}}
            for s in states]
        try:
            self.db.write(term, ops)
        except ConfigDBError as e:
            if "below" in str(e) or "parity" in str(e) or "term" in str(e):
                raise StaleMwiTerm(str(e)) from None
            raise


class DbNotificationLedger:
    """:class:`telephony.notify.NotificationLedger` on the ``notifications`` table: a claim is
    written (replicated) before the e-mail goes out, ``sent`` after the server accepted it."""

    def __init__(self, db: ConfigDB) -> None:
        self.db = db

    @staticmethod
    def _row_key(key: str) -> str:
        """notify's key is ``message_id + " " + address``; a message id never holds ``>``,
        so ``message_id>address`` is the same key without the space the table refuses."""
        return key.replace(" ", ">", 1)

    def claim(self, key: str, term: int) -> bool:
        key = self._row_key(key)
        row = self.db.get("notifications", key)
        if row is not None and (row["state"]["sent"] or row["state"]["term"] >= term):
            return False
        self.db.write(term, [{"op": "put", "table": "notifications",
                              "row": {"key": key, "state": {"term": term, "sent": False}}}])
        return True

    def mark_sent(self, key: str, term: int) -> None:
        key = self._row_key(key)
        self.db.write(term, [{"op": "put", "table": "notifications",
                              "row": {"key": key, "state": {"term": term, "sent": True}}}])

    def release(self, key: str, term: int) -> None:
        key = self._row_key(key)
        row = self.db.get("notifications", key)
        if row is not None and not row["state"]["sent"] and row["state"]["term"] <= term:
            self.db.write(term, [{"op": "delete", "table": "notifications", "key": key}])
