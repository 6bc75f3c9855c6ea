"""``GET /metrics``: the node in the Prometheus text format (docs/metrics.md).

Everything is built at scrape time from ``nm.status_dict()`` (the view ``vmha status``
prints) by a custom collector in a registry of this application's own; nothing runs in the
background.  A few counters cannot be read from the status and are kept from the node's
event-log records instead (a listener, as quick as the log requires): activations by cause
label (``activating`` records, :class:`failover.core.causes.FailoverTally`) and calls by
result (the service's ``call`` reports the node manager logs as ``call_answered``,
``call_rejected``, ``call_ended``, ``call_dropped``).  They count from the start of this node
manager, like every Prometheus counter of a process.  The node manager's own process metrics
(CPU, memory, file descriptors) come from prometheus-client's ``ProcessCollector``.

The route needs the ``read`` role (a bearer token: Prometheus's ``authorization``
``credentials_file``).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from failover.core.causes import FailoverTally
from failover.core.wire import DROP_REASONS
from failover.web.auth import require

if TYPE_CHECKING:
    from failover.node import NodeManager
    from failover.web.hub import EventHub

__all__ = ["routes", "EventCounters", "VmhaCollector", "METRICS", "CALL_RESULTS", "CALL_ENDS",
           "build_registry"]

#: the node's states in which it is (or is becoming) the one that answers
ACTIVE_STATES = ("active", "activating")
#: what the service reports of a call offered to a port: answered, or rejected (refused)
CALL_RESULTS = ("answered", "rejected")
#: how an answered call ended: the far end hung up (ended) or this node hung up (dropped)
CALL_ENDS = ("ended", "dropped")

#: every family the collector makes: name (as exposed, without ``_total``), type, help
METRICS: dict[str, tuple[str, str]] = {
    "vmha_node_active": ("gauge", "1 while the node is active or activating, else 0 (this node, "
                         "and the peer as last heard while it is reachable)"),
    "vmha_node_info": ("gauge", "Always 1; the node's role, state, mode and service state as labels"),
    "vmha_node_eligible": ("gauge", "1 while this node may become active (service running, licensed, "
                           "not shutting down)"),
    "vmha_term": ("gauge", "The node's current term (fencing token; the peer's as last heard)"),
    "vmha_failovers": ("counter", "Activations of this node since its node manager started, by "
                       "cause label"),
    "vmha_heartbeat_age_seconds": ("gauge", "Seconds since the last heartbeat from the peer"),
    "vmha_peer_reachable": ("gauge", "1 while the peer is heard within the takeover timeout"),
    "vmha_ports": ("gauge", "This node's ports by driver kind and state"),
    "vmha_calls_in_progress": ("gauge", "Calls in progress on the node (the peer's as last heard)"),
    "vmha_calls": ("counter", "Calls offered to this node's ports since its node manager started, "
                   "by result (answered, rejected)"),
    "vmha_calls_ended": ("counter", "Answered calls that ended since this node manager started: "
                         "ended (the caller hung up) or dropped (this node hung up)"),
    "vmha_replication_lag_seconds": ("gauge", "Age of the oldest configuration change of this "
                                     "node the peer has not acknowledged (0 when none)"),
    "vmha_replication_lag_changes": ("gauge", "Configuration changes of this node the peer has "
                                     "not acknowledged"),
    "vmha_replication_behind_changes": ("gauge", "The peer's configuration changes not yet "
                                        "applied here"),
    "vmha_replication_files_pending": ("gauge", "Replicated files waiting to be sent to the peer"),
    "vmha_replication_healthy": ("gauge", "1 unless a replication task is failing"),
    "vmha_replication_diverged": ("gauge", "1 while the two configuration databases differ at "
                                  "the same position"),
    "vmha_replication_conflicts": ("gauge", "Configuration changes that lost a conflict (kept "
                                   "for vmha db conflicts)"),
    "vmha_lamps_pending": ("gauge", "Message-waiting lamps not sent yet: no_sink (no enabled "
                           "driver serves the subscriber's method), held (a secondary on a shared "
                           "SMDI line while its peer is unreachable)"),
    "vmha_link_frames_rejected": ("counter", "Node-link frames dropped by this node, by reason "
                                  "(bad MAC, sequence, unknown type, ...)"),
    "vmha_link_handshakes_rejected": ("counter", "Node-link connections refused at the handshake "
                                      "(unknown key id, bad MAC, wrong node)"),
    "vmha_link_connected": ("gauge", "Node-link connections: out (1 while this node's dialled "
                            "connection is up) and in (accepted connections)"),
    "vmha_health_score": ("gauge", "Driver health 0..100 (the lowest driver's score; the peer's "
                          "as last heard)"),
    "vmha_driver_health_score": ("gauge", "Health score 0..100 of each driver kind and the store "
                                 "on this node"),
    "vmha_task_failures": ("counter", "Failures contained by long-lived tasks, by task and the "
                           "part that runs it (node manager, replication, service)"),
    "vmha_service_failures": ("gauge", "Messaging-service failures within the restart window"),
    "vmha_service_counter": ("gauge", "The messaging service's own counters by group and name "
                             "(reset when the service restarts)"),
    "vmha_uptime_seconds": ("gauge", "Seconds since this node manager started"),
    "vmha_event_log_write_errors": ("counter", "Event-log records that could not be written"),
}


class EventCounters:
    """The counters kept from event-log records.  ``on_record`` is the event log's listener:
    it may be called from any thread, takes a lock and counts; it never raises."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._failovers = FailoverTally()
        self._calls = dict.fromkeys(CALL_RESULTS, 0)
        self._ends = dict.fromkeys(CALL_ENDS, 0)

    def on_record(self, record: dict) -> None:
        try:
            event = record.get("event") if isinstance(record, dict) else None
            with self._lock:
                self._failovers.record(record, self._clock())
                if isinstance(event, str) and event.startswith("call_"):
                    what = event[5:]
                    if what in self._calls:
                        self._calls[what] += 1
                    elif what in self._ends:
                        self._ends[what] += 1
        except Exception:  # noqa: BLE001 - a listener must not raise (the log counts it anyway)
            return

    def snapshot(self) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        """(failovers by cause label, calls by result, answered calls by how they ended)."""
        with self._lock:
            return self._failovers.counts(self._clock()), dict(self._calls), dict(self._ends)


def _num(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


def _lab(value: Any) -> str:
    return "" if value is None else str(value)[:100]


def _d(value: Any) -> dict:
    """``value`` if it is a dict, else an empty one (a status part missing or not as expected)."""
    return value if isinstance(value, dict) else {}


def _items(value: Any) -> list[tuple[str, Any]]:
    return sorted((str(k), v) for k, v in _d(value).items())


class VmhaCollector:
    """Builds every ``vmha_*`` family from a status dict (``status()``, the dict of
    ``vmha status --json``), the event counters and the event log's write errors."""

    def __init__(self, status: Callable[[], dict], counters: EventCounters,
                 log_errors: Callable[[], int] = lambda: 0) -> None:
        self.status = status
        self.counters = counters
        self.log_errors = log_errors

    def describe(self) -> Iterator[Metric]:
        for name, (kind, doc) in METRICS.items():
            yield (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(name, doc)

    def collect(self) -> Iterator[Metric]:
        st = _d(self.status())
        fam: dict[str, Metric] = {}

        def family(name: str, labels: tuple[str, ...] = ()) -> Metric:
            if name not in fam:
                kind, doc = METRICS[name]
                cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
                fam[name] = cls(name, doc, labels=list(labels))
            return fam[name]

        seen: set[tuple[str, tuple[str, ...]]] = set()

        def put(name: str, value: Any, labels: tuple[str, ...] = (), values: tuple = ()) -> None:
            """One sample; none for a value that is not a number, and only the first of a
            name and label values (a scrape with a repeated series is refused whole)."""
            v = _num(value)
            key = (name, tuple(_lab(x) for x in values))
            if v is not None and key not in seen:
                seen.add(key)
                family(name, labels).add_metric(list(key[1]), v)

        n, p = _d(st.get("node")), _d(st.get("peer"))
        me, peer = n.get("name"), p.get("name")
        reachable = bool(p.get("reachable"))
        # -- the pair
        put("vmha_node_active", n.get("state") in ACTIVE_STATES, ("node",), (me,))
        if reachable and p.get("state") is not None:
            put("vmha_node_active", p.get("state") in ACTIVE_STATES, ("node",), (peer,))
        info = ("node", "role", "state", "mode", "service")
        put("vmha_node_info", 1, info, (me, n.get("role"), n.get("state"), n.get("mode"), n.get("service")))
        if p.get("state") is not None:
            peer_role = "secondary" if n.get("role") == "primary" else "primary"
            put("vmha_node_info", 1, info, (peer, peer_role, p.get("state"), p.get("mode"), p.get("service")))
        put("vmha_node_eligible", n.get("eligible"))
        put("vmha_term", n.get("term"), ("node",), (me,))
        put("vmha_term", p.get("term"), ("node",), (peer,))
        put("vmha_peer_reachable", reachable)
        put("vmha_heartbeat_age_seconds", p.get("last_heartbeat_age_s"))
        put("vmha_uptime_seconds", n.get("uptime_s"))
        put("vmha_service_failures", n.get("service_failures"))
        put("vmha_health_score", n.get("health"), ("node",), (me,))
        put("vmha_health_score", p.get("health"), ("node",), (peer,))
        for d in n.get("drivers") if isinstance(n.get("drivers"), list) else []:
            if isinstance(d, dict):
                put("vmha_driver_health_score", d.get("score"), ("driver",), (d.get("name"),))
        put("vmha_calls_in_progress", st.get("calls_in_progress"), ("node",), (me,))
        put("vmha_calls_in_progress", p.get("calls"), ("node",), (peer,))
        # -- events counted from the log
        failovers, calls, ends = self.counters.snapshot()
        family("vmha_failovers", ("cause",))
        for cause, count in failovers.items():
            put("vmha_failovers", count, ("cause",), (cause,))
        for result, count in calls.items():
            put("vmha_calls", count, ("result",), (result,))
        for result, count in ends.items():
            put("vmha_calls_ended", count, ("result",), (result,))
        put("vmha_event_log_write_errors", self.log_errors())
        # -- ports
        ports: dict[tuple[str, str], int] = {}
        for port in st.get("ports") if isinstance(st.get("ports"), list) else []:
            if isinstance(port, dict):
                key = (_lab(port.get("kind")), _lab(port.get("state")))
                ports[key] = ports.get(key, 0) + 1
        family("vmha_ports", ("kind", "state"))
        for (kind, state), count in sorted(ports.items()):
            put("vmha_ports", count, ("kind", "state"), (kind, state))
        # -- the node link
        link = _d(p.get("link"))
        put("vmha_link_connected", link.get("out_connected"), ("direction",), ("out",))
        put("vmha_link_connected", link.get("in_connections"), ("direction",), ("in",))
        put("vmha_link_handshakes_rejected", link.get("in_rejected", 0))
        dropped = {**{f"dropped_{r}": 0 for r in (*DROP_REASONS, "unexpected")},
                   **{k: v for k, v in _items(link) if k.startswith("dropped_")}}
        for key, count in sorted(dropped.items()):
            put("vmha_link_frames_rejected", count, ("reason",), (key[8:],))
        # -- replication
        repl = _d(st.get("replication"))
        db = _d(repl.get("db"))
        put("vmha_replication_lag_seconds", db.get("lag_s"))
        put("vmha_replication_lag_changes", db.get("lag_changes"))
        put("vmha_replication_behind_changes", db.get("behind_changes"))
        put("vmha_replication_healthy", repl.get("healthy"))
        put("vmha_replication_diverged", db.get("diverged"))
        put("vmha_replication_conflicts", db.get("conflicts"))
        put("vmha_replication_files_pending", _d(repl.get("files")).get("pending"))
        # -- the service's counters: lamps waiting, and every counter as it is
        groups = _d(st.get("counters"))
        messaging, smdi = _d(groups.get("messaging")), _d(groups.get("smdi"))
        put("vmha_lamps_pending", messaging.get("lamps_waiting_for_a_sink", 0), ("reason",), ("no_sink",))
        put("vmha_lamps_pending", smdi.get("lamps_held_waiting", 0), ("reason",), ("held",))
        for group, values in _items(groups):
            if group != "tasks":
                for name, value in _items(values):
                    put("vmha_service_counter", value, ("group", "counter"), (group, name))
        # -- contained task failures: node manager, replication, service
        family("vmha_task_failures", ("task", "part"))
        for part, tasks in (("node", st.get("tasks")), ("replication", repl.get("tasks"))):
            for task, t in _items(tasks):
                put("vmha_task_failures", _d(t).get("failures"), ("task", "part"), (task, part))
        for task, count in _items(groups.get("tasks")):
            put("vmha_task_failures", count, ("task", "part"), (task, "service"))
        yield from fam.values()


def build_registry(collector: VmhaCollector, *, process: bool = True) -> CollectorRegistry:
    """A registry of its own (never the library's global one) with ``collector`` and, with
    ``process``, this process's ``ProcessCollector``."""
    registry = CollectorRegistry()
    registry.register(collector)
    if process:
        ProcessCollector(registry=registry)
    return registry


def routes(nm: "NodeManager", hub: "EventHub") -> list[Route]:
    """``GET /metrics`` for ``nm`` (role ``read``).  The event counters listen to the node's
    event log from now on."""
    counters = EventCounters()
    nm.events.add_listener(counters.on_record)
    registry = build_registry(VmhaCollector(nm.status_dict, counters,
                                            lambda: getattr(nm.events, "write_errors", 0)))

    async def metrics(request: Request) -> Response:
        await require(request, "read")
        return Response(generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST,
                                                            "Cache-Control": "no-store"})

    return [Route("/metrics", metrics, methods=["GET"])]
