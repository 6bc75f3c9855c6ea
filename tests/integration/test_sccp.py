"""The SCCP voice-mail ports on a real pair (profile ``cucm-sccp``): both node managers and
their messaging services run as processes, every port of both nodes registers as an SCCP
station (a's as ``CiscoUM1-VI1`` ..., b's as ``CiscoUM2-VI1`` ...) with two CallManager
simulators (``lab.callmanager``, a simulator: nobody has a CallManager here), each its own
process: the primary and the backup of the ports' ``servers`` list.  The simulator hunts its
pilot over a's ports, then b's, tells the port who called and why (CallInfo), speaks a WAV
over RTP and records what the port answers.

One pair and one pair of simulators serve the whole module (a pair's start is most of a
test's time); the tests run in file order and each starts by putting the pair in the state it
needs (a active and every port registered with the primary).  The pcaps every simulator
process wrote are checked at the end by both independent decoders (``lab.skinny_check``).

Hang guards only (``GUARD``); no timing is judged here.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from failover.config import load_config
from lab.callmanager import CallManagerClient, start_callmanager, stop_callmanager
from lab.pair import SCCP_PREFIXES, Pair, free_port, sccp_devices
from lab.skinny_check import check_pcap
from telephony.core import dsp, media
from telephony.sccp.core.messages import Framer, Message, MsgId
from telephony.store import parse_mime
from tests.integration.conftest import GUARD, LOG_TAIL, pid_alive
from tests.integration.test_messaging import FAST

pytestmark = pytest.mark.multiprocess

PORTS = 5  # per node: four calls at once and a port left for the lamps
PILOT = "5000"
DEFAULT_MAILBOX = "general"  # where the opening greeting's callers leave their messages
TONE_HZ = 1800.0  # the caller's "voice": a tone no call-progress or DTMF detector knows
#: the caller's silence before speaking: covers the greeting (the opening one for a direct
#: call) and the beep; the recording starts after the beep
LEAD_S = 2.5
#: the simulator's CallManager hangs up this long after the answer at the latest (a guard:
#: each call ends earlier, when the port hangs up after its goodbye)
HANG_UP_AFTER = 20.0
#: the nodes' [ports.sccp] keys besides the servers and the device prefix: a quick look back
#: at the primary CallManager while on the backup
SCCP_KEYS = {"count": PORTS, "rehome_probe": 1.0}
#: the messaging core: short silences end a recording; prompts paced in real time (RTP)
MESSAGING = {"messaging": {**FAST["messaging"], "realtime_audio": True,
                           "default_mailbox": DEFAULT_MAILBOX}}
#: node a's messaging service, when it fails, starts again only after this delay (no quick
#: restarts; the same delay while the peer is not serving yet, as when the kill is seen):
#: the kill -9 test's calls find a's ports unregistered and hunt on to b's
A_RESTART_DELAY = 10.0
CALLS_AFTER_KILL = 2  # hunted calls placed after the kill, while a's service is down
A_SERVICE = {"service": {"max_restarts": 0, "restart_backoff": A_RESTART_DELAY,
                         "restart_backoff_alone": A_RESTART_DELAY}}
#: CallManager's redirect-reason codes (the driver's default ``redirect_reasons`` table)
BUSY, NO_ANSWER, FORWARD_ALL = 1, 2, 15
FORWARD = 3  # CallType: a forwarded call


def caller_audio() -> bytes:
    """What each caller says: silence over the greeting and the beep, one second of the tone,
    then silence (the port ends the recording on it, says goodbye and hangs up)."""
    return media.silence(LEAD_S) + media.tone(TONE_HZ, 1.0) + media.silence(2.0)


def has_tone(wav: bytes, hz: float = TONE_HZ) -> bool:
    """The recording holds the caller's tone: in its loudest quarter second, the tone's
    frequency carries most of the energy (``telephony.core.dsp.goertzel_power`` against the
    mean square of the block)."""
    x = dsp.samples(media.pcm_of(wav)).astype(np.float64)
    n = 2000
    if x.size < n:
        return False
    starts = range(0, x.size - n + 1, 400)
    best = max(starts, key=lambda i: float(np.sum(x[i:i + n] ** 2)))
    w = x[best:best + n]
    return float(dsp.goertzel_power(w, hz)) > 0.5 * float(np.mean(w ** 2))


def subscriber(ext: str, mwi: str = "sccp", mailbox: str | None = None) -> dict:
    return {"op": "put", "table": "subscribers", "row": {
        "extension": ext, "name": f"Sub {ext}", "mailbox": mailbox or f"mb{ext}",
        "mwi_method": mwi, "notify": []}}


SUBSCRIBERS = [subscriber(e) for e in ("1001", "1002", "1003", "1004", "1005", "1006", "1007")]
SUBSCRIBERS.append(subscriber("1900", mwi="none", mailbox=DEFAULT_MAILBOX))
# 1005 opens its mailbox from its own phone without a PIN (the opt-in; the PIN itself:
# tests/integration/test_mailbox_pin.py)
SUBSCRIBERS.append({"op": "put", "table": "pins", "row": {"extension": "1005", "pin": None,
                                                          "skip_pin_from_own_phone": True}})


# ============================================================================ the site


@dataclass
class CallManager:
    """One CallManager simulator process (started again after a kill: a new process in a
    directory of its own, a new pcap, the same address)."""

    name: str
    port: int
    workdir: Path
    devices: list[str]
    proc: subprocess.Popen | None = None
    client: CallManagerClient | None = None
    pcaps: list[Path] = field(default_factory=list)
    starts: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        where = self.workdir / f"{self.name}-{self.starts}"
        pcap = where / "sccp.pcap"
        self.pcaps.append(pcap)
        where.mkdir(parents=True)
        self.proc, self.client = start_callmanager(where, self.devices, pilot=PILOT, pcap=pcap,
                                                   port=self.port)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        """kill -9 by PID: CallManager goes away without a word (the kernel closes its
        connections)."""
        os.kill(self.pid, signal.SIGKILL)
        stop_callmanager(self.proc)

    def stop(self) -> None:
        """SIGTERM by PID (then SIGKILL): the simulator closes its connections and its pcap."""
        if self.proc is not None:
            stop_callmanager(self.proc)

    def registered(self) -> set[str]:
        return {d for d, r in self.client.registrations().items() if r.get("state") == "registered"}


@dataclass
class Site:
    dir: Path
    pair: Pair
    primary: CallManager
    backup: CallManager
    devices: dict[str, list[str]]
    wav: Path  # what the callers say
    silence: Path  # what a subscriber listening to their messages says

    @property
    def all_devices(self) -> list[str]:
        return self.devices["a"] + self.devices["b"]

    def wait(self, predicate, what: str, timeout: float = GUARD):
        return self.pair.wait_for(predicate, timeout, poll=0.05, what=what)

    def call(self, cm: CallManager | None = None, **kw) -> dict:
        """One call by a simulator (the primary unless ``cm``), the caller speaking the test's
        WAV (the client opens a connection per request: calls may run in threads at once)."""
        cm = cm or self.primary
        kw.setdefault("wav", str(self.wav))
        kw.setdefault("hang_up_after", HANG_UP_AFTER)
        return cm.client.call(kw.pop("calling", "4085550100"), **kw)

    def calls_at_once(self, calls: dict[str, dict], cm: CallManager | None = None) -> dict[str, dict]:
        out: dict[str, dict] = {}
        errors: list[BaseException] = []

        def one(what: str, kw: dict) -> None:
            try:
                out[what] = self.call(cm, **kw)
            except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
                errors.append(e)

        threads = [threading.Thread(target=one, args=item) for item in calls.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return out

    def messages(self, mailbox: str) -> list[tuple[dict, bytes]]:
        root = load_config(self.pair.a.config).store.maildir / mailbox
        out = []
        for sub in ("new", "cur"):
            if (root / sub).exists():
                out += [parse_mime(p.read_bytes()) for p in sorted((root / sub).iterdir())]
        return out

    def ports_idle(self, name: str) -> bool:
        st = self.pair.node(name).status() or {}
        ports = {p["name"]: p["state"] for p in st.get("ports", []) if p.get("kind") == "sccp"}
        return ports == {f"sccp-{i}": "idle" for i in range(1, PORTS + 1)}

    def ready(self, active: str = "a", cm: CallManager | None = None) -> None:
        """Wait until ``active`` is active, the other inactive, each seeing the other, and
        every port of both nodes registered with ``cm`` (the primary) and idle."""
        cm = cm or self.primary
        other = "b" if active == "a" else "a"

        def pair_ok() -> bool:
            sa, so = self.pair.node(active).status(), self.pair.node(other).status()
            return bool(sa and so and sa["node"]["state"] == "active"
                        and so["node"]["state"] == "inactive" and sa["peer"]["reachable"]
                        and so["peer"]["reachable"])

        self.wait(pair_ok, f"{active} active and {other} inactive")
        self.wait(lambda: cm.registered() == set(self.all_devices),
                  f"every port registered with the {cm.name} CallManager")
        self.wait(lambda: self.ports_idle("a") and self.ports_idle("b"), "every port idle")

    def back_to_a(self) -> None:
        """a active again if b is: one call hunted to a's first port while a is inactive and
        not on hold makes a take over at once (the call rule), and a answers it."""
        if self.pair.a.state() != "active":
            self.wait(lambda: self.primary.registered() >= set(self.devices["a"]),
                      "a's ports registered")
            r = self.call(calling="4085550199", device=self.devices["a"][0])
            assert r["answered"], r
        self.ready("a")


def node_pids(site: Site) -> dict[str, int | None]:
    return {"a": site.pair.a.pid, "b": site.pair.b.pid, "a-service": site.pair.a.service_pid(),
            "b-service": site.pair.b.service_pid(), "cm1": site.primary.pid, "cm2": site.backup.pid}


@pytest.fixture(scope="module")
def site(request):
    """The module's pair and CallManagers.  When a test of the module failed, the directory
    (node logs, simulator logs and recordings, pcaps) is kept."""
    failures = request.session.testsfailed
    d = Path(tempfile.mkdtemp(prefix="vmha-sccp-", dir="/tmp"))
    devices = {n: sccp_devices(SCCP_PREFIXES[n], PORTS) for n in "ab"}
    hunt = devices["a"] + devices["b"]  # the pilot's ports, in hunting order
    cms = [CallManager(name, free_port(), d, hunt) for name in ("primary", "backup")]
    wav, silence = d / "caller.wav", d / "silence.wav"
    wav.write_bytes(media.wav_bytes(caller_audio()))
    silence.write_bytes(media.wav_bytes(media.silence(1.0)))
    failed = True
    try:
        for cm in cms:
            cm.start()
        pair = Pair(d / "pair", extra=MESSAGING, extra_a=A_SERVICE,
                    sccp=[cm.address for cm in cms], sccp_keys=SCCP_KEYS)
        s = Site(d, pair, cms[0], cms[1], devices, wav, silence)
        try:
            pair.start()
            s.wait(lambda: pair.a.state() == "active", "a active")
            r = pair.a.admin({"op": "db_write", "ops": SUBSCRIBERS}, timeout=10)
            assert r and r["ok"], r
            s.ready("a")
            # the subscribers reach b by replication: its calls need them after a takeover
            s.wait(lambda: all((pair.b.admin({"op": "db_get", "table": "subscribers",
                                              "key": sub["row"]["extension"]}) or {}).get("row")
                               for sub in SUBSCRIBERS), "the subscribers replicated to b")
            yield s
            failed = request.session.testsfailed > failures
        finally:
            pair.stop()
    finally:
        for cm in cms:
            cm.stop()
        if not failed:
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(autouse=True)
def logs_on_failure(request, site):
    """After a failed test: where the module's directory is kept, and the tails of both node
    logs (in that test's report)."""
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(f"SCCP site kept for inspection: {site.dir}")
        for n in "ab":
            log = site.pair.dir / f"{n}.log"
            if log.exists():
                tail = log.read_text(errors="replace").splitlines()[-LOG_TAIL:]
                print(f"--- {log} (last {len(tail)} lines)\n" + "\n".join(tail))


def one_message(site: Site, mailbox: str) -> tuple[dict, bytes]:
    found = site.wait(lambda: site.messages(mailbox), f"a message in {mailbox}")
    assert len(found) == 1, [h for h, _ in found]
    return found[0]


def message_from(site: Site, mailbox: str, caller: str) -> tuple[dict, bytes]:
    """The one message ``caller`` left in ``mailbox`` (waited for; when it does not come, the
    failure says where the caller's messages went and with what information)."""
    try:
        found = site.wait(lambda: [m for m in site.messages(mailbox) if m[0].get("x-vmha-caller") == caller],
                          f"the message from {caller} in {mailbox}")
    except TimeoutError:
        store = load_config(site.pair.a.config).store.maildir
        elsewhere = [(box.name, {k: v for k, v in h.items() if k.startswith("x-vmha-")})
                     for box in store.iterdir() if box.is_dir() for h, _ in site.messages(box.name)
                     if h.get("x-vmha-caller") in (caller, "")]
        raise AssertionError(f"no message from {caller} in {mailbox}; messages from that caller "
                             f"or from no caller: {elsewhere}") from None
    assert len(found) == 1, [h for h, _ in found]
    return found[0]


def sccp_counters(node) -> dict:
    """The node's SCCP driver counters as ``vmha status`` shows them (sent when they change)."""
    return ((node.status() or {}).get("counters") or {}).get("sccp") or {}


def answered_by(result: dict, site: Site, node: str) -> None:
    assert result["answered"], result
    assert result["device"] in site.devices[node], (node, result)


# ============================================================================ the tests


def test_each_redirect_reason_reaches_its_mailbox_with_the_callers_voice(site):
    """Four callers at once, hunted to a's ports: forwarded on busy from 1001, on no answer
    from 1002, by call-forward-all from 1003, and one dialling the pilot directly (no
    redirection: the opening greeting, then the default mailbox).  Each message is in the
    right mailbox with the right reason, and its audio is the caller's tone."""
    site.ready("a")
    calls = {"busy": dict(last_redirecting="1001", original_called="1001", reason=BUSY,
                          call_type=FORWARD),
             "no_answer": dict(last_redirecting="1002", original_called="1002", reason=NO_ANSWER,
                               call_type=FORWARD),
             "all": dict(last_redirecting="1003", original_called="1003", reason=FORWARD_ALL,
                         call_type=FORWARD),
             "direct": {}}
    results = site.calls_at_once(calls)
    for r in results.values():
        answered_by(r, site, "a")
    assert len({r["device"] for r in results.values()}) == 4, results
    for mailbox, ext, reason in (("mb1001", "1001", "busy"), ("mb1002", "1002", "no_answer"),
                                 ("mb1003", "1003", "all"), (DEFAULT_MAILBOX, "", "direct")):
        h, wav = one_message(site, mailbox)
        assert (h["x-vmha-node"], h.get("x-vmha-forwarding", ""), h["x-vmha-reason"]) == \
            ("a", ext, reason), (mailbox, h)
        assert h.get("x-vmha-caller") == "4085550100", h
        assert has_tone(wav), f"the caller's tone is not in {mailbox}'s message"
    # the port's side of each call: it answered with its greeting (the simulator's recording
    # of what the port sent is not silence)
    for what, r in results.items():
        assert r.get("wav") and Path(r["wav"]).exists(), (what, r)
        assert media.rms(media.pcm_of(Path(r["wav"]).read_bytes())) > 0, (what, r)
    # the lamps of the three subscribers who got a message (mwi_method sccp): lit by a's ports
    site.wait(lambda: all(site.primary.client.lamps().get(e) is True for e in ("1001", "1002", "1003")),
              "the lamps of 1001, 1002 and 1003 on")
    assert "1900" not in site.primary.client.lamps()  # mwi_method none: no lamp


def test_a_call_offered_to_the_inactive_nodes_port_fails_over_at_once(site):
    """The simulator rings one of b's ports while a is active: b takes over at once and
    answers the call itself; the message is recorded by b."""
    site.ready("a")
    term_a = site.pair.a.status()["node"]["term"]
    r = site.call(last_redirecting="1004", original_called="1004", reason=NO_ANSWER,
                  call_type=FORWARD, device=site.devices["b"][1])
    answered_by(r, site, "b")
    assert r["device"] == site.devices["b"][1], r
    site.wait(lambda: site.pair.b.state() == "active", "b active after the call at its port")
    assert site.pair.b.status()["node"]["term"] > term_a
    h, wav = one_message(site, "mb1004")
    assert (h["x-vmha-node"], h["x-vmha-forwarding"], h["x-vmha-reason"]) == ("b", "1004", "no_answer"), h
    assert has_tone(wav)
    # the takeover's cause in b's event log is a call
    ev = [e for e in site.pair.b.events() if e.get("event") in ("failover", "activating")]
    assert any("call" in e.get("message", "") for e in ev), ev
    site.wait(lambda: site.primary.client.lamps().get("1004") is True, "1004's lamp on (lit by b)")


def test_kill_9_of_the_active_service_the_peers_ports_answer_the_hunted_calls(site):
    """kill -9 of a's messaging service while the simulator keeps hunting calls over the
    pilot: a's ports drop off CallManager with the process, b takes over, and every call
    hunted after the kill is answered by one of b's ports.  When a's service is back (after
    its restart delay) its ports register again, and the next call hunted to them brings
    activity back to a (the call rule)."""
    site.back_to_a()
    victim = site.pair.a.service_pid()
    assert victim is not None
    results: list[tuple[float, dict | BaseException]] = []
    stop = threading.Event()
    t_kill: list[float] = []

    def caller() -> None:
        """One hunted call after the other, until two have started after the kill (the
        calls must be hunted before a's service is back: its restart delay)."""
        n = after_kill = 0
        while not stop.is_set() and after_kill < CALLS_AFTER_KILL:
            n += 1
            t0 = time.monotonic()
            after_kill += bool(t_kill and t0 > t_kill[0])
            try:
                r = site.call(calling=f"40855502{n:02d}", last_redirecting="1006",
                              original_called="1006", reason=BUSY, call_type=FORWARD)
            except Exception as e:  # noqa: BLE001 - judged in the test below
                r = e
            results.append((t0, r))

    hunter = threading.Thread(target=caller)
    hunter.start()
    try:
        site.wait(lambda: any(p.get("state") not in ("idle", None)
                              for p in (site.pair.a.status() or {}).get("ports", [])),
                  "a call in progress on a's ports")
        t_kill.append(time.monotonic())
        os.kill(victim, signal.SIGKILL)
        site.wait(lambda: not (site.primary.registered() & set(site.devices["a"])),
                  "a's ports gone from CallManager with the service")
        site.wait(lambda: site.pair.b.state() == "active", "b active after the kill")
        hunter.join(timeout=GUARD * 2)
        assert not hunter.is_alive(), "the hunted calls did not end"
    finally:
        stop.set()
        hunter.join(timeout=GUARD * 2)
    assert not pid_alive(victim)
    after = [r for t0, r in results if t0 > t_kill[0]]
    assert len(after) == CALLS_AFTER_KILL, results
    for r in after:
        assert not isinstance(r, BaseException), r
        answered_by(r, site, "b")
        h, wav = message_from(site, "mb1006", r["calling"])
        assert (h["x-vmha-node"], h["x-vmha-reason"]) == ("b", "busy"), h
        assert has_tone(wav)
    # a's service comes back after its restart delay and its ports register again; a is
    # inactive and not on hold, so a call hunted to its first port makes it active at once
    site.wait(lambda: site.primary.registered() >= set(site.devices["a"]), "a's ports back",
              timeout=GUARD + A_RESTART_DELAY)
    assert site.pair.a.service_pid() not in (None, victim)
    site.wait(lambda: site.ports_idle("a"), "a's ports idle")
    r = site.call(calling="4085550300", last_redirecting="1006", original_called="1006",
                  reason=BUSY, call_type=FORWARD)
    answered_by(r, site, "a")
    site.ready("a")


def test_callmanager_failover_to_the_backup_and_back_to_the_primary(site):
    """kill -9 of the primary CallManager: every port of both nodes registers with the
    backup, which then carries a call; the primary starts again: the ports go home to it when
    idle, and a call works there."""
    site.ready("a")
    site.primary.kill()
    site.wait(lambda: site.backup.registered() == set(site.all_devices),
              "every port registered with the backup CallManager")
    r = site.call(site.backup, calling="4085550400", last_redirecting="1007", original_called="1007",
                  reason=NO_ANSWER, call_type=FORWARD)
    answered_by(r, site, "a")
    site.wait(lambda: len(site.messages("mb1007")) == 1, "the message through the backup")
    assert site.pair.states() == {"a": "active", "b": "inactive"}  # the nodes did not move
    site.primary.start()
    site.wait(lambda: site.primary.registered() == set(site.all_devices),
              "every port home on the primary CallManager again")
    site.wait(lambda: not site.backup.registered(), "no port left on the backup")
    r = site.call(calling="4085550401", last_redirecting="1007", original_called="1007",
                  reason=BUSY, call_type=FORWARD)
    answered_by(r, site, "a")
    site.wait(lambda: len(site.messages("mb1007")) == 2, "the message through the primary")
    assert all(has_tone(wav) for _, wav in site.messages("mb1007"))
    assert site.pair.states() == {"a": "active", "b": "inactive"}


def test_a_message_lights_the_lamp_and_listening_to_it_puts_it_out(site):
    """A message for 1005 (mwi_method sccp) lights its lamp through a's port's call to the
    MWI-on number; 1005 calls the voice mail from their own phone (a direct call: mailbox
    access), hears the message to the end, and the lamp goes out."""
    site.ready("a")
    cm = site.primary.client
    seen = len(cm.lamp_events())
    r = site.call(calling="4085550500", last_redirecting="1005", original_called="1005",
                  reason=NO_ANSWER, call_type=FORWARD)
    answered_by(r, site, "a")
    site.wait(lambda: cm.lamps().get("1005") is True, "1005's lamp on")
    access = site.call(calling="1005", wav=site.silence)
    answered_by(access, site, "a")
    site.wait(lambda: cm.lamps().get("1005") is False, "1005's lamp off")
    assert access["ended_by"] == "port", access  # the port hung up after the messages
    # both lamp calls came from a's ports (the active node), on then off, none refused
    events = [e for e in cm.lamp_events()[seen:] if e["extension"] == "1005"]
    assert [(e["on"], e["refused"]) for e in events] == [(True, ""), (False, "")], events
    assert {e["device"] for e in events} <= set(site.devices["a"]), events
    h, _ = message_from(site, "mb1005", "4085550500")
    assert h["x-vmha-reason"] == "no_answer", h
    assert site.pair.states() == {"a": "active", "b": "inactive"}


def frame(msg_id: int, body: bytes) -> bytes:
    """An SCCP frame as bytes: length (of what follows the length word), header version,
    message id, body."""
    n = len(body) + 4
    return n.to_bytes(4, "little") + (0).to_bytes(4, "little") + msg_id.to_bytes(4, "little") + body


#: frames a station can read past: unknown message ids, a known one cut short (a CallInfo
#: for no call: reference 0, every number empty), a frame with nothing after the id, bytes
#: that are no text where text is expected.  None of them may change the next call
GARBAGE = (frame(0x7777, bytes(range(256))) + frame(0xFFFF, b"") + frame(0x008F, b"\xff" * 7)
           + frame(0x0099, b"\x80\xfe" * 16) + frame(0x0106, b"\x01"))
#: a length word far above the largest frame: the stream cannot be trusted after it
OVERSIZED = frame(0x0099, b"x" * 5000)


def test_garbage_and_oversized_frames_change_nothing(site):
    """The simulator writes frames a station can read past into one port's connection on
    each node: the connections stay, nothing changes, a call at the port works.  Then an
    oversized frame: the port drops that connection and registers again.  The nodes keep
    their states, no process exits, and a call at the port works afterwards."""
    site.ready("a")
    pids = node_pids(site)
    targets = {"a": site.devices["a"][2], "b": site.devices["b"][2]}
    cm = site.primary.client

    def counts() -> dict[str, int]:
        regs = cm.registrations()
        return {d: regs[d]["registrations"] for d in targets.values()}

    before = counts()
    errors = {n: sccp_counters(site.pair.node(n)).get("protocol_errors", 0) for n in "ab"}
    for device in targets.values():
        assert cm.inject(device, GARBAGE) == len(GARBAGE)
    # each node's driver counts what it could not read (the two unknown message ids at least)
    site.wait(lambda: all(sccp_counters(site.pair.node(n)).get("protocol_errors", 0) >= errors[n] + 2
                          for n in "ab"), "the garbage counted in both nodes' sccp counters")
    r = site.call(calling="4085550600", last_redirecting="1001", original_called="1001",
                  reason=BUSY, call_type=FORWARD, device=targets["a"])
    answered_by(r, site, "a")
    # the call's own information, not anything the garbage held
    h, wav = message_from(site, "mb1001", "4085550600")
    assert (h["x-vmha-forwarding"], h["x-vmha-reason"]) == ("1001", "busy"), h
    assert has_tone(wav)
    assert counts() == before  # the same connections: nothing was dropped
    assert site.pair.states() == {"a": "active", "b": "inactive"}
    for device in targets.values():
        cm.inject(device, OVERSIZED)

    def re_registered() -> bool:
        regs = cm.registrations()
        return all(regs[d]["state"] == "registered" and regs[d]["registrations"] == before[d] + 1
                   for d in targets.values())

    site.wait(re_registered, "both ports registered again after the oversized frame")
    site.ready("a")
    r = site.call(calling="4085550601", last_redirecting="1001", original_called="1001",
                  reason=BUSY, call_type=FORWARD, device=targets["a"])
    answered_by(r, site, "a")
    assert site.pair.states() == {"a": "active", "b": "inactive"}
    assert node_pids(site) == pids, (pids, node_pids(site))
    assert all(pid_alive(p) for p in pids.values() if p)
    h, wav = message_from(site, "mb1001", "4085550601")
    assert (h["x-vmha-forwarding"], h["x-vmha-reason"]) == ("1001", "busy"), h
    assert has_tone(wav)


# ============================================================================ the pcaps


@dataclass
class Capture:
    """One pcap as the codec reads it: its packets by connection, and the messages of each
    connection in capture order (each at the packet that completes it)."""

    header: bytes
    records: list[tuple[frozenset, bytes]]  # (connection, whole pcap record)
    messages: list[tuple[int, frozenset, Message]]  # (packet index, connection, message)
    corrupt: set[frozenset]  # connections with frames the codec cannot read (sent by CallManager)
    station_errors: list[str]  # frames from a station the codec cannot read: must be none


def read_capture(path: Path, cm_port: int) -> Capture:
    """Reads a pcap of ``lab.pcap`` (Ethernet/IPv4/TCP, no options) with the codec's own
    framer, each TCP direction on its own.  A record cut short at the end (a simulator killed
    while writing) ends the file."""
    data = path.read_bytes()
    header, pos = data[:24], 24
    records, messages = [], []
    framers: dict[tuple, Framer] = {}
    corrupt: set[frozenset] = set()
    station_errors: list[str] = []
    while pos + 16 <= len(data):
        size = int.from_bytes(data[pos + 8:pos + 12], "little")
        if pos + 16 + size > len(data):
            break
        rec, frame = data[pos:pos + 16 + size], data[pos + 16:pos + 16 + size]
        pos += 16 + size
        ip = frame[14:]
        ihl, total = (ip[0] & 0x0F) * 4, int.from_bytes(ip[2:4], "big")
        tcp = ip[ihl:total]
        src = (ip[12:16], int.from_bytes(tcp[0:2], "big"))
        dst = (ip[16:20], int.from_bytes(tcp[2:4], "big"))
        conn = frozenset((src, dst))
        records.append((conn, rec))
        payload = tcp[(tcp[12] >> 4) * 4:]
        if not payload:
            continue
        framer = framers.setdefault((src, dst), Framer())
        for item in framer.feed(payload):
            if isinstance(item, Message):
                messages.append((len(records) - 1, conn, item))
            elif src[1] == cm_port:
                corrupt.add(conn)
            else:
                station_errors.append(f"{path.name}: from port {src[1]}: {item.reason}")
    return Capture(header, records, messages, corrupt, station_errors)


def part(capture: Capture, path: Path, *, corrupt: bool) -> tuple[Path, list[Message]]:
    """A pcap of the connections that are (``corrupt``) or are not corrupt, whole, and their
    messages."""
    def keep(conn: frozenset) -> bool:
        return (conn in capture.corrupt) == corrupt

    path.write_bytes(capture.header + b"".join(rec for conn, rec in capture.records if keep(conn)))
    return path, [m for _, conn, m in capture.messages if keep(conn)]


def encodes(msg: Message) -> bool:
    try:
        msg.encode()
    except ValueError:
        return False
    return True


def test_every_pcap_the_simulators_wrote_is_read_alike_by_both_decoders(site):
    """Every pcap written by every simulator process of this module (the primary's before
    its kill too) is read by tshark and by scapy, and both agree with our codec on every
    message.  The two connections the garbage test corrupted on purpose are checked apart:
    there the decoders must disagree (the check sees what it is meant to see)."""
    for cm in (site.primary, site.backup):
        cm.stop()
    pcaps = [(cm, pcap) for cm in (site.primary, site.backup) for pcap in cm.pcaps]
    assert len(pcaps) == 3, pcaps
    corrupted = 0
    for cm, pcap in pcaps:
        capture = read_capture(pcap, cm.port)
        assert capture.station_errors == [], capture.station_errors
        assert len(capture.messages) > 10, (pcap, len(capture.messages))
        clean, expected = part(capture, pcap.with_suffix(".clean.pcap"), corrupt=False)
        assert {m.id for m in expected} >= {MsgId.REGISTER_REQ, MsgId.REGISTER_ACK}, pcap
        assert check_pcap(clean, expected, port=cm.port) == [], pcap
        if capture.corrupt:
            corrupted += len(capture.corrupt)
            bad, expected = part(capture, pcap.with_suffix(".corrupt.pcap"), corrupt=True)
            # (what the codec read from the garbage but cannot write back is left out)
            assert check_pcap(bad, [m for m in expected if encodes(m)], port=cm.port) != [], pcap
    assert corrupted == 2  # one port's connection on each node
