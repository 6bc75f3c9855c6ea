"""The configuration database: SQLite through ``apsw``, replicated both ways between the pair.

Layers, all synchronous and used from one worker thread at a time (the caller serialises),
each in its own module; :class:`ConfigDB` (:mod:`~telephony.configdb.db`) is all of them:

* **repository** (:mod:`~telephony.configdb.repository`) — five replicated tables
  (``TABLES``, :mod:`~telephony.configdb.core.schema`) with natural text primary keys, so that
  the "same" object created on both nodes collides; every value is validated in Python before
  any SQL runs (the checks: :mod:`~telephony.configdb.core.validators`; ``ConfigDBError``
  names the table, column and value) and a failed write changes nothing;
* **change log** (:mod:`~telephony.configdb.changelog`) — every :meth:`ConfigDB.write` is one
  transaction whose changes are captured with the SQLite session extension and appended to
  ``_vmha_log`` (seq, term, sha256 digest, changeset) in the same transaction;
* **remote apply** (:mod:`~telephony.configdb.remote`) — :meth:`ConfigDB.apply_remote`
  applies the peer's log entries with the conflict rule *primary wins*, records what each
  conflict overwrote or dropped in ``_vmha_conflicts``, and never captures them in our own log;
* **rolling checksum** (:mod:`~telephony.configdb.core.checksum`) — an order-independent u64
  over every row of every replicated table, kept incrementally by triggers; two nodes whose
  positions line up compare it to detect divergence (:meth:`ConfigDB.diverged`);
* **snapshots** (:mod:`~telephony.configdb.snapshots`) — a full copy of the replicated tables
  as one changeset of INSERTs, for a peer whose position was pruned from the log or whose data
  diverged.

The connection, transactions and schema creation are in :mod:`~telephony.configdb.database`;
the pure parts (value checks, schema, checksum, errors, results) in
:mod:`telephony.configdb.core`.  Internal tables (``_vmha_log``, ``_vmha_meta``,
``_vmha_conflicts``) are never replicated.
"""
from __future__ import annotations

from telephony.configdb.core.checksum import row_hash
from telephony.configdb.core.errors import ConfigDBError, DiskFull, LogGap, Refused
from telephony.configdb.core.results import (
    ApplyResult,
    InstallResult,
    LogEntry,
    ReplState,
    Snapshot,
    WriteResult,
)
from telephony.configdb.core.schema import SCHEMA_VERSION, TABLES, Column, Table
from telephony.configdb.core.validators import ACTION_KEYS, MAX_JSON, MWI_METHODS
from telephony.configdb.database import BUSY_TIMEOUT_MS
from telephony.configdb.db import ConfigDB

__all__ = [
    "ConfigDB", "ConfigDBError", "DiskFull", "LogGap", "Refused", "ApplyResult",
    "InstallResult", "LogEntry", "ReplState", "Snapshot", "WriteResult", "SCHEMA_VERSION",
    "TABLES", "Column", "Table", "row_hash", "MWI_METHODS", "ACTION_KEYS", "MAX_JSON",
    "BUSY_TIMEOUT_MS",
]
