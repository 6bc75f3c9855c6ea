"""The analog lines with the serial SMDI integration on a real pair (profile ``analog-smdi``):
the voice-board simulator (``lab.voiceboard``) rings the nodes' analog lines, while why each
call came is on the serial SMDI link: ``lab.smdi_pbx`` plays the PBX's data side on one end of
the software data splitter (``lab.smdi``, socat ptys), both nodes' links on the others, and
the lamps go back on that link as ``OP:MWI`` from the active node only.

The ringing line sends no digits: the message's mailbox and reason can only come from the
record for the line's terminal.  A record and a ring for the inactive node's line make it take
over at once.  Hang guards only; no timing is judged here.
"""
from __future__ import annotations

import shutil

import pytest
import trio

from lab.pair import Pair
from lab.smdi import SerialSplitterLab
from lab.smdi_pbx import PbxSimulator
from lab.voiceboard import open_voiceboard
from tests.integration.conftest import GUARD, wait_active
from tests.integration.test_analog import (
    ANALOG_KEYS,
    LEAD_S,
    LINES,
    MESSAGING,
    answered_on,
    call_events,
    caller_audio,
    has_tone,
    messages,
    one_message,
    port_states,
)
from tests.integration.test_messaging import admin
from tests.integration.test_smdi import parsed, wire
from tests.util import until

pytestmark = [pytest.mark.multiprocess,
              pytest.mark.skipif(shutil.which("socat") is None,
                                 reason="socat is not installed: it makes the SMDI ptys "
                                        "(apt-get install socat)")]

#: the PBX's message-desk terminals: a's lines analog-1..3 are terminals 1-3, b's are 4-6
TERMINALS = {"a": [1, 2, 3], "b": [4, 5, 6]}


def smdi(lab: SerialSplitterLab, name: str) -> dict:
    return {"ports": {"smdi": {"enabled": True, "device": str(lab.tty(name)),
                               "terminals": TERMINALS[name], "keep_last": 4,
                               "mwi_prefix": "555", "ring_wait": 5.0}}}


def subscriber(ext: str) -> dict:
    return {"op": "put", "table": "subscribers", "row": {
        "extension": ext, "name": f"Sub {ext}", "mailbox": f"mb{ext}", "mwi_method": "smdi",
        "notify": []}}


async def test_smdi_records_and_rings_on_analog_lines_leave_messages_and_lamps_and_fail_over(pair_dir):
    async with open_voiceboard(pair_dir, {"a": LINES, "b": LINES}) as sim:
        with SerialSplitterLab(pair_dir / "serial") as lab, \
                Pair(pair_dir, extra=MESSAGING, analog=sim,
                     analog_keys={**ANALOG_KEYS, "profile": "analog-smdi"},
                     extra_a=smdi(lab, "a"), extra_b=smdi(lab, "b")) as pair:
            pair.start()
            await wait_active(pair, "a")
            r = await admin(pair.a, {"op": "db_write", "ops": [subscriber(e) for e in
                                                               ("1001", "1002", "1003")]})
            assert r and r["ok"], r
            lines = {f"analog-{i}": "idle" for i in range(1, LINES + 1)}
            for node in (pair.a, pair.b):
                await until(lambda n=node: sim.connected(n.name) and port_states(n) == lines,
                            f"{node.name}'s board connected and its lines idle", in_thread=True)
                await until(lambda n=node: "smdi_up" in {e["event"] for e in n.events()},
                            f"{node.name}'s SMDI link open", in_thread=True)
            async with PbxSimulator(lab.pbx_tty).running() as pbx:
                # a call for 1001, forwarded on busy from 5559876: the PBX rings the first
                # idle line of a's board and sends the record for that line's terminal; the
                # caller's line carries no digits
                handle = sim.start_call(digits="", audio=caller_audio(), hunt=("a",))
                terminal = TERMINALS["a"][handle.call.line - 1]
                await pbx.call_record(terminal, "B", "5551001", "5559876")
                with trio.fail_after(GUARD + LEAD_S):
                    call = await handle.wait()
                answered_on(call, "a")
                await until(lambda: parsed(pair_dir, "a", terminal) and parsed(pair_dir, "b", terminal),
                            "both nodes parsed the record", in_thread=True)
                await until(lambda: messages(pair, "mb1001"), "the message for 1001", in_thread=True)
                h, wav = one_message(pair, "mb1001")
                # the record's numbers and reason
                assert (h["x-vmha-node"], h["x-vmha-forwarding"], h["x-vmha-reason"],
                        h["x-vmha-caller"]) == ("a", "1001", "busy", "9876"), h
                assert has_tone(wav), "the caller's tone is not in the message"
                assert messages(pair, "mb1002") == [] and messages(pair, "mb1003") == []
                await until(lambda: call_events(pair.a, "call_ended", f"analog-{call.line}"),
                            "the call in a's call log", in_thread=True)
                # the lamp: one OP:MWI on the SMDI link, from the active node only; no line
                # was seized to dial a lamp
                await pbx.wait_commands(1)
                await trio.sleep(0.5)  # a second command (there must be none) would be here
                assert [(c.on, c.number) for _, c in pbx.commands] == [(True, "5551001")]
                assert wire(lab, "b") == []
                assert sim.dialled == [] and sim.lamps == {}
                smdi_counters = ((pair.a.status() or {}).get("counters") or {}).get("smdi") or {}
                assert smdi_counters.get("matched") == 1, smdi_counters
                # 1001's lamp must be confirmed on b before the takeover, or b's resync
                # sends it again (an unconfirmed lamp is resent, at least once)
                await until(lambda: ((pair.b.admin({"op": "db_get", "table": "mwi_ledger",
                                                    "key": "mb1001"}) or {}).get("row") or {})
                            .get("state", {}).get("confirmed"), "ledger replicated to b", in_thread=True)
                # a call for 1002, not answered there, from 5551001: the PBX rings b's line
                # and sends the record for its terminal; b is inactive, so it takes over at once
                # (the record or the ring, whichever comes first) and answers
                handle = sim.start_call(digits="", audio=caller_audio(), hunt=("b",))
                terminal = TERMINALS["b"][handle.call.line - 1]
                await pbx.call_record(terminal, "N", "5551002", "5551001")
                with trio.fail_after(GUARD + LEAD_S):
                    call = await handle.wait()
                answered_on(call, "b")
                await wait_active(pair, "b", "b active after the record and the ring")
                ev = [e for e in pair.b.events() if e["event"] in ("failover", "activating")]
                assert any("call" in e["message"] for e in ev), ev
                await until(lambda: messages(pair, "mb1002"), "the message for 1002", in_thread=True)
                h, wav = one_message(pair, "mb1002")
                assert (h["x-vmha-node"], h["x-vmha-forwarding"], h["x-vmha-reason"],
                        h["x-vmha-caller"]) == ("b", "1002", "no_answer", "1001"), h
                assert has_tone(wav)
                # b's lamps are SMDI commands: its takeover resync sets the lamps it does not
                # know (1002, 1003 off), then the new message lights 1002; 1001's was on and
                # confirmed: not sent again.  a fell silent.
                await until(lambda: pbx.lamps().get("5551002") is True, "1002's lamp lit by b")
                sent_by_b = b"".join(d for _, d in wire(lab, "b"))
                assert sent_by_b and sent_by_b == b"".join(c.raw for _, c in pbx.commands[1:])
                assert b"5551001" not in sent_by_b
                assert b"".join(d for _, d in wire(lab, "a")) == pbx.commands[0][1].raw
                assert pbx.lamps().get("5551003") in (None, False), pbx.lamps()
                assert sim.dialled == []  # no lamp was ever dialled on a line
