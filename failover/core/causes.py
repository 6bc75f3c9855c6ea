"""Why a node became active, as a short stable label.

The supervisor writes the cause of every activation as text (the ``activating`` and ``reterm``
records' field ``cause``, the node's ``cause`` in ``vmha status``), made for people: it names
the peer, a call, a time.  Metrics and reports need a small fixed set of values instead, so
:func:`classify` maps a cause text to one of :data:`LABELS`.  Pure: no I/O.

The texts come from ``failover/core/supervisor.py`` and ``failover/core/commands.py``
(``_activate`` and, for what the peer hands over, ``_hand_over``):

=====================  ===================================================================
label                  cause text
=====================  ===================================================================
``peer_silent``        ``peer silent for 0.612s (6 missed pings)``
``service_stopped``    ``peer service failed: b is inactive`` (the peer is not eligible: its
                       service is stopped, starting or backing off, or it is unlicensed)
``no_node_active``     ``no node active: b is inactive`` (the peer is fine but nobody is
                       active: the primary takes over when the pair starts, after a fence)
``startup``            ``first node started: peer not heard for 1.00s``, or either of the
                       two above while the peer is still ``starting``
``call_at_inactive``   ``call c-42 offered on inactive port b-port-1``
``operator``           ``operator failover`` / ``operator failback``, also when handed over
                       by the peer (``handover from peer: operator failover``)
``scheduled_failback`` ``handover from peer: scheduled failback window``
``health``             ``handover from peer: health 0 below 50 for 3.0s; b health 100``
``shutdown``           ``handover from peer: a shutting down`` (the peer's planned stop)
``handover``           ``handover from peer: <any other reason>``
``both_active``        ``both nodes active (peer term 9): primary stays active`` (a ``reterm``)
``other``              anything else (a cause from a later version, an empty text)
=====================  ===================================================================

A planned handover usually reaches the new node first as the peer's heartbeat ("draining",
held back): the new node activates with ``no node active: a is draining`` (or, when the peer
is shutting down, ``peer service running: a is draining``), and the peer's ``take_over``
command, which says why (``operator failover``), arrives a moment later and is only logged
(``peer_command``).  :class:`FailoverTally` counts activations from the event records and
gives such an activation the label of that command's reason when it follows within
:data:`HANDOVER_WAIT` seconds; without one it keeps the label of its own text.  The tally
also counts the first activation of a node manager that finds nobody active
(``no_node_active``: the usual start of a pair, the primary finding its secondary idle) as
``startup``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

#: every label :func:`classify` returns, in the order of the table above
LABELS = ("peer_silent", "service_stopped", "no_node_active", "startup", "call_at_inactive",
          "operator", "scheduled_failback", "health", "shutdown", "handover", "both_active", "other")

#: only the start of a cause is read (the supervisor's are short; the peer's reason is at most
#: 120 characters on the wire)
MAX_CAUSE = 400

HANDOVER_PREFIX = "handover from peer: "

_OPERATOR = re.compile(r"operator (failover|failback)\b")
_PEER_SERVICE = re.compile(r"peer service [a-z]+: \S+ is ([a-z]+)")
_NO_NODE = re.compile(r"no node active: \S+ is ([a-z]+)")
_CALL = re.compile(r"call \S+ offered on inactive port ")
_HEALTH = re.compile(r"health \d+ below \d+ ")
_SHUTDOWN = re.compile(r"\S+ shutting down$")


def classify(cause: object) -> str:
    """The label of an activation cause (one of :data:`LABELS`); ``"other"`` for anything
    that is not a cause the supervisor writes, including a value that is not a string."""
    if not isinstance(cause, str):
        return "other"
    text = cause[:MAX_CAUSE]
    if text.startswith(HANDOVER_PREFIX):
        return _handed_over(text[len(HANDOVER_PREFIX):])
    if text.startswith("peer silent for "):
        return "peer_silent"
    if text.startswith("first node started: "):
        return "startup"
    m = _PEER_SERVICE.match(text) or _NO_NODE.match(text)
    if m:
        if m.group(1) == "starting":
            return "startup"
        return "service_stopped" if m.re is _PEER_SERVICE else "no_node_active"
    if _CALL.match(text):
        return "call_at_inactive"
    if _OPERATOR.match(text):
        return "operator"
    if text.startswith("both nodes active "):
        return "both_active"
    return "other"


def _handed_over(reason: str) -> str:
    """What the peer said when it handed over (the reason of its ``take_over`` command)."""
    if _OPERATOR.match(reason):
        return "operator"
    if reason.startswith("scheduled failback"):
        return "scheduled_failback"
    if _HEALTH.match(reason):
        return "health"
    if _SHUTDOWN.match(reason):
        return "shutdown"
    return "handover"


def awaits_reason(cause: object) -> bool:
    """True when ``cause`` says the peer was draining: it may be a planned handover whose
    reason comes in the peer's ``take_over`` command right after."""
    if not isinstance(cause, str):
        return False
    m = _PEER_SERVICE.match(cause[:MAX_CAUSE]) or _NO_NODE.match(cause[:MAX_CAUSE])
    return m is not None and m.group(1) == "draining"


#: seconds a draining-peer activation waits for the peer's take_over command (it follows the
#: heartbeat on the same connection, normally within milliseconds)
HANDOVER_WAIT = 2.0

_TAKE_OVER = re.compile(r"peer sent take_over \(term \d+\): (.*)", re.DOTALL)
_ACTIVATING = re.compile(r"\S+ activating in term \d+: (.*)", re.DOTALL)


@dataclass
class _Pending:
    at: float
    label: str


class FailoverTally:
    """Activations of this node counted by cause label, fed the node's event records.

    ``record(rec, now)`` takes every record (a dict as the event log writes it: ``event``,
    ``message``, ``fields``); anything that is not an ``activating`` record or the peer's
    ``take_over`` (``peer_command``) is ignored, and so is a record that is not a dict.
    ``counts(now)`` returns the counts by label (every label of :data:`LABELS`, zero when
    none).  An activation that :func:`awaits_reason` is counted when the peer's command
    arrives, when the next activation is recorded, or once ``wait`` seconds have passed.
    The first activation it sees with the label ``no_node_active`` counts as ``startup``
    (make one tally per node manager, when it starts)."""

    def __init__(self, wait: float = HANDOVER_WAIT) -> None:
        self.wait = wait
        self._counts = dict.fromkeys(LABELS, 0)
        self._pending: _Pending | None = None
        self._activated = False  # an activation was recorded since the tally was made

    def record(self, rec: object, now: float) -> None:
        if not isinstance(rec, dict):
            return
        event = rec.get("event")
        if event == "activating":
            self._settle(now, force=True)
            cause = _cause_of(rec)
            label = classify(cause)
            if label == "no_node_active" and not self._activated and not awaits_reason(cause):
                label = "startup"
            self._activated = True
            if awaits_reason(cause):
                self._pending = _Pending(now, label)
            else:
                self._counts[label] += 1
        elif event == "peer_command" and self._pending is not None:
            reason = _take_over_reason(rec)
            if reason is not None:
                self._counts[_handed_over(reason[:MAX_CAUSE])] += 1
                self._pending = None
            else:
                self._settle(now)
        else:
            self._settle(now)

    def counts(self, now: float) -> dict[str, int]:
        self._settle(now)
        return dict(self._counts)

    @property
    def pending(self) -> bool:
        """An activation is waiting for the peer's reason (not counted yet)."""
        return self._pending is not None

    def _settle(self, now: float, force: bool = False) -> None:
        p = self._pending
        if p is not None and (force or not now - p.at < self.wait):
            self._counts[p.label] += 1
            self._pending = None


def _take_over_reason(rec: dict) -> str | None:
    """The reason of a ``peer_command`` record of the peer's ``take_over`` (its fields
    ``kind`` and ``reason`` when it has them, else its message), or None."""
    fields = rec.get("fields")
    if isinstance(fields, dict) and "kind" in fields:
        reason = fields.get("reason")
        return reason if fields["kind"] == "take_over" and isinstance(reason, str) else None
    message = rec.get("message")
    m = _TAKE_OVER.match(message[:MAX_CAUSE]) if isinstance(message, str) else None
    return m.group(1) if m else None


def _cause_of(rec: dict) -> object:
    fields = rec.get("fields")
    if isinstance(fields, dict) and "cause" in fields:
        return fields["cause"]
    message = rec.get("message")
    m = _ACTIVATING.match(message[:MAX_CAUSE]) if isinstance(message, str) else None
    return m.group(1) if m else None


__all__ = ["LABELS", "MAX_CAUSE", "HANDOVER_PREFIX", "HANDOVER_WAIT", "classify", "awaits_reason",
           "FailoverTally"]
