"""The fault campaign's checker (lab/faultcheck.py) on hand-made histories: a clean one passes,
and for every invariant a history (with a real Maildir store written by the product's store,
real configuration databases, real event-log lines) that breaks exactly it makes exactly its
number non-zero.  The real runs are in test_faultload.py."""
from __future__ import annotations

import io
import json
import wave
from pathlib import Path

import numpy as np
import pytest
import trio

from lab.faultcheck import CheckError, check, db_checksum, dominant_hz, safe_call_id, stored_messages
from lab.history import History
from telephony.configdb import ConfigDB
from telephony.core.events import Reason
from telephony.core.message import VoiceMessage, message_id_for
from telephony.core.terms import Role
from telephony.store.maildir import MaildirStore

T0 = 1_800_000_000.0
CK = "00000000000000aa"


def tone_wav(hz: float | None, seconds: float = 1.5, lead: float = 0.3) -> bytes:
    t = np.arange(int(8000 * seconds)) / 8000
    x = np.zeros(int(8000 * (lead + seconds)))
    if hz is not None:
        x[int(8000 * lead):] = 9000 * np.sin(2 * np.pi * hz * t)
    b = io.BytesIO()
    with wave.open(b, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(x.astype("<i2").tobytes())
    return b.getvalue()


class Run:
    """A hand-made run: two nodes, a active in term 2 from T0, three calls answered by a, each
    message stored with its tone and its lamp on at the PBX, the same checksums."""

    def __init__(self, d: Path) -> None:
        self.d = d
        self.h = History(d / "h")
        self.store = d / "store"
        self.store.mkdir()
        self.events = {n: d / f"{n}.events.jsonl" for n in "ab"}
        self.ev("a", T0, "starting", "a (primary) starting in term 0")
        self.ev("a", T0 + 1, "activating", "a activating in term 2: startup", term=2, cause="startup")
        self.ev("a", T0 + 1.1, "startup", "a active", term=2, took_ms=100, cause="startup")
        self.ev("b", T0, "starting", "b (secondary) starting in term 0")
        self.dbs = {"a": CK, "b": CK}
        self.states = {"a": "active", "b": "inactive"}
        for i in (1, 2, 3):
            self.call(i, at=T0 + 10 * i, by="a")
            self.message(i, node="a", term=2)
            self.h.add_lamp(f"555100{i}", True, T0 + 10 * i + 5)

    def ev(self, node: str, ts: float, event: str, message: str, **fields) -> None:
        rec = {"ts": ts, "node": node, "level": "info", "event": event, "message": message}
        if fields:
            rec["fields"] = fields
        with open(self.events[node], "a") as f:
            f.write(json.dumps(rec) + "\n")

    def call(self, i: int, *, at: float, by: str | None, result: str = "acked", **more) -> dict:
        answered = by is not None
        return self.h.add_call(id=i, caller=f"55{i:06d}", mailbox=f"100{min(i, 3)}",
                               tone_hz=500.0 + 10 * i, offered_at=at, answered=answered,
                               answered_at=at + 0.5 if answered else None, answered_by=by,
                               ended_at=at + 8, result=result, sip_call_id=f"fl1-{i}-1@faultload",
                               **more)

    def message(self, i: int, *, node: str, term: int, hz: float | None = -1.0, mid: str | None = None,
                mailbox: str | None = None, saved: bool = True) -> None:
        call_id = f"fl1-{i}-1@faultload"
        msg = VoiceMessage(message_id=mid or message_id_for(call_id, node, term),
                           mailbox=mailbox or f"100{min(i, 3)}", extension=f"100{min(i, 3)}",
                           caller=f"55{i:06d}", forwarding=f"100{min(i, 3)}", reason=Reason.NO_ANSWER,
                           duration_s=1.8, node=node, call_id=call_id, term=term,
                           recorded_at="2027-01-15T08:00:00Z",
                           audio=tone_wav(500.0 + 10 * i if hz == -1.0 else hz))
        assert trio.run(MaildirStore(self.store).deliver, msg)
        if saved:
            self.saved(msg.message_id, msg.mailbox, node, T0 + 10 * i + 4)

    def saved(self, mid: str, mailbox: str, node: str = "a", at: float | None = None) -> None:
        """The service's acknowledgement in the node's event log, as the product writes it
        (``at``: the record's time; default the last record's)."""
        if at is None:
            at = max(json.loads(line)["ts"] for line in self.events[node].read_text().splitlines())
        self.ev(node, at, "message_saved", f"message {mid} for {mailbox}: stored")

    def check(self, **more) -> dict:
        args = {"store_dir": self.store, "node_dbs": self.dbs, "node_events": self.events,
                "final_states": self.states, "lamp_prefix": "555", **more}
        return check(self.h, **args)


ZERO = {"lost": 0, "duplicated": 0, "lamp_mismatches": 0, "same_term_actives": 0, "outside_term": 0,
        "wrong_tone": 0}


def numbers(r: dict) -> dict:
    return {k: r[k] for k in ZERO}


@pytest.fixture
def run(tmp_path):
    return Run(tmp_path)


def test_a_clean_run_has_every_invariant_at_zero(run):
    r = run.check()
    assert numbers(r) == ZERO, r["details"]
    assert (r["calls"], r["answered"], r["acknowledged"], r["messages"]) == (3, 3, 3, 3)
    assert r["final_active"] == ["a"] and r["final_active_ok"] and r["db_checksums_equal"]
    assert r["unavailable_s"] == {} and r["offered_no_active"] == 0


def test_an_acknowledged_call_without_its_message_is_lost(run):
    run.call(4, at=T0 + 50, by="a")
    run.saved(message_id_for("fl1-4-1@faultload", "a", 2), "1003")  # said stored; not in the store
    r = run.check()
    assert numbers(r) == {**ZERO, "lost": 1} and r["details"]["lost"] == [4]


def test_a_bye_after_the_tone_without_a_saved_message_is_no_acknowledgement(run):
    """A service killed just after the tone ends the call as its goodbye would: definitions
    version 2 goes by what the service said (nothing), version 1 went by the BYE's time."""
    run.call(4, at=T0 + 50, by="a")  # result acked; nothing saved, nothing stored
    r = run.check()
    assert numbers(r) == ZERO and r["details"]["acked_unsaved"] == [4]
    assert run.check(definitions_version=1)["lost"] == 1
    with pytest.raises(CheckError):
        run.check(definitions_version=3)


def test_a_call_acknowledged_only_in_the_nodes_log_counts_too(run, tmp_path):
    run.call(4, at=T0 + 50, by="a", result="caller_hangup")
    assert run.check()["lost"] == 0  # nobody acknowledged it: not lost
    mid = message_id_for("fl1-4-1@faultload", "a", 2)
    log = tmp_path / "a.log"
    log.write_text(f"2027-01-15 08:00:01 INFO telephony.messaging message {mid} for 1003: stored\n")
    assert run.check(node_logs={"a": log})["lost"] == 1
    run.ev("a", T0 + 55, "message_saved", f"message {mid} for 1003")
    assert run.check()["lost"] == 1


def test_a_message_with_another_calls_tone_is_a_wrong_tone_and_the_call_lost(run):
    run.call(4, at=T0 + 50, by="a")
    run.message(4, node="a", term=2, hz=500.0 + 10 * 5)  # call 5's tone in call 4's message
    r = run.check()
    assert numbers(r) == {**ZERO, "lost": 1, "wrong_tone": 1}, r["details"]
    run.call(5, at=T0 + 60, by="a", result="caller_hangup")
    run.message(5, node="a", term=2, hz=None, saved=False)  # silence only, never acknowledged
    r = run.check()
    assert r["wrong_tone"] == 2 and r["lost"] == 1  # call 5 was not acknowledged


def test_a_message_stored_twice_is_duplicated(run):
    run.message(2, node="b", term=3)  # b recorded call 2 again (its own message id)
    run.ev("b", T0 + 30, "activating", "b activating in term 3", term=3, cause="x")
    run.states = {"a": "active", "b": "inactive"}
    r = run.check()
    assert r["duplicated"] == 1 and r["details"]["duplicated"] == [2]


def test_a_lamp_that_differs_from_the_store_is_a_mismatch(run):
    run.h.add_lamp("5551002", False, T0 + 40)  # the PBX shows 1002 off; it has a new message
    r = run.check()
    assert numbers(r) == {**ZERO, "lamp_mismatches": 1}
    assert r["details"]["lamp_mismatches"] == [{"mailbox": "1002", "unheard": 1, "lamp": False}]


def test_a_lit_lamp_for_a_mailbox_whose_messages_were_heard_is_a_mismatch(run):
    d = run.store / "1001"
    for f in (d / "new").iterdir():
        f.rename(d / "cur" / (f.name + ":2,S"))
    assert run.check()["lamp_mismatches"] == 1
    run.h.add_lamp("5551001", False, T0 + 45)
    assert run.check()["lamp_mismatches"] == 0


def test_a_lamp_log_file_replaces_the_historys_lamps(run, tmp_path):
    log = tmp_path / "lamps.jsonl"
    log.write_text("".join(json.dumps({"mailbox": f"555100{i}", "on": i != 3, "at": T0 + i}) + "\n"
                           for i in (1, 2, 3)))
    assert run.check(lamp_log=log)["lamp_mismatches"] == 1


def test_two_nodes_active_in_one_term_is_a_same_term_active(run):
    run.ev("b", T0 + 20, "activating", "b activating in term 2", term=2, cause="bug")
    run.ev("b", T0 + 21, "deactivated", "b inactive", term=2, cause="x")
    r = run.check()
    assert r["same_term_actives"] == 1 and r["details"]["same_term_actives"] == [2]


def test_a_call_answered_by_a_node_outside_its_terms_is_outside_term(run):
    run.call(4, at=T0 + 50, by="b")  # b was never active
    run.message(4, node="b", term=3)  # and stored it in a term it never held
    r = run.check()
    assert numbers(r) == {**ZERO, "outside_term": 2}, r["details"]
    assert {o["what"] for o in r["details"]["outside_term"]} == {"call", "message"}


def test_a_message_in_a_term_the_node_held_at_another_time_is_fine_but_a_late_lamp_is_not(run):
    run.ev("a", T0 + 60, "deactivated", "a inactive", term=2, cause="handover")
    run.ev("b", T0 + 61, "activating", "b activating in term 3", term=3, cause="handover")
    run.states = {"a": "inactive", "b": "active"}
    assert run.check()["outside_term"] == 0
    run.h.add({"type": "lamp_sent", "node": "a", "mailbox": "5551001", "on": True, "at": T0 + 30})
    assert run.check()["outside_term"] == 0  # a was active then
    run.h.add({"type": "lamp_sent", "node": "a", "mailbox": "5551001", "on": True, "at": T0 + 70})
    r = run.check()
    assert r["outside_term"] == 1 and r["details"]["outside_term"][0]["what"] == "lamp"


def test_no_active_node_at_the_end_or_two_fail_the_final_check(run):
    run.states = {"a": "active", "b": "active"}
    assert not run.check()["final_active_ok"]
    run.states = {"a": "inactive", "b": "inactive"}
    assert not run.check()["final_active_ok"]
    r = run.check(final_states=None)  # from the event logs: a's span is still open
    assert r["final_active"] == ["a"] and r["final_active_ok"]


def test_different_database_checksums_are_seen(run, tmp_path):
    run.dbs = {"a": CK, "b": "00000000000000ab"}
    assert not run.check()["db_checksums_equal"]
    p = ConfigDB(tmp_path / "p" / "config.db", role=Role.PRIMARY)
    s = ConfigDB(tmp_path / "s" / "config.db", role=Role.SECONDARY)
    try:
        run.dbs = {"a": tmp_path / "p" / "config.db", "b": tmp_path / "s" / "config.db"}
        assert run.check()["db_checksums_equal"]  # two empty databases
        p.write(2, [{"op": "put", "table": "subscribers", "row": {
            "extension": "1001", "name": "x", "mailbox": "1001", "mwi_method": "smdi", "notify": []}}])
        r = run.check()
        assert not r["db_checksums_equal"], r["db_checksums"]
        assert r["db_checksums"]["a"] == f"{p.state().checksum:016x}"
    finally:
        p.close()
        s.close()


def test_seconds_without_an_active_node_are_charged_to_the_fault_before_them(run):
    run.ev("a", T0 + 40, "deactivated", "a inactive: lost", term=2, cause="lost")
    run.ev("b", T0 + 47, "activating", "b activating in term 3", term=3, cause="takeover")
    run.states = {"a": "inactive", "b": "active"}
    run.h.add_fault("partition_link", T0 + 35, T0 + 45)
    run.h.add_fault("kill_nm", T0 + 46, T0 + 46, node="a")
    run.call(4, at=T0 + 42, by=None, result="rejected:503")
    r = run.check(until=T0 + 60)
    # 40..46 under the partition (its window runs to the next fault), 46..47 under the kill
    assert r["unavailable_s"] == {"partition_link": pytest.approx(6.0), "kill_nm": pytest.approx(1.0)}
    assert (r["offered_no_active"], r["unanswered_no_active"]) == (1, 1)
    assert r["by_fault"]["partition_link"]["calls"] == 1


def test_bad_input_is_refused_with_a_clear_error(run, tmp_path):
    with pytest.raises(CheckError, match="not a directory"):
        check(run.h, store_dir=tmp_path / "nowhere", node_dbs={}, node_events={})
    with pytest.raises(CheckError, match="no configuration database"):
        run.check(node_dbs={"a": tmp_path / "missing.db"})
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(CheckError, match="not a readable configuration database"):
        db_checksum(junk)
    bad = History(tmp_path / "h2")
    bad.add_call(id=1, caller="551", mailbox="1001", tone_hz=500.0, offered_at=T0, answered=False,
                 answered_at=None, answered_by=None, ended_at=None, result="no_answer")
    bad.add_call(id=2, caller="551", mailbox="1001", tone_hz=510.0, offered_at=T0, answered=False,
                 answered_at=None, answered_by=None, ended_at=None, result="no_answer")
    with pytest.raises(CheckError, match="same caller number"):
        check(bad, store_dir=run.store, node_dbs={}, node_events={})
    (run.store / "1001" / "new" / "garbage").write_bytes(b"\x00\x01 not a mail")
    with pytest.raises(CheckError, match="garbage"):
        stored_messages(run.store)


def test_the_tone_detector_finds_the_tone_and_nothing_in_noise():
    for hz in (500.0, 1230.0, 1990.0):
        assert dominant_hz(tone_wav(hz)) == pytest.approx(hz, abs=1.0)
    assert dominant_hz(tone_wav(None)) is None
    rng = np.random.default_rng(7)
    b = io.BytesIO()
    with wave.open(b, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(rng.normal(0, 2000, 16000).astype("<i2").tobytes())
    assert dominant_hz(b.getvalue()) is None
    with pytest.raises(ValueError):
        dominant_hz(b"RIFF nonsense")
    assert safe_call_id("fl1-4-1@faultload") == "fl1-4-1_faultload"
