"""The shared SMDI line while the pair is split (docs/smdi.md, "A shared line in a partition"),
on a real pair: real ptys (socat pairs), the software data splitter between both nodes and the
PBX simulator, the node link cut and healed with the pair's TCP relays.

* cut: both nodes active; messages left through both; the PBX sees lamp commands from the
  primary only, no garbled frame; the secondary counts and reports the lamps it held;
* heal: the secondary steps down without a byte on the line; the primary resyncs every lamp;
  the PBX's lamps then equal the store for every mailbox;
* the rule is about a partition only: the secondary active while its primary is reachable
  (the primary's service killed) sends its lamps.

Hang guards only (``until``'s); no timing is judged here.
"""
from __future__ import annotations

import os
import shutil
import signal

import pytest
import trio

from failover.config import load_config
from lab.pair import Pair
from lab.smdi import SerialSplitterLab
from lab.smdi_pbx import PbxSimulator
from tests.integration.conftest import wait_active
from tests.integration.test_messaging import FAST, admin
from tests.integration.test_smdi import leave_message, parsed, smdi, smdi_counters, subscriber, wire
from tests.util import until

pytestmark = [pytest.mark.multiprocess,
              pytest.mark.skipif(shutil.which("socat") is None,
                                 reason="socat is not installed: it makes the SMDI ptys "
                                        "(apt-get install socat)")]

EXTENSIONS = ("1001", "1002", "1003", "1004")


def unheard(pair: Pair, mailbox: str) -> int:
    d = load_config(pair.a.config).store.maildir / mailbox / "new"
    return sum(1 for _ in d.iterdir()) if d.exists() else 0


def store_lamps(pair: Pair) -> dict[str, bool]:
    """The lamp every subscriber should show: on iff the mailbox has unheard messages."""
    return {f"555{e}": unheard(pair, f"mb{e}") > 0 for e in EXTENSIONS}


def store_behind_the_nodes(root, mailbox: str, extension: str, call_id: str) -> None:
    """A message put in the shared store by something other than a node (a restore from
    backup): no lamp knows about it."""
    from telephony.core import media
    from telephony.core.events import Reason
    from telephony.core.message import VoiceMessage
    from telephony.store import MaildirStore

    msg = VoiceMessage(message_id=f"{call_id}.restore.0@vmha", mailbox=mailbox,
                       extension=extension, caller="5550199", forwarding=extension,
                       reason=Reason.BUSY, duration_s=1.0, node="restore", call_id=call_id,
                       term=0, recorded_at="2026-11-25T03:00:00+00:00",
                       audio=media.wav_bytes(media.tone(350, 1.0)))
    trio.run(MaildirStore(root).deliver, msg)


def events_named(node, name: str) -> list[dict]:
    return [e for e in node.events() if e["event"] == name]


async def setup(pair: Pair) -> None:
    pair.start()
    one = ({"a": "active", "b": "inactive"}, {"a": "inactive", "b": "active"})
    # a hang guard only: a loaded machine may take a while to start two services
    states = await until(lambda: (s := pair.states()) in one and s, "one node active",
                         in_thread=True, timeout=90)
    if states["b"] == "active":  # a loaded machine may start both as if together
        r = await admin(pair.a, {"op": "failback"})
        assert r and r.get("ok"), r
    await wait_active(pair, "a")
    r = await admin(pair.a, {"op": "db_write", "ops": [subscriber(e) for e in EXTENSIONS]})
    assert r["ok"], r
    # b must know the subscribers before the cut (replicated), and its link must be open
    await until(lambda: (pair.b.admin({"op": "db_get", "table": "subscribers", "key": "1004"})
                         or {}).get("row"), "the subscribers replicated to b", in_thread=True)
    await until(lambda: "smdi_up" in {e["event"] for e in pair.b.events()}, "b's link open",
                in_thread=True)


async def test_in_a_partition_only_the_primary_transmits_and_the_heal_resyncs_every_lamp(pair_dir):
    with SerialSplitterLab(pair_dir / "serial") as lab:
        with Pair(pair_dir, extra=FAST, extra_a=smdi(lab, "a"), extra_b=smdi(lab, "b")) as pair:
            await setup(pair)
            async with PbxSimulator(lab.pbx_tty).running() as pbx:
                # a message that reached the store behind both nodes' backs: only a resync
                # lights its lamp
                await trio.to_thread.run_sync(store_behind_the_nodes,
                                              load_config(pair.a.config).store.maildir,
                                              "mb1004", "1004", "restored-4")
                pair.cut()
                await until(lambda: pair.states() == {"a": "active", "b": "active"},
                            "both nodes active during the partition", in_thread=True)
                # a message through the primary's line 2 (terminal 2) for 1001
                await pbx.call_record(2, "B", "5551001", "5559876")
                await until(lambda: parsed(pair_dir, "a", 2), "a parsed its record", in_thread=True)
                end = await leave_message(pair.loop_port("a"), 2, "part-a")
                assert end["reason"] == "silence"
                await until(lambda: unheard(pair, "mb1001") == 1, "1001's message stored",
                            in_thread=True)
                # and through the secondary's line 2 (terminal 6) for 1002: b is active too
                await pbx.call_record(6, "N", "5551002", "5559877")
                await until(lambda: parsed(pair_dir, "b", 6), "b parsed its record", in_thread=True)
                end = await leave_message(pair.loop_port("b"), 2, "part-b")
                assert end["reason"] == "silence"
                await until(lambda: unheard(pair, "mb1002") == 1, "1002's message stored",
                            in_thread=True)
                await until(lambda: smdi_counters(pair.b).get("lamps_held", 0) >= 1,
                            "b counted the lamps it held", in_thread=True)
                await until(lambda: ("5551001", True) in pbx.lamps().items(),
                            "a's lamp for 1001 at the PBX", in_thread=True)
                assert pair.states() == {"a": "active", "b": "active"}
                assert wire(lab, "b") == [], "the secondary wrote on the shared line while cut"
                assert pbx.errors == [], pbx.errors  # nothing garbled reached the switch
                await until(lambda: bytes(pbx.received) == lab.written_by("a"),
                            "everything the PBX read came from a", in_thread=True)
                counters = smdi_counters(pair.b)
                assert counters["mwi_sent"] == 0 and counters["lamps_held_waiting"] >= 1, counters
                assert events_named(pair.b, "smdi_lamps_held"), "b did not report the hold"
                held_cmds = len(pbx.commands)

                pair.heal()
                await wait_active(pair, "a", "the primary alone active after the heal")
                want = store_lamps(pair)
                assert want == {"5551001": True, "5551002": True, "5551003": False,
                                "5551004": True}
                # the primary's full resync sets every lamp, the ones it knew too
                await until(lambda: {n: pbx.lamps().get(n) for n in want} == want
                            and len(pbx.commands) >= held_cmds + len(want),
                            "the PBX's lamps equal the store", in_thread=True)
                await until(lambda: events_named(pair.b, "smdi_lamps_released"),
                            "b dropped what it held", in_thread=True)
                await until(lambda: smdi_counters(pair.b).get("lamps_held_waiting") == 0,
                            "b's held queue empty", in_thread=True)
                await trio.sleep(0.5)  # anything b would still send
                assert wire(lab, "b") == [], "the secondary wrote on the shared line"
                assert pbx.errors == [], pbx.errors
                assert {n: pbx.lamps().get(n) for n in want} == want
                assert smdi_counters(pair.b)["lamps_held_discarded"] >= 1
                text = (pair_dir / "a.log").read_text()
                assert "(partition healed)" in text, "no full resync on the primary"


async def test_the_secondary_alone_active_with_its_peer_reachable_sends_lamps(pair_dir):
    with SerialSplitterLab(pair_dir / "serial") as lab:
        with Pair(pair_dir, extra=FAST, extra_a=smdi(lab, "a"), extra_b=smdi(lab, "b")) as pair:
            await setup(pair)
            async with PbxSimulator(lab.pbx_tty).running() as pbx:
                pid = pair.a.service_pid()
                assert pid is not None
                os.kill(pid, signal.SIGKILL)  # the primary's service is down, the link is up
                await until(lambda: pair.b.state() == "active", "b active", in_thread=True)
                await until(lambda: (s := pair.b.status()) and s["peer"]["reachable"],
                            "b hears a", in_thread=True)
                await pbx.call_record(6, "N", "5551003", "5559878")
                await until(lambda: parsed(pair_dir, "b", 6), "b parsed its record", in_thread=True)
                end = await leave_message(pair.loop_port("b"), 2, "alone-b")
                assert end["reason"] == "silence"
                await until(lambda: pbx.lamps().get("5551003") is True,
                            "b's lamp for 1003 at the PBX", in_thread=True)
                assert b"5551003" in b"".join(d for _, d in wire(lab, "b"))
                assert pbx.errors == [], pbx.errors
                assert pair.b.state() == "active"
                assert smdi_counters(pair.b).get("lamps_held", 0) == 0


async def test_a_line_the_secondary_drives_alone_is_not_held(pair_dir):
    """``shared_line = false`` on the secondary (its own line, no splitter): it transmits in a
    partition.  Also shows that the first test's silence is the rule's doing."""
    with SerialSplitterLab(pair_dir / "serial") as lab:
        with Pair(pair_dir, extra=FAST, extra_a=smdi(lab, "a"),
                  extra_b=smdi(lab, "b", shared_line=False)) as pair:
            await setup(pair)
            async with PbxSimulator(lab.pbx_tty).running() as pbx:
                pair.cut()
                await until(lambda: pair.states() == {"a": "active", "b": "active"},
                            "both nodes active during the partition", in_thread=True)
                await pbx.call_record(6, "N", "5551002", "5559877")
                await until(lambda: parsed(pair_dir, "b", 6), "b parsed its record", in_thread=True)
                end = await leave_message(pair.loop_port("b"), 2, "own-b")
                assert end["reason"] == "silence"
                await until(lambda: pbx.lamps().get("5551002") is True,
                            "b's lamp for 1002 at the PBX", in_thread=True)
                assert b"5551002" in b"".join(d for _, d in wire(lab, "b"))
                assert smdi_counters(pair.b).get("lamps_held", 0) == 0
                pair.heal()
                await wait_active(pair, "a", "the primary alone active after the heal")
