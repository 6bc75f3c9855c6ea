"""One SCCP port's connection to CallManager (:class:`StationLink`): the TCP stream, the
station machine fed with the framer's output and its timers, the choice of server and the
return to the first one (docs/sccp.md, "The driver").

A link runs for ever (:meth:`StationLink.run`): it picks the server :class:`Homing` names,
connects (``trio.open_tcp_stream``), builds a fresh :class:`Station` for the connection (its
``station_ip`` is the configured one, else the connection's local address) and serves it with
three tasks: the reader (bytes -> :class:`Framer` -> ``station.received``), the timer
(``station.next_deadline`` -> ``station.tick``) and, while registered on another server than
the first, the prober (a TCP connection to the first server every ``rehome_probe`` seconds;
when it answers and the port is idle the port unregisters and re-homes there).  Whatever ends
a connection (connect failure, RegisterReject, no RegisterAck, keepalives unanswered, a reset
or close by CallManager, a fatal framing error, a send that blocks) moves to the next server
with back-off.  Every task contains its own failures: nothing CallManager sends ends the link.

The link handles the actions that concern the connection itself (``Send``, ``Disconnect``,
``Registered``, ``Rejected``, ``Unregistered``, ``ResetRequested``) and hands every other
action (a call's, a dial's) to ``on_action`` of its owner, the driver, which must not block.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any, Protocol

import trio

from telephony.core.settings import Address
from telephony.runtime.tasks import TaskFailures, describe
from telephony.sccp.core import station as st
from telephony.sccp.core.homing import Homing
from telephony.sccp.core.messages import Framer, Message

__all__ = ["LinkOwner", "StationLink", "CONNECT_TIMEOUT", "SEND_TIMEOUT"]

log = logging.getLogger("telephony.sccp")

#: a TCP connection to CallManager not up within this time failed
CONNECT_TIMEOUT = 5.0
#: a frame CallManager does not take within this time: the connection is given up
SEND_TIMEOUT = 5.0
#: how long an unregistering port waits for UnregisterAck before it closes anyway
UNREGISTER_WAIT = 2.0
#: bytes read from the socket at once
READ_SIZE = 4096


class LinkOwner(Protocol):
    """What a link needs of its driver."""

    task_failures: TaskFailures

    def link_action(self, link: StationLink, action: Any) -> None:
        """A call's or a dial's action (must not block)."""
        ...

    def link_changed(self, link: StationLink, event: str, detail: str) -> None:
        """The registration changed: ``registered``, ``rejected``, ``lost``, ``unreachable``,
        ``rehomed``, ``down`` (must not block)."""
        ...


class StationLink:
    """One port's station: connection, registration, server choice (module docstring)."""

    def __init__(self, owner: LinkOwner, *, index: int, name: str, config: st.StationConfig,
                 servers: tuple[Address, ...], rehome_probe: float,
                 station_ip: str | None = None, idle: Callable[[], bool] = lambda: True,
                 connect_timeout: float = CONNECT_TIMEOUT,
                 counters: dict[str, int] | None = None) -> None:
        self.owner = owner
        self.index = index
        self.name = name
        self.device = config.device_name
        self.config = config
        self.servers = servers
        self.station_ip = station_ip
        #: True when the port may be taken away for a re-home (no call, no dial)
        self.idle = idle
        self.connect_timeout = connect_timeout
        self.homing = Homing(len(servers), probe_interval=rehome_probe)
        self.station: st.Station | None = None
        #: which connection this is (1, 2, ...): a call's inputs carry it, so a call of a
        #: connection that is gone never reaches the next one's station
        self.generation = 0
        #: the connection's local address (the RTP endpoint's, unless rtp_host is set)
        self.local_ip: str | None = None
        self.registered = False
        #: the registration outcome for status(): "registered", "registering",
        #: "rejected: ...", "unreachable: ...", "lost: ...", "down"
        self.outcome = "down"
        self.outcome_since = 0.0
        self.server: Address | None = None
        self._stream: trio.SocketStream | None = None
        self._lock = trio.Lock()
        self._changed = trio.Event()
        self._closing: str | None = None
        self._cancel: trio.CancelScope | None = None
        self._unregistered = trio.Event()
        #: the driver's counters: ``protocol_errors`` (frames that did not decode)
        self.counters = counters if counters is not None else {}
        self.counters.setdefault("protocol_errors", 0)
        self._had_registration = False
        self._rehoming = False
        self.frames_in = 0

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "device": self.device,
                "server": str(self.server) if self.server is not None else None,
                "registration": self.outcome, "since": round(self.outcome_since, 3),
                "state": str(self.station.state) if self.station is not None else "down"}

    def _outcome(self, text: str) -> None:
        if text != self.outcome:
            self.outcome = text
            self.outcome_since = trio.current_time()

    @property
    def station_idle(self) -> bool:
        """Registered with no call (the station machine's view)."""
        return self.registered and self.station is not None and self.station.idle

    async def settle(self, timeout: float) -> bool:
        """Wait until the station is idle again (CallManager cleared its call) or no longer
        registered, at most ``timeout`` seconds; True when idle."""
        with trio.move_on_after(timeout):
            while self.registered and not self.station_idle:
                await self._changed.wait()
        return self.station_idle

    def poke(self) -> None:
        """Something the link waits on may have changed (the port became idle)."""
        self._changed.set()
        self._changed = trio.Event()

    # ------------------------------------------------------------------ inputs

    async def do(self, generation: int | None, fn: Callable[[st.Station, float], list]) -> bool:
        """Feed the station one input (``fn(station, now) -> actions``) and carry out its
        actions.  ``generation``: the connection the caller's call belongs to (None: the
        current one); False when that connection is gone (nothing was fed)."""
        async with self._lock:
            station = self.station
            if station is None or (generation is not None and generation != self.generation):
                return False
            actions = fn(station, trio.current_time())
            await self._apply(actions)
            return True

    async def _apply(self, actions: list) -> None:
        """Carry out ``actions`` (the lock is held)."""
        for a in actions:
            if isinstance(a, st.Send):
                await self._send(a.data)
            elif isinstance(a, st.Disconnect):
                self._close(a.reason)
            elif isinstance(a, st.Registered):
                self.registered = True
                self._had_registration = True
                self.homing.registered(trio.current_time())
                self._outcome("registered")
                self.owner.link_changed(self, "registered", f"keepalive {a.keepalive:g} s")
            elif isinstance(a, st.Rejected):
                self._outcome(f"rejected: {a.text}")
                self.owner.link_changed(self, "rejected", a.text)
                self._close(f"rejected: {a.text}")
            elif isinstance(a, st.Unregistered):
                was = self.registered
                self.registered = False
                self._unregistered.set()
                if was:
                    self.owner.link_changed(self, "down", a.reason)
            elif isinstance(a, st.ResetRequested):
                self._close(f"CallManager asked for a {'restart' if a.reset_type == 2 else 'reset'}")
                self.homing.restart(trio.current_time())
            else:
                self.owner.link_action(self, a)
        self.poke()

    async def _send(self, data: bytes) -> None:
        stream = self._stream
        if stream is None or self._closing is not None:
            return
        with trio.move_on_after(SEND_TIMEOUT) as scope:
            try:
                await stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
                self._close(f"send failed: {describe(e)}")
        if scope.cancelled_caught:
            self._close(f"CallManager took no data for {SEND_TIMEOUT:g} s")

    def _close(self, reason: str) -> None:
        """End the current connection (its tasks stop; :meth:`_serve` cleans up)."""
        if self._closing is None:
            self._closing = reason
        if self._cancel is not None:
            self._cancel.cancel()

    # ------------------------------------------------------------------ life

    async def run(self) -> None:
        """Connect, serve, re-home, for ever (only cancellation ends it)."""
        try:
            while True:
                now = trio.current_time()
                await trio.sleep_until(self.homing.next_attempt(now))
                idx = self.homing.current
                server = self.servers[idx]
                self.server = server
                try:
                    ended = await self._connection(server)
                except Exception as e:  # noqa: BLE001 - a bug in one connection: next server
                    self.owner.task_failures.failed(f"sccp-link {self.name}", e)
                    ended = "failed"
                now = trio.current_time()
                if ended == "rehome":
                    pass  # Homing already points at the first server, at once
                elif ended == "restart":
                    pass  # the same server after the shortest wait (Homing.restart)
                else:
                    self.homing.failed(now)
        finally:
            self.registered = False
            self.station = None
            self._outcome("down")

    async def _connection(self, server: Address) -> str:
        """One connection to ``server``: ``rehome``, ``restart`` or why it failed."""
        self._outcome("registering")
        try:
            with trio.fail_after(self.connect_timeout):
                stream = await trio.open_tcp_stream(server.host, server.port)
        except (OSError, trio.TooSlowError) as e:
            why = "no answer" if isinstance(e, trio.TooSlowError) else (
                getattr(e, "strerror", None) or describe(e))
            self._outcome(f"unreachable: {server}: {why}")
            self.owner.link_changed(self, "unreachable", f"{server}: {why}")
            return "unreachable"
        self.generation += 1
        self._closing = None
        self._unregistered = trio.Event()
        self._had_registration = False
        self._rehoming = False
        try:
            self.local_ip = stream.socket.getsockname()[0]
        except OSError:
            self.local_ip = None
        config = dataclasses.replace(self.config,
                                     station_ip=self.station_ip or self.local_ip or "0.0.0.0")
        station = st.Station(config)
        self._stream = stream
        reset = False
        try:
            async with trio.open_nursery() as nursery:
                self._cancel = nursery.cancel_scope
                async with self._lock:
                    self.station = station
                    await self._apply(station.connected(trio.current_time()))
                nursery.start_soon(self._reader, stream)
                nursery.start_soon(self._timer)
                nursery.start_soon(self._prober)
        finally:
            self._cancel = None
            # nothing closed it: the driver is stopping (or a task failed): no event
            stopping = self._closing is None and not self._rehoming
            reason = "rehome" if self._rehoming else (self._closing or "stopped")
            reset = reason.startswith("CallManager asked for a")
            with trio.CancelScope(shield=True):
                async with self._lock:
                    was = self._had_registration
                    if self.station is station:
                        await self._apply(station.lost(trio.current_time(), reason))
                    self.station = None
                    self._stream = None
                    self.registered = False
                    if reason == "rehome":
                        self._outcome("registering")
                    elif stopping:
                        self._outcome("down")
                        if was:
                            self.owner.link_changed(self, "down", reason)
                    elif not self.outcome.startswith("rejected"):
                        self._outcome(f"{'lost' if was else 'failed'}: {reason}")
                        self.owner.link_changed(self, "lost" if was else "failed", reason)
                await stream.aclose()
        if reason == "rehome":
            return "rehome"
        return "restart" if reset else reason

    async def _reader(self, stream: trio.SocketStream) -> None:
        framer = Framer()
        while True:
            try:
                data = await stream.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
                self._close(f"connection reset ({describe(e)})")
                return
            if not data:
                self._close("CallManager closed the connection")
                return
            try:
                items = framer.feed(data)
            except Exception as e:  # noqa: BLE001 - a framer bug: this connection only
                self.owner.task_failures.failed(f"sccp-framer {self.name}", e)
                self._close(f"framing failed: {describe(e)}")
                return
            for item in items:
                if not isinstance(item, Message):
                    self.counters["protocol_errors"] += 1
                else:
                    self.frames_in += 1
                try:
                    await self.do(None, lambda s, now, item=item: s.received(item, now))
                except Exception as e:  # noqa: BLE001 - one message's handling failing
                    self.owner.task_failures.failed(f"sccp-input {self.name}", e)
                if self._closing is not None:
                    return

    async def _timer(self) -> None:
        while True:
            changed = self._changed
            station = self.station
            deadline = station.next_deadline() if station is not None else None
            if deadline is not None and trio.current_time() >= deadline:
                try:
                    await self.do(None, lambda s, now: s.tick(now))
                except Exception as e:  # noqa: BLE001 - the timers go on
                    self.owner.task_failures.failed(f"sccp-timer {self.name}", e)
                    await trio.sleep(0.5)
                continue
            with trio.move_on_at(deadline if deadline is not None else trio.current_time() + 1.0):
                await changed.wait()
            await self._maybe_rehome()

    async def _prober(self) -> None:
        """Registered on a backup: look at the first server every ``rehome_probe`` s."""
        if len(self.servers) < 2:  # no backup, nothing to come back from: no polling
            await trio.sleep_forever()
        while True:
            at = self.homing.next_probe()
            if at is None:
                await trio.sleep(0.5)
                continue
            await trio.sleep_until(at)
            now = trio.current_time()
            if not self.homing.should_probe(now):
                continue
            first = self.servers[0]
            reachable = False
            try:
                with trio.move_on_after(self.connect_timeout):
                    probe = await trio.open_tcp_stream(first.host, first.port)
                    reachable = True
                    await probe.aclose()
            except OSError:
                reachable = False
            self.homing.probed(trio.current_time(), reachable)
            if reachable:
                log.info("%s: CallManager %s answers again: re-homing when idle", self.name, first)
            await self._maybe_rehome()

    async def _maybe_rehome(self) -> None:
        """A re-home is wanted and the port is idle: unregister, then reconnect to the first."""
        if not self.homing.rehome_pending or not self.registered or self._closing is not None:
            return
        if not self.station_idle or not self.idle() \
                or not self.homing.primary_back(trio.current_time(), idle=True):
            return
        frm = self.server
        self._rehoming = True
        self.owner.link_changed(self, "rehomed", f"from {frm} to {self.servers[0]}")
        await self.do(None, lambda s, now: s.unregister(now))
        with trio.move_on_after(UNREGISTER_WAIT):
            await self._unregistered.wait()
        self._close("rehome")
