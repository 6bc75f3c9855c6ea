"""The port model and the one call-arrival path every driver uses.

A driver (SIP, SCCP, analog, SMDI, the loopback trunk) owns some ports.  It registers them in
the :class:`PortRegistry`, and when a call reaches one of them it claims the port, builds a
:class:`~telephony.core.events.CallArrival` and awaits ``service.offer(call)``.  The returned
:class:`Decision` says whether to answer or reject.  An answered call is an
:class:`ActiveCall`: the driver reports the far end hanging up with ``service.end_call()``,
and watches ``ActiveCall.dropped`` for the service hanging the call up itself (deactivate
without drain, shutdown, node manager gone).

The hold logic lives in :class:`CallDesk`: when the service may answer, a call is answered at
once; when it may not, the desk reports ``call_offered`` to the node manager and holds the
call up to ``offer_hold`` seconds for an activation (answer) or a ``refuse_call`` (reject).
Time is read only through Trio, so tests run it on a MockClock.
"""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable

import trio

from telephony.core.control import make
from telephony.core.events import CallArrival

log = logging.getLogger("telephony.runtime.ports")


class PortState(StrEnum):
    IDLE = "idle"  # free, waiting for a call
    RINGING = "ringing"  # a call is being offered (held while the service is not active)
    IN_CALL = "in_call"  # answered, call in progress
    DOWN = "down"  # not usable (driver not running)


@dataclass
class Port:
    name: str
    kind: str
    state: PortState = PortState.DOWN
    #: what the driver says of the port beyond its state (at most 200 characters; e.g. an
    #: SCCP port's registration outcome), shown by ``vmha status``; "" for none
    detail: str = ""

    def __setattr__(self, name: str, value: object) -> None:
        # a driver sets ``state``/``detail`` directly: a real change tells the registry's
        # ``on_change`` (the service reports health on change, not by polling)
        changed = name in _WATCHED and self.__dict__.get(name, value) != value
        object.__setattr__(self, name, value)
        if changed:
            hook = self.__dict__.get("_on_change")
            if hook is not None:
                hook()

    def status(self) -> dict[str, str]:
        out = {"name": self.name, "kind": self.kind, "state": str(self.state)}
        if self.detail:
            out["detail"] = "".join(c if c.isprintable() else "?" for c in self.detail[:200])
        return out


_WATCHED = frozenset({"state", "detail"})


class PortRegistry:
    """Every port of the service, in registration order.  ``on_change()`` runs whenever a
    port's state or detail changes (in the thread that changed it)."""

    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        self._ports: dict[str, Port] = {}
        self.on_change = on_change

    def register(self, name: str, kind: str, state: PortState = PortState.DOWN) -> Port:
        if name in self._ports:
            raise ValueError(f"port {name!r} is registered twice")
        port = self._ports[name] = Port(name, kind, state)
        object.__setattr__(port, "_on_change", self._changed)
        self._changed()
        return port

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def get(self, name: str) -> Port:
        return self._ports[name]

    def __iter__(self) -> Iterator[Port]:
        return iter(self._ports.values())

    def __len__(self) -> int:
        return len(self._ports)

    def names(self) -> list[str]:
        return list(self._ports)

    def set_state(self, kind: str, state: PortState) -> None:
        """Set every port of ``kind`` (a driver coming up or going down)."""
        for p in self._ports.values():
            if p.kind == kind:
                p.state = state

    def free(self, kind: str | None = None) -> Port | None:
        """The first idle port (of ``kind``), or None when all are in use."""
        for p in self._ports.values():
            if p.state is PortState.IDLE and (kind is None or p.kind == kind):
                return p
        return None

    def claim_port(self, name: str) -> Port | None:
        """Take port ``name`` for a call ringing on that very line, or None if it is not idle
        (KeyError if there is no such port)."""
        p = self._ports[name]
        if p.state is not PortState.IDLE:
            return None
        p.state = PortState.RINGING
        return p

    def claim(self, kind: str | None = None) -> Port | None:
        """Take the first idle port for an arriving call (it rings), or None: busy."""
        p = self.free(kind)
        if p is not None:
            p.state = PortState.RINGING
        return p

    def status(self) -> list[dict[str, str]]:
        return [p.status() for p in self._ports.values()]


# ============================================================================ calls


@dataclass(frozen=True)
class Decision:
    """What to do with an offered call.  ``reason``: ``answered``, or why it was rejected:
    ``busy``, ``refused`` (the node manager refused it), ``timeout`` (no activation within
    ``offer_hold``), ``duplicate`` (call id already in use), ``shutdown``."""

    answered: bool
    reason: str
    term: int | None = None
    call: ActiveCall | None = None


@dataclass(eq=False)
class ActiveCall:
    """An answered call in progress.  ``dropped`` is set when the service hangs it up."""

    arrival: CallArrival
    term: int
    dropped: trio.Event = field(default_factory=trio.Event)
    finished: bool = False

    @property
    def call_id(self) -> str:
        return self.arrival.call_id


class CallService(Protocol):
    """What a port driver sees of the messaging service."""

    node: str

    async def offer(self, call: CallArrival) -> Decision: ...

    async def end_call(self, call: ActiveCall, event: str = "ended") -> None: ...


@runtime_checkable
class PortDriver(Protocol):
    """A port driver.  ``register`` adds its ports (state DOWN) before the service says hello;
    ``run`` serves them until cancelled, calling ``task_status.started()`` once the ports are
    usable (then they are IDLE)."""

    kind: str

    def register(self, registry: PortRegistry) -> None: ...

    async def run(self, service: CallService, *,
                  task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None: ...


@dataclass(eq=False)
class _Pending:
    call: CallArrival
    wake: trio.Event = field(default_factory=trio.Event)
    outcome: str | None = None  # "refused" | "shutdown" once settled against the call


Notify = Callable[[dict], Awaitable[None]]


class CallDesk:
    """Offers, holds, answers and tracks calls for every driver.

    ``answering()`` returns the term the service may answer in right now, or None.
    ``notify(msg)`` sends a control message to the node manager (it must not raise).
    ``on_idle()`` runs when the last call in progress ends (the drain is over);
    ``on_change()`` whenever a call starts or ends.
    """

    def __init__(self, *, registry: PortRegistry, answering: Callable[[], int | None],
                 notify: Notify, offer_hold: float = 2.0,
                 on_idle: Callable[[], None] = lambda: None,
                 on_change: Callable[[], None] = lambda: None) -> None:
        if not offer_hold >= 0:
            raise ValueError("offer_hold must be >= 0")
        self.registry = registry
        self.offer_hold = offer_hold
        self._answering = answering
        self._notify = notify
        self._on_idle = on_idle
        self._on_change = on_change  # the number of calls in progress changed
        self.pending: dict[str, _Pending] = {}
        self.calls: dict[str, ActiveCall] = {}
        self.closing = False
        self._pending_gone = trio.Event()

    @property
    def calls_in_progress(self) -> int:
        return len(self.calls)

    # ------------------------------------------------------------------ the arrival path

    async def offer(self, call: CallArrival) -> Decision:
        """Decide on a call the driver has put on ``call.port`` (claimed, ringing)."""
        port = self.registry.get(call.port)
        if call.call_id in self.calls or call.call_id in self.pending:
            try:
                return await self._reject(call, "duplicate")
            finally:
                port.state = PortState.IDLE
        answered = False
        # the call is pending until its decision has been reported (close() waits for that)
        p = self.pending[call.call_id] = _Pending(call)
        try:
            if self.closing:
                return await self._reject(call, "shutdown")
            term = self._answering()
            if term is None:
                term, why = await self._hold(p)
                if term is None:
                    return await self._reject(call, why)
            answered = True
            return await self._answer(call, term, port)
        finally:
            del self.pending[call.call_id]
            self._pending_gone.set()
            if not answered and port.state is PortState.RINGING:
                port.state = PortState.IDLE

    async def announce(self, call: CallArrival) -> bool:
        """A call is on its way to ``call.port`` (a serial call record came before the line
        rings): while the service may not answer, report it to the node manager now, so the
        failover starts before the ring.  Holds nothing and claims no port; True if reported."""
        if self.closing or self._answering() is not None:
            return False
        log.info("%s announced while not active", call.summary())
        await self._notify(make("call_offered", call=call.to_dict()))
        return True

    async def _hold(self, p: _Pending) -> tuple[int | None, str]:
        call = p.call
        log.info("%s offered while not active: holding up to %.3gs",
                 call.summary(), self.offer_hold)
        await self._notify(make("call_offered", call=call.to_dict()))
        with trio.move_on_after(self.offer_hold):
            while p.outcome is None and self._answering() is None:
                await p.wake.wait()
                p.wake = trio.Event()
        if p.outcome is not None:
            return None, p.outcome
        term = self._answering()
        return term, "timeout" if term is None else "answered"

    async def _answer(self, call: CallArrival, term: int, port) -> Decision:
        active = ActiveCall(call, term)
        self.calls[call.call_id] = active
        self._on_change()
        port.state = PortState.IN_CALL
        log.info("answered %s in term %d", call.summary(), term)
        await self._notify(make("call", event="answered", call=call.to_dict(), term=term))
        return Decision(True, "answered", term, active)

    async def _reject(self, call: CallArrival, reason: str) -> Decision:
        log.info("rejected %s: %s", call.summary(), reason)
        await self._notify(make("call", event="rejected", call=call.to_dict(), term=None,
                                reason=reason))
        return Decision(False, reason)

    # ------------------------------------------------------------------ control side

    def wake(self) -> None:
        """The activation changed: held calls look again whether they may be answered."""
        for p in self.pending.values():
            p.wake.set()

    def refuse(self, call_id: str, reason: str) -> bool:
        """The node manager will not take this held call.  False if no such call is held."""
        p = self.pending.get(call_id)
        if p is None or p.outcome is not None:
            return False
        log.info("call %s refused by the node manager: %s", call_id, reason or "no reason")
        p.outcome = "refused"
        p.wake.set()
        return True

    async def end_call(self, active: ActiveCall, event: str = "ended") -> None:
        """The call is over (``ended``: the far end hung up; ``dropped``: we hung up)."""
        if active.finished:
            return
        active.finished = True
        if event == "dropped":
            active.dropped.set()
        if self.calls.get(active.call_id) is active:
            del self.calls[active.call_id]
            self._on_change()
        try:
            port = self.registry.get(active.arrival.port)
            if port.state is PortState.IN_CALL:
                port.state = PortState.IDLE
        except KeyError:
            pass
        if not self.calls:
            self._on_idle()
        log.info("call %s on %s %s", active.call_id, active.arrival.port, event)
        await self._notify(make("call", event=event, call=active.arrival.to_dict(),
                                term=active.term))

    async def drop_all(self) -> int:
        """Hang up every call in progress (deactivate without drain, shutdown)."""
        calls = list(self.calls.values())
        for c in calls:
            await self.end_call(c, "dropped")
        return len(calls)

    async def close(self, grace: float = 1.0) -> None:
        """Stop for good: reject held and new calls, drop calls in progress.  Waits up to
        ``grace`` seconds for the held calls' rejections to be reported."""
        self.closing = True
        for p in self.pending.values():
            if p.outcome is None:
                p.outcome = "shutdown"
                p.wake.set()
        with trio.move_on_after(grace):
            while self.pending:
                self._pending_gone = trio.Event()
                await self._pending_gone.wait()
        await self.drop_all()
