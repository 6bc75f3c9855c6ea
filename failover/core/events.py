"""Events the supervisor consumes and actions it returns.  Frozen dataclasses, no I/O."""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from failover.core.state import Mode, Role, ServiceHealth, State

# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Tick:
    """A timer fired.  ``wall`` is the epoch time, ``local_seconds`` seconds since local midnight
    (both only used for the failback window and the licence clock; never compared with the peer)."""

    wall: float
    local_seconds: float


@dataclass(frozen=True)
class PeerHeartbeat:
    node: str
    role: Role
    state: State
    term: int
    service: ServiceHealth
    mode: Mode = Mode.AUTOMATIC
    eligible: bool = True
    licensed: bool = True
    hold: bool = False
    shutting_down: bool = False
    calls: int = 0
    health: int = 100  # the node's driver health, 0..100 (failover.core.health)


#: what a node says of itself in every heartbeat; the node link's STATUS frame
#: (:class:`failover.core.wire.Status`) and the supervisor's status view extend it
HEARTBEAT_FIELDS = tuple(f.name for f in fields(PeerHeartbeat))


def heartbeat_from(obj) -> "PeerHeartbeat":
    """A PeerHeartbeat from anything carrying its fields (a wire Status, a StatusView)."""
    return PeerHeartbeat(**{name: getattr(obj, name) for name in HEARTBEAT_FIELDS})


@dataclass(frozen=True)
class PeerCommand:
    kind: str  # "step_down" | "yield" (step down and hold) | "take_over" | "hand_over" (asked)
    term: int
    reason: str


@dataclass(frozen=True)
class ServiceStarted:
    """The messaging service connected to the control channel and said hello."""

    pid: int = 0


@dataclass(frozen=True)
class ServiceHealthReport:
    state: str  # the service's own view: inactive | active | draining | fenced
    term: int | None
    calls: int
    health: int = 100  # the lowest of the drivers' and the store's scores (failover.core.health)


@dataclass(frozen=True)
class ServiceActivated:
    term: int


@dataclass(frozen=True)
class ServiceDeactivated:
    term: int
    calls: int


@dataclass(frozen=True)
class ServiceFenced:
    term: int
    reason: str


@dataclass(frozen=True)
class ServiceExited:
    reason: str


@dataclass(frozen=True)
class CallOffered:
    call_id: str
    port: str
    summary: str = ""


@dataclass(frozen=True)
class AdminRequest:
    request_id: int
    kind: str  # "failover" | "failback" | "mode"
    arg: str = ""
    force: bool = False


@dataclass(frozen=True)
class ShutdownRequested:
    signal: str = "SIGTERM"


@dataclass(frozen=True)
class ReplicationProgress:
    """From the replication driver: ``pending`` changes (database entries and files) not yet
    acknowledged by the peer, measured after every barrier up to ``barrier`` completed."""

    pending: int
    barrier: int


@dataclass(frozen=True)
class ActionFailed:
    action: object
    error: str


Event = (
    Tick | PeerHeartbeat | PeerCommand | ServiceStarted | ServiceHealthReport | ServiceActivated
    | ServiceDeactivated | ServiceFenced | ServiceExited | CallOffered | AdminRequest
    | ShutdownRequested | ReplicationProgress | ActionFailed
)

# --------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class SendStatus:
    """Send a heartbeat with the supervisor's current status now."""


@dataclass(frozen=True)
class SendCommand:
    kind: str
    term: int
    reason: str


@dataclass(frozen=True)
class PersistState:
    """Write the term reservation and the licence contact durably (fsync) before the next
    action runs.  ``term``: no term at or below it may be taken again, even after a crash."""

    term: int
    last_contact_wall: float | None


@dataclass(frozen=True)
class StartService:
    reason: str


@dataclass(frozen=True)
class KillService:
    reason: str


@dataclass(frozen=True)
class ShutdownService:
    reason: str


@dataclass(frozen=True)
class ActivateService:
    term: int
    lease: float


@dataclass(frozen=True)
class RenewLease:
    term: int
    lease: float


@dataclass(frozen=True)
class DeactivateService:
    term: int
    drain: bool


@dataclass(frozen=True)
class RefuseCall:
    call_id: str
    reason: str


@dataclass(frozen=True)
class AdminReply:
    request_id: int
    ok: bool
    message: str


@dataclass(frozen=True)
class ReplicationBarrier:
    """Planned handover: writes have stopped here; report (``ReplicationProgress``) what the
    peer has not acknowledged yet, counting every change committed before this action."""

    number: int


@dataclass(frozen=True)
class Log:
    level: str  # debug | info | warning | error
    event: str
    message: str
    fields: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Exit:
    code: int


Action = (
    SendStatus | SendCommand | PersistState | StartService | KillService | ShutdownService
    | ActivateService | RenewLease | DeactivateService | RefuseCall | AdminReply
    | ReplicationBarrier | Log | Exit
)
