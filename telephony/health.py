"""Driver and message-store health, computed in the messaging service and sent in every
``health`` message as ``drivers`` (docs/design.md, "Local control channel";
docs/failover-rules.md, "Driver health").

* A port driver's score is 100 × usable ports / configured ports, rounded down (a port is
  usable unless it is ``down``: a SIP line not registered, the SMDI link's serial port gone, an
  SCCP station not registered, a driver that is not running).  Its detail says how many and
  which ports are down.
* The message store's score is 100 when its last probe answered, 0 otherwise.  The probe is
  cheap and runs every ``health.store_probe`` seconds in a worker thread, off the health loop
  (which must never block: it reports a change at once): for a Maildir store, the root is a
  directory in which a small file can be created and removed; for an IMAP store, the server
  greets and answers NOOP.  A probe that takes longer than the store's timeout counts as
  failed (its thread is abandoned).

* The ``disk`` score (with a data directory to watch) is 100 while the file system of the
  node's ``data_dir`` (configuration database, event log, spool) is writable and has at least
  :data:`DISK_MIN_FREE` bytes free for its user, 0 otherwise; checked with ``statvfs`` on the
  store probe's schedule, in a worker thread.

The node manager takes the lowest score as the node's health (``failover.core.health``).
"""
from __future__ import annotations

import imaplib
import logging
import math
import os
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

log = logging.getLogger("telephony.health")

FULL = 100
DEFAULT_STORE_PROBE = 2.0  # seconds; the [health] store_probe key (checked by the node manager)
STORE_PROBE_RANGE = (0.1, 3600.0)
MAX_DETAIL = 200
DISK_MIN_FREE = 16 * 1024 * 1024  # bytes: below this the data_dir disk counts as full
MAX_DRIVERS = 32
DEFAULT_HEALTH_INTERVAL = 0.25  # seconds: service.health_timeout's default (1 s) / 4
MIN_GAP = 0.02  # seconds: changes in a burst (calls under load) are reported at most this often


def store_probe_interval(config: Path | None) -> float:
    """``health.store_probe`` of the node's TOML file (default 2 s).  The node manager has
    checked the whole file before it starts the service; a value out of range here (a file
    changed since, or a service run by hand) is refused with ValueError naming the key."""
    if config is None:
        return DEFAULT_STORE_PROBE
    with open(config, "rb") as f:
        data = tomllib.load(f)
    section = data.get("health", {})
    v = section.get("store_probe", DEFAULT_STORE_PROBE) if isinstance(section, dict) else None
    lo, hi = STORE_PROBE_RANGE
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise ValueError(f"{config}: health.store_probe: expected a number of seconds from "
                         f"{lo:g} to {hi:g}, got {v!r:.40}")
    return float(v)


class HealthReporter:
    """Health reports on change, with a keep-alive (docs/design.md, "Local control channel").

    :meth:`run` sends a report at once when what it carries (``snapshot()``: state, term,
    calls, ports, driver scores) differs from the last one sent, and else every ``interval``
    seconds (the keep-alive by which the node manager sees that the service is not hung: it
    counts the service as failed after ``service.health_timeout`` without one).  What changes
    calls :meth:`changed`, which wakes it: nothing is polled.  Reports in a burst are at least
    ``min_gap`` apart (the last state is what is sent).  ``send`` is given the very object it
    was given last time when nothing changed (it may reuse what it made of it)."""

    def __init__(self, interval: float = DEFAULT_HEALTH_INTERVAL, min_gap: float = MIN_GAP) -> None:
        if not interval > 0:
            raise ValueError(f"health interval must be > 0, got {interval!r}")
        self.interval = interval
        self.min_gap = min(min_gap, interval)
        self.sent = 0
        self.last_sent = -math.inf
        self._now = False  # send a keep-alive at this wake-up even if nothing changed
        self._changed = trio.Event()

    def changed(self) -> None:
        """Something a report carries may have changed: report it now.  A call from outside
        the service's Trio thread is ignored (the next keep-alive carries the change)."""
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            return
        self._changed.set()

    def awake(self) -> None:
        """The service woke for something else (a lease renewal): a keep-alive at least half
        due goes now, riding on this wake-up, rather than waking the process on its own later
        (an active service then sends its keep-alives without a wake-up of their own)."""
        if trio.current_time() >= self.last_sent + self.interval / 2:
            self._now = True
            self.changed()

    async def run(self, snapshot: Callable[[], dict], send: Callable[[dict], Awaitable[None]]) -> None:
        last: dict | None = None
        while True:
            self._changed = trio.Event()  # before the snapshot: a change from here on wakes us
            body = snapshot()
            if body == last:
                body = last  # the very object sent last time: a keep-alive
            if body is not last or self._now or trio.current_time() >= self.last_sent + self.interval:
                self._now = False
                await send(body)
                last, self.last_sent = body, trio.current_time()
                self.sent += 1
            with trio.move_on_at(self.last_sent + self.interval):
                await self._changed.wait()
                await trio.sleep_until(self.last_sent + self.min_gap)  # a burst: one per gap


def driver_scores(ports: list[dict]) -> list[dict]:
    """One entry per driver kind of ``ports`` (the registry's status list), in the order the
    kinds first appear: ``{"name": kind, "score": 0..100, "detail": text}``."""
    kinds: dict[str, list[dict]] = {}
    for p in ports:
        kinds.setdefault(p["kind"], []).append(p)
    out = []
    for kind, group in kinds.items():
        down = [p for p in group if p["state"] == "down"]
        n, usable = len(group), len(group) - len(down)
        detail = f"{usable}/{n} ports usable"
        if down:
            detail += "; down: " + ", ".join(p["name"] for p in down[:8])
            if len(down) > 8:
                detail += f" and {len(down) - 8} more"
            said = next((p["detail"] for p in down if p.get("detail")), "")
            if said:
                detail += f" ({said})"
        out.append({"name": kind[:64], "score": FULL * usable // n, "detail": detail[:MAX_DETAIL]})
    return out[:MAX_DRIVERS - 1]  # room for the store


class DriverHealth:
    """The service's health view: the drivers' scores (from the port registry, each report)
    and the message store's (from the last probe)."""

    def __init__(self, node: str = "") -> None:
        self.node = node
        self.store: Any = None
        self.interval = DEFAULT_STORE_PROBE
        self.store_score = FULL
        self.store_detail = "not probed yet"
        self.probes = 0
        self._probe: Callable[[], str] | None = None
        self._timeout = 5.0
        self._hanging: float | None = None  # when the probe still running started
        self.disk: Path | None = None  # the data_dir whose file system is watched
        self.disk_score = FULL
        self.disk_detail = "not checked yet"
        #: runs when a score changes (the service then reports health at once)
        self.on_change: Callable[[], None] = lambda: None

    def watch(self, store: Any, config: Path | None, data_dir: Path | None = None) -> None:
        """Probe ``store`` (a MaildirStore or ImapStore), and the file system of ``data_dir``,
        every ``health.store_probe`` of the node's file ``config``.  Raises ValueError for a
        bad value."""
        self.interval = store_probe_interval(config)
        self.disk = None if data_dir is None else Path(data_dir)
        self.store = store
        root = getattr(store, "root", None)
        if isinstance(root, Path):
            self._probe = lambda: probe_maildir(root, self.node)
            self._timeout = max(1.0, min(10.0, 2 * self.interval))
        elif hasattr(store, "host") and hasattr(store, "port"):
            self._timeout = float(getattr(store, "timeout", 5.0))
            secure = bool(getattr(store, "ssl", False))
            self._probe = lambda: probe_imap(store.host, store.port, ssl_on=secure, timeout=self._timeout)
        else:
            self._probe = None

    @property
    def hanging(self) -> bool:
        """A probe is still running (abandoned after its timeout, or in progress)."""
        return self._hanging is not None

    def drivers(self, ports: list[dict]) -> list[dict]:
        """The ``drivers`` field of a health message."""
        out = driver_scores(ports)
        if self._probe is not None:
            out.append({"name": "store", "score": self.store_score, "detail": self.store_detail})
        if self.disk is not None:
            out.append({"name": "disk", "score": self.disk_score, "detail": self.disk_detail})
        return out

    async def run(self) -> None:
        """Probe the store for ever (a long-lived task under ``keep_running``)."""
        if self._probe is None and self.disk is None:
            await trio.sleep_forever()
        while True:
            await self.probe_once()
            await self.check_disk()
            await trio.sleep(self.interval)

    async def check_disk(self) -> None:
        """The ``disk`` score from ``statvfs`` of the watched data_dir (in a worker thread,
        abandoned after 5 s: a hung file system scores 0)."""
        if self.disk is None:
            return
        path = self.disk
        detail = f"no answer from {path}'s file system within 5s"
        score = 0
        with trio.move_on_after(5.0):
            try:
                score, detail = await trio.to_thread.run_sync(disk_state, path, abandon_on_cancel=True)
            except OSError as e:
                detail = f"{path}: {e.strerror or e}"
        if score != self.disk_score:
            log.log(logging.INFO if score else logging.WARNING, "data_dir disk %s: %s",
                    "usable again" if score else "full or unusable", detail)
        changed = score != self.disk_score
        self.disk_score, self.disk_detail = score, detail[:MAX_DETAIL]
        if changed:
            self.on_change()

    async def probe_once(self) -> None:
        """One probe in a worker thread.  A probe that does not return within the timeout is
        abandoned (a hung mount may never return); while it hangs no second one is started."""
        probe = self._probe
        if probe is None:
            return
        detail: str | None = None
        ok = False
        if self._hanging is not None:
            detail = f"a probe started {trio.current_time() - self._hanging:.0f}s ago has not returned"
        else:
            self._hanging = trio.current_time()

            def run() -> str:
                try:
                    return probe()
                finally:
                    self._hanging = None  # a plain store from the thread: read by the next probe

            with trio.move_on_after(self._timeout):
                try:
                    detail = await trio.to_thread.run_sync(run, abandon_on_cancel=True)
                    ok = True
                except Exception as e:  # noqa: BLE001 - any failure of the probe is the store's
                    why = e.strerror if isinstance(e, OSError) and e.strerror else e
                    detail = f"{type(e).__name__}: {why}"
        if detail is None:
            detail = f"no answer within {self._timeout:g}s"
        self.probes += 1
        score = FULL if ok else 0
        if score != self.store_score:
            log.log(logging.INFO if ok else logging.WARNING, "message store %s: %s",
                    "answers again" if ok else "unreachable", detail)
        changed = score != self.store_score
        self.store_score = score
        self.store_detail = "".join(c if c.isprintable() else "?" for c in detail)[:MAX_DETAIL]
        if changed:
            self.on_change()


def disk_state(path: Path, min_free: int = DISK_MIN_FREE) -> tuple[int, str]:
    """(score, detail) of the file system holding ``path``: 0 when it is mounted read-only or
    has less than ``min_free`` bytes free for an unprivileged user.  Raises OSError."""
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    if st.f_flag & os.ST_RDONLY:
        return 0, f"{path}: read-only file system"
    mib = free / (1024 * 1024)
    if free < min_free:
        return 0, f"{path}: {mib:.1f} MiB free, under {min_free / (1024 * 1024):g} MiB: disk full"
    return FULL, f"{path}: {mib:.0f} MiB free"


def probe_maildir(root: Path, node: str) -> str:
    """The Maildir root is a directory where a file can be created, written and removed (in a
    worker thread).  Raises OSError otherwise."""
    if not root.is_dir():
        raise NotADirectoryError(20, f"{root} is not a directory (not mounted?)")
    probe = root / f".vmha-probe-{node or os.getpid()}"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, b"vmha store probe\n")
    finally:
        os.close(fd)
        try:
            os.unlink(probe)
        except FileNotFoundError:
            pass
    return f"maildir {root} writable"


def probe_imap(host: str, port: int, *, ssl_on: bool, timeout: float) -> str:
    """Connect, read the greeting, NOOP, LOGOUT (in a worker thread).  Raises OSError or
    ``imaplib.IMAP4.error`` when the server does not answer so."""
    conn = (imaplib.IMAP4_SSL(host, port, timeout=timeout) if ssl_on
            else imaplib.IMAP4(host, port, timeout=timeout))
    try:
        typ, data = conn.noop()
        if typ != "OK":
            raise imaplib.IMAP4.error(f"NOOP answered {typ} {data!r:.80}")
    finally:
        try:
            conn.logout()
        except (OSError, imaplib.IMAP4.error):
            pass
    return f"IMAP {host}:{port} answers"
