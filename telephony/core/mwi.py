"""Message-waiting indicator (MWI) ownership.  Pure: no trio, sockets, clocks or files.

Exactly one node is active, in a fencing **term** (primary: even terms, secondary: odd).  The
active node owns the lamps: the planner decides which lamps must change and hands the MWI
driver (SIP NOTIFY, SMDI, ...) one :class:`MwiJob` per lamp to set.  A job carries the term it
was planned in; the driver calls :meth:`MwiPlanner.check_job` just before it sends and drops a
job that is refused (a node that was fenced, or a job superseded by a newer one).

**The ledger** (:class:`MwiLedger`, replicated between the nodes through the configuration
database) holds, per mailbox, the lamp state we *want* (``on``), the counts it was planned
from, and whether the driver *confirmed* sending it.  The planner writes the wanted state
**before** the job goes out (``confirmed=False``: the lamp is uncertain from here on) and the
driver's confirmation marks it confirmed.  So a node that takes over knows which lamps were
settled and which were in flight when the old node stopped, and its :meth:`MwiPlanner.resync`
sends only those plus the lamps whose wanted state differs from the message counts.

Rules:

* wanted lamp = ``new > 0``.  For a lamp that shows counts (``counts=True``: a SIP
  message-summary ``Voice-Message: new/old``) a change of ``new`` or ``old`` also makes a job;
  for an on/off-only lamp (SMDI) a count change that leaves the lamp as it is makes no job and
  no ledger write.  The counts in the ledger are those of the last job planned;
* a job is made when the wanted lamp differs from the ledger's, when the ledger entry is not
  confirmed, when there is no entry (the lamp's state is unknown), or when the subscriber's
  extension changed (then the old extension's lamp is also switched off if it was on);
* :class:`LampCoalescer` spaces the jobs of one mailbox: at most one per ``window`` seconds
  (the first change goes out at once, later ones wait for the window's end and go out as one
  job carrying the counts of that moment);
* every job is for the planner's current term; a job of another term, or of a term older than
  the newest that wrote the ledger, or after :meth:`MwiPlanner.stand_down`, is refused;
* bad input raises :class:`MwiError` (a ``ValueError``) naming the value; nothing is written.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Container, Iterable, Mapping, Protocol, runtime_checkable

from telephony.core.ids import EXTENSION_RE, MAILBOX_RE, check_count
from telephony.core.terms import StaleTerm, check_term

REASONS = ("deliver", "heard", "resync", "retry")
DAY = 86400

_TIME_OF_DAY = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])(?::([0-5][0-9]))?")


class MwiError(ValueError):
    """Bad input, or a request that cannot be satisfied; nothing was changed."""


class StaleMwiTerm(MwiError, StaleTerm):
    """A ledger write (or a new planner term) from a term older than one already seen (an
    MwiError and a :class:`~telephony.core.terms.StaleTerm`)."""


class TransmitRefused(Exception):
    """A driver was handed a lamp job of a term the node is not active in: it sent nothing."""


def require_term(active_term: int | None, job: "MwiJob", what: str) -> None:
    """A driver's last check before a lamp job goes on the wire: raises
    :class:`TransmitRefused` unless the node is active (``active_term`` is not None) in the
    job's own term.  ``what`` names what was not sent, for the message."""
    if active_term is None or active_term != job.term:
        raise TransmitRefused(f"not active in term {job.term} (active term: {active_term}): "
                              f"{what} not sent")


@dataclass(frozen=True)
class MwiJob:
    """Set the lamp of ``extension`` (the phone of ``mailbox``) on or off.  ``new``/``old``
    are the counts a driver may show (SIP message-summary ``Voice-Message: new/old``)."""

    extension: str
    mailbox: str
    on: bool
    new: int
    old: int
    term: int
    reason: str  # one of REASONS


@dataclass(frozen=True)
class LampState:
    """One ledger row.  ``on`` is the lamp state we want; ``confirmed``: the driver confirmed
    sending the lamp in this state (False: a job for it is, or may be, in flight)."""

    mailbox: str
    extension: str
    on: bool
    new: int
    old: int
    confirmed: bool


@runtime_checkable
class MwiLedger(Protocol):
    """Storage of :class:`LampState` by mailbox (a replicated table in production).

    ``put`` writes every state of the list in one transaction, tagged with ``term``; a storage
    that knows a newer term refuses it (raises) and writes nothing.  Optional members, used
    when present: ``get_many(mailboxes) -> dict[mailbox, LampState]`` (:meth:`MwiPlanner.resync`
    reads with one query instead of one per subscriber) and ``term`` (int: the newest term
    that wrote; :meth:`MwiPlanner.check_job` refuses jobs of older terms)."""

    def get(self, mailbox: str) -> LampState | None: ...

    def put(self, states: list[LampState], term: int) -> None: ...


class MemoryMwiLedger:
    """An in-memory :class:`MwiLedger` for tests.  ``puts`` counts the write transactions."""

    def __init__(self, states: Iterable[LampState] = ()) -> None:
        self._rows: dict[str, LampState] = {s.mailbox: s for s in states}
        self.term = 0  # the newest term that wrote
        self.puts = 0

    def get(self, mailbox: str) -> LampState | None:
        return self._rows.get(mailbox)

    def get_many(self, mailboxes: Iterable[str]) -> dict[str, LampState]:
        rows = self._rows
        return {m: rows[m] for m in mailboxes if m in rows}

    def put(self, states: list[LampState], term: int) -> None:
        check_term(term, MwiError)
        if term < self.term:
            raise StaleMwiTerm(f"ledger write from term {term} refused: term {self.term} "
                            "has written since")
        for s in states:
            if not isinstance(s, LampState):
                raise MwiError(f"ledger rows must be LampState, not {type(s).__name__}")
        self.term = term
        self.puts += 1
        for s in states:
            self._rows[s.mailbox] = s

    def all(self) -> dict[str, LampState]:
        return dict(self._rows)


# --------------------------------------------------------------------------- validation

def _check_mailbox(mailbox: object) -> str:
    if not isinstance(mailbox, str) or not MAILBOX_RE.fullmatch(mailbox):
        raise MwiError(f"mailbox {mailbox!r}: 1 to 64 of A-Z a-z 0-9 _ . - "
                       "(not starting with _ . -)")
    return mailbox


def _check_extension(mailbox: str, extension: object) -> str:
    if not isinstance(extension, str) or not EXTENSION_RE.fullmatch(extension):
        raise MwiError(f"extension {extension!r} of mailbox {mailbox!r} must be 1 to 32 digits")
    return extension


# --------------------------------------------------------------------------- planner

class MwiPlanner:
    """Plans lamp jobs against a ledger.  Not thread-safe: one caller at a time."""

    def __init__(self, ledger: MwiLedger) -> None:
        for name in ("get", "put"):
            if not callable(getattr(ledger, name, None)):
                raise MwiError(f"ledger has no {name}() method")
        self.ledger = ledger
        self.term: int | None = None  # None: never active, plans nothing
        self.active = False  # set_term() .. stand_down()
        self.last_error: dict[str, str] = {}  # mailbox -> the driver's last failure

    # ----------------------------------------------------------------- term

    def set_term(self, term: int) -> None:
        """The node became active in ``term`` (after the takeover: call :meth:`resync`).
        Terms only go up; every job of an earlier term is refused from now on."""
        check_term(term, MwiError)
        if self.term is not None and term < self.term:
            raise StaleMwiTerm(f"term {term} is older than the current term {self.term}")
        self.term = term
        self.active = True

    def stand_down(self) -> None:
        """The node is no longer active: every job is refused and nothing is planned until
        the next :meth:`set_term`."""
        self.active = False

    def _current(self) -> int:
        if self.term is None:
            raise MwiError("no term: the planner plans jobs only after set_term()")
        if not self.active:
            raise MwiError(f"the node stood down in term {self.term}: no jobs until set_term()")
        return self.term

    # ----------------------------------------------------------------- planning

    def on_counts(self, mailbox: str, extension: str, new: int, old: int,
                  reason: str, *, counts: bool = False) -> list[MwiJob]:
        """The counts of ``mailbox`` changed (a message was delivered, heard, deleted):
        the jobs to run, usually none or one.  ``counts``: the lamp shows the counts (a
        change of them is a job too)."""
        term = self._current()
        _check_mailbox(mailbox)
        _check_extension(mailbox, extension)
        check_count("new", mailbox, new, MwiError)
        check_count("old", mailbox, old, MwiError)
        if reason not in REASONS:
            raise MwiError(f"reason {reason!r} is not one of {', '.join(REASONS)}")
        states, jobs = [], []
        self._plan(mailbox, extension, new, old, reason, term, self.ledger.get(mailbox),
                   states, jobs, bool(counts))
        if states:
            self.ledger.put(states, term)
        return jobs

    def resync(self, counts: Mapping[str, tuple[str, int, int]], *,
               with_counts: Container[str] = ()) -> list[MwiJob]:
        """After every takeover and daily: ``counts`` maps every subscriber's mailbox to
        ``(extension, new, old)`` from the message store (a subscriber with no messages:
        ``(extension, 0, 0)``).  Jobs only for the lamps that differ from the ledger, are not
        confirmed or not known, all written to the ledger in one transaction.  The lamps of
        the mailboxes in ``with_counts`` show counts: for them a count that differs from the
        ledger's is a difference too.

        Ledger rows of mailboxes not in ``counts`` (deleted subscribers) are left alone."""
        term = self._current()
        if not isinstance(counts, Mapping):
            raise MwiError(f"counts must be a mapping mailbox -> (extension, new, old), "
                           f"not {type(counts).__name__}")
        checked: list[tuple[str, str, int, int]] = []
        seen_ext: dict[str, str] = {}
        for mailbox, value in counts.items():
            _check_mailbox(mailbox)
            if not isinstance(value, tuple) or len(value) != 3:
                raise MwiError(f"counts[{mailbox!r}] must be a tuple (extension, new, old), "
                               f"not {value!r}")
            extension, new, old = value
            _check_extension(mailbox, extension)
            check_count("new", mailbox, new, MwiError)
            check_count("old", mailbox, old, MwiError)
            other = seen_ext.setdefault(extension, mailbox)
            if other != mailbox:
                raise MwiError(f"extension {extension} belongs to both {other!r} and "
                               f"{mailbox!r}")
            checked.append((mailbox, extension, new, old))
        get_many = getattr(self.ledger, "get_many", None)
        if callable(get_many):
            known = get_many([c[0] for c in checked])
        else:
            get = self.ledger.get
            known = {c[0]: s for c in checked if (s := get(c[0])) is not None}
        states: list[LampState] = []
        jobs: list[MwiJob] = []
        plan = self._plan
        for mailbox, extension, new, old in checked:
            plan(mailbox, extension, new, old, "resync", term, known.get(mailbox), states, jobs,
                 mailbox in with_counts)
        if states:
            self.ledger.put(states, term)
        return jobs

    @staticmethod
    def _plan(mailbox: str, extension: str, new: int, old: int, reason: str, term: int,
              last: LampState | None, states: list, jobs: list, counts: bool = False) -> None:
        want = new > 0
        if (last is not None and last.confirmed and bool(last.on) == want
                and last.extension == extension
                and (not counts or (last.new, last.old) == (new, old))):
            return  # the lamp is already as wanted (and shows these counts)
        if last is not None and last.extension != extension and last.on:
            # the subscriber moved to another extension: the old phone's lamp goes off
            jobs.append(MwiJob(last.extension, mailbox, False, 0, 0, term, reason))
        states.append(LampState(mailbox, extension, want, new, old, False))
        jobs.append(MwiJob(extension, mailbox, want, new, old, term, reason))

    # ----------------------------------------------------------------- driver feedback

    def check_job(self, job: MwiJob) -> str | None:
        """None if the driver may send ``job`` now, else why not (drop the job)."""
        if not isinstance(job, MwiJob):
            return f"not an MwiJob: {type(job).__name__}"
        if self.term is None:
            return f"job of term {job.term} refused: this node is not active in any term"
        if job.term < self.term:
            return f"job of term {job.term} refused: older than the current term {self.term}"
        if job.term != self.term:
            return f"job of term {job.term} refused: not the current term {self.term}"
        if not self.active:
            return f"job of term {job.term} refused: this node stood down"
        newest = getattr(self.ledger, "term", None)
        if type(newest) is int and newest > job.term:
            return (f"job of term {job.term} refused: term {newest} has written the ledger "
                    "since (another node is active)")
        last = self.ledger.get(job.mailbox)
        if last is None:
            return f"job for {job.mailbox} refused: the ledger has no lamp state for it"
        if last.extension != job.extension:
            return None if not job.on else (
                f"job for extension {job.extension} refused: {job.mailbox} is now on "
                f"extension {last.extension}")
        if bool(last.on) != job.on:
            return (f"job superseded: the lamp of {job.mailbox} must now be "
                    f"{'on' if last.on else 'off'}")
        return None

    def confirm(self, job: MwiJob) -> bool:
        """The driver sent ``job``.  Marks the ledger confirmed; False (nothing written) when
        the job is refused by :meth:`check_job`, was for a former extension, or newer counts
        were planned since (the job that carries them confirms them)."""
        if self.check_job(job) is not None:
            return False
        last = self.ledger.get(job.mailbox)
        self.last_error.pop(job.mailbox, None)
        if last is None or last.extension != job.extension or last.confirmed:
            return False
        if (last.new, last.old) != (job.new, job.old):
            return False  # newer counts were planned since: their own job confirms them
        self.ledger.put([LampState(last.mailbox, last.extension, last.on, last.new, last.old,
                                   True)], job.term)
        return True

    def failed(self, job: MwiJob, error: str) -> MwiJob | None:
        """The driver could not send ``job``.  The ledger entry stays (or becomes)
        unconfirmed, so the next resync sends it again; returns a ``retry`` job for the
        driver's own retry, or None when the job is refused (stale, superseded)."""
        why = self.check_job(job)
        if why is not None:
            return None
        self.last_error[job.mailbox] = str(error)[:200]
        last = self.ledger.get(job.mailbox)
        if last is not None and last.extension == job.extension and last.confirmed:
            self.ledger.put([LampState(last.mailbox, last.extension, last.on, last.new,
                                       last.old, False)], job.term)
        return MwiJob(job.extension, job.mailbox, job.on, job.new, job.old, job.term, "retry")


# --------------------------------------------------------------------------- coalescing

class LampCoalescer:
    """At most one lamp job per mailbox per ``window`` seconds (``mwi_coalesce``).

    The first change of a mailbox goes out at once; a change within ``window`` seconds of the
    last job sent for it waits until the window ends, and every change until then goes out as
    that one job (its counts are read when it is planned: the latest).  ``now`` is any
    monotonic clock the caller passes in (trio's in the service).  ``window = 0``: no
    coalescing."""

    def __init__(self, window: float = 1.0) -> None:
        if (isinstance(window, bool) or not isinstance(window, (int, float))
                or not 0 <= window <= 3600 or window != window):
            raise MwiError(f"mwi_coalesce must be a number of seconds from 0 to 3600, "
                           f"not {window!r}")
        self.window = float(window)
        self._last: dict[str, float] = {}  # mailbox -> when its last job was sent

    def due(self, mailbox: str, now: float) -> float:
        """When a job for ``mailbox`` may be sent: ``now`` or later."""
        last = self._last.get(mailbox)
        if last is None:
            return now
        return max(now, last + self.window)

    def sent(self, mailbox: str, now: float) -> None:
        """A job for ``mailbox`` was handed to its driver at ``now``.  Entries older than
        the window are dropped here (memory stays bounded by the mailboxes of one window)."""
        if len(self._last) > 1024:
            cut = now - self.window
            self._last = {m: t for m, t in self._last.items() if t > cut}
        self._last[mailbox] = now


# --------------------------------------------------------------------------- daily resync

def time_of_day(text: str) -> int:
    """``"HH:MM"`` or ``"HH:MM:SS"`` (local time) -> seconds after local midnight."""
    m = _TIME_OF_DAY.fullmatch(text) if isinstance(text, str) else None
    if not m:
        raise MwiError(f"time of day {text!r} is not HH:MM or HH:MM:SS (00:00 to 23:59:59)")
    return int(m[1]) * 3600 + int(m[2]) * 60 + int(m[3] or 0)


def next_daily_resync(now_local_seconds: float, at_seconds: float) -> float:
    """Seconds from ``now_local_seconds`` (seconds after local midnight, from the local
    clock) until the next daily resync at ``at_seconds`` after local midnight: in
    (0, 86400]; exactly at the time it is the next day's (a resync just run is not run
    again).  Call it again after every wake-up: a daylight-saving change then moves one
    resync by at most an hour."""
    for name, v, top in (("now_local_seconds", now_local_seconds, DAY + 1),
                         ("at_seconds", at_seconds, DAY)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < top:
            raise MwiError(f"{name} must be a number of seconds 0 <= s < {top}, not {v!r}")
    wait = (at_seconds - now_local_seconds) % DAY
    return wait if wait > 0 else float(DAY)
