"""The analog lines on a real pair, with the in-band DTMF integration (profile ``analog-dtmf``):
both node managers and their messaging services run as processes, each service's analog
driver holds its board of one voice-board simulator (``lab.voiceboard``, a simulator: nobody
has a voice board here) over the simulator's Unix socket, and the simulated PBX hunts its
callers over both nodes' lines.  What the PBX tells the voice mail comes as DTMF right after
the port answers (``#1001``: forwarded from 1001 on busy); lamps are switched by dialling a
feature code on a line (``*911001``), which the simulated PBX decodes from the line's audio.

Hang guards only (``GUARD``); no timing is judged here.
"""
from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest
import trio

from failover.config import load_config
from lab.pair import Pair
from lab.voiceboard import SimCall, VoiceBoardSim, open_voiceboard
from telephony.core import media
from telephony.store import parse_mime
from tests.integration.conftest import GUARD, status, wait_active
from tests.integration.test_messaging import FAST, admin
from tests.util import until

pytestmark = pytest.mark.multiprocess

LINES = 5  # per board (node): four calls at once and a line left for the lamps
#: the nodes' [ports.analog] keys (besides the board's socket): answer on the first ring, and
#: a shorter wait for integration digits (a call without digits waits this long for none)
ANALOG_KEYS = {"count": LINES, "rings": 1, "digit_timeout": 1.5}
DEFAULT_MAILBOX = "general"  # where the opening greeting's callers leave their messages
TONE_HZ = 1800.0  # the caller's "voice": a tone no call-progress or DTMF detector knows
#: the caller's silence before speaking: covers the digits, the wait for more digits or for
#: none (``digit_timeout``), the greeting and the beep (the recording starts after the beep)
LEAD_S = 3.5
#: the messaging core's settings: short silences end a recording; the prompts are paced in
#: real time (a board line is a real-time medium)
MESSAGING = {"messaging": {**FAST["messaging"], "realtime_audio": True,
                           "default_mailbox": DEFAULT_MAILBOX}}


def caller_audio() -> bytes:
    """What each caller says after the integration digits: silence over the greeting and the
    beep, one second of the tone, a little silence; then the PBX hangs up."""
    return media.silence(LEAD_S) + media.tone(TONE_HZ, 1.0) + media.silence(0.3)


def has_tone(wav: bytes, hz: float = TONE_HZ) -> bool:
    """The recording holds the caller's tone: in its loudest quarter second, the tone's
    frequency carries most of the energy (a Goertzel-style single-bin DFT against the
    total)."""
    x = np.frombuffer(media.pcm_of(wav), dtype="<i2").astype(np.float64)
    n = 2000
    if x.size < n:
        return False
    starts = range(0, x.size - n + 1, 400)
    best = max(starts, key=lambda i: float(np.sum(x[i:i + n] ** 2)))
    w = x[best:best + n]
    k = np.exp(-2j * np.pi * hz * np.arange(n) / 8000)
    at_hz = abs(np.dot(w, k)) ** 2 * 2 / n  # the tone's share of the window's energy
    return at_hz > 0.5 * float(np.sum(w ** 2))


def subscriber(ext: str, mwi: str = "dtmf", mailbox: str | None = None) -> dict:
    return {"op": "put", "table": "subscribers", "row": {
        "extension": ext, "name": f"Sub {ext}", "mailbox": mailbox or f"mb{ext}",
        "mwi_method": mwi, "notify": []}}


def messages(pair: Pair, mailbox: str) -> list[tuple[dict, bytes]]:
    """The messages of ``mailbox`` in the shared Maildir store: (headers, WAV)."""
    root = load_config(pair.a.config).store.maildir / mailbox
    out = []
    for sub in ("new", "cur"):
        if (root / sub).exists():
            out += [parse_mime(p.read_bytes()) for p in sorted((root / sub).iterdir())]
    return out


def port_states(node, kind: str = "analog") -> dict[str, str]:
    st = node.status() or {}
    return {p["name"]: p["state"] for p in st.get("ports", []) if p.get("kind") == kind}


def call_events(node, event: str, port: str | None = None) -> list[dict]:
    """The node's call-log records (``call_answered``, ``call_ended`` ...) of its analog
    lines (of one ``port``)."""
    def port_of(e: dict) -> str:
        return str(((e.get("fields") or {}).get("call") or {}).get("port", ""))

    return [e for e in node.events() if e.get("event") == event
            and (port_of(e) == port if port else port_of(e).startswith("analog-"))]


def analog_counters(node) -> dict:
    """The node's analog driver counters as ``vmha status`` shows them (sent when they change)."""
    return ((node.status() or {}).get("counters") or {}).get("analog") or {}


def analog_pair(pair_dir: Path, sim: VoiceBoardSim, *, extra_a: dict | None = None,
                extra_b: dict | None = None, profile: str = "analog-dtmf") -> Pair:
    """Both nodes' lines on ``sim``'s boards ``a`` and ``b`` (``lab.pair.analog_sections``)."""
    return Pair(pair_dir, extra=MESSAGING,
                analog=sim, analog_keys={**ANALOG_KEYS, "profile": profile},
                extra_a=extra_a, extra_b=extra_b)


async def start(pair: Pair, sim: VoiceBoardSim, subscribers: list[dict]) -> None:
    """Start the pair (a active), write the subscribers, wait until both nodes hold their
    boards and every line is idle."""
    pair.start()
    await wait_active(pair, "a")
    r = await admin(pair.a, {"op": "db_write", "ops": subscribers})
    assert r and r["ok"], r
    lines = {f"analog-{i}": "idle" for i in range(1, LINES + 1)}
    for node in (pair.a, pair.b):
        await until(lambda n=node: sim.connected(n.name) and port_states(n) == lines,
                    f"{node.name}'s board connected and its lines idle", in_thread=True)
    # the subscribers reach b by replication: its lamps and its calls need them after a takeover
    await until(lambda: all((pair.b.admin({"op": "db_get", "table": "subscribers",
                                           "key": s["row"]["extension"]}) or {}).get("row")
                            for s in subscribers), "the subscribers replicated to b", in_thread=True)


@asynccontextmanager
async def running(pair_dir: Path, subscribers: list[dict]):
    async with open_voiceboard(pair_dir, {"a": LINES, "b": LINES}) as sim:
        with analog_pair(pair_dir, sim) as pair:
            await start(pair, sim, subscribers)
            yield pair, sim


def confirmed(node, mailbox: str, *, on: bool) -> bool:
    """The node's replicated MWI ledger holds ``mailbox``'s lamp as ``on`` and confirmed (a
    lamp not confirmed there would be dialled again by the new active node: at least once)."""
    row = (node.admin({"op": "db_get", "table": "mwi_ledger", "key": mailbox}) or {}).get("row")
    return bool(row and row["state"]["on"] is on and row["state"]["confirmed"])


def one_message(pair: Pair, mailbox: str) -> tuple[dict, bytes]:
    found = messages(pair, mailbox)
    assert len(found) == 1, [h for h, _ in found]
    return found[0]


def answered_on(call: SimCall, board: str) -> None:
    assert call.answered, call
    assert call.board == board and call.ended_by == "pbx", call
    assert call.host_onhook_at is not None, f"the port never went back on hook: {call}"


async def test_dtmf_calls_lamps_by_dialling_and_a_ring_on_the_inactive_nodes_line(pair_dir):
    """One pair for the whole story (a pair's start is most of a test's time): four calls at
    once on a's lines, the lamps dialled, mailbox access turning a lamp off, then a ring on
    b's line while a is active: b takes over at once and answers."""
    subs = [subscriber(e) for e in ("1001", "1002", "1003", "1004")]
    subs.append(subscriber("1900", mwi="none", mailbox=DEFAULT_MAILBOX))
    # 1001 opens its mailbox from its own line without a PIN (the opt-in; the PIN itself:
    # tests/integration/test_mailbox_pin.py)
    subs.append({"op": "put", "table": "pins", "row": {"extension": "1001", "pin": None,
                                                       "skip_pin_from_own_phone": True}})
    async with running(pair_dir, subs) as (pair, sim):
        # four callers at once, all hunted to a's lines: forwarded on busy from 1001 ("#1001"),
        # on no answer from 1002 ("*1002"); one with no digits (a direct call with no numbers:
        # the opening greeting, then a message for the default mailbox); one forwarded on busy
        # from 1003 who hangs up by reorder tone instead of dropping the loop (the port must
        # hear the tone, go on hook and keep the message)
        voice = caller_audio()
        handles = {what: sim.start_call(digits=digits, audio=voice, hunt=("a",), hangup=hangup)
                   for what, digits, hangup in (("busy", "#1001", "loop_drop"),
                                                ("no_answer", "*1002", "loop_drop"),
                                                ("direct", "", "loop_drop"),
                                                ("tone", "#1003", "tone"))}
        assert sorted(h.call.line for h in handles.values()) == [1, 2, 3, 4]
        calls = {}
        with trio.fail_after(GUARD + LEAD_S):
            for what, h in handles.items():
                calls[what] = await h.wait()
        for c in calls.values():
            answered_on(c, "a")
        assert sim.line_state("a", calls["tone"].line) == "idle"
        await until(lambda: all(messages(pair, m) for m in ("mb1001", "mb1002", "mb1003", DEFAULT_MAILBOX)),
                    "the four messages", in_thread=True)
        for mailbox, ext, reason in (("mb1001", "1001", "busy"), ("mb1002", "1002", "no_answer"),
                                     ("mb1003", "1003", "busy"), (DEFAULT_MAILBOX, "", "direct")):
            h, wav = one_message(pair, mailbox)
            assert (h["x-vmha-node"], h.get("x-vmha-forwarding", ""), h["x-vmha-reason"]) == \
                ("a", ext, reason), (mailbox, h)
            assert has_tone(wav), f"the caller's tone is not in {mailbox}'s message"
        # the call log: four calls answered on a's analog lines and ended, none on b's
        await until(lambda: len(call_events(pair.a, "call_ended")) >= 4,
                    "four calls ended in a's event log", in_thread=True)
        assert len(call_events(pair.a, "call_answered")) == 4, call_events(pair.a, "call_answered")
        assert call_events(pair.b, "call_answered") == []
        # each call's record carries what its digits said (the final call arrival), on the
        # line the simulator rang
        logged = {e["fields"]["call"]["port"]: e["fields"]["call"] for e in call_events(pair.a, "call_ended")}
        for what, ext in (("busy", "1001"), ("no_answer", "1002"), ("direct", ""), ("tone", "1003")):
            rec = logged[f"analog-{calls[what].line}"]
            reason = "busy" if what == "tone" else what
            assert (rec["reason"], rec["forwarding"]) == (reason, ext), (what, rec)
        # the driver's counters say how each call went: three digit strings matched, one call
        # without digits, three loop drops and one hang-up heard as reorder tone
        want = {"answered": 4, "digits_matched": 3, "digits_none": 1, "hangup_loop_drop": 3,
                "hangup_tone": 1}
        await until(lambda: {k: analog_counters(pair.a).get(k) for k in want} == want,
                    f"a's analog counters {want}", in_thread=True)
        # the lamps: a seized its free line, heard dial tone, dialled *91 + the extension and
        # the PBX confirmed; b never touched a line
        await until(lambda: all(sim.lamps.get(e) is True for e in ("1001", "1002", "1003")),
                    "the lamps of 1001, 1002 and 1003 on")
        lit = sorted((d["board"], d["digits"].rstrip("#"), d["result"]) for d in sim.dialled)
        assert lit == [("a", f"*91{e}", "on") for e in ("1001", "1002", "1003")], sim.dialled
        # 1001 calls the voice mail from their own phone ("##1001"): mailbox access plays the
        # new message to the end, so it is heard and the lamp goes off, by dialling *92
        access = await sim.call(digits="##1001", audio=b"", hunt=("a",), hangup="none")
        assert access.answered and access.ended_by == "host", access
        await until(lambda: sim.lamps.get("1001") is False, "1001's lamp off")
        assert [d["digits"].rstrip("#") for d in sim.dialled if d["result"] == "off"] == ["*921001"]
        assert all(d["board"] == "a" for d in sim.dialled), sim.dialled
        assert (sim.lamps["1002"], sim.lamps["1003"]) == (True, True)  # not heard: still on
        # a counts the four lamps it dialled, none failed (its status shows the driver's count)
        await until(lambda: analog_counters(pair.a).get("mwi_sent") == 4, "a counts 4 lamps sent",
                    in_thread=True)
        assert analog_counters(pair.a).get("mwi_failed", 0) == 0, analog_counters(pair.a)
        # the PBX hunts a caller to b's line while a is active: the ring alone makes b take
        # over at once, and b answers the call itself
        term_a = (await status(pair.a))["node"]["term"]
        await until(lambda: confirmed(pair.b, "mb1001", on=False), "1001's lamp confirmed off on b",
                    in_thread=True)
        dialled_by_a = len(sim.dialled)
        call = await sim.call(digits="*1004", audio=caller_audio(), hunt=("b",))
        answered_on(call, "b")
        await wait_active(pair, "b", "b active after the ring on its line")
        assert (await status(pair.b))["node"]["term"] > term_a
        # the takeover's cause in b's event log names this call (the call log's id for it)
        (answered,) = await until(lambda: call_events(pair.b, "call_answered", f"analog-{call.line}"),
                                  "the call answered in b's call log", in_thread=True)
        call_id = answered["fields"]["call"]["call_id"]
        ev = [e for e in pair.b.events() if e["event"] in ("failover", "activating")]
        assert any(call_id in e["message"] for e in ev), (call_id, ev)
        await until(lambda: messages(pair, "mb1004"), "the message for 1004", in_thread=True)
        h, wav = one_message(pair, "mb1004")
        assert (h["x-vmha-node"], h["x-vmha-forwarding"], h["x-vmha-reason"]) == ("b", "1004", "no_answer"), h
        assert has_tone(wav)
        await until(lambda: call_events(pair.b, "call_ended", f"analog-{call.line}"),
                    "the call in b's call log", in_thread=True)
        # the new active node dials 1004's lamp; a, inactive now, seizes no line; the lamps
        # agree with the store after b's takeover resync
        await until(lambda: sim.lamps.get("1004") is True, "1004's lamp on")
        assert {d["board"] for d in sim.dialled[dialled_by_a:]} == {"b"}, sim.dialled
        assert sim.lamps == {"1001": False, "1002": True, "1003": True, "1004": True}, sim.lamps
        assert not sim.protocol_errors and not sim.refused, (sim.protocol_errors, sim.refused)
