"""SMDI with SIP lines from a media gateway, on a real pair: the PBX's voice lines reach the
nodes as SIP (SIPp plays the media gateway: line N is the call to ``sip:vm-N@<worker>``),
while why each call came is on the serial SMDI link (``lab.smdi_pbx`` plays the PBX's data
side through the software splitter on socat ptys, ``lab.smdi``), and lamps go back on that
link as ``OP:MWI`` / ``RMV:MWI``.  The nodes' files use the ``[integration]`` section:
``voice_ports = ["sip"]``, ``call_info = "smdi"``, ``mwi = "smdi"``.

The gateway's INVITEs carry a Diversion for another mailbox and another reason than the SMDI
record, so the messages show which one was used.  Hang guards only; no timing is judged.
"""
from __future__ import annotations

import shutil
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from failover.config import load_config
from lab.pair import Pair, free_udp_block
from lab.sip import free_udp_port, sipp
from lab.smdi import SerialSplitterLab
from lab.smdi_pbx import PbxSimulator
from tests.integration.conftest import wait_active
from tests.integration.test_messaging import FAST, admin
from tests.integration.test_sip import caller_wav, has_voice, messages, port_states
from tests.integration.test_smdi import TERMINALS, parsed, wire
from tests.telephony.sip.test_worker import PJSUA2_MISSING
from tests.util import until

pytestmark = [pytest.mark.multiprocess,
              pytest.mark.skipif(PJSUA2_MISSING is not None, reason=PJSUA2_MISSING or ""),
              pytest.mark.skipif(shutil.which("sipp") is None,
                                 reason="SIPp is not installed: it plays the media gateway "
                                        "(apt-get install sip-tester)"),
              pytest.mark.skipif(shutil.which("socat") is None,
                                 reason="socat is not installed: it makes the SMDI ptys "
                                        "(apt-get install socat)")]

# what the gateway's SIP headers say: the voice mail must not use it on a numbered line
DECOY = "Diversion: <sip:1003@gw>;reason=unconditional;counter=1"
GATEWAY_CALLER = "0301234567"


def node_file(lab: SerialSplitterLab, name: str, *, mwi_port: int) -> dict:
    """One node's voice ports (4 SIP lines: its terminals), its SMDI link and the
    ``[integration]`` section that joins them."""
    return {
        "ports": {
            "loopback": {"enabled": False},
            "sip": {"enabled": True, "bind": "127.0.0.1", "sip_port": free_udp_block(1),
                    "rtp_port": free_udp_block(16, top=65536 - 1000), "count": 4,
                    "user": "vm",
                    # nobody may get a NOTIFY: the lamps are SMDI commands
                    "mwi_target": f"sip:{{extension}}@127.0.0.1:{mwi_port}",
                    "mwi_account": "sip:{extension}@vm.example"},
            "smdi": {"enabled": True, "device": str(lab.tty(name)),
                     "terminals": TERMINALS[name], "keep_last": 4, "mwi_prefix": "555",
                     "ring_wait": 5.0},
        },
        "integration": {"voice_ports": ["sip"], "call_info": "smdi", "mwi": "smdi"},
    }


def subscriber(ext: str) -> dict:
    return {"op": "put", "table": "subscribers", "row": {
        "extension": ext, "name": f"Sub {ext}", "mailbox": f"mb{ext}", "mwi_method": "smdi",
        "notify": []}}


def sip_port(pair: Pair, name: str) -> int:
    return load_config(pair.node(name).config).ports.sip.sip_port


async def gateway_call(cwd: Path, port: int, line: int) -> int:
    """The gateway's call for its line ``line`` to a node's first worker (lines 1-4), with
    the decoy Diversion, streaming the caller's tone; returns SIPp's exit code (0: answered,
    and the voice mail hung up or took the BYE)."""
    cwd.mkdir(parents=True, exist_ok=True)
    caller_wav(cwd / "tone.wav")
    args = [f"127.0.0.1:{port}", "-s", f"vm-{line}", "-m", "1", "-mp", str(free_udp_block(4)),
            "-key", "caller", GATEWAY_CALLER, "-key", "extra", DECOY]
    async with sipp(cwd, "uac_gateway_line_rtp.xml", *args) as gw:
        return await gw.exit_code(60)


class NotifyWatch:
    """A UDP socket at the SIP ports' ``mwi_target``: anything it receives is a lamp sent as
    a SIP NOTIFY, which this integration must never send."""

    def __init__(self) -> None:
        self.port = free_udp_port()
        self.got: list[bytes] = []

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        with sock:
            await sock.bind(("127.0.0.1", self.port))
            task_status.started()
            while True:
                self.got.append(await sock.recv(65536))


def gateway_pair(pair_dir: Path, lab: SerialSplitterLab, watch: NotifyWatch) -> Pair:
    return Pair(pair_dir, extra=FAST, extra_a=node_file(lab, "a", mwi_port=watch.port),
                extra_b=node_file(lab, "b", mwi_port=watch.port))


async def start(pair: Pair) -> None:
    """Start the pair, a active; subscribers 1001-1003 (lamps by SMDI); wait until both
    nodes' SIP lines and SMDI links are up."""
    pair.start()
    await wait_active(pair, "a")
    r = await admin(pair.a, {"op": "db_write", "ops": [subscriber(e) for e in
                                                       ("1001", "1002", "1003")]})
    assert r["ok"], r
    lines = {f"sip-{i}": "idle" for i in range(1, 5)}
    for node in (pair.a, pair.b):
        await until(lambda n=node: port_states(n) == lines, f"{node.name}'s SIP lines up",
                    in_thread=True)
        await until(lambda n=node: "smdi_up" in {e["event"] for e in n.events()},
                    f"{node.name}'s SMDI link open", in_thread=True)


@asynccontextmanager
async def running(pair_dir: Path):
    """The lab, the started pair, the PBX simulator and the NOTIFY watch, for one test."""
    watch = NotifyWatch()
    async with trio.open_nursery() as nursery:
        await nursery.start(watch.run)
        with SerialSplitterLab(pair_dir / "serial") as lab, \
                gateway_pair(pair_dir, lab, watch) as pair:
            await start(pair)
            async with PbxSimulator(lab.pbx_tty).running() as pbx:
                yield lab, pair, pbx, watch
        nursery.cancel_scope.cancel()


async def test_a_record_and_a_gateway_call_on_the_active_nodes_line_leave_its_message_and_lamp(pair_dir):
    async with running(pair_dir) as (lab, pair, pbx, watch):
        # a call for 1001 forwarded on busy from 5559876 rings a's line 2 (terminal 2)
        await pbx.call_record(2, "B", "5551001", "5559876")
        await until(lambda: parsed(pair_dir, "a", 2) and parsed(pair_dir, "b", 2),
                    "both nodes parsed the record", in_thread=True)
        assert await gateway_call(pair_dir / "gw1", sip_port(pair, "a"), 2) == 0
        await until(lambda: messages(pair, "mb1001"), "the message for 1001",
                    in_thread=True)
        (h, wav), = messages(pair, "mb1001")
        # the record's numbers and reason, not the INVITE's (1003, unconditional)
        assert (h["x-vmha-node"], h["x-vmha-forwarding"], h["x-vmha-reason"],
                h["x-vmha-caller"]) == ("a", "1001", "busy", "9876"), h
        assert has_voice(wav), "the gateway's RTP is not in the message"
        assert messages(pair, "mb1003") == []
        log = (pair_dir / "a.log").read_text()
        assert "on line sip-2: call information from the data link" in log
        # the lamp: one OP:MWI command on the SMDI link, from the active node only
        await pbx.wait_commands(1)
        await trio.sleep(0.5)  # a second command (there must be none) would be here
        assert [(c.on, c.number) for _, c in pbx.commands] == [(True, "5551001")]
        assert wire(lab, "b") == []
        assert watch.got == []  # no NOTIFY
        smdi = ((pair.a.status() or {}).get("counters") or {}).get("smdi") or {}
        assert smdi.get("matched") == 1, smdi


async def test_a_record_and_a_gateway_call_on_the_inactive_nodes_line_fail_over_at_once(pair_dir):
    async with running(pair_dir) as (lab, pair, pbx, watch):
        # the PBX hunts to b's line 2 (terminal 6): the record and the ring come
        # together, b is inactive; whichever reaches b first starts the failover
        await pbx.call_record(6, "N", "5551002", "5551001")
        code = await gateway_call(pair_dir / "gw1", sip_port(pair, "b"), 2)
        assert code == 0, "the call at the inactive node was not answered"
        assert pair.b.state() == "active"
        await until(lambda: messages(pair, "mb1002"), "the message for 1002",
                    in_thread=True)
        (h, wav), = messages(pair, "mb1002")
        assert (h["x-vmha-node"], h["x-vmha-forwarding"], h["x-vmha-reason"],
                h["x-vmha-caller"]) == ("b", "1002", "no_answer", "1001"), h
        assert has_voice(wav)
        ev = [e for e in pair.b.events() if e["event"] in ("failover", "activating")]
        assert any("call" in e["message"] for e in ev), ev
        # b's lamps are SMDI commands: its takeover resync sets every lamp it does
        # not know (1001, 1003 off; 1002 off or already on), then 1002 on
        await until(lambda: (True, "5551002") in [(c.on, c.number)
                                                  for _, c in pbx.commands],
                    "1002's lamp lit by b")
        assert wire(lab, "b") and b"".join(d for _, d in wire(lab, "b")) == \
            b"".join(c.raw for _, c in pbx.commands)
        assert wire(lab, "a") == []  # a never transmitted
        assert watch.got == []  # no NOTIFY from either node
