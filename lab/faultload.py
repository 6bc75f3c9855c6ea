"""The fault campaign's callers (lab only): SIPp callers that leave voice messages through the
PBX stand-in (kamailio) while the nemesis breaks things, and the PBX end of the SMDI line that
records the lamps.  Everything they see goes into the history (:mod:`lab.history`), which
:mod:`lab.faultcheck` judges.

API (the campaign runner, bench/faults.py, is built on it)::

    wl = Workload(pbx_exec=["ip", "netns", "exec", "vf1-pbx"],   # [] on loopback
                  pbx_sip="10.77.0.1:5060",      # kamailio, as the callers reach it
                  mailboxes=["1001", "1002", "1003"],  # the extensions the calls come from
                  workdir=run_dir / "workload", seed=7,
                  local_ip=None,        # SIPp's address (and its SDP's); default: pbx_sip's host
                  streams=2,            # caller streams, each one call at a time
                  node_addrs={"a": "10.77.1.2", "b": "10.77.2.2"},  # Contact host -> node
                  pbx_tty=None,         # the PBX end of the SMDI splitter: record the lamps
                  tone_s=4.0, lead_s=0.0, tail_s=6.0, gap_s=(0.2, 1.5))
    wl.start()      # returns at once; threads run the streams (and the lamp recorder)
    wl.stop_calls() # no new calls; the calls in progress end (hang guard); lamps still recorded
    wl.stop()       # stop_calls(), then the lamp recorder; both idempotent
    wl.calls()      # the call records so far; wl.history: the History; wl.lamp_log: Path|None

**A call.**  Call ``n`` (numbered from 1 over all streams, in the order they start) is one SIPp
process (``lab/sipp/uac_faultload.xml``) run under the ``pbx_exec`` prefix (the ``ip netns exec
NS`` of the PBX's namespace; empty on loopback), sending its INVITE to kamailio at
``pbx_sip``:

* From user: the caller number :func:`caller_number` (``caller_prefix`` + n in 6 digits,
  unique in the run), Call-ID ``fl<seed>-<n>-1@faultload``;
* ``Diversion: <sip:EXT@pbx>;reason=no-answer;counter=1``: a call forwarded on no answer from
  one of ``mailboxes`` (chosen by the seeded random generator), so the voice mail takes a
  message for that subscriber;
* after the ACK it streams ``lead_s`` of silence, ``tone_s`` of the call's own tone
  :func:`tone_hz` (n), then ``tail_s`` of silence (the recording ends on the voice mail's
  silence limit, which must be shorter), and waits for the voice
  mail's BYE (its goodbye after storing the message) for up to ``hangup_s``; then it hangs up
  itself.

The call's record (:mod:`lab.history` ``call``) says what the caller saw, ``result``:

By default the tone starts at the answer (``lead_s`` 0) and lasts 4 s, over the greeting
and the beep and on into the recording: so every recording the voice mail keeps (at least
``messaging.min_message`` long) carries the call's tone from its first sample, even one cut
short by a fault a moment after the recording started. (With a silent lead, a call cut
during the lead left a stored message of silence: the message of a call that never got to
send its tone.)

* ``acked`` - answered, and the voice mail hung up at least ``lead_s + tone_s`` after the
  answer: the flow's goodbye, which it sends only after the message was delivered (stored,
  or spooled for the store);
* ``dropped`` - answered, and the voice mail hung up earlier (a call dropped by a
  deactivation or a crash, before the tone was over);
* ``caller_hangup`` - answered, no BYE within ``hangup_s``: the caller hung up;
* ``rejected:<code>`` - a final error status (kamailio's 503 when no node answers ...);
* ``no_answer`` - no final status (``answer_s``) or no reply at all;
* ``error`` - SIPp failed otherwise or hit the hang guard (its files stay in the call's
  directory ``workdir/calls/NNNNNN``).

``answered_by``: the answering Contact's host mapped through ``node_addrs`` (a host or
``host:port`` per node) to the node's name; the host itself when no node matches.

**Lamps.**  With ``pbx_tty`` (the PBX's end of the SMDI splitter), :class:`lab.smdi_pbx.
PbxSimulator` reads the line at 9600 baud; every MWI command it receives becomes a ``lamp``
record (number, on/off, host time) in the history and a line of ``workdir/lamps.jsonl``.

Subscribers: :func:`subscriber_ops` gives the ``db_write`` ops that create one subscriber per
mailbox (extension = mailbox name, lamps by SMDI), which the calls need; :func:`node_sections`
gives a node's TOML sections for them (SIP ports, call information from the Diversion, lamps
on the shared SMDI line).
"""
from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import trio

from lab.history import History
from lab.pair import free_udp_block
from lab.sip import SCENARIOS, write_tone_ulaw

__all__ = ["Workload", "caller_number", "tone_hz", "subscriber_ops", "node_sections", "parse_call_log",
           "classify", "TONE_BASE_HZ", "TONE_STEP_HZ", "TONE_COUNT", "SCENARIO"]

SCENARIO = SCENARIOS / "uac_faultload.xml"
#: call n's tone: TONE_BASE_HZ + TONE_STEP_HZ * (n mod TONE_COUNT): 500 .. 1990 Hz, so
#: neighbouring calls (the ones whose audio a bug could swap) differ by 10 Hz or more
TONE_BASE_HZ = 500.0
TONE_STEP_HZ = 10.0
TONE_COUNT = 150
GUARD_S = 30.0  # beyond the call's own timers: a hang guard only


def tone_hz(n: int) -> float:
    """The tone of call ``n``."""
    return TONE_BASE_HZ + TONE_STEP_HZ * (int(n) % TONE_COUNT)


def caller_number(n: int, prefix: str = "55") -> str:
    """The caller number of call ``n``: ``prefix`` + n in 6 digits (unique in a run)."""
    if not prefix.isdigit() or not 0 < n < 10**6:
        raise ValueError(f"call number {n} or prefix {prefix!r} out of range")
    return f"{prefix}{n:06d}"


def node_sections(*, bind: str, sip_port: int, rtp_port: int, smdi_device: str | Path,
                  terminals: list[int], mwi_prefix: str = "555", count: int = 4) -> dict:
    """One node's TOML sections for these calls: ``count`` SIP ports on ``bind`` (worker SIP
    ports from ``sip_port``, RTP from ``rtp_port``: 4 ports per SIP port, contiguous, above
    it), the call's information from the SIP headers (the Diversion), lamps on the shared
    SMDI line at ``smdi_device`` (its ``terminals``, lamp number ``mwi_prefix`` +
    extension), the loopback trunk off.  Merge with the run's own sections (``[messaging]
    silence`` below the callers' ``tail_s``)."""
    return {"ports": {"loopback": {"enabled": False},
                      "sip": {"enabled": True, "bind": bind, "sip_port": sip_port,
                              "rtp_port": rtp_port, "count": count,
                              # lamps go by SMDI; a NOTIFY would go here (nobody listens)
                              "mwi_target": f"sip:{{extension}}@{bind}:9",
                              "mwi_account": "sip:{extension}@vm.example"},
                      "smdi": {"enabled": True, "device": str(smdi_device),
                               "terminals": list(terminals), "mwi_prefix": mwi_prefix}},
            "integration": {"voice_ports": ["sip"], "call_info": "signalling", "mwi": "smdi"}}


def subscriber_ops(mailboxes, *, mwi_method: str = "smdi") -> list[dict]:
    """``db_write`` ops: one subscriber per mailbox, extension and mailbox name the same."""
    return [{"op": "put", "table": "subscribers", "row": {
        "extension": ext, "name": f"Fault {ext}", "mailbox": ext, "mwi_method": mwi_method,
        "notify": []}} for ext in mailboxes]


_LOG = re.compile(r"^(ANSWERED|CALLEE_BYE|CALLER_BYE|NO_ANSWER) \S+\s+\S+\s+(\d+\.\d+)\s*(.*)$")


def parse_call_log(text: str) -> dict[str, tuple[float, str]]:
    """The ``<log>`` lines of one call (``uac_faultload.xml``): tag -> (host time, rest)."""
    out: dict[str, tuple[float, str]] = {}
    for line in text.splitlines():
        m = _LOG.match(line.strip())
        if m:
            out.setdefault(m.group(1), (float(m.group(2)), m.group(3)))
    return out


def _contact_host(contact: str) -> tuple[str, str] | None:
    """(host, host:port) of a Contact header's URI, or None."""
    m = re.search(r"sips?:(?:[^@;>\s]*@)?(\[[^\]]+\]|[^:;>\s]+)(?::(\d+))?", contact)
    if not m:
        return None
    host = m.group(1)
    return host, f"{host}:{m.group(2)}" if m.group(2) else host


def classify(log: dict[str, tuple[float, str]], errors: str, *, exit_code: int | None,
             min_ack_s: float, node_addrs: dict[str, str] | None = None) -> dict:
    """What the caller saw, from its ``<log>`` lines (:func:`parse_call_log`), SIPp's error log
    and exit code (None: killed at the hang guard): ``answered``, ``answered_at``,
    ``answered_by``, ``ended_at`` and ``result`` (module docstring)."""
    out: dict = {"answered": False, "answered_at": None, "answered_by": None, "ended_at": None}
    if "ANSWERED" in log:
        at, contact = log["ANSWERED"]
        out.update(answered=True, answered_at=at)
        hp = _contact_host(contact)
        if hp is not None:
            out["answered_by"] = hp[0]
            for node, addr in (node_addrs or {}).items():
                if addr in hp:
                    out["answered_by"] = node
                    break
        if "CALLEE_BYE" in log:
            out["ended_at"] = log["CALLEE_BYE"][0]
            out["result"] = "acked" if out["ended_at"] - at >= min_ack_s else "dropped"
        elif "CALLER_BYE" in log:
            out["ended_at"] = log["CALLER_BYE"][0]
            out["result"] = "caller_hangup"
        else:
            out["result"] = "error"
        return out
    if "NO_ANSWER" in log:
        out.update(result="no_answer", ended_at=log["NO_ANSWER"][0])
        return out
    codes = re.findall(r"SIP/2\.0 ([3-6]\d\d) ", errors)
    if codes:
        out["result"] = f"rejected:{codes[-1]}"
    elif "retransmission timeout" in errors or "timeout" in errors.lower() and exit_code is not None:
        out["result"] = "no_answer"
    else:
        out["result"] = "error"
    return out


class Workload:
    """The callers and the lamp recorder of one campaign run (module docstring)."""

    def __init__(self, pbx_exec: list[str], pbx_sip: str, mailboxes, workdir: str | Path, seed: int,
                 *, local_ip: str | None = None, streams: int = 2,
                 node_addrs: dict[str, str] | None = None, pbx_tty: str | Path | None = None,
                 tone_s: float = 4.0, lead_s: float = 0.0, tail_s: float = 6.0,
                 gap_s: tuple[float, float] = (0.2, 1.5), answer_s: float = 40.0,
                 hangup_s: float = 30.0, caller_prefix: str = "55", sipp: str = "sipp",
                 port_base: int | None = None) -> None:
        host, _, port = pbx_sip.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"pbx_sip must be 'host:port', not {pbx_sip!r}")
        self.mailboxes = [str(m) for m in mailboxes]
        if not self.mailboxes or not all(m.isdigit() for m in self.mailboxes):
            raise ValueError(f"mailboxes must be extensions (digits), not {self.mailboxes!r}")
        if not 1 <= streams <= 64:
            raise ValueError("streams must be 1..64")
        if not (tone_s > 0 and lead_s >= 0 and tail_s >= 0 and 0 <= gap_s[0] <= gap_s[1]
                and answer_s > 0 and hangup_s > lead_s + tone_s):
            raise ValueError("bad call timing (tone_s > 0, hangup_s > lead_s + tone_s, gap lo <= hi)")
        if shutil.which(sipp) is None:
            raise RuntimeError(f"{sipp!r} is not installed: the callers are SIPp "
                               "(apt-get install sip-tester)")
        self.pbx_exec = list(pbx_exec)
        self.pbx_sip = pbx_sip
        self.local_ip = local_ip or host
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.seed = int(seed)
        self.streams = streams
        self.node_addrs = dict(node_addrs or {})
        self.pbx_tty = None if pbx_tty is None else Path(pbx_tty)
        self.tone_s, self.lead_s, self.tail_s = tone_s, lead_s, tail_s
        self.gap_s = gap_s
        self.answer_s, self.hangup_s = answer_s, hangup_s
        self.caller_prefix = caller_prefix
        self.sipp = sipp
        # in a namespace of its own the ports are free: fixed ones per stream; on loopback
        # they are picked free
        self.port_base = port_base if port_base is not None else (None if not self.pbx_exec else 41000)
        self.history = History(self.dir)
        self.lamp_log: Path | None = self.dir / "lamps.jsonl" if self.pbx_tty else None
        self.scenario = self.dir / "uac_faultload.xml"
        self.scenario.write_text(SCENARIO.read_text()
                                 .replace("@ANSWER_MS@", str(int(answer_s * 1000)))
                                 .replace("@HANGUP_MS@", str(int(hangup_s * 1000))))
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self._next = 0
        self._calls: list[dict] = []
        self._stop = threading.Event()
        self._lamps_stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._procs: dict[int, subprocess.Popen] = {}
        self.lamp_errors: list[str] = []  # SMDI frames the PBX end could not parse
        self.failures: list[str] = []     # a stream's own crash (it goes on with the next call)
        self._lamps_ready = threading.Event()

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        if self._threads:
            raise RuntimeError("the workload is already started")
        self._stop.clear()
        self._lamps_stop.clear()
        if self.pbx_tty is not None:
            t = threading.Thread(target=self._lamp_thread, name="faultload-lamps", daemon=True)
            t.start()
            self._threads.append(t)
            if not self._lamps_ready.wait(10):
                self.stop()
                raise RuntimeError(f"the PBX end of the SMDI line {self.pbx_tty} did not open: "
                                   + "; ".join(self.failures))
        for s in range(self.streams):
            t = threading.Thread(target=self._stream, args=(s,), name=f"faultload-{s}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop_calls(self, timeout: float | None = None) -> None:
        """No new calls; wait for the calls in progress (up to their own timers plus the hang
        guard, or ``timeout``; then they are killed and recorded as ``error``).  The lamp
        recorder keeps running (the lamps after the last heal matter).  Idempotent."""
        self._stop.set()
        limit = timeout if timeout is not None else self.answer_s + self.hangup_s + 2 * GUARD_S
        end = time.monotonic() + limit
        callers = [t for t in self._threads if t.name != "faultload-lamps"]
        for t in callers:
            t.join(max(0.0, end - time.monotonic()))
        with self._lock:
            procs = list(self._procs.values())
        for p in procs:
            if p.poll() is None:
                p.kill()
        for t in callers:
            t.join(5)
        self._threads = [t for t in self._threads if t not in callers]

    def stop(self, timeout: float | None = None) -> None:
        """:meth:`stop_calls`, then stop the lamp recorder.  Idempotent."""
        self.stop_calls(timeout)
        self._lamps_stop.set()
        for t in self._threads:
            t.join(10)
        self._threads = []

    def __enter__(self) -> Workload:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def calls(self) -> list[dict]:
        with self._lock:
            return [dict(c) for c in self._calls]

    # ------------------------------------------------------------------ callers

    def _stream(self, stream: int) -> None:
        while not self._stop.is_set():
            with self._lock:
                self._next += 1
                n = self._next
                mailbox = self._rng.choice(self.mailboxes)
                gap = self._rng.uniform(*self.gap_s)
            try:
                rec = self.place(n, mailbox, stream)
            except Exception as e:  # noqa: BLE001 - a stream goes on with its next call
                self.failures.append(f"call {n}: {type(e).__name__}: {e}")
                rec = None
            if rec is not None:
                with self._lock:
                    self._calls.append(rec)
            self._stop.wait(gap)

    def _ports(self, stream: int) -> tuple[int, int]:
        if self.port_base is None:
            return free_udp_block(1), free_udp_block(4)
        base = self.port_base + 10 * stream
        return base, base + 4

    def place(self, n: int, mailbox: str, stream: int = 0) -> dict:
        """Place call ``n`` for ``mailbox`` now and wait for its end; its record (also written
        to the history)."""
        cwd = self.dir / "calls" / f"{n:06d}"
        cwd.mkdir(parents=True, exist_ok=True)
        hz = tone_hz(n)
        write_tone_ulaw(cwd / "tone.wav", seconds=self.tone_s, freq=hz, lead=self.lead_s,
                        tail=self.tail_s)
        caller = caller_number(n, self.caller_prefix)
        cid = f"fl{self.seed}-{n}-%u@faultload"
        sip_port, media_port = self._ports(stream)
        cmd = [*self.pbx_exec, self.sipp, self.pbx_sip, "-sf", str(self.scenario),
               "-i", self.local_ip, "-p", str(sip_port), "-mp", str(media_port), "-m", "1",
               "-s", "5000", "-key", "caller", caller,
               "-key", "extra", f"Diversion: <sip:{mailbox}@pbx>;reason=no-answer;counter=1",
               "-cid_str", cid, "-nostdin", "-trace_err", "-trace_logs", "-log_file", "call.log",
               "-error_file", "errors.log"]
        offered = time.time()
        with open(cwd / "sipp.out", "wb") as out:
            proc = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT)
        with self._lock:
            self._procs[n] = proc
        try:
            code: int | None = proc.wait(self.answer_s + self.hangup_s + GUARD_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = None
        finally:
            with self._lock:
                self._procs.pop(n, None)
        log = parse_call_log(_read(cwd / "call.log"))
        seen = classify(log, _read(cwd / "errors.log"), exit_code=code,
                        min_ack_s=self.lead_s + self.tone_s, node_addrs=self.node_addrs)
        rec = {"id": n, "caller": caller, "mailbox": mailbox, "tone_hz": hz, "offered_at": offered,
               **seen, "sip_call_id": cid.replace("%u", "1"), "stream": stream,
               "exit_code": code}
        if rec["ended_at"] is None:
            rec["ended_at"] = time.time()
        return self.history.add_call(**rec)

    # ------------------------------------------------------------------ lamps

    def _lamp_thread(self) -> None:
        try:
            trio.run(self._lamps)
        except BaseException as e:  # noqa: BLE001 - reported by start() / in failures
            self.failures.append(f"lamp recorder: {type(e).__name__}: {e}")
            self._lamps_ready.set()

    async def _lamps(self) -> None:
        from lab.smdi_pbx import PbxSimulator

        assert self.pbx_tty is not None and self.lamp_log is not None
        async with PbxSimulator(self.pbx_tty).running() as pbx:
            self._lamps_ready.set()
            seen = errors = 0
            with open(self.lamp_log, "a", encoding="utf-8") as f:
                while True:
                    stopping = self._lamps_stop.is_set()
                    now_t, now_wall = trio.current_time(), time.time()
                    for t, cmd in pbx.commands[seen:]:
                        at = now_wall - (now_t - t)
                        self.history.add_lamp(cmd.number, cmd.on, at)
                        f.write(json.dumps({"mailbox": cmd.number, "on": cmd.on, "at": at}) + "\n")
                        f.flush()
                    seen = len(pbx.commands)
                    for e in pbx.errors[errors:]:
                        self.lamp_errors.append(str(e)[:200])
                    errors = len(pbx.errors)
                    if stopping:
                        return
                    await trio.sleep(0.1)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
