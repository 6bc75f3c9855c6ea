"""``vmha demo``: a pair on loopback with simulated and real SIP calls, a takeover and a failback.

Starts two real node processes (primary ``a`` first) on the embedded defaults with
:class:`lab.pair.Pair`, each with SIP voice-mail ports (``[ports.sip]``, 4 ports on
127.0.0.1), adds two subscribers (1001, 1002) through the active node's admin socket, shows a
compact Failover Monitor of both nodes a few times a second, places simulated calls on the
loopback trunk of the active node and real SIP calls forwarded to voice mail (``Diversion``
header, the caller speaking a WAV) at the active node's SIP port, and runs a script:

* ~5 s:  ``kill -9`` of the active node's messaging service; the peer takes over (the banner
  shows the time from the kill to the peer's ``failover`` event in its event log); the calls
  on the killed service are cut off, the next ones go to the peer;
* ~10 s: one SIP call (one loopback call without SIP) at the inactive node: call takeover, it
  becomes active at once and answers;
* ~15 s: manual failover through the primary's admin socket;
* ~19 s: one call on the inactive node's trunk (and one at its SIP port): after an operator
  move the node holds, so it refuses the calls (no call takeover) and the PBX would hunt on;
* then calls keep coming until Ctrl-C or ``--duration``.

Both nodes also serve the admin HTTP API and the web Failover Monitor on loopback
(``Pair(http=True)``): the demo prints both pages' URLs and the operators' tokens at the
start, and the pages follow the script's takeovers live (docs/monitor.md).

Then, at ~21 s, an **analog site** (:class:`AnalogSite`): a second pair whose voice
ports are the analog lines of a voice-board simulator (:mod:`lab.voiceboard`, a simulator:
nobody has a voice board here) with the in-band DTMF integration (profile ``analog-dtmf``).
Its simulated PBX hunts one caller over both nodes' lines; when the port answers it sends
``#1001`` (forwarded from 1001 on busy), the caller speaks, hangs up; the demo shows the
line, the digits, the mailbox and the reason of the message, and the lamp the active node
lit by dialling ``*911001`` on a line.  (A node's voice ports are either analog lines, whose
calls say why they came in band or on SMDI, or ports with their own signalling: the analog
lines need a pair of their own.)  The analog pair starts after the script above, so its
start-up does not compete for the CPU with the takeovers being measured, and it is stopped
once its call is shown (about 15 s later).

**SCCP ports** beside SIP: each node also registers ``SCCP_PORTS`` SCCP stations (a's
``CiscoUM1-VI1`` ..., b's ``CiscoUM2-VI1`` ...) with a CallManager simulator
(:mod:`lab.callmanager`, its own process: nobody has a CallManager here), which hunts its
pilot over a's ports, then b's.  At ~20 s (:class:`SccpSite`) it places one call forwarded
on no answer from 1002: after the operator's move a holds, so a's ports decline it and the
simulator hunts on to b's; the demo shows the port that answered, the call's information and
the message it left.

The SIP calls are made by the built-in caller :mod:`lab.sip_caller` (one pjsua2
process per call).  Each message left in the shared Maildir store is shown with the node that
recorded it (its ``X-VMHA-Node`` header), so the messages are seen to go on across the takeover.
Without a usable pjsua2 the demo runs without SIP ports.

On a terminal the view is redrawn in place (ANSI clear + home); otherwise (CI logs, pipes)
changes are printed as plain progressive lines.  Every process is stopped by PID at the end.
"""
from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import wave
from collections import Counter
from pathlib import Path

import trio

from failover.config import load_config
from failover.eventlog import format_record
from lab.callmanager import start_callmanager, stop_callmanager
from lab.loopback_client import LoopbackClientError, place_call
from lab.pair import (
    SCCP_PREFIXES,
    Pair,
    free_port,
    free_udp_block,
    merge_sections,
    sccp_devices,
    sccp_table,
)
from lab.voiceboard import VoiceBoardSim
from telephony.core import media
from telephony.runtime.tasks import describe
from telephony.store import parse_mime

# seconds after the pair was started: kill -9 of the active service, a call on the inactive
# node's trunk (call takeover), an operator failover, a call on the node that now holds
KILL_AT, TAKEOVER_CALL_AT, FAILOVER_AT, PROBE_AT = 5.0, 10.0, 15.0, 19.0
ANALOG_AT = 21.0  # the analog site starts (after the script: see the module docstring)
CALL_EVERY, HOLD = 0.5, (1.0, 1.8)  # at most 4 calls at once: the loopback trunk has 4 ports
REFRESH = 0.25
# SIP calls: one every SIP_EVERY s, at most SIP_MAX at once (a node has SIP_PORTS ports); the
# caller speaks CALLER_WAV (silence over the greeting and the beep, then a tone) and hangs up
# SIP_HOLD s after the answer, so its message is stored on the hang-up
SIP_EVERY, SIP_MAX, SIP_PORTS, SIP_HOLD = 1.5, 2, 4, 2.8
SUBSCRIBERS = (("1001", "Alice Example"), ("1002", "Bob Example"))
SIP_REASONS = ("user-busy", "no-answer", "unconditional")
# the analog site: lines per node, the call's in-band digits and what they mean, the tone the
# caller speaks after 3 s of silence (over the wait for more digits, the greeting, the beep)
ANALOG_LINES, ANALOG_DIGITS, ANALOG_EXT = 2, "#1001", "1001"  # "#1001": 1001 was busy
ANALOG_VOICE = (3.0, 1250.0, 1.2)  # silence s, tone Hz, tone s
# the SCCP ports: stations per node, when the simulated CallManager places its call (after
# the operator's failover: a holds, so its ports decline and the call hunts on to b's), the
# call's CallInfo (forwarded on no answer from SCCP_EXT: redirect reason 2, call type 3
# "forward") and the caller's voice (silence over the greeting and the beep, then a tone)
SCCP_PORTS, SCCP_AT, SCCP_PILOT = 2, 20.0, "5000"
SCCP_EXT, SCCP_REASON, SCCP_CALL_TYPE = "1002", 2, 3
SCCP_VOICE = (2.5, 1400.0, 1.2)  # silence s, tone Hz, tone s
EVENT_LINES = 8
ACTIVATIONS = ("startup", "failover", "failback")


def other(name: str) -> str:
    return "b" if name == "a" else "a"


class MwiPhones:
    """The phones' side of SIP MWI: a UDP socket on 127.0.0.1 that answers every request (the
    nodes' unsolicited ``message-summary`` NOTIFYs) with 200 OK and keeps each extension's
    lamp (``Messages-Waiting``) and ``Voice-Message`` counts."""

    def __init__(self) -> None:
        self.port = 0
        self.lamps: dict[str, str] = {}  # extension -> "on (2 new)"
        self.notifies = 0
        self._sock: socket.socket | None = None

    def bind(self) -> int:
        for _ in range(50):
            port = free_udp_block(1)
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            self._sock, self.port = s, port
            return port
        raise RuntimeError("no free UDP port for the MWI phones")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    @staticmethod
    def reply(request: str) -> bytes:
        head = request.split("\r\n\r\n", 1)[0].split("\r\n")
        keep = []
        for line in head[1:]:
            name = line.split(":", 1)[0].strip().lower()
            if name in ("via", "v", "from", "f", "call-id", "i", "cseq"):
                keep.append(line)
            elif name in ("to", "t"):
                keep.append(line if ";tag=" in line else line + ";tag=vmha-demo-phone")
        return ("SIP/2.0 200 OK\r\n" + "\r\n".join(keep)
                + "\r\nContent-Length: 0\r\n\r\n").encode()

    def note(self, request: str) -> None:
        first = request.split("\r\n", 1)[0]
        if not first.startswith("NOTIFY "):
            return
        ext = first.split()[1].split(":", 1)[-1].split("@", 1)[0]
        body = request.split("\r\n\r\n", 1)[-1]
        waiting = re.search(r"(?im)^Messages-Waiting:\s*(\w+)", body)
        counts = re.search(r"(?im)^Voice-Message:\s*(\d+)/(\d+)", body)
        self.notifies += 1
        lamp = "on" if waiting and waiting.group(1).lower() == "yes" else "off"
        self.lamps[ext] = lamp + (f" ({counts.group(1)} new)" if counts else "")

    async def run(self) -> None:
        assert self._sock is not None
        sock = trio.socket.from_stdlib_socket(self._sock)
        while True:
            data, addr = await sock.recvfrom(65536)
            text = data.decode("utf-8", "replace")
            if text.startswith("SIP/2.0"):
                continue  # a response: nothing to answer
            try:
                self.note(text)
            except Exception:  # noqa: BLE001 - a lamp we cannot read: still answered
                pass
            await sock.sendto(self.reply(text), addr)


class AnalogSite:
    """The demo's analog site: a second pair (``<workdir>/analog``) whose nodes' voice ports
    are the lines of a voice-board simulator's boards ``a`` and ``b`` (sockets in
    ``<workdir>/vb``), profile ``analog-dtmf``; one call, its message and its lamp."""

    def __init__(self, workdir: Path) -> None:
        (workdir / "vb").mkdir(parents=True, exist_ok=True)
        self.sim = VoiceBoardSim(workdir / "vb", {"a": ANALOG_LINES, "b": ANALOG_LINES})
        self.pair = Pair(workdir / "analog", relay=False, analog=self.sim,
                         analog_keys={"count": ANALOG_LINES, "rings": 1},
                         extra={"messaging": {"silence": 1.0, "min_message": 0.2}})
        self.status = f"starts at {ANALOG_AT:.0f} s"  # one line for the view and the summary
        self.stopped = False

    def _node_ready(self, name: str) -> bool:
        st = self.pair.node(name).status() or {}
        idle = [p for p in st.get("ports", []) if p.get("kind") == "analog" and p.get("state") == "idle"]
        return self.sim.connected(name) and len(idle) == ANALOG_LINES

    def _message(self) -> dict | None:
        box = load_config(self.pair.a.config).store.maildir / f"mb{ANALOG_EXT}"
        for sub in ("new", "cur"):
            for f in sorted((box / sub).iterdir()) if (box / sub).is_dir() else []:
                try:
                    return parse_mime(f.read_bytes())[0]
                except Exception:  # noqa: BLE001, S112 - half-written: seen on a later poll
                    continue
        return None

    async def _poll(self, demo: "Demo", pred, timeout: float, what: str):
        found = await demo.wait_for(pred, timeout)
        if not found:
            raise RuntimeError(f"{what} not seen within {timeout:g} s")
        return found

    @staticmethod
    async def _thread_poll(pred, timeout: float, what: str):
        with trio.move_on_after(timeout):
            while not (found := await trio.to_thread.run_sync(pred)):
                await trio.sleep(0.1)
            return found
        raise RuntimeError(f"{what} not seen within {timeout:g} s")

    async def _call(self, demo: "Demo") -> None:
        await trio.to_thread.run_sync(self.pair.start)
        demo.say(f"analog site: a pair on a voice-board simulator's lines ({ANALOG_LINES} per node, "
                 f"boards {self.sim.socket_path('a')}, {self.sim.socket_path('b')}), node managers "
                 f"a pid {self.pair.a.pid}, b pid {self.pair.b.pid}")
        await self._thread_poll(lambda: self.pair.a.state() == "active", 20, "analog a active")
        ops = [{"op": "put", "table": "subscribers", "row": {
            "extension": ANALOG_EXT, "name": "Alice Example", "mailbox": f"mb{ANALOG_EXT}",
            "mwi_method": "dtmf", "notify": []}}]
        reply = await trio.to_thread.run_sync(
            lambda: self.pair.a.admin({"op": "db_write", "ops": ops}, timeout=10))
        if not (reply and reply.get("ok")):
            raise RuntimeError(f"subscriber not added: {(reply or {}).get('error', 'no answer')}")
        await self._thread_poll(lambda: self._node_ready("a") and self._node_ready("b"), 20,
                                "both analog boards connected")
        silence_s, hz, tone_s = ANALOG_VOICE
        handle = self.sim.start_call(digits=ANALOG_DIGITS, audio=media.silence(silence_s)
                                     + media.tone(hz, tone_s) + media.silence(0.3), hunt=("a", "b"))
        where = f"line {handle.call.board}/{handle.call.line}"
        self.status = f"calling: {where} rings, digits {ANALOG_DIGITS} after the answer"
        demo.say(f"analog call: the PBX rings {where} (node {handle.call.board}'s "
                 f"analog-{handle.call.line}); it sends {ANALOG_DIGITS} in band after the answer")
        with trio.move_on_after(40):
            call = await handle.wait()
        if not handle.done or not call.answered:
            raise RuntimeError(f"the analog call on {where} was not answered "
                               f"({handle.call.ended_by or 'still ringing'})")
        h = await self._thread_poll(self._message, 15, f"the message for mb{ANALOG_EXT}")
        await self._poll(demo, lambda: self.sim.lamps.get(ANALOG_EXT) is True, 15,
                         f"lamp {ANALOG_EXT} on")
        dial = next((d for d in reversed(self.sim.dialled) if d["extension"] == ANALOG_EXT
                     and d["result"] == "on"), {})
        message = (f"message in mb{ANALOG_EXT} (forwarded by {h.get('x-vmha-forwarding', '?')}, "
                   f"{h.get('x-vmha-reason', '?')}, {float(h.get('x-vmha-duration', 0) or 0):.1f} s, "
                   f"recorded by {h.get('x-vmha-node', '?')})")
        lit = (f"lamp {ANALOG_EXT} on: dialled {dial.get('digits', '?')} "
               f"on line {dial.get('board', '?')}/{dial.get('line', '?')}")
        self.status = f"{where}, digits {ANALOG_DIGITS}: {message}; {lit}"
        demo.banner(f"ANALOG CALL on {where} (node {call.board}'s analog-{call.line}): digits "
                    f"{ANALOG_DIGITS} -> {message}; {lit}")

    async def run(self, demo: "Demo") -> None:
        """The analog site's whole life; a failure is shown, it never ends the demo."""
        failed: str | None = None
        await demo.at(ANALOG_AT)
        self.status = "starting"
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.sim.run)
                try:
                    await self._call(demo)
                finally:
                    with trio.CancelScope(shield=True):  # the pair first: then its boards
                        await trio.to_thread.run_sync(self.stop)
                    nursery.cancel_scope.cancel()
        except* Exception as group:  # noqa: BLE001 - the analog site never ends the demo
            failed = describe(group)
        if failed is not None:
            self.status = f"failed: {failed}"
            demo.banner(f"ANALOG CALL failed: {failed}")

    def stop(self) -> None:
        """Stop the analog pair's processes (by PID; again at the demo's end: idempotent)."""
        self.pair.stop()
        if not self.stopped:
            self.stopped = True
            if self.status.startswith("starts at"):
                self.status = f"not placed: the demo stopped before {ANALOG_AT:.0f} s"
            elif self.status.startswith(("starting", "calling")):
                self.status = f"stopped before the call ended ({self.status})"


class SccpSite:
    """The demo's SCCP ports: a CallManager simulator process (``lab.callmanager``) both
    nodes' SCCP ports register with, and one call it hunts over them at ``SCCP_AT``."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "cm"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.devices = {n: sccp_devices(SCCP_PREFIXES[n], SCCP_PORTS) for n in "ab"}
        self.pcap = self.dir / "callmanager.pcap"
        self.wav = self.dir / "caller.wav"
        self.proc = None
        self.client = None
        self.status = f"due at {SCCP_AT:.0f} s"  # one line for the view and the summary
        self.stopped = False

    def sections(self, name: str) -> dict:
        """Node ``name``'s ``[ports.sccp]`` table (beside its SIP ports and loopback trunk)."""
        return {"ports": {"sccp": sccp_table([self.port], prefix=SCCP_PREFIXES[name],
                                             count=SCCP_PORTS)}}

    def start(self) -> None:
        silence_s, hz, tone_s = SCCP_VOICE
        self.wav.write_bytes(media.wav_bytes(media.silence(silence_s) + media.tone(hz, tone_s)
                                             + media.silence(2.0)))
        self.proc, self.client = start_callmanager(self.dir, self.devices["a"] + self.devices["b"],
                                                   pilot=SCCP_PILOT, pcap=self.pcap, port=self.port)

    def describe(self) -> str:
        a, b = self.devices["a"], self.devices["b"]
        return (f"SCCP ports ({SCCP_PORTS} per node): a {a[0]}..{a[-1]}, b {b[0]}..{b[-1]} on the "
                f"CallManager simulator 127.0.0.1:{self.port} (pid {self.proc.pid if self.proc else '?'}, "
                f"pilot {SCCP_PILOT}, pcap {self.pcap})")

    def node_of(self, device: str) -> tuple[str, str]:
        """(node, port name) of a device: ``CiscoUM2-VI1`` is b's ``sccp-1``."""
        for n, names in self.devices.items():
            if device in names:
                return n, f"sccp-{names.index(device) + 1}"
        return "?", "?"

    def registered(self) -> set[str]:
        regs = self.client.registrations() if self.client else {}
        return {d for d, r in regs.items() if r.get("state") == "registered"}

    def message(self, store: Path, caller: str) -> dict | None:
        box = store / f"mb{SCCP_EXT}"
        for sub in ("new", "cur"):
            for f in sorted((box / sub).iterdir()) if (box / sub).is_dir() else []:
                try:
                    h = parse_mime(f.read_bytes())[0]
                except Exception:  # noqa: BLE001, S112 - half-written: seen on a later poll
                    continue
                if h.get("x-vmha-caller") == caller:
                    return h
        return None

    async def _call(self, demo: "Demo") -> None:
        everyone = set(self.devices["a"] + self.devices["b"])
        await AnalogSite._thread_poll(lambda: self.registered() >= everyone, 20,
                                      "every SCCP port registered")
        demo.say(f"SCCP: the {len(everyone)} ports of both nodes are registered with the "
                 "CallManager simulator")
        await demo.at(SCCP_AT)
        caller = f"0408{random.randint(1000000, 9999999)}"
        self.status = (f"calling: pilot {SCCP_PILOT}, from {caller}, forwarded by {SCCP_EXT} "
                       "(no answer)")
        demo.say(f"SCCP call: the CallManager simulator hunts pilot {SCCP_PILOT} over a's ports, "
                 f"then b's; CallInfo: from {caller}, forwarded by {SCCP_EXT} on no answer")
        client = self.client
        # abandoned on Ctrl-C: the thread ends when the simulator is stopped with the nodes
        res = await trio.to_thread.run_sync(lambda: client.call(
            caller, called=SCCP_PILOT, call_type=SCCP_CALL_TYPE, original_called=SCCP_EXT,
            last_redirecting=SCCP_EXT, reason=SCCP_REASON, wav=str(self.wav), hang_up_after=20),
            abandon_on_cancel=True)
        device = res.get("device") or "?"
        node, port = self.node_of(device)
        hunt = ", ".join(f"{d} {outcome}" for d, outcome in res.get("tried") or [])
        demo.say(f"SCCP call: the simulator's hunt: {hunt or 'no port tried'}")
        if not res.get("answered"):
            raise RuntimeError(f"the SCCP call was not answered ({res})")
        h = await AnalogSite._thread_poll(lambda: self.message(demo.store, caller), 15,
                                          f"the message for mb{SCCP_EXT}")
        message = (f"message in mb{SCCP_EXT} (forwarded by {h.get('x-vmha-forwarding', '?')}, "
                   f"{h.get('x-vmha-reason', '?')}, {float(h.get('x-vmha-duration', 0) or 0):.1f} s, "
                   f"recorded by {h.get('x-vmha-node', '?')})")
        self.status = f"answered by {device} (node {node}'s {port}): {message}"
        demo.banner(f"SCCP CALL answered by {device} (node {node}'s {port}) after the CallManager "
                    f"simulator hunted pilot {SCCP_PILOT}: from {caller} -> {message}")

    async def run(self, demo: "Demo") -> None:
        """The SCCP call's whole life; a failure is shown, it never ends the demo."""
        failed: str | None = None
        try:
            await self._call(demo)
        except* Exception as group:  # noqa: BLE001 - the SCCP call never ends the demo
            failed = describe(group)
        if failed is not None:
            self.status = f"failed: {failed}"
            demo.banner(f"SCCP CALL failed: {failed}")

    def stop(self) -> None:
        """Stop the simulator by PID (SIGTERM, then SIGKILL; idempotent)."""
        if self.proc is not None:
            stop_callmanager(self.proc)
        if not self.stopped:
            self.stopped = True
            if self.status.startswith("due at"):
                self.status = f"not placed: the demo stopped before {SCCP_AT:.0f} s"
            elif self.status.startswith("calling"):
                self.status = f"stopped before the call ended ({self.status})"


class Demo:
    def __init__(self, pair: Pair, tty: bool, sip: bool = False,
                 phones: MwiPhones | None = None, analog: AnalogSite | None = None,
                 sccp: SccpSite | None = None) -> None:
        self.pair, self.tty, self.sip = pair, tty, sip
        self.analog = analog
        self.sccp = sccp
        self.t0 = time.monotonic()
        self.status: dict[str, dict | None] = {"a": None, "b": None}
        self.logs = {n: load_config(pair.node(n).config).node.data_dir / "events.jsonl" for n in "ab"}
        self.offsets = {"a": 0, "b": 0}
        self.events: list[dict] = []  # event-log records of both nodes except per-call lines
        self.calls: Counter[str] = Counter()
        self.in_progress = 0
        self.avoid: set[str] = set()  # nodes whose service the demo just killed
        self.banners: list[str] = []
        self.measured: list[str] = []  # "time taken" lines for the summary
        self.next_step = f"kill -9 of the active messaging service at {KILL_AT:.0f} s"
        self.interrupted = ""  # the signal that stopped the demo
        self._shown: dict[str, tuple] = {}
        # SIP: results of the built-in caller, the messages seen in the shared Maildir store
        self.sip_calls: Counter[str] = Counter()
        self.sip_in_progress = 0
        self.sip_ready = False  # subscribers added
        self.store = load_config(pair.a.config).store.maildir
        self.messages: dict[str, dict] = {}  # Maildir unique name -> headers
        self.stored: Counter[str] = Counter()  # node (X-VMHA-Node) -> messages
        self.wav = pair.dir / "caller.wav"
        self.caller_log = pair.dir / "sip-caller.log"
        self.phones = phones or MwiPhones()
        self._sip_ports: dict[str, int] = {}

    # ------------------------------------------------------------------ output

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def say(self, text: str) -> None:
        """A plain progressive line (not on a terminal, where the redrawn view shows it)."""
        if not self.tty:
            print(f"[{self.elapsed():6.2f}s] {text}", flush=True)

    def banner(self, text: str) -> None:
        self.banners.append(text)
        if not self.tty:
            print(f"\n{'=' * 8} {text} {'=' * 8}\n", flush=True)

    def node_line(self, name: str) -> str:
        st = self.status[name]
        if st is None:
            return f"{name}  (node manager not answering)"
        n, p = st["node"], st["peer"]
        return (f"{name}  {n['role']:<9} {n['state']:<10} term {n['term']:<3} service {n['service']:<8} "
                f"calls {st['calls_in_progress']:<2} peer {p['name']} "
                f"{'reachable' if p['reachable'] else 'UNREACHABLE'}")

    def calls_line(self) -> str:
        c = self.calls
        return (f"calls: answered {c['answered']}  dropped {c['dropped']}  rejected {c['rejected']}  "
                f"failed {c['failed']}  (in progress {self.in_progress})")

    def sip_line(self) -> str:
        c = self.sip_calls
        lamps = ", ".join(f"{e} {v}" for e, v in sorted(self.phones.lamps.items())) or "none yet"
        return (f"SIP calls: answered {c['answered']}  not answered {c['unanswered']}  "
                f"failed {c['failed']}  (in progress {self.sip_in_progress});  messages stored: "
                f"by a {self.stored['a']}  by b {self.stored['b']};  MWI lamps: {lamps}")

    def draw(self) -> None:
        width = shutil.get_terminal_size((120, 40)).columns
        lines = [f"vmha demo: pair on loopback in {self.pair.dir}   t = {self.elapsed():5.1f} s   "
                 "Ctrl-C to stop", "", "FAILOVER MONITOR"]
        lines += [self.node_line(n) for n in "ab"]
        lines += ["", self.calls_line()] + ([self.sip_line()] if self.sip else [])
        lines += [f"SCCP call: {self.sccp.status}"] if self.sccp else []
        lines += [f"analog call: {self.analog.status}"] if self.analog else []
        lines += [f"next: {self.next_step}", ""]
        lines += [f">>> {b}" for b in self.banners[-3:]]
        lines += ["", "recent events (both nodes, by time; per-call lines hidden):"]
        lines += ["  " + format_record(r) for r in self.events[-EVENT_LINES:]]
        sys.stdout.write("\x1b[H\x1b[2J" + "\n".join(x[:width - 1] for x in lines) + "\n")
        sys.stdout.flush()

    # ------------------------------------------------------------------ monitor

    def _read_new(self, name: str) -> list[dict]:
        try:
            with open(self.logs[name], "rb") as f:
                f.seek(self.offsets[name])
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self.offsets[name] += end
        out = []
        for line in data[:end].splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def _scan_store(self) -> list[dict]:
        """New messages in the shared Maildir store (``<store>/<mailbox>/{new,cur}``)."""
        out = []
        try:
            files = [f for box in self.store.iterdir() for sub in ("new", "cur")
                     if (box / sub).is_dir() for f in (box / sub).iterdir()]
        except OSError:
            return out
        for f in files:
            key = f"{f.parent.parent.name}/{f.name.split(':', 1)[0]}"
            if key in self.messages:
                continue
            try:
                headers, _wav = parse_mime(f.read_bytes())
            except Exception:  # noqa: BLE001, S112 - moved or half-written: seen on a later poll
                continue
            headers["mailbox"] = f.parent.parent.name
            self.messages[key] = headers
            self.stored[headers.get("x-vmha-node", "?")] += 1
            out.append(headers)
        return out

    def _poll(self) -> list[dict]:  # blocking: runs in a thread
        self.status = {n: self.pair.node(n).status() for n in "ab"}
        if self.sip:
            for h in self._scan_store():
                self.say(f"MESSAGE stored by {h.get('x-vmha-node', '?')} in {h['mailbox']}: "
                         f"from {h.get('x-vmha-caller', '?')}, forwarded by "
                         f"{h.get('x-vmha-forwarding', '?')} ({h.get('x-vmha-reason', '?')}), "
                         f"{float(h.get('x-vmha-duration', 0) or 0):.1f} s")
        new = [r for n in "ab" for r in self._read_new(n)]
        return sorted((r for r in new if not str(r.get("event", "")).startswith("call_")
                       or r.get("event") == "call_refused"), key=lambda r: r.get("ts", 0))

    async def monitor(self) -> None:
        last_calls = 0.0
        while True:
            new = await trio.to_thread.run_sync(self._poll)
            self.events = sorted(self.events + new, key=lambda r: r.get("ts", 0))[-200:]
            if self.tty:
                self.draw()
            else:
                for rec in new:
                    print("    " + format_record(rec), flush=True)
                for n in "ab":
                    st = self.status[n]
                    key = st and (st["node"]["state"], st["node"]["term"], st["node"]["service"],
                                  st["peer"]["reachable"])
                    if self._shown.get(n, 0) != key:
                        self._shown[n] = key
                        self.say(self.node_line(n))
                if time.monotonic() - last_calls >= 5:
                    last_calls = time.monotonic()
                    self.say(self.calls_line())
                    if self.sip:
                        self.say(self.sip_line())
            await trio.sleep(REFRESH)

    def active(self) -> str | None:
        """The node to send calls to: active, not just killed, highest term (a stale view of a
        node that was active before cannot win: terms only move forward)."""
        up = [(st["node"]["term"], n) for n, st in self.status.items()
              if st and st["node"]["state"] == "active" and n not in self.avoid]
        return max(up)[1] if up else None

    async def wait_for(self, pred, timeout: float):
        with trio.move_on_after(timeout):
            while not (found := pred()):
                await trio.sleep(0.02)
            return found
        return None

    def activation_after(self, name: str, wall: float) -> dict | None:
        return next((r for r in self.events if r.get("node") == name and r.get("ts", 0) >= wall
                     and r.get("event") in ACTIVATIONS), None)

    # ------------------------------------------------------------------ calls

    async def one_call(self, name: str, call_id: str, probe: bool = False) -> None:
        self.calls["placed"] += 1
        self.in_progress += 1
        try:
            out = await place_call("127.0.0.1", self.pair.loop_port(name), call_id,
                                   calling=f"4{random.randint(100, 999)}", called="5000",
                                   hold=random.uniform(*HOLD), reply_timeout=5)
            result, detail = out.result, (f"by {out.node} in term {out.term}" if out.answered
                                          else out.reason)
        except (OSError, trio.BrokenResourceError, LoopbackClientError, trio.TooSlowError) as e:
            result, detail = "error", f"{type(e).__name__}: {e}"
        finally:
            self.in_progress -= 1
        self.calls["failed" if result == "error" else result] += 1
        if probe or result != "answered":
            self.say(f"call {call_id} on {name}'s trunk: {result} ({detail})")
        if probe and result in ("answered", "dropped"):
            self.banner(f"CALL TAKEOVER: the call on inactive {name}'s trunk was answered {detail}")
        elif probe:
            st = self.status[name]
            why = ("it holds after the operator's move, so no call takeover; the PBX hunts on "
                   f"to {other(name)}") if st and st["node"]["hold"] else "see its event log"
            self.banner(f"CALL ON INACTIVE {name}'s TRUNK: {result} ({detail}): {why}")

    async def caller(self, nursery: trio.Nursery) -> None:
        n = 0
        while True:
            await trio.sleep(CALL_EVERY)
            target = self.active()
            if target is not None:
                n += 1
                nursery.start_soon(self.one_call, target, f"demo-{n}")

    # ------------------------------------------------------------------ SIP calls

    def sip_port(self, name: str) -> int:
        if name not in self._sip_ports:
            self._sip_ports[name] = load_config(self.pair.node(name).config).ports.sip.sip_port
        return self._sip_ports[name]

    async def add_subscribers(self) -> None:
        """Subscribers 1001 and 1002 (mailboxes mb1001, mb1002) through the active node's admin
        socket; the peer gets them by replication."""
        target = await self.wait_for(self.active, 20)
        if target is None:
            return
        ops = [{"op": "put", "table": "subscribers", "row": {
            "extension": ext, "name": name, "mailbox": f"mb{ext}",
            # lamps by SIP NOTIFY; without SIP ports, by the SCCP ports' MWI calls
            "mwi_method": "sip" if self.sip else "sccp", "notify": []}} for ext, name in SUBSCRIBERS]
        reply = await trio.to_thread.run_sync(
            lambda: self.pair.node(target).admin({"op": "db_write", "ops": ops}, timeout=10))
        if reply and reply.get("ok"):
            self.sip_ready = True
            self.say(f"subscribers {', '.join(e for e, _ in SUBSCRIBERS)} added through {target}'s "
                     "admin socket")
        else:
            self.banner(f"subscribers not added ({(reply or {}).get('error', 'no answer')}): "
                        "no SIP calls")

    async def one_sip_call(self, name: str, call_id: str, n: int, kind: str = "") -> dict:
        """One call by the built-in caller (its own process) at ``name``'s SIP port."""
        ext = SUBSCRIBERS[n % len(SUBSCRIBERS)][0]
        reason = SIP_REASONS[n % len(SIP_REASONS)]
        port = self.sip_port(name)
        cmd = [sys.executable, "-m", "lab.sip_caller", "--bind", "127.0.0.1",
               "--to", f"sip:5000@127.0.0.1:{port}", "--diversion", ext, "--reason", reason,
               "--from", f"030{random.randint(1000000, 9999999)}", "--wav", str(self.wav),
               "--hold", str(SIP_HOLD), "--answer-timeout", "10", "--json"]
        self.sip_calls["placed"] += 1
        self.sip_in_progress += 1
        res: dict = {}
        failed: str | None = None
        try:
            # run_process reads the caller's stdout in a nursery of its own: its errors arrive
            # as an exception group (cancellation passes through: the demo is stopping, and
            # the caller gets SIGTERM by its PID, hangs up and exits)
            with open(self.caller_log, "ab") as log:  # noqa: ASYNC230 - a local log file
                proc = await trio.run_process(cmd, capture_stdout=True, stderr=log, check=False,
                                              stdin=subprocess.DEVNULL)
        except* Exception as group:  # noqa: BLE001 - one call failing never ends the demo
            failed = describe(group)
        finally:
            self.sip_in_progress -= 1
        if failed is None:
            try:
                res = json.loads(proc.stdout.decode().strip().splitlines()[-1])
            except (ValueError, IndexError) as e:
                failed = f"{type(e).__name__}: {e}"
        if failed is not None:
            res = {"answered": False, "code": 0, "reason": failed, "failed": True}
        if res.get("failed") or (not res.get("answered") and not res.get("code")):
            outcome = "failed"
        else:
            outcome = "answered" if res.get("answered") else "unanswered"
        self.sip_calls[outcome] += 1
        how = (f"answered, {res.get('duration', 0):.1f} s, ended by {res.get('by')}"
               if res.get("answered") else f"not answered: {res.get('code')} {res.get('reason')}")
        self.say(f"SIP call {call_id} to {name} (forwarded by {ext}, {reason}): {how}")
        return res

    async def sip_caller(self, nursery: trio.Nursery) -> None:
        n = 0
        while True:
            target = self.active()
            if target is not None and self.sip_ready and self.sip_in_progress < SIP_MAX:
                n += 1
                nursery.start_soon(self.one_sip_call, target, f"sip-{n}", n)
            await trio.sleep(SIP_EVERY)

    async def sip_on_inactive(self, nursery: trio.Nursery, call_id: str, probe: bool) -> None:
        """A SIP call at the inactive node: call takeover (``probe`` False: it becomes active
        at once and answers) or, after the operator's move, a refusal (``probe``: it holds)."""
        target = self.active()
        if target is None or not self.sip_ready:
            return
        name = other(target)
        self.say(f"placing a SIP call at the inactive node {name}'s SIP port")

        async def watch(wall: float, done: trio.Event) -> None:
            rec = await self.wait_for(lambda: self.activation_after(name, wall) or done.is_set(), 20)
            if isinstance(rec, dict):
                took = (rec["ts"] - wall) * 1000
                self.measured.append(f"{rec['event']} by SIP call: {name} active {took:.1f} ms "
                                     "after the caller was started")
                self.banner(f"SIP CALL TAKEOVER: the SIP call to inactive {name} made it active in "
                            f"term {rec['fields']['term']} ({rec['event']} event {took:.1f} ms after "
                            "the caller was started); it answers the call")

        async def go() -> None:
            wall, done = time.time(), trio.Event()
            if not probe:
                nursery.start_soon(watch, wall, done)
            res = await self.one_sip_call(name, call_id, 0)
            done.set()
            st = self.status[name]
            if res.get("answered"):
                self.banner(f"SIP CALL {'TAKEOVER' if not probe else 'TO INACTIVE ' + name}: "
                            f"the SIP call to {name} was answered by {name} "
                            f"({res.get('duration', 0):.1f} s, ended by {res.get('by')})")
            else:
                why = ("it holds after the operator's move, so no call takeover; the PBX hunts "
                       f"on to {other(name)}") if st and st["node"]["hold"] else "see its event log"
                self.banner(f"SIP CALL TO INACTIVE {name}: not answered ({res.get('code')} "
                            f"{res.get('reason')}): {why}")
        nursery.start_soon(go)

    # ------------------------------------------------------------------ script

    async def at(self, t: float) -> None:
        await trio.sleep(max(0.0, t - self.elapsed()))

    async def kill_active(self) -> None:
        victim = await self.wait_for(self.active, 15)
        if victim is None:
            self.banner("no active node to fail: skipping the kill")
            return
        peer = other(victim)
        pid = await trio.to_thread.run_sync(self.pair.node(victim).service_pid)
        if pid is None:
            self.banner(f"messaging service of {victim} not found: skipping the kill")
            return
        self.avoid.add(victim)
        wall = time.time()
        os.kill(pid, signal.SIGKILL)
        self.banner(f"KILL -9 of {victim}'s messaging service (pid {pid}): calls on it are cut off")
        self.next_step = f"a call on the inactive node's trunk at {TAKEOVER_CALL_AT:.0f} s"
        rec = await self.wait_for(lambda: self.activation_after(peer, wall), 10)
        self.avoid.discard(victim)
        if rec is None:
            self.banner(f"no takeover by {peer} seen within 10 s of the kill")
            return
        took = (rec["ts"] - wall) * 1000
        self.measured.append(f"{rec['event']}: {peer} active {took:.1f} ms after kill -9 of "
                             f"{victim}'s messaging service")
        self.banner(f"TAKEOVER: {peer} is active in term {rec['fields']['term']}, {rec['event']} event "
                    f"{took:.1f} ms after the kill -9")

    async def operator(self, kind: str) -> None:
        """``vmha failover`` (the secondary b becomes active) or ``failback`` (the primary a)."""
        self.next_step = f"a call on the inactive node's trunk at {PROBE_AT:.0f} s"
        target = "b" if kind == "failover" else "a"
        st = self.status[target]
        if st and st["node"]["state"] in ("active", "activating"):
            self.banner(f"manual {kind} not needed: {target} is already active")
            return
        self.avoid.add(other(target))  # no new calls there while it steps down (status may lag)
        wall = time.time()
        reply = await trio.to_thread.run_sync(self.pair.node(other(target)).admin, {"op": kind})
        self.banner(f"MANUAL {kind.upper()} (admin socket of {other(target)}): "
                    f"{(reply or {}).get('message') or (reply or {}).get('error') or 'no answer'}")
        rec = await self.wait_for(lambda: self.activation_after(target, wall), 10)
        self.avoid.discard(other(target))
        if rec is None:
            self.banner(f"{target} did not become active within 10 s of the {kind}")
            return
        took = (rec["ts"] - wall) * 1000
        self.measured.append(f"{kind}: {target} active {took:.1f} ms after the {kind} request")
        self.banner(f"{kind.upper()}: {target} is active in term {rec['fields']['term']}, {took:.1f} ms "
                    f"after the request; {other(target)} drains its calls and holds")

    async def call_on_inactive(self, nursery: trio.Nursery, call_id: str) -> None:
        target = self.active()
        if target is not None:
            self.say(f"placing a call on the inactive node {other(target)}'s trunk")
            nursery.start_soon(self.one_call, other(target), call_id, True)

    async def script(self, nursery: trio.Nursery) -> None:
        await self.at(KILL_AT)
        await self.kill_active()
        await self.at(TAKEOVER_CALL_AT)
        self.next_step = f"manual failover at {FAILOVER_AT:.0f} s"
        if self.sip and self.sip_ready:
            await self.sip_on_inactive(nursery, "sip-takeover-1", probe=False)
        else:
            await self.call_on_inactive(nursery, "takeover-1")
        await self.at(FAILOVER_AT)
        await self.operator("failover")
        await self.at(PROBE_AT)
        await self.call_on_inactive(nursery, "probe-1")
        if self.sip and self.sip_ready:
            await self.sip_on_inactive(nursery, "sip-probe-1", probe=True)
        self.next_step = (f"the analog site's call from {ANALOG_AT:.0f} s; calls continue until "
                          "Ctrl-C (or --duration)")

    async def run(self, duration: float) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                async def on_signal() -> None:
                    async for signum in signals:
                        self.interrupted = signal.Signals(signum).name
                        nursery.cancel_scope.cancel()
                nursery.start_soon(on_signal)
                nursery.start_soon(self.monitor)
                if self.analog is not None:
                    nursery.start_soon(self.analog.run, self)
                if self.sccp is not None:
                    nursery.start_soon(self.sccp.run, self)
                await self.wait_for(self.active, 20)
                nursery.start_soon(self.caller, nursery)
                nursery.start_soon(self.script, nursery)
                if self.sip:
                    nursery.start_soon(self.phones.run)
                if self.sip or self.sccp is not None:
                    await self.add_subscribers()
                if self.sip:
                    nursery.start_soon(self.sip_caller, nursery)
                if duration > 0:
                    await trio.sleep(max(0.0, duration - self.elapsed()))
                    nursery.cancel_scope.cancel()

    # ------------------------------------------------------------------ summary

    def summary(self, ran: float, leftovers: list[str]) -> str:
        c = self.calls
        by = "Ctrl-C" if self.interrupted == "SIGINT" else self.interrupted
        stop = f" (stopped by {by})" if by else ""
        unfinished = c["placed"] - sum(c[k] for k in ("answered", "dropped", "rejected", "failed"))
        lines = [f"=== vmha demo summary: ran {ran:.1f} s{stop} ===",
                 f"calls placed {c['placed']}: answered {c['answered']}, dropped {c['dropped']} "
                 f"(answered, then cut off), rejected {c['rejected']}, failed {c['failed']}, "
                 f"hung up by the stop {unfinished}"]
        acts = [r for r in self.events if r.get("event") in ACTIVATIONS]
        lines.append(f"activations seen (start-up, failovers, failbacks): {len(acts)}")
        for r in acts:
            f = r.get("fields", {})
            lines.append(f"  {r['event']:<9} {r['node']} term {f.get('term')}: activation took "
                         f"{f.get('took_ms')} ms; cause: {f.get('cause')}")
        if self.sip:
            s = self.sip_calls
            stopped = s["placed"] - sum(s[k] for k in ("answered", "unanswered", "failed"))
            lines.append(f"SIP calls placed {s['placed']}: answered {s['answered']}, not answered "
                         f"{s['unanswered']}, failed {s['failed']}, hung up by the stop {stopped}")
            boxes = Counter(h["mailbox"] for h in self.messages.values())
            lines.append(f"messages in the Maildir store: {len(self.messages)} (recorded by a "
                         f"{self.stored['a']}, by b {self.stored['b']}; "
                         + (", ".join(f"{b} {k}" for b, k in sorted(boxes.items())) or "none") + ")")
            lamps = ", ".join(f"{e} {v}" for e, v in sorted(self.phones.lamps.items())) or "none"
            lines.append(f"MWI NOTIFYs received by the phones: {self.phones.notifies}; lamps: {lamps}")
        if self.sccp is not None:
            lines.append(f"SCCP call (CallManager simulator): {self.sccp.status}")
        if self.analog is not None:
            lines.append(f"analog call (voice-board simulator, DTMF integration): {self.analog.status}")
        lines += ["measured by the demo:"] + [f"  {m}" for m in self.measured or ["nothing"]]
        lines.append("processes: all stopped" if not leftovers else
                     f"processes LEFT RUNNING: {', '.join(leftovers)}")
        return "\n".join(lines)


def leftover_processes(workdir: Path) -> list[str]:
    """Processes whose command line names the demo's dir: node managers (--config), messaging
    services (--control), SIP workers (--control, --media-dir; their own session, so not in a
    node's process group) and SIP callers (--wav)."""
    out = subprocess.run(["pgrep", "-af", str(workdir)], capture_output=True, text=True,
                         check=False).stdout
    procs = [line.split(None, 1) for line in out.splitlines() if line.strip()]
    mine = _ancestors()  # this process and what started it (a shell, timeout, script ...)
    return [f"{p[0]} ({'SIP worker' if 'telephony.sip.worker' in line else p[1][:60]})"
            for p in procs if len(p) == 2 and int(p[0]) not in mine for line in [" ".join(p)]]


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def stop_sip_workers(workdir: Path, wait: float = 8.0) -> list[str]:
    """SIP workers of the demo's nodes still running after the nodes stopped.  A worker ends
    by itself when its messaging service's control socket closes (it hangs up its calls
    first); wait for that, then kill -9 by PID what is left and return those.

    Workers are forked by the SIP driver's fork server, so their command line is the fork
    server's and names no directory: they are found by the PIDs the node logs give ("SIP
    worker wN ready on ... (pid P)"), kept only while that PID still runs SIP code (a PID the
    kernel gave to another process since is left alone)."""
    logged = set()
    for log in workdir.glob("*.log"):
        try:
            text = log.read_text(errors="replace")
        except OSError:
            continue
        logged.update(int(p) for p in re.findall(r"SIP worker w\d+ ready on \S+ \(pid (\d+)\)", text))

    def workers() -> list[int]:
        pids = []
        for p in sorted(logged):
            try:
                cmd = Path(f"/proc/{p}/cmdline").read_bytes()
                state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if b"telephony.sip" in cmd and state != "Z":
                pids.append(p)
        return pids

    end = time.monotonic() + wait
    while (left := workers()) and time.monotonic() < end:
        time.sleep(0.1)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return [str(p) for p in left]


def sip_usable() -> bool:
    try:
        import pjsua2

        assert pjsua2.Endpoint  # the lazy package loads its bindings here
    except Exception:  # noqa: BLE001 - ImportError, or bindings not staged
        return False
    return True


def sip_section(mwi_port: int) -> dict:
    """``[ports.sip]`` of one demo node: SIP_PORTS ports (one worker) on 127.0.0.1, lamps as
    NOTIFYs to the demo's phones."""
    return {"ports": {"sip": {"enabled": True, "bind": "127.0.0.1", "sip_port": free_udp_block(1),
                              "rtp_port": free_udp_block(4 * SIP_PORTS), "count": SIP_PORTS,
                              "mwi_target": f"sip:{{extension}}@127.0.0.1:{mwi_port}",
                              "mwi_account": "sip:{extension}@127.0.0.1",
                              "notify_retries": 1, "notify_backoff": 0.5}}}


def write_caller_wav(path: Path) -> None:
    """What the SIP callers say: 1.4 s of silence (over the greeting and the beep), then a
    1.2 s two-tone "voice", then the file ends (the caller hangs up a bit later)."""
    rate, frames = 8000, bytearray()
    for _ in range(int(rate * 1.4)):
        frames += b"\0\0"
    for i in range(int(rate * 1.2)):
        f = 1250.0 if (i // 2400) % 2 == 0 else 950.0
        frames += struct.pack("<h", int(9000 * math.sin(2 * math.pi * f * i / rate)))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(frames))


def monitor_lines(pair: Pair) -> str:
    """Where the Failover Monitor pages are and the tokens to log in with (a lab demo: the
    tokens are printed; a real node's operator gets them from ``vmha configure
    --add-operator``)."""
    return (f"Failover Monitor: a {pair.http_url('a')}/  b {pair.http_url('b')}/\n"
            f"  log in with the admin token {pair.tokens['admin']}\n"
            f"  (read-only: {pair.tokens['read']})\n"
            "  a browser keeps one session per host and both pages are on 127.0.0.1: open the "
            "second page in another browser or a private window")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def register(sub):
    """``vmha demo`` (entry point ``vmha.commands``): add the parser, return the handler."""
    p = sub.add_parser("demo", help="run a pair on loopback with simulated calls and a takeover")
    p.add_argument("--dir", help="working directory (default: a new temporary one)")
    p.add_argument("--duration", type=float, default=0,
                   help="stop after N seconds (default: until Ctrl-C)")
    return main_demo


def main_demo(args) -> int:
    workdir = Path(args.dir).resolve() if args.dir else Path(tempfile.mkdtemp(prefix="vmha-demo-"))
    tty = sys.stdout.isatty()
    sip = sip_usable()
    phones = MwiPhones()
    if sip:
        phones.bind()  # a plain socket: bound now, served inside the demo's trio.run
    sccp = SccpSite(workdir)
    extra = {f"extra_{n}": merge_sections(sip_section(phones.port) if sip else None, sccp.sections(n))
             for n in "ab"}
    pair = Pair(workdir, relay=True, http=True, **extra)
    try:
        analog: AnalogSite | None = AnalogSite(workdir)
    except ValueError as exc:  # a --dir too deep for the boards' Unix sockets
        print(f"analog site: off ({exc})", flush=True)
        analog = None
    demo = Demo(pair, tty, sip, phones, analog, sccp)
    if sip:
        write_caller_wav(demo.wav)
    print(f"vmha demo: starting a pair on loopback in {workdir} (primary a first)", flush=True)
    print(monitor_lines(pair), flush=True)
    # Ctrl-C (or SIGTERM) before the Trio signal receiver is in place: stop cleanly all the same
    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            sccp.start()  # the CallManager first: the nodes' SCCP ports register as they start
        except (OSError, RuntimeError, ValueError, TimeoutError) as exc:
            sccp.status = f"off: the CallManager simulator did not start ({exc})"
            print(f"SCCP ports: {sccp.status}", flush=True)
            demo.sccp = None
        pair.start("a", gap=0.3)
        sm = {n: pair.node(n).pid for n in "ab"}
        print(f"node managers: a pid {sm['a']}, b pid {sm['b']}; loopback trunks: a 127.0.0.1:"
              f"{pair.loop_port('a')}, b 127.0.0.1:{pair.loop_port('b')}", flush=True)
        if sip:
            print(f"SIP ports ({SIP_PORTS} per node, UDP): a 127.0.0.1:{demo.sip_port('a')}, "
                  f"b 127.0.0.1:{demo.sip_port('b')}; callers: python -m lab.sip_caller "
                  f"(log {demo.caller_log})", flush=True)
        else:
            print("SIP ports: off (pjsua2 is not usable here: pip install pjsua2-python)",
                  flush=True)
        if demo.sccp is not None:
            print(sccp.describe(), flush=True)
        trio.run(demo.run, float(args.duration or 0))
    except KeyboardInterrupt:
        demo.interrupted = demo.interrupted or "SIGINT"
    finally:
        for s in previous:
            signal.signal(s, signal.SIG_IGN)  # let the clean-up finish
        ran = demo.elapsed()
        print("\nstopping both nodes ...", flush=True)
        pair.stop()
        sccp.stop()
        if analog is not None:
            analog.stop()
        killed = stop_sip_workers(workdir)
        phones.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    left = leftover_processes(workdir)
    if killed:
        left.append(f"SIP workers {', '.join(killed)} (did not end with their service: killed)")
    print(demo.summary(ran, left), flush=True)
    print(f"event logs and node output: {workdir}", flush=True)
    return 1 if left else 0
