"""The serial SMDI integration on a real pair: a PBX simulator on one end of real ptys (socat
pairs), the software data splitter in the middle, both nodes' SMDI links on the other ends.
The simulator reads everything the nodes transmit; the splitter's log says who sent what.

Hang guards only (``GUARD``); no timing is judged here.
"""
from __future__ import annotations

import shutil

import pytest
import trio

from failover.config import load_config
from lab.loopback_client import open_call
from lab.pair import Pair
from lab.smdi import SerialSplitterLab
from lab.smdi_pbx import PbxSimulator
from telephony.core import media
from tests.integration.conftest import wait_active
from tests.integration.test_messaging import FAST, _stored_directly, admin
from tests.integration.test_pair import _vmha
from tests.util import until

pytestmark = [pytest.mark.multiprocess,
              pytest.mark.skipif(shutil.which("socat") is None,
                                 reason="socat is not installed: it makes the SMDI ptys "
                                        "(apt-get install socat)")]

TERMINALS = {"a": [1, 2, 3, 4], "b": [5, 6, 7, 8]}  # the PBX hunts over both servers' lines


def smdi(lab: SerialSplitterLab, name: str, **more) -> dict:
    return {"ports": {"smdi": {"enabled": True, "device": str(lab.tty(name)),
                               "terminals": TERMINALS[name], "keep_last": 4,
                               "mwi_prefix": "555", "ring_wait": 5.0, **more}}}


def subscriber(ext: str) -> dict:
    return {"op": "put", "table": "subscribers", "row": {
        "extension": ext, "name": f"Sub {ext}", "mailbox": f"mb{ext}", "mwi_method": "smdi",
        "notify": []}}


def parsed(pair_dir, node: str, terminal: int) -> bool:
    """The node's log shows it parsed a record for ``terminal``."""
    text = (pair_dir / f"{node}.log").read_text()
    return f"SMDI record for terminal {terminal:04d}" in text


def count(pair: Pair, mailbox: str) -> int:
    d = load_config(pair.a.config).store.maildir / mailbox
    return sum(1 for sub in ("new", "cur") if (d / sub).exists() for _ in (d / sub).iterdir())


async def leave_message(port: int, line: int, call_id: str) -> dict:
    async with open_call("127.0.0.1", port, call_id, line=line, media=True) as call:
        assert call.answer and call.answer.get("ev") == "answered", call.answer
        await call.wait_event("record_start", timeout=20)
        await call.say(media.tone(440, 1.0) + media.silence(1.0))
        return await call.wait_event("record_end", timeout=20)


def wire(lab: SerialSplitterLab, name: str) -> list[tuple[float, bytes]]:
    return [(r["t"], bytes.fromhex(r["hex"])) for r in lab.log_records() if r.get("from") == name]


async def test_calls_records_lamps_and_a_failover_on_a_record_for_the_inactive_nodes_line(pair_dir):
    with SerialSplitterLab(pair_dir / "serial") as lab:
        with Pair(pair_dir, extra=FAST, extra_a=smdi(lab, "a"), extra_b=smdi(lab, "b")) as pair:
            pair.start()
            await wait_active(pair, "a")
            r = await admin(pair.a, {"op": "db_write",
                                     "ops": [subscriber(e) for e in ("1001", "1002", "1003")]})
            assert r["ok"], r
            await until(lambda: "smdi_up" in {e["event"] for e in pair.b.events()}, "b's link open",
                        in_thread=True)
            async with PbxSimulator(lab.pbx_tty).running() as pbx:
                # a call forwarded on busy from 1001 reaches a's line 2 (terminal 2)
                await pbx.call_record(2, "B", "5551001", "5559876")
                await until(lambda: parsed(pair_dir, "a", 2) and parsed(pair_dir, "b", 2),
                            "both nodes parsed the record", in_thread=True)
                end = await leave_message(pair.loop_port("a"), 2, "smdi-1")
                assert end["reason"] == "silence"
                await until(lambda: count(pair, "mb1001") == 1, "message for 1001 in the store",
                            in_thread=True)
                await pbx.wait_commands(1)
                await trio.sleep(0.5)
                assert [(c.on, c.number) for _, c in pbx.commands] == [(True, "5551001")]
                assert wire(lab, "b") == []  # the inactive node never transmitted
                # a message that reached the store behind a's back: only a resync lights it
                await trio.to_thread.run_sync(_stored_directly,
                                              load_config(pair.a.config).store.maildir,
                                              "mb1003", "1003", "restored-3")
                # the confirmation of 1001's lamp must reach b before the takeover, or b's
                # resync sends it again (an unconfirmed lamp is resent, at least once)
                await until(lambda: ((pair.b.admin({"op": "db_get", "table": "mwi_ledger",
                                                    "key": "mb1001"}) or {}).get("row") or {})
                            .get("state", {}).get("confirmed"), "ledger replicated to b", in_thread=True)
                # the PBX sends a call to b's line 6 (terminal 6, b's loopback-2): b is
                # inactive, so the record alone makes it fail over; then the line rings
                await pbx.call_record(6, "N", "5551002", "5551001")
                await until(lambda: pair.b.state() == "active", "b active on the record", in_thread=True)
                t_b = max(t for t, _ in wire(lab, "a"))  # a's last transmission
                end = await leave_message(pair.loop_port("b"), 2, "smdi-2")
                assert end["reason"] == "silence"
                await until(lambda: count(pair, "mb1002") == 1, "message for 1002 in the store",
                            in_thread=True)
                await pbx.wait_commands(4)
                await trio.sleep(0.5)
                cmds = [(c.on, c.number) for _, c in pbx.commands]
                # b's takeover resync: 1003 on (the store has a message the lamps did not
                # know), 1002 off (no lamp state known: SMDI has no acknowledgement, so the
                # new active node sets it); then the new message lit 1002.  1001's lamp was
                # on and confirmed: not sent again
                assert sorted(cmds[1:3]) == [(False, "5551002"), (True, "5551003")], cmds
                assert cmds[3:] == [(True, "5551002")], cmds
                assert all(t <= t_b for t, _ in wire(lab, "a"))  # a fell silent
                sent_by_b = b"".join(d for _, d in wire(lab, "b"))
                assert sent_by_b == b"".join(c.raw for _, c in pbx.commands[1:])
                assert b"5551001" not in sent_by_b
                ev_b = [e for e in pair.b.events() if e["event"] in ("failover", "activating")]
                assert any("call" in e["message"] for e in ev_b), ev_b


async def test_garbage_changes_nothing_and_a_refused_lamp_is_reported(pair_dir):
    with SerialSplitterLab(pair_dir / "serial") as lab:
        with Pair(pair_dir, extra=FAST, extra_a=smdi(lab, "a"), extra_b=smdi(lab, "b")) as pair:
            pair.start()
            await wait_active(pair, "a")
            r = await admin(pair.a, {"op": "db_write", "ops": [subscriber("1009")]})
            assert r["ok"], r
            async with PbxSimulator(lab.pbx_tty, invalid={"5551009"}).running() as pbx:
                await pbx.send(bytes(range(256)) + b"MD001x\r\n\x19" + b"\xff" * 50 + b"MWI 12 \r\n")
                await pbx.call_record(3, "A", "5551009", "")
                await until(lambda: parsed(pair_dir, "a", 3) and parsed(pair_dir, "b", 3),
                            "the record after the garbage, on both nodes", in_thread=True)
                assert pair.states() == {"a": "active", "b": "inactive"}  # nothing moved
                assert wire(lab, "a") == [] and wire(lab, "b") == []
                await leave_message(pair.loop_port("a"), 3, "smdi-9")
                await pbx.wait_commands(1)
                assert pbx.commands[0][1].number == "5551009"
                await until(lambda: any(e["event"] == "smdi_mwi_failure" and "INV" in e["message"]
                                        for e in pair.a.events()), "the refusal in a's event log",
                            in_thread=True)

                def unconfirmed():
                    row = (pair.a.admin({"op": "db_get", "table": "mwi_ledger", "key": "mb1009"})
                           or {}).get("row")
                    return row and row["state"]["on"] and not row["state"]["confirmed"]

                await until(unconfirmed, "the ledger keeps the refused lamp unconfirmed", in_thread=True)
                assert wire(lab, "b") == []
                # the link's counters are in both nodes' status (sent when they change)
                await until(lambda: smdi_counters(pair.a).get("mwi_failures") == 1
                            and smdi_counters(pair.b).get("records", 0) >= 1,
                            "the SMDI counters in the status", in_thread=True)
                ca, cb = smdi_counters(pair.a), smdi_counters(pair.b)
                assert ca["protocol_errors"] >= 1 and cb["protocol_errors"] >= 1, (ca, cb)
                assert (ca["records"], ca["mwi_sent"], ca["matched"]) == (1, 1, 1), ca
                assert (cb["mwi_sent"], cb["matched"], cb["mwi_failures"]) == (0, 0, 0), cb
                text = await trio.to_thread.run_sync(_vmha, "status", "-c", str(pair.a.config))
                assert text.returncode == 0, text.stderr
                line = next(x for x in text.stdout.splitlines() if x.startswith("smdi: "))
                assert f"protocol_errors {ca['protocol_errors']}" in line and "mwi_failures 1" in line
                assert any(x.startswith("messaging: messages 1") for x in text.stdout.splitlines())


def smdi_counters(node) -> dict:
    return ((node.status() or {}).get("counters") or {}).get("smdi") or {}


async def test_a_pty_that_disappears_is_reopened_and_the_status_says_so(pair_dir):
    with SerialSplitterLab(pair_dir / "serial") as lab:
        with Pair(pair_dir, extra=FAST, extra_a=smdi(lab, "a"), extra_b=smdi(lab, "b")) as pair:
            pair.start()
            await wait_active(pair, "a")

            def link_state(node):
                ports = ((node.status() or {}).get("ports") or [])
                return next((p["state"] for p in ports if p["name"] == "smdi-link"), None)

            await until(lambda: link_state(pair.a) == "idle", "a's link up in the status", in_thread=True)
            await trio.to_thread.run_sync(lab.drop, "a")
            await until(lambda: link_state(pair.a) == "down", "a's link down in the status", in_thread=True)
            await until(lambda: any(e["event"] == "smdi_down" for e in pair.a.events()),
                        "smdi_down in the event log", in_thread=True)
            await trio.to_thread.run_sync(lab.restore, "a")
            await until(lambda: link_state(pair.a) == "idle", "a's link reopened", in_thread=True)
            ups = [e for e in pair.a.events() if e["event"] == "smdi_up"]
            assert len(ups) == 2
            async with PbxSimulator(lab.pbx_tty).running() as pbx:
                await pbx.call_record(1, "D", "", "5551001")
                await until(lambda: parsed(pair_dir, "a", 1), "records flow to a again", in_thread=True)
            assert pair.states() == {"a": "active", "b": "inactive"}
