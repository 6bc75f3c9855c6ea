"""The voice-messaging core of the messaging service: what the active node does with a call
and with a message (docs/messaging-service.md, "Voice messaging").

It wires the port-independent call flow (:mod:`telephony.core.callflow`) to the subscriber directory
(the replicated configuration database), the message store with its spool
(:mod:`telephony.store`, :mod:`telephony.spool`), MWI ownership (:mod:`telephony.core.mwi`, ledger in
the database) and e-mail notification (:mod:`telephony.notify`).  Only the active node works:
``activated(term)`` enables spool delivery and runs the MWI resync, ``deactivated()`` stops
both; every MWI job carries the term and is checked against the current one before it is sent.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import trio

from telephony.configdb import ConfigDB, ConfigDBError
from telephony.configdb.pins import PinBook, new_record
from telephony.core.callflow import CallFlow, CallPort, PinCheck, PinVerdict
from telephony.core.events import CallArrival
from telephony.core.message import VoiceMessage
from telephony.core.mwi import LampCoalescer, MwiJob, MwiPlanner, next_daily_resync
from telephony.core.pin import PinPolicy, remaining, verify_pin
from telephony.ledgers import DbMwiLedger, DbNotificationLedger
from telephony.notify import NotificationFailed, SmtpNotifier
from telephony.runtime.files import read_secret
from telephony.settings import ServiceSettings
from telephony.spool import Spool, SpoolWorker
from telephony.store import MessageStore, StoreUnavailable

log = logging.getLogger("telephony.messaging")


class MwiSink(Protocol):
    """Where lamp jobs go (the driver of a subscriber's MWI method).  ``send_mwi`` returns
    once the job was transmitted (and, where the protocol has one, acknowledged: a SIP 2xx);
    it raises on failure.  Optional attributes: ``mwi_counts`` (True: the lamp shows the
    new/old counts, so a count change is sent too; default False: on/off only) and
    ``mwi_parallel`` (how many jobs it takes at once; default 1)."""

    async def send_mwi(self, job: MwiJob) -> None: ...


#: every subscriber method that can have a sink (``none`` never has one)
LAMP_METHODS = ("sip", "smdi", "sccp", "dtmf")


class _LogEvents:
    """``events.write(level, event, message, fields)`` for the helpers, into the service log."""

    def write(self, level: str, event: str, message: str, fields: dict | None = None) -> None:
        log.log(getattr(logging, level.upper(), logging.INFO), "%s: %s", event, message)


class ConfigDirectory:
    """The call flow's subscriber directory, read from the configuration database."""

    def __init__(self, db: ConfigDB, streams: Path, default_mailbox: str | None) -> None:
        self.db, self.streams, self._default = db, streams, default_mailbox

    def by_extension(self, ext: str) -> dict | None:
        if not ext or not ext.isdigit() or len(ext) > 32:
            return None
        return self.db.get("subscribers", ext)

    def by_mailbox(self, mailbox: str) -> dict | None:
        return next((s for s in self.db.list("subscribers") if s["mailbox"] == mailbox), None)

    def default_mailbox(self) -> dict | None:
        return None if self._default is None else self.by_mailbox(self._default)

    def greeting(self, subscriber: dict) -> bytes | None:
        name = subscriber.get("greeting")
        if not name:
            return None
        path = (self.streams / name).resolve()
        if not path.is_relative_to(self.streams.resolve()):
            return None
        try:
            data = path.read_bytes()
        except OSError:
            return None
        return data if data.startswith(b"RIFF") else None


class StoreMailboxes:
    """The call flow's view of the store."""

    def __init__(self, store: MessageStore) -> None:
        self.store = store

    async def counts(self, mailbox: str) -> tuple[int, int]:
        return await self.store.counts(mailbox)

    async def list_new(self, mailbox: str) -> list[tuple[str, bytes]]:
        out = []
        for m in await self.store.list(mailbox, new_only=True):
            out.append((m.uid, await self.store.fetch_audio(mailbox, m.uid)))
        return out

    async def mark_heard(self, mailbox: str, uid: str) -> None:
        await self.store.mark_heard(mailbox, uid)


class DbPinGate:
    """The call flow's PIN gate (:class:`telephony.core.callflow.PinGate`) on the replicated
    PIN tables (:class:`telephony.configdb.pins.PinBook`).  Failures and lockouts are written
    with the term the service is active in, so they replicate and the peer enforces them;
    every access, failure, lockout and change goes to the event log (``report``), never a
    PIN.  scrypt runs in worker threads, at most two at once (16 MiB each)."""

    def __init__(self, messaging: "Messaging", policy: PinPolicy) -> None:
        self.m = messaging
        self.book = PinBook(messaging.db, policy)
        self.hashing = trio.CapacityLimiter(2)

    @staticmethod
    def _who(sub: dict) -> str:
        return f"mailbox {sub['mailbox']} (extension {sub['extension']})"

    async def _report(self, level: str, event: str, message: str) -> None:
        log.log(getattr(logging, level.upper()), "%s: %s", event, message)
        if self.m.report is not None:
            try:
                await self.m.report(level, event, message)
            except Exception:  # noqa: BLE001 - the event log must never stop a call
                log.exception("cannot report %s", event)

    async def _write(self, fn, *args):
        """A PIN-table write in the active term; None (logged) when the service is not
        active any more (a drained call): nothing is written."""
        term = self.m.term
        if term is None:
            log.warning("PIN tables not written: the service is not active")
            return None
        try:
            return await self.m._db(fn, *args, term)
        except ConfigDBError as e:  # a stale term (a newer active node), a full disk
            log.warning("PIN tables not written: %s", e)
            return None

    async def check(self, sub: dict, calling: str) -> PinCheck:
        ext = sub["extension"]
        entry = await self.m._db(self.book.entry, ext)
        lock = await self.m._db(self.book.lock_state, ext)
        left = remaining(lock, time.time())
        if left > 0:
            await self._report("warning", "access_refused", f"{self._who(sub)}: access from "
                               f"{calling or 'an unknown number'} refused: locked for another "
                               f"{left:.0f} s after wrong PINs")
            return PinCheck("locked", left)
        if entry.skip_pin_from_own_phone and calling == ext:
            return PinCheck("skip")
        if entry.record is None:
            await self._report("warning", "access_refused", f"{self._who(sub)}: access from "
                               f"{calling or 'an unknown number'} refused: no PIN is set "
                               f"(vmha db pin set {ext})")
            return PinCheck("no_pin")
        return PinCheck("ask")

    async def verify(self, sub: dict, pin: str, calling: str) -> PinVerdict:
        ext = sub["extension"]
        entry = await self.m._db(self.book.entry, ext)
        lock = await self.m._db(self.book.lock_state, ext)
        if remaining(lock, time.time()) > 0:  # locked meanwhile (on the peer, say)
            return PinVerdict(False, remaining(lock, time.time()))
        ok = False
        if entry.record is not None:
            try:
                ok = await trio.to_thread.run_sync(verify_pin, pin, entry.record,
                                                   limiter=self.hashing)
            except ValueError as e:
                log.warning("%s: the stored PIN record is unusable: %s", self._who(sub), e)
        if ok:
            await self._write(self.book.record_success, ext)
            return PinVerdict(True)
        policy = self.book.policy
        state = await self._write(partial(self.book.record_failure, ext, time.time()))
        if state is None:
            return PinVerdict(False)
        left = remaining(state, time.time())
        if left > 0:
            until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(state.locked_until))
            await self._report("warning", "mailbox_locked", f"{self._who(sub)} locked for "
                               f"{policy.duration(state.lockouts):g} s (until {until}) after "
                               f"{policy.max_failures} wrong PINs in a row (lockout "
                               f"{state.lockouts} since the last right PIN); last try from "
                               f"{calling or 'an unknown number'}")
            return PinVerdict(False, left)
        await self._report("warning", "pin_failed", f"{self._who(sub)}: wrong PIN from "
                           f"{calling or 'an unknown number'} ({state.failures} of "
                           f"{policy.max_failures} before a lockout)")
        return PinVerdict(False)

    async def opened(self, sub: dict, calling: str, how: str) -> None:
        said = "PIN accepted" if how == "pin" else "without a PIN: own phone (skip_pin_from_own_phone)"
        await self._report("info", "mailbox_access", f"{self._who(sub)} opened from "
                           f"{calling or 'an unknown number'}: {said}")

    async def change(self, sub: dict, pin: str, calling: str) -> bool:
        record = await trio.to_thread.run_sync(new_record, pin, limiter=self.hashing)
        if not await self._write(partial(self.book.set_record, sub["extension"], record)):
            return False
        await self._report("info", "pin_changed", f"{self._who(sub)}: PIN changed from the "
                           f"phone (call from {calling or 'an unknown number'})")
        return True


LAMP_TASKS = 16  # lamps sent at once (a slow MWI target holds only its own lamp)
NO_SINK_REPORT_EVERY = 60.0  # seconds between mwi_no_sink reports of one method


class Messaging:
    def __init__(self, *, node: str, db: ConfigDB, store: MessageStore, spool_dir: Path,
                 streams: Path, sink: MwiSink | None = None,
                 sinks: Mapping[str, MwiSink] | None = None, mwi_coalesce: float = 1.0,
                 notifier_factory: Callable[..., SmtpNotifier] | None = None,
                 default_mailbox: str | None = None, max_message_s: float = 120.0,
                 silence_s: float = 3.0, min_message_s: float = 0.5,
                 resync_at_s: float = 3 * 3600.0, operator: str | None = None,
                 pin_policy: PinPolicy | None = None) -> None:
        self.node = node
        self.db = db
        self.store = store
        #: subscriber mwi_method -> the driver that sends its lamps.  ``sink=`` alone (tests,
        #: benchmarks) serves every method but ``none``; a method without a sink gets no lamp
        #: sent: its jobs stay unconfirmed in the ledger and are reported
        self.sinks: dict[str, MwiSink] = (dict(sinks) if sinks is not None else
                                          {m: sink for m in LAMP_METHODS} if sink is not None
                                          else {})
        self.coalescer = LampCoalescer(mwi_coalesce)
        #: ``report(level, event, message)``: the node's event log (set by the service)
        self.report: Callable[[str, str, str], Awaitable[None]] | None = None
        #: mailbox -> its method, for lamps that wait for a sink (none is enabled for it)
        self.no_sink: dict[str, str] = {}
        #: method -> (when its mwi_no_sink was last reported, jobs not reported since)
        self._no_sink_said: dict[str, tuple[float, int]] = {}
        self.events = _LogEvents()
        self.limiter = trio.CapacityLimiter(1)  # database and planner: one caller at a time
        self.directory = ConfigDirectory(db, streams, default_mailbox)
        self.planner = MwiPlanner(DbMwiLedger(db))
        self.spool = Spool(spool_dir)
        self.worker = SpoolWorker(self.spool, store, events=self.events,
                                  on_stored=self._spool_delivered)
        # the notifier calls its ledger from the Trio thread: it gets a connection of its own
        # (SQLite serialises the two connections' transactions), never the worker thread's
        self.notifier = (notifier_factory(DbNotificationLedger(ConfigDB(db.path, role=db.role)),
                                          self.events) if notifier_factory else None)
        self.flow = CallFlow(node=node, directory=self.directory, mailboxes=StoreMailboxes(store),
                             deliver=self.deliver, lamp=self.lamp, max_message_s=max_message_s,
                             silence_s=silence_s, min_message_s=min_message_s,
                             operator=operator, pins=DbPinGate(self, pin_policy or PinPolicy()))
        self.resync_at_s = resync_at_s
        self.term: int | None = None
        self._planner_term: int | None = None
        self._resync_now = trio.Event()
        self._resync_full = False  # the next resync sets every lamp (request_resync(full))
        self._lamps: dict[str, str] = {}  # mailbox -> extension: lamps to bring up to date
        self._lamp_wake = trio.Event()
        self.counters: dict[str, int] = {"messages": 0, "lamp_jobs_sent": 0, "lamp_jobs_failed": 0,
                                         "lamp_jobs_refused": 0, "lamp_jobs_no_sink": 0,
                                         "lamps_waiting_for_a_sink": 0, "resyncs": 0,
                                         "notifications": 0, "notification_errors": 0}
        self.last_resync: dict[str, Any] | None = None

    # ------------------------------------------------------------------ database thread

    async def _db(self, fn, *args):
        """Run ``fn`` in the database thread; the planner first learns a new term there (it is
        not thread-safe, so it is only ever used from that one serialised thread)."""
        term = self.term

        def call():
            if term is not None and self._planner_term != term:
                self.planner.set_term(term)
                self._planner_term = term
            return fn(*args)

        return await trio.to_thread.run_sync(call, limiter=self.limiter)

    # ------------------------------------------------------------------ the service's hooks

    async def handle_call(self, call: CallArrival, port: CallPort, term: int) -> None:
        outcome = await self.flow.handle(call, port, term)
        log.info("call %s: %s%s", call.call_id, outcome.kind,
                 f" for {outcome.mailbox}" if outcome.mailbox else "")

    def activated(self, term: int) -> None:
        if self.term == term:
            return
        self.term = term
        self.worker.set_enabled(True)
        self._resync_now.set()  # after every takeover: lamps must match the store

    def request_resync(self, full: bool = False) -> None:
        """Resync lamps now (a lamp link came back): sends what is unconfirmed or differs.
        ``full`` (the primary after a partition, on a lamp line shared with the peer): every
        lamp is set again, whatever the ledger says (docs/smdi.md)."""
        if self.term is not None:
            self._resync_full = self._resync_full or full
            self._resync_now.set()

    def deactivated(self) -> None:
        self.term = None
        self._lamps.clear()  # the next active node resyncs every lamp
        self.worker.set_enabled(False)

    def stats(self) -> dict:
        return {**self.counters, "spool": self.worker.stats(), "last_resync": self.last_resync,
                "no_sink": dict(sorted(self.no_sink.items()))}

    def sink_for(self, method: str | None) -> MwiSink | None:
        return None if method is None else self.sinks.get(method)

    def _shows_counts(self, method: str | None) -> bool:
        return bool(getattr(self.sink_for(method), "mwi_counts", False))

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.worker.run)
            nursery.start_soon(self._resync_loop)
            nursery.start_soon(self._lamp_loop)
            task_status.started()

    # ------------------------------------------------------------------ messages

    async def deliver(self, msg: VoiceMessage) -> None:
        outcome = await self.worker.deliver(msg)
        self.counters["messages"] += 1
        log.info("message %s for %s: %s", msg.message_id, msg.mailbox, outcome)
        if self.report is not None:  # the event log's record that the message is safe
            try:
                await self.report("info", "message_saved",
                                  f"message {msg.message_id} for {msg.mailbox}: {outcome}")
            except Exception:  # noqa: BLE001 - the message is stored: the event log must not fail it
                log.exception("cannot report message %s", msg.message_id)
        if outcome == "duplicate" or self.notifier is None or self.term is None:
            return
        sub = await self._db(self.directory.by_mailbox, msg.mailbox)
        devices = (sub or {}).get("notify") or []
        if not devices:
            return
        try:
            sent = await self.notifier.notify(msg, devices, self.term)
            self.counters["notifications"] += len(sent)
        except NotificationFailed as e:
            self.counters["notification_errors"] += 1
            log.warning("notification of %s: %s", msg.message_id, e)
        except Exception:  # the message is stored: a notification problem must not fail the call
            self.counters["notification_errors"] += 1
            log.exception("notification of %s failed", msg.message_id)

    async def _spool_delivered(self, msg: VoiceMessage) -> None:
        """A spooled message reached the store: its lamp (skipped while the store was away)."""
        await self.lamp(msg.mailbox, msg.extension)

    # ------------------------------------------------------------------ MWI

    async def lamp(self, mailbox: str, extension: str) -> None:
        """The counts of ``mailbox`` may have changed: its lamp is brought up to date in the
        background (returns at once: a call never waits for a lamp, whose sink may retry for
        a long time).  At most ``LAMP_TASKS`` lamps are sent at once, one per mailbox; a
        mailbox that changes again while its lamp is being sent is looked at once more.  A
        mailbox whose last job went out less than ``mwi_coalesce`` seconds ago waits for the
        window's end (:class:`telephony.core.mwi.LampCoalescer`): its changes meanwhile become one
        job with the counts of that moment."""
        if self.term is None:
            return
        self._lamps[mailbox] = extension
        self._lamp_wake.set()

    async def _lamp_loop(self) -> None:
        limit = trio.CapacityLimiter(LAMP_TASKS)
        busy: set[str] = set()

        async def one(mailbox: str, extension: str) -> None:
            try:
                await self._lamp_now(mailbox, extension)
            except Exception:  # noqa: BLE001 - one lamp must not stop the others
                log.exception("lamp of %s failed", mailbox)
            finally:
                busy.discard(mailbox)
                limit.release_on_behalf_of(mailbox)
                if self._lamps:
                    self._lamp_wake.set()

        async with trio.open_nursery() as nursery:
            while True:
                self._lamp_wake = trio.Event()
                now = trio.current_time()
                later = math.inf
                for mailbox in [m for m in self._lamps if m not in busy]:
                    due = self.coalescer.due(mailbox, now)
                    if due > now:
                        later = min(later, due)
                        continue
                    await limit.acquire_on_behalf_of(mailbox)
                    extension = self._lamps.pop(mailbox)
                    busy.add(mailbox)
                    nursery.start_soon(one, mailbox, extension)
                with trio.move_on_at(later):
                    await self._lamp_wake.wait()

    async def _lamp_now(self, mailbox: str, extension: str) -> None:
        if self.term is None:
            return
        sub = await self._db(self.directory.by_mailbox, mailbox)
        if sub is None:
            log.info("lamp of %s: no subscriber has this mailbox (deleted?): no lamp", mailbox)
            return
        method = sub.get("mwi_method")
        if method == "none":
            return
        try:
            new, old = await self.store.counts(mailbox)
        except StoreUnavailable as e:
            log.info("lamp of %s not updated now (store unavailable: %s); the resync will", mailbox, e)
            return
        jobs = await self._db(partial(self.planner.on_counts, mailbox, sub["extension"], new,
                                      old, "deliver", counts=self._shows_counts(method)))
        await self._send(jobs, {mailbox: method})

    async def lamp_failed(self, job: MwiJob, why: str) -> None:
        """The switch refused a lamp command after it was sent (an SMDI ``MWI… INV``/``BLK``
        record): the ledger entry becomes unconfirmed, so the next resync tries again."""
        self.counters["lamp_jobs_failed"] += 1
        await self._db(self.planner.failed, job, why)
        log.warning("lamp %s for %s (extension %s) refused by the switch: %s",
                    "on" if job.on else "off", job.mailbox, job.extension, why)

    async def resync(self, why: str = "takeover", full: bool = False) -> dict:
        """The guide's MWI resync: compare every subscriber's lamp with the store and send
        only the differences.  ``why``: "takeover" or "daily" (for the log and status).
        Returns (and keeps as ``last_resync``) what it did: ``sent`` counts the lamp jobs its
        sinks transmitted and acknowledged, ``no_sink`` those left unconfirmed because no
        enabled driver serves their subscriber's method.  ``full``: the ledger's confirmations
        are forgotten first, so every subscriber's lamp is sent."""
        t0 = time.perf_counter()
        counts = await self.store.all_counts()
        t1 = time.perf_counter()
        subs = await self._db(self.db.list, "subscribers")
        live = [s for s in subs if s["mwi_method"] != "none"]
        want = {s["mailbox"]: (s["extension"], *counts.get(s["mailbox"], (0, 0))) for s in live}
        methods = {s["mailbox"]: s["mwi_method"] for s in live}
        with_counts = {m for m, method in methods.items() if self._shows_counts(method)}
        if full:
            await self._db(self._forget_confirmations, list(want))
        jobs = await self._db(partial(self.planner.resync, want, with_counts=with_counts))
        t2 = time.perf_counter()
        before = dict(self.counters)
        sent = await self._send(jobs, methods)
        t3 = time.perf_counter()
        self.counters["resyncs"] += 1
        self.last_resync = {
            "subscribers": len(want), "jobs": len(jobs), "sent": sent,
            "failed": self.counters["lamp_jobs_failed"] - before["lamp_jobs_failed"],
            "refused": self.counters["lamp_jobs_refused"] - before["lamp_jobs_refused"],
            "no_sink": self.counters["lamp_jobs_no_sink"] - before["lamp_jobs_no_sink"],
            "seconds": round(t3 - t0, 4), "count_seconds": round(t1 - t0, 4),
            "plan_seconds": round(t2 - t1, 4), "send_seconds": round(t3 - t2, 4),
            "term": self.term, "why": why, "full": full}
        log.info("MWI resync in term %s (%s): %d subscribers, %d lamps differed, %d sent, "
                 "%d failed, %d without a sink", self.term, why, len(want), len(jobs), sent,
                 self.last_resync["failed"], self.last_resync["no_sink"])
        return self.last_resync

    def _forget_confirmations(self, mailboxes: list[str]) -> None:
        """Mark every ledger row of ``mailboxes`` unconfirmed (database thread, in the
        planner's term), so the next resync sends each of their lamps."""
        ledger, term = self.planner.ledger, self.planner.term
        if term is None:
            return
        get_many = getattr(ledger, "get_many", None)
        rows = (get_many(mailboxes) if callable(get_many)
                else {m: r for m in mailboxes if (r := ledger.get(m)) is not None})
        stale = [replace(r, confirmed=False) for r in rows.values() if r.confirmed]
        if stale:
            ledger.put(stale, term)

    async def _send(self, jobs: list[MwiJob], methods: Mapping[str, str]) -> int:
        """Send ``jobs`` (``methods``: mailbox -> its subscriber's mwi_method) each through
        the sink of its method; returns how many were transmitted and acknowledged (and
        confirmed in the ledger).  A job whose method has no sink is not sent: the ledger
        keeps it unconfirmed (the next resync tries again), it is counted in
        ``lamp_jobs_no_sink`` and reported to the event log (``mwi_no_sink``, one event per
        method and batch)."""
        by_sink: dict[int, tuple[MwiSink, list[MwiJob]]] = {}
        orphans: dict[str, list[MwiJob]] = {}
        for job in jobs:
            method = methods.get(job.mailbox)
            sink = self.sink_for(method)
            if sink is None:
                orphans.setdefault(str(method), []).append(job)
            else:
                by_sink.setdefault(id(sink), (sink, []))[1].append(job)
        for method, lost in orphans.items():
            await self._no_sink(method, lost)
        sent = 0

        async def run(sink: MwiSink, queue: list[MwiJob]) -> None:
            nonlocal sent
            while queue:
                if await self._send_one(sink, queue.pop(0)):
                    sent += 1

        async with trio.open_nursery() as nursery:
            for sink, queue in by_sink.values():
                queue = list(queue)
                for _ in range(max(1, min(int(getattr(sink, "mwi_parallel", 1)), len(queue)))):
                    nursery.start_soon(run, sink, queue)
        return sent

    async def _send_one(self, sink: MwiSink, job: MwiJob) -> bool:
        why = self.planner.check_job(job) if self.term == job.term else "not active in the job's term"
        if why is not None:
            self.counters["lamp_jobs_refused"] += 1
            log.info("lamp job for %s refused: %s", job.extension, why)
            return False
        if self.no_sink.pop(job.mailbox, None) is not None:
            self.counters["lamps_waiting_for_a_sink"] = len(self.no_sink)
        self.coalescer.sent(job.mailbox, trio.current_time())
        try:
            await sink.send_mwi(job)
        except Exception as e:  # the sink's failure: the ledger keeps it unconfirmed
            self.counters["lamp_jobs_failed"] += 1
            await self._db(self.planner.failed, job, str(e))
            return False
        await self._db(self.planner.confirm, job)
        self.counters["lamp_jobs_sent"] += 1
        return True

    async def _no_sink(self, method: str, jobs: list[MwiJob]) -> None:
        for job in jobs:
            why = (self.planner.check_job(job) if self.term == job.term
                   else "not active in the job's term")
            if why is not None:
                self.counters["lamp_jobs_refused"] += 1
                continue
            await self._db(self.planner.failed, job, f"no enabled driver serves mwi_method {method}")
            self.counters["lamp_jobs_no_sink"] += 1
            self.no_sink[job.mailbox] = method
        self.counters["lamps_waiting_for_a_sink"] = len(self.no_sink)
        # one report per method a minute at most (each delivery for such a subscriber makes a
        # job): the counters carry every one, the next report says how many were not reported
        now = trio.current_time()
        said, quiet = self._no_sink_said.get(method, (-math.inf, 0))
        if now - said < NO_SINK_REPORT_EVERY:
            self._no_sink_said[method] = (said, quiet + len(jobs))
            return
        self._no_sink_said[method] = (now, 0)
        boxes = sorted({j.mailbox for j in jobs})
        served = ", ".join(sorted(self.sinks)) or "none"
        message = (f"{len(jobs)} lamp job(s) not sent and left unconfirmed: no enabled driver "
                   f"serves mwi_method {method} (served here: {served}); mailboxes "
                   f"{', '.join(boxes[:10])}{' ...' if len(boxes) > 10 else ''}"
                   + (f"; {quiet} more since the last report" if quiet else ""))
        log.warning("mwi_no_sink: %s", message)
        if self.report is not None:
            try:
                await self.report("warning", "mwi_no_sink", message)
            except Exception:  # noqa: BLE001 - the event log must never stop the lamps
                log.exception("cannot report mwi_no_sink")

    async def _resync_loop(self) -> None:
        retry: str | None = None  # the reason of a resync that failed and is retried
        while True:
            wait = next_daily_resync(_local_seconds(), self.resync_at_s)
            with trio.move_on_after(wait) as timer:
                await self._resync_now.wait()
            why = "daily" if timer.cancelled_caught else (retry or "takeover")
            retry = None
            self._resync_now = trio.Event()
            full, self._resync_full = self._resync_full, False
            if self.term is None:
                continue
            try:
                await self.resync("partition healed" if full else why, full=full)
            except StoreUnavailable as e:
                log.warning("MWI resync postponed: store unavailable (%s); retrying in 5 s", e)
                retry = why
                self._resync_full = self._resync_full or full
                await trio.sleep(5)
                self._resync_now.set()
            except Exception:  # a bug here must not take the service (and its calls) down
                log.exception("MWI resync failed; retrying in 30 s")
                retry = why
                self._resync_full = self._resync_full or full
                await trio.sleep(30)
                self._resync_now.set()


def _local_seconds() -> float:
    lt = time.localtime()
    return lt.tm_hour * 3600 + lt.tm_min * 60 + lt.tm_sec



def _read_passwords(path: Path) -> dict[str, str]:
    """``mailbox:password`` lines (the IMAP accounts); raises ValueError naming the line."""
    out: dict[str, str] = {}
    for n, line in enumerate(read_secret(path).splitlines(), 1):  # 0600 or refused
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        mailbox, sep, password = line.partition(":")
        if not sep or not mailbox or not password:
            raise ValueError(f"{path}:{n}: expected mailbox:password")
        out[mailbox] = password
    return out


def build_store(cfg) -> MessageStore:
    """The message store a node's settings name (``cfg.store``: the service's
    ``telephony.settings.ServiceSettings``, or the node manager's ``NodeConfig``)."""
    from telephony.store import ImapStore, MaildirStore

    st = cfg.store
    if st.kind == "imap":
        passwords = _read_passwords(st.imap_passwords)
        # a line "*:user:password" names the status account that counts every mailbox on one
        # connection (docs/messaging-service.md); without it, one login per mailbox
        status = passwords.pop("*", None)
        account = None
        if status is not None:
            user, sep, password = status.partition(":")
            if not sep or not user or not password:
                raise ValueError(f"{st.imap_passwords}: the status account line must be "
                                 "*:user:password")
            account = (user, password)

        def credentials(mailbox: str) -> tuple[str, str]:
            if mailbox not in passwords:
                raise KeyError(mailbox)
            return mailbox, passwords[mailbox]

        return ImapStore(st.imap.host, st.imap.port, credentials=credentials,
                         timeout=st.timeout, mailboxes=lambda: sorted(passwords),
                         status_account=account)
    return MaildirStore(st.maildir)


def build_messaging(cfg: ServiceSettings, db: ConfigDB, sinks: Mapping[str, MwiSink]) -> Messaging:
    """The voice-messaging core for the node's settings (``cfg``: the service's view of the
    node's file).  ``sinks``: subscriber mwi_method -> the driver that sends its lamps
    (``integrations.base.node_mwi_drivers`` names them)."""
    store = build_store(cfg)
    st = cfg.store
    factory = None
    n = cfg.notify
    if n.smtp is not None:
        def factory(ledger, events):
            return SmtpNotifier(n.smtp.host, n.smtp.port, ledger=ledger, timeout=st.timeout,
                                events=events, sender=n.sender, attach_audio=n.attach_audio)
    m = cfg.messaging
    at = m.mwi_resync_at
    return Messaging(node=cfg.node.name, db=db, store=store,
                     spool_dir=cfg.replication.files_root / "spool",
                     streams=cfg.replication.files_root / "streams", sinks=sinks,
                     mwi_coalesce=m.mwi_coalesce,
                     notifier_factory=factory, default_mailbox=m.default_mailbox,
                     max_message_s=m.max_message, silence_s=m.silence, min_message_s=m.min_message,
                     resync_at_s=at.hour * 3600 + at.minute * 60 + at.second,
                     operator=m.operator,
                     pin_policy=PinPolicy(m.pin_max_failures, m.pin_lockout, m.pin_lockout_max))
