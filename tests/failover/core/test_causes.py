"""Activation causes as labels (failover/core/causes.py): the cause texts come from the pure
supervisor itself, driven through the two-node simulator in each situation that activates a
node, so a changed wording in the supervisor fails here instead of turning into ``other``."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from failover.core import events as ev
from failover.core.causes import (
    HANDOVER_PREFIX,
    LABELS,
    MAX_CAUSE,
    FailoverTally,
    awaits_reason,
    classify,
)
from failover.core.health import HealthSettings
from failover.core.state import FailbackType, State
from tests.failover.sim import Sim


class RecordingSim(Sim):
    """The simulator, keeping each node's event records in the order the node manager writes
    them: a peer's command (``peer_command``, written before the supervisor handles it, with
    the fields a record of it carries) and the supervisor's logs."""

    def __init__(self, **kw) -> None:
        self.records: dict[str, list[dict]] = {"a": [], "b": []}
        super().__init__(**kw)

    def _feed(self, node: str, event) -> None:
        n = self.nodes.get(node)
        if n is None or n.exited:
            return
        if isinstance(event, ev.PeerCommand) and n.frozen_until <= self.now:
            self.records[node].append({"event": "peer_command", "message": f"peer sent {event.kind} "
                                       f"(term {event.term}): {event.reason}",
                                       "fields": {"kind": event.kind, "term": event.term,
                                                  "reason": event.reason}})
        seen = len(n.logs)
        super()._feed(node, event)
        self.records[node] += [{"event": lg.event, "message": lg.message, "fields": lg.fields or {}}
                               for lg in self.nodes[node].logs[seen:]]

    def causes(self, node: str, event: str = "activating") -> list[str]:
        return [lg.fields["cause"] for lg in self.logs(node, event)]


def booted(**kw) -> RecordingSim:
    sim = RecordingSim(**kw)
    sim.run_until(2.0)
    assert sim.actives() == ["a"]
    return sim


def last_activation(sim: RecordingSim, node: str) -> str:
    causes = sim.causes(node)
    assert causes, f"{node} never activated"
    return causes[-1]


# ----------------------------------------------------------------------------- the situations


def started_alone() -> tuple[RecordingSim, str]:
    sim = RecordingSim(start_b_at=5.0)
    sim.run_until(4.0)
    return sim, "a"


def started_together() -> tuple[RecordingSim, str]:
    sim = RecordingSim()
    sim.run_until(2.0)
    return sim, "a"


def service_fenced() -> tuple[RecordingSim, str]:
    """The active service fenced itself: nobody is active, both are fine; the primary again."""
    sim = booted()
    sim._feed("a", ev.ServiceFenced(sim.nodes["a"].sup.term, "lease ran out"))
    sim.run_until(4.0)
    return sim, "a"


def peer_silent() -> tuple[RecordingSim, str]:
    sim = booted()
    sim.link_up = False
    sim.run_until(4.0)
    return sim, "b"


def service_crash() -> tuple[RecordingSim, str]:
    sim = booted()
    sim.at(2.5, "a", "crash_service")
    sim.run_until(3.0)
    return sim, "b"


def call_at_inactive() -> tuple[RecordingSim, str]:
    sim = booted()
    sim.call("b", "c-42")
    sim.run_until(2.5)
    return sim, "b"


def operator_here() -> tuple[RecordingSim, str]:
    sim = booted()
    assert sim.admin("b", "failover").ok
    sim.run_until(2.5)
    return sim, "b"


def operator_on_the_active_node() -> tuple[RecordingSim, str]:
    sim = booted()
    assert sim.admin("a", "failover").ok
    sim.run_until(2.5)
    return sim, "b"


def operator_waiting_for_replication() -> tuple[RecordingSim, str]:
    sim = booted(handover_wait=1.0)
    assert sim.admin("b", "failover").ok
    sim.run_until(3.5)
    return sim, "b"


def scheduled_failback() -> tuple[RecordingSim, str]:
    # local clock: the sim's 'now' is seconds after 01:59:40; window 02:00-03:00
    sim = RecordingSim(start_a_at=10.0, failback_type=FailbackType.SCHEDULED,
                       failback_window=(7200.0, 10800.0), _local_offset=7180.0)
    sim.run_until(19.0)
    assert sim.actives() == ["b"]
    sim.run_until(21.0)
    return sim, "a"


def health_handover() -> tuple[RecordingSim, str]:
    sim = booted(health=HealthSettings(grace=1.0, min_active=3.0))
    sim.set_health("a", 0)
    sim.run_until(8.0)
    return sim, "b"


def shutdown_handover() -> tuple[RecordingSim, str]:
    sim = booted()
    sim._feed("a", ev.ShutdownRequested("SIGTERM"))
    sim.run_until(2.5)
    return sim, "b"


def heal_after_partition() -> tuple[RecordingSim, str]:
    sim = booted()
    sim.link_up = False
    sim.run_until(4.0)
    sim.link_up = True
    sim.run_until(4.5)
    return sim, "a"


# (situation, the label of the activating record's own text, the label the tally counts)
SITUATIONS = [
    (started_alone, "startup", "startup"),
    (started_together, "startup", "startup"),
    (peer_silent, "peer_silent", "peer_silent"),
    (service_crash, "service_stopped", "service_stopped"),
    (service_fenced, "no_node_active", "no_node_active"),
    (call_at_inactive, "call_at_inactive", "call_at_inactive"),
    (operator_here, "operator", "operator"),
    # a planned handover: the heartbeat (peer draining, held) comes before the command
    (operator_on_the_active_node, "no_node_active", "operator"),
    (operator_waiting_for_replication, "no_node_active", "operator"),
    (scheduled_failback, "no_node_active", "scheduled_failback"),
    (health_handover, "health", "health"),
    (shutdown_handover, "service_stopped", "shutdown"),
]


@pytest.mark.parametrize(("situation", "text_label", "counted"), SITUATIONS,
                         ids=[s[0].__name__ for s in SITUATIONS])
def test_the_supervisors_causes_get_their_label(situation, text_label, counted):
    sim, node = situation()
    assert sim.state(node) in (State.ACTIVATING, State.ACTIVE)
    cause = last_activation(sim, node)
    assert classify(cause) == text_label, cause
    tally = FailoverTally()
    for rec in sim.records[node]:
        tally.record(rec, now=0.0)
    counts = tally.counts(now=10.0)
    assert sum(counts.values()) == len(sim.causes(node))  # every activation, once
    assert counts[counted] >= 1, (cause, counts)
    if counted != text_label:
        assert awaits_reason(cause)


def test_a_handover_from_the_peer_is_labelled_by_its_reason():
    """The reasons the peer's take_over carries, as the supervisor writes them in each
    planned handover, read back from the commands the simulated link delivered."""
    reasons: dict[str, str] = {}
    for situation, kind in ((operator_waiting_for_replication, "operator"),
                            (scheduled_failback, "scheduled"), (shutdown_handover, "shutdown")):
        s, node = situation()
        reasons.update({c["fields"]["reason"]: kind for c in s.records[node]
                        if c["event"] == "peer_command" and c["fields"]["kind"] == "take_over"})
    h, node = health_handover()
    cause = last_activation(h, node)
    assert cause.startswith(HANDOVER_PREFIX)  # the health handover's take_over came first
    reasons[cause[len(HANDOVER_PREFIX):]] = "health"
    expected = {"operator": "operator", "scheduled": "scheduled_failback", "shutdown": "shutdown",
                "health": "health"}
    assert set(reasons.values()) == set(expected)
    for reason, kind in reasons.items():
        assert classify(HANDOVER_PREFIX + reason) == expected[kind], reason
    assert classify(HANDOVER_PREFIX + "maintenance window") == "handover"


def test_the_primary_stays_active_after_a_partition_heals():
    sim, node = heal_after_partition()
    (cause,) = sim.causes("a", "reterm")
    assert classify(cause) == "both_active"
    assert sim.causes("b") and classify(sim.causes("b")[-1]) == "peer_silent"


def test_unknown_text_is_other():
    for text in ("", "something new", "operator", "peer silent", "call offered", None, 42,
                 b"peer silent for 1s"):
        assert classify(text) == "other"


# ----------------------------------------------------------------------------- the tally


def test_tally_waits_for_the_peers_reason_then_falls_back_to_its_own_label():
    sim, node = operator_on_the_active_node()
    recs = sim.records[node]
    i = next(i for i, r in enumerate(recs) if r["event"] == "activating")
    tally = FailoverTally(wait=2.0)
    for r in recs[:i + 1]:
        tally.record(r, now=100.0)
    assert tally.pending and sum(tally.counts(now=101.0).values()) == 0
    # no command within the wait: the activation keeps the label of its own text
    assert tally.counts(now=102.0)["no_node_active"] == 1 and not tally.pending
    # with the command: the operator's
    tally = FailoverTally(wait=2.0)
    for r in recs:
        tally.record(r, now=100.0)
    assert tally.counts(now=100.0)["operator"] == 1
    # a second activation settles the first at once
    tally = FailoverTally(wait=2.0)
    tally.record(recs[i], now=100.0)
    tally.record(recs[i], now=100.5)
    assert tally.counts(now=100.5)["no_node_active"] == 1 and tally.pending


def test_tally_reads_the_message_when_fields_are_missing():
    sim, node = operator_on_the_active_node()
    tally = FailoverTally()
    for r in sim.records[node]:
        tally.record({k: v for k, v in r.items() if k != "fields"}, now=0.0)
    assert tally.counts(now=0.0)["operator"] == 1


# ----------------------------------------------------------------------------- fuzz

texts = st.one_of(st.text(max_size=600), st.sampled_from([
    "peer silent for ", "first node started: ", "peer service failed: b is ", "no node active: a is ",
    "call x offered on inactive port ", "operator failover", "both nodes active ", HANDOVER_PREFIX,
    HANDOVER_PREFIX + "health 1 below 2 ", HANDOVER_PREFIX + "a shutting down"]).flatmap(
        lambda p: st.text(max_size=60).map(lambda t: p + t)))


HANDED_OVER = {"operator", "scheduled_failback", "health", "shutdown", "handover"}


@given(texts)
def test_classify_always_answers_a_known_label(text):
    label = classify(text)
    assert label in LABELS
    if text.startswith(HANDOVER_PREFIX):
        assert label in HANDED_OVER
    elif text.startswith("peer silent for "):
        assert label == "peer_silent"
    elif text.startswith("first node started: "):
        assert label == "startup"
    else:
        assert label not in HANDED_OVER - {"operator"}
    assert classify(text[:MAX_CAUSE] + "x" * 5000) == classify(text[:MAX_CAUSE] + "x") or label in HANDED_OVER


records = st.dictionaries(st.sampled_from(["event", "message", "fields", "ts"]),
                          st.one_of(st.sampled_from(["activating", "peer_command", "deactivated"]),
                                    texts, st.none(), st.integers(),
                                    st.dictionaries(st.sampled_from(["cause", "kind", "reason"]),
                                                    st.one_of(texts, st.none(), st.integers()))))


@given(st.lists(st.tuples(records, st.floats(0, 100, allow_nan=False)), max_size=30))
def test_tally_counts_every_activation_once_whatever_the_records(feed):
    tally = FailoverTally()
    for rec, now in sorted(feed, key=lambda x: x[1]):
        tally.record(rec, now)
    counts = tally.counts(now=1e6)
    assert set(counts) == set(LABELS)
    assert sum(counts.values()) == sum(1 for rec, _ in feed if rec.get("event") == "activating")
    assert not tally.pending
