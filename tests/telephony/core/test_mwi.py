"""MWI ownership: the pure planner against an in-memory ledger."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telephony.core.mwi import (
    DAY,
    REASONS,
    LampCoalescer,
    LampState,
    MemoryMwiLedger,
    MwiError,
    MwiJob,
    MwiLedger,
    MwiPlanner,
    StaleMwiTerm,
    next_daily_resync,
    time_of_day,
)


def planner(term: int = 2, ledger: MemoryMwiLedger | None = None) -> MwiPlanner:
    p = MwiPlanner(ledger if ledger is not None else MemoryMwiLedger())
    p.set_term(term)
    return p


def settle(p: MwiPlanner, jobs: list[MwiJob]) -> None:
    for j in jobs:
        assert p.check_job(j) is None, p.check_job(j)
        p.confirm(j)


def population(n: int) -> dict[str, tuple[str, int, int]]:
    rng = random.Random(n)
    return {f"mb{i}": (str(10000 + i), rng.choice((0, 0, 1, 3)), rng.randrange(5))
            for i in range(n)}


def test_memory_ledger_is_a_ledger():
    assert isinstance(MemoryMwiLedger(), MwiLedger)


# --------------------------------------------------------------------------- on_counts

def test_first_message_lights_the_lamp_once_confirmed():
    p = planner()
    jobs = p.on_counts("ada", "1001", 1, 0, "deliver")
    assert jobs == [MwiJob("1001", "ada", True, 1, 0, 2, "deliver")]
    # written ahead, unconfirmed: the lamp is uncertain until the driver confirms
    assert p.ledger.get("ada") == LampState("ada", "1001", True, 1, 0, False)
    assert p.confirm(jobs[0]) is True
    assert p.ledger.get("ada").confirmed
    # a second message leaves the lamp on: no job, no write
    puts = p.ledger.puts
    assert p.on_counts("ada", "1001", 2, 0, "deliver") == []
    assert p.ledger.puts == puts


def test_unconfirmed_lamp_is_sent_again():
    p = planner()
    first = p.on_counts("ada", "1001", 1, 0, "deliver")
    again = p.on_counts("ada", "1001", 2, 0, "deliver")
    assert len(first) == len(again) == 1 and again[0].on and again[0].new == 2


def test_heard_turns_the_lamp_off():
    p = planner()
    settle(p, p.on_counts("ada", "1001", 1, 0, "deliver"))
    jobs = p.on_counts("ada", "1001", 0, 1, "heard")
    assert jobs == [MwiJob("1001", "ada", False, 0, 1, 2, "heard")]
    settle(p, jobs)
    assert p.ledger.get("ada") == LampState("ada", "1001", False, 0, 1, True)
    assert p.on_counts("ada", "1001", 0, 0, "heard") == []


def test_superseded_job_is_refused():
    p = planner()
    on = p.on_counts("ada", "1001", 1, 0, "deliver")[0]
    off = p.on_counts("ada", "1001", 0, 1, "heard")[0]
    assert "superseded" in p.check_job(on)
    assert p.confirm(on) is False and not p.ledger.get("ada").confirmed
    assert p.check_job(off) is None


def test_extension_change_switches_the_old_lamp_off():
    p = planner()
    settle(p, p.on_counts("ada", "1001", 1, 0, "deliver"))
    jobs = p.on_counts("ada", "1002", 1, 0, "deliver")
    assert [(j.extension, j.on) for j in jobs] == [("1001", False), ("1002", True)]
    assert all(p.check_job(j) is None for j in jobs)
    assert p.confirm(jobs[0]) is False  # the old phone is not in the ledger any more
    assert p.confirm(jobs[1]) is True
    assert p.ledger.get("ada") == LampState("ada", "1002", True, 1, 0, True)


# --------------------------------------------------------------------------- terms

def test_job_of_an_older_term_is_refused():
    p = planner(2)
    job = p.on_counts("ada", "1001", 1, 0, "deliver")[0]
    p.set_term(4)
    why = p.check_job(job)
    assert "term 2" in why and "current term 4" in why
    before = p.ledger.get("ada")
    assert p.confirm(job) is False and p.failed(job, "timeout") is None
    assert p.ledger.get("ada") == before


def test_stand_down_refuses_everything_until_the_next_term():
    p = planner(2)
    job = p.on_counts("ada", "1001", 1, 0, "deliver")[0]
    p.stand_down()
    assert "stood down" in p.check_job(job)
    with pytest.raises(MwiError, match="stood down"):
        p.on_counts("bob", "1002", 1, 0, "deliver")
    with pytest.raises(MwiError, match="stood down"):
        p.resync({"ada": ("1001", 1, 0)})
    p.set_term(4)
    assert "older than the current term 4" in p.check_job(job)
    assert [j.term for j in p.resync({"ada": ("1001", 1, 0)})] == [4]


def test_terms_only_go_up_and_none_means_inactive():
    p = MwiPlanner(MemoryMwiLedger())
    with pytest.raises(MwiError, match="set_term"):
        p.on_counts("ada", "1001", 1, 0, "deliver")
    assert "not active" in p.check_job(MwiJob("1001", "ada", True, 1, 0, 2, "deliver"))
    p.set_term(5)
    with pytest.raises(StaleMwiTerm):
        p.set_term(4)
    for bad in (-1, 1.0, True, "6"):
        with pytest.raises(MwiError):
            p.set_term(bad)
    assert p.term == 5


def test_takeover_resync_sends_only_what_was_in_flight():
    """Node a (term 2) planned a lamp and died before the driver confirmed; node b takes over
    in term 3 with the replicated ledger and resends exactly that lamp."""
    ledger = MemoryMwiLedger()
    a = planner(2, ledger)
    counts = population(200)
    settle(a, a.resync(counts))
    ext, new, old = counts["mb7"]
    counts["mb7"] = (ext, 0, old + new) if new else (ext, 4, old)  # the lamp must change
    in_flight = a.on_counts("mb7", *counts["mb7"], "heard" if new else "deliver")
    assert len(in_flight) == 1  # ... and a dies before the driver confirms it
    b = planner(3, ledger)
    jobs = b.resync(counts)
    assert [(j.mailbox, j.on, j.term, j.reason) for j in jobs] == [
        ("mb7", not new, 3, "resync")]
    # a (fenced, but not told yet) must not send its job: term 3 wrote the replicated ledger
    assert "term 3 has written" in a.check_job(in_flight[0])
    settle(b, jobs)
    before = ledger.all()
    assert a.confirm(in_flight[0]) is False and a.failed(in_flight[0], "x") is None
    ext8, new8, _ = counts["mb8"]
    with pytest.raises(StaleMwiTerm):  # a lamp change planned by a: its write is refused
        a.on_counts("mb8", ext8, 0 if new8 else 1, 0, "deliver")
    assert ledger.all() == before
    assert b.resync(counts) == []


def test_failed_job_stays_unconfirmed_and_gives_a_retry():
    p = planner()
    job = p.on_counts("ada", "1001", 1, 0, "deliver")[0]
    retry = p.failed(job, "408 timeout")
    assert retry == MwiJob("1001", "ada", True, 1, 0, 2, "retry")
    assert not p.ledger.get("ada").confirmed and p.last_error["ada"] == "408 timeout"
    assert p.resync({"ada": ("1001", 1, 0)})[0].mailbox == "ada"
    p.confirm(retry)
    assert p.ledger.get("ada").confirmed and "ada" not in p.last_error
    assert p.resync({"ada": ("1001", 1, 0)}) == []


# --------------------------------------------------------------------------- resync

def test_resync_10000_subscribers_1_percent_changed_makes_100_jobs():
    p = planner()
    counts = population(10_000)
    first = p.resync(counts)
    assert len(first) == 10_000  # nothing known yet: every lamp is set once
    settle(p, first)
    assert p.resync(counts) == []
    changed = random.Random(1).sample(sorted(counts), 100)
    for mb in changed:
        ext, new, old = counts[mb]
        counts[mb] = (ext, 0 if new else 1, old)
    puts = p.ledger.puts
    jobs = p.resync(counts)
    assert len(jobs) == 100
    assert sorted(j.mailbox for j in jobs) == sorted(changed)
    assert p.ledger.puts == puts + 1  # one transaction for the whole resync


def test_resync_without_get_many_uses_get():
    class PlainLedger:
        def __init__(self):
            self.inner = MemoryMwiLedger()

        def get(self, mailbox):
            return self.inner.get(mailbox)

        def put(self, states, term):
            self.inner.put(states, term)

    p = planner(ledger=PlainLedger())
    counts = population(50)
    settle(p, p.resync(counts))
    assert p.resync(counts) == []


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), data=st.data())
def test_resync_emits_exactly_the_differences(n, data):
    p = planner()
    counts = population(n)
    settle(p, p.resync(counts))
    flips = data.draw(st.sets(st.integers(0, n - 1), max_size=n))
    unconfirmed = data.draw(st.sets(st.integers(0, n - 1), max_size=n))
    noise = data.draw(st.sets(st.integers(0, n - 1), max_size=n))
    for i in noise:  # count changes that keep the lamp as it is
        ext, new, old = counts[f"mb{i}"]
        counts[f"mb{i}"] = (ext, new + 1 if new else 0, old + 1)
    for i in flips:
        ext, new, old = counts[f"mb{i}"]
        counts[f"mb{i}"] = (ext, 0 if new else 2, old)
    for i in unconfirmed:  # a job was planned but never confirmed
        s = p.ledger.get(f"mb{i}")
        p.ledger.put([LampState(s.mailbox, s.extension, s.on, s.new, s.old, False)], 2)
    expected = {f"mb{i}" for i in flips | unconfirmed}
    jobs = p.resync(counts)
    assert sorted(j.mailbox for j in jobs) == sorted(expected)
    assert all(j.on == (counts[j.mailbox][1] > 0) and j.reason == "resync" for j in jobs)
    settle(p, jobs)
    assert p.resync(counts) == []
    assert all(p.ledger.get(mb).on == (c[1] > 0) for mb, c in counts.items())


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("args, match", [
    (("", "1001", 1, 0, "deliver"), "mailbox"),
    (("_ada", "1001", 1, 0, "deliver"), "mailbox"),
    (("ada", "10a1", 1, 0, "deliver"), "extension"),
    (("ada", "1001", -1, 0, "deliver"), "new count"),
    (("ada", "1001", True, 0, "deliver"), "new count"),
    (("ada", "1001", 1, 0.5, "deliver"), "old count"),
    (("ada", "1001", 1, 0, "sent"), "reason"),
])
def test_on_counts_bad_input_changes_nothing(args, match):
    p = planner()
    with pytest.raises(MwiError, match=match):
        p.on_counts(*args)
    assert p.ledger.puts == 0 and p.ledger.all() == {}


@pytest.mark.parametrize("bad, match", [
    ({"bob": ("1002", -1, 0)}, "new count"),
    ({"bob": ("1002", 1)}, "tuple"),
    ({"bob": ["1002", 1, 0]}, "tuple"),
    ({"b b": ("1002", 1, 0)}, "mailbox"),
    ({"bob": ("1001", 1, 0)}, "both"),  # ada's extension
])
def test_resync_bad_entry_changes_nothing(bad, match):
    p = planner()
    counts = {"ada": ("1001", 1, 0), **bad}
    with pytest.raises(MwiError, match=match):
        p.resync(counts)
    assert p.ledger.puts == 0
    with pytest.raises(MwiError, match="mapping"):
        p.resync([("ada", ("1001", 1, 0))])


def test_reasons_and_planner_needs_a_ledger():
    assert REASONS == ("deliver", "heard", "resync", "retry")
    with pytest.raises(MwiError, match="get"):
        MwiPlanner(object())


# --------------------------------------------------------------------------- daily resync

@pytest.mark.parametrize("now, at, wait", [
    (0, 3 * 3600, 3 * 3600),
    (2 * 3600, 3 * 3600, 3600),
    (3 * 3600, 3 * 3600, DAY),  # just ran: tomorrow
    (3 * 3600 + 1, 3 * 3600, DAY - 1),
    (86399.5, 0, 0.5),
    (86400, 0, DAY),  # a leap second's 24:00:00
])
def test_next_daily_resync(now, at, wait):
    assert next_daily_resync(now, at) == pytest.approx(wait)


@given(st.floats(0, DAY, exclude_max=True), st.integers(0, DAY - 1))
def test_next_daily_resync_lands_on_the_time(now, at):
    wait = next_daily_resync(now, at)
    assert 0 < wait <= DAY
    assert (now + wait) % DAY == pytest.approx(at, abs=1e-6) or \
        (now + wait) % DAY == pytest.approx(at + DAY, abs=1e-6)


@pytest.mark.parametrize("now, at", [(-1, 0), (0, DAY), (True, 0), ("1", 0), (0, None),
                                     (float("nan"), 0)])
def test_next_daily_resync_bad_input(now, at):
    with pytest.raises(MwiError):
        next_daily_resync(now, at)


def test_time_of_day():
    assert time_of_day("03:00") == 3 * 3600
    assert time_of_day("23:59:59") == DAY - 1
    for bad in ("24:00", "3:00", "03:60", "", None, "03:00:00 "):
        with pytest.raises(MwiError):
            time_of_day(bad)


# ============================================================================ counts and coalescing

def test_a_lamp_that_shows_counts_gets_a_job_for_every_count_change():
    p = planner()
    settle(p, p.on_counts("mb1", "1001", 1, 0, "deliver", counts=True))
    jobs = p.on_counts("mb1", "1001", 2, 0, "deliver", counts=True)  # lamp stays on
    assert [(j.on, j.new, j.old) for j in jobs] == [(True, 2, 0)]
    settle(p, jobs)
    jobs = p.on_counts("mb1", "1001", 1, 1, "heard", counts=True)  # one heard: old changes
    assert [(j.on, j.new, j.old) for j in jobs] == [(True, 1, 1)]
    settle(p, jobs)
    assert p.on_counts("mb1", "1001", 1, 1, "deliver", counts=True) == []  # nothing changed


def test_an_on_off_lamp_still_ignores_count_changes():
    p = planner()
    settle(p, p.on_counts("mb1", "1001", 1, 0, "deliver"))
    puts = p.ledger.puts
    assert p.on_counts("mb1", "1001", 5, 2, "deliver", counts=False) == []
    assert p.ledger.puts == puts  # no ledger write either


def test_resync_sends_count_differences_only_for_lamps_that_show_counts():
    p = planner()
    want = {"mb1": ("1001", 1, 0), "mb2": ("1002", 1, 0)}
    settle(p, p.resync(want, with_counts={"mb1"}))
    want = {"mb1": ("1001", 4, 1), "mb2": ("1002", 4, 1)}
    jobs = p.resync(want, with_counts={"mb1"})
    assert [(j.mailbox, j.new, j.old) for j in jobs] == [("mb1", 4, 1)]


def test_a_job_with_older_counts_does_not_confirm_newer_ones():
    p = planner()
    first = p.on_counts("mb1", "1001", 1, 0, "deliver", counts=True)
    second = p.on_counts("mb1", "1001", 3, 0, "deliver", counts=True)  # planned meanwhile
    assert p.confirm(first[0]) is False
    assert p.ledger.get("mb1").confirmed is False
    assert p.confirm(second[0]) is True
    assert (p.ledger.get("mb1").new, p.ledger.get("mb1").confirmed) == (3, True)


def test_coalescer_first_change_at_once_later_ones_at_the_window_end():
    c = LampCoalescer(1.0)
    assert c.due("mb1", 100.0) == 100.0  # never sent: at once
    c.sent("mb1", 100.0)
    assert c.due("mb1", 100.2) == 101.0  # within the window: waits for its end
    assert c.due("mb1", 100.9) == 101.0
    assert c.due("mb2", 100.2) == 100.2  # another mailbox is not held
    assert c.due("mb1", 101.0) == 101.0
    assert c.due("mb1", 250.0) == 250.0
    c.sent("mb1", 101.0)
    assert c.due("mb1", 101.5) == 102.0
    assert LampCoalescer(0).due("mb1", 5.0) == 5.0


@pytest.mark.parametrize("bad", [-1, 3601, "1", True, float("nan"), None])
def test_coalescer_window_is_checked(bad):
    with pytest.raises(MwiError, match="mwi_coalesce"):
        LampCoalescer(bad)


def test_coalescer_memory_stays_bounded():
    c = LampCoalescer(1.0)
    for i in range(5000):
        c.sent(f"mb{i}", float(i))
    assert len(c._last) <= 1026
    assert c.due("mb4999", 4999.5) == 5000.0
