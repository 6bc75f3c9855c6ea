"""Lab harness (tests and benchmarks only, never production): real SIP peers around a vmha pair.

* :class:`KamailioPbx` runs kamailio (5.6, the ``dispatcher`` and ``tm`` modules) as the PBX
  stand-in in front of the pair.  Every INVITE sent to ``127.0.0.1:port`` is relayed to the
  **primary's** destinations (its SIP worker ports), and when they do not answer, to the
  **secondary's**:

  - **Hunting order: "first available", top down** (dispatcher algorithm 8, by priority), like
    a PBX route list of two route groups: dispatcher set 1 holds the primary's destinations in
    the order given, set 2 the secondary's.  A call goes to the first destination of set 1
    that is up (set 2 when set 1 is all down).  When a primary destination sends no reply
    within ``fr_timer_ms`` (a dead port: kamailio does not act on ICMP "port unreachable" for
    UDP, so a dead port costs ``fr_timer_ms``), or answers 408, 480 (the node holds or is
    stopping) or any 5xx, or rings without an answer for ``fr_inv_timer_ms``, the call goes to
    set 2 at once — the primary node is not taking calls, and a primary with dozens of ports
    must not use up kamailio's 12 branches per call.  A 486 (a full worker) moves on to the
    next destination of the same set.  In set 2 every failure moves on to its next
    destination.  Any other final reply (404, 603 ...) is relayed to the caller.
  - A destination that sent **no reply** (or 503) is marked inactive and leaves the rotation;
    kamailio probes every destination with OPTIONS once a second and puts it back after one
    200 (one failed probe also marks an idle destination down).  Busy and ringing-no-answer
    destinations stay up.
  - Every INVITE is record-routed, so a caller must route its ACK and BYE by the Record-Route
    set (SIPp: ``rrs="true"`` plus ``[next_url]``/``[routes]``, see
    ``lab/sipp/proxy_headers_rtp.xml``; a target that hangs up itself routes its
    BYE the same way: ``proxy_uas_target.xml``).  kamailio answers an OPTIONS to itself
    with 200 (the readiness check of :meth:`KamailioPbx.start`).
  - It logs one ``VMHA-*`` line per decision with a wall-clock time stamp (``time.time()``
    base); :meth:`KamailioPbx.stats` counts them.

* :class:`BaresipPhone` runs a headless baresip 1.0 softphone: it calls one SIP URI, uses a WAV
  file as its microphone (``aufile``: the call ends when the file ends, so make the file
  longer than the call), plays what it hears into nothing (``aubridge``), records both
  directions (``sndfile``) and quits after ``seconds``.  baresip 1.0 cannot add a header
  (no Diversion), so its call is a direct call from an unknown caller.

Both bind only 127.0.0.1, keep their files in a working directory of their own, and are
stopped by PID (SIGTERM, then SIGKILL; kamailio's children too).

* :func:`sipp` runs one SIPp process (Trio) with a scenario of ``lab/sipp/``
  (:data:`SCENARIOS`) or a built-in one (``"sn:uac"``), in a working directory of the caller's
  (its logs and streamed WAVs), killed by PID at the end; :func:`free_udp_port` picks its port.
  :func:`write_tone_ulaw` writes the G.711 WAVs its ``rtp_stream`` plays.
"""
from __future__ import annotations

import glob
import math
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from lab.pair import free_udp_block

__all__ = ["GUARD", "SCENARIOS", "BaresipPhone", "KamailioPbx", "Sipp", "free_udp_port", "kill",
           "sipp", "wait_exit", "write_tone_ulaw"]

#: SIPp scenarios of the tests and benchmarks
SCENARIOS = Path(__file__).resolve().parent / "sipp"
GUARD = 30  # seconds: a hang guard only, never a speed limit


def _children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (from /proc)."""
    out = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.split("/")[2]))
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _stop(proc: subprocess.Popen | None, extra: list[int], grace: float = 5.0) -> None:
    """SIGTERM ``proc`` (then SIGKILL after ``grace``), then SIGKILL any of ``extra`` (its
    children, collected before) still alive.  Idempotent."""
    if proc is not None and proc.poll() is None:
        extra = extra + [p for p in _children(proc.pid) if p not in extra]
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(grace)
    elif proc is not None:
        proc.wait()
    for pid in extra:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _options(port: int, timeout: float) -> str | None:
    """Send one OPTIONS to 127.0.0.1:port; the status line of the answer, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(timeout)
        lport = s.getsockname()[1]
        tag = uuid.uuid4().hex[:10]
        msg = (f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bK{tag}\r\n"
               "Max-Forwards: 70\r\n"
               f"From: <sip:lab@127.0.0.1:{lport}>;tag={tag}\r\n"
               f"To: <sip:127.0.0.1:{port}>\r\n"
               f"Call-ID: {tag}@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
        try:
            s.sendto(msg.encode(), ("127.0.0.1", port))
            data = s.recv(65535)
        except OSError:  # timeout, or ICMP port unreachable (ECONNREFUSED)
            return None
        return data.split(b"\r\n", 1)[0].decode(errors="replace")


def _module_path(kamailio: str) -> str | None:
    """kamailio's module folder (Debian: /usr/lib/<triplet>/kamailio/modules), or None: its
    built-in default."""
    exe = shutil.which(kamailio) or shutil.which(kamailio, path="/usr/sbin:/usr/local/sbin")
    if exe is None:
        return None
    prefix = Path(os.path.realpath(exe)).parent.parent  # /usr/sbin/kamailio -> /usr
    for pattern in ("lib/*/kamailio/modules", "lib/kamailio/modules", "lib64/kamailio/modules"):
        for d in sorted(glob.glob(str(prefix / pattern))):
            if Path(d, "dispatcher.so").exists():
                return d
    return None


_CFG = r"""#!KAMAILIO
# vmha lab: kamailio as the PBX stand-in (written by lab/sip.py; see its docstring)
debug=2
log_stderror=yes
log_prefix="{$mt $ci} "
children=2
disable_tcp=yes
auto_aliases=no
dns=no
rev_dns=no
listen=udp:127.0.0.1:@PORT@
@MPATH@
loadmodule "kex.so"
loadmodule "corex.so"
loadmodule "tm.so"
loadmodule "tmx.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "dispatcher.so"

modparam("tm", "fr_timer", @FR@)            # no reply at all (also the OPTIONS probes)
modparam("tm", "fr_inv_timer", @FR_INV@)    # ringing, no answer
modparam("tm", "failure_reply_mode", 3)
modparam("rr", "enable_full_lr", 1)
modparam("dispatcher", "list_file", "@LIST@")
modparam("dispatcher", "flags", 2)                  # failover support: ds_next_dst / ds_mark_dst
modparam("dispatcher", "ds_ping_method", "OPTIONS")
modparam("dispatcher", "ds_ping_from", "sip:pbx@127.0.0.1:@PORT@")
modparam("dispatcher", "ds_ping_interval", 1)
modparam("dispatcher", "ds_probing_threshold", 1)
modparam("dispatcher", "ds_inactive_threshold", 1)
modparam("dispatcher", "ds_probing_mode", 1)        # probe every destination, all the time
modparam("dispatcher", "ds_ping_reply_codes", "class=2")  # not class=4: a local 408 is no answer

request_route {
    if (!mf_process_maxfwd_header("10")) { sl_send_reply("483", "Too Many Hops"); exit; }
    if (has_totag()) {
        if (loose_route()) { t_relay(); exit; }
        if (is_method("ACK")) { if (t_check_trans()) { t_relay(); } exit; }
        sl_send_reply("404", "Not here");
        exit;
    }
    if (is_method("OPTIONS") && uri == myself && $rU == $null) {
        sl_send_reply("200", "Lab PBX");
        exit;
    }
    if (is_method("CANCEL")) { if (t_check_trans()) { t_relay(); } exit; }
    t_check_trans();
    if (is_method("INVITE")) record_route();
    # set 1: the primary's ports; set 2: the secondary's (when set 1 is all down)
    $avp(vmset) = 1;
    if (!ds_select_dst("1", "8")) {
        $avp(vmset) = 2;
        if (!ds_select_dst("2", "8")) {
            xlog("L_ERR", "VMHA-NODEST $ci at $TV(Sn)\n");
            send_reply("503", "No destination available");
            exit;
        }
    }
    xlog("L_INFO", "VMHA-ROUTE $ci to $du at $TV(Sn)\n");
    t_on_failure("HUNT");
    t_on_reply("ANSWER");
    if (!t_relay()) { sl_reply_error(); }
    exit;
}

onreply_route[ANSWER] {
    if (is_method("INVITE") && $rs == 200) {
        xlog("L_INFO", "VMHA-ANSWER $ci by $si:$sp at $TV(Sn)\n");
    }
}

failure_route[HUNT] {
    if (t_is_canceled()) exit;
    if (t_branch_timeout() && !t_branch_replied()) {
        xlog("L_WARN", "VMHA-DEAD $ci $du no reply at $TV(Sn)\n");
        ds_mark_dst("ip");
    } else if (t_check_status("503")) {
        xlog("L_WARN", "VMHA-DEAD $ci $du 503 at $TV(Sn)\n");
        ds_mark_dst("ip");
    } else if (!t_check_status("408|480|486|5[0-9][0-9]")) {
        exit;
    }
    # a port of the primary that is dead, refuses (480: the node holds or is stopping) or
    # fails: the primary node is not taking calls, go to the secondary's ports at once (a
    # primary with dozens of ports must not use up the branches); busy (486): its next port
    if ($avp(vmset) == 1 && !t_check_status("486")) {
        $avp(vmset) = 2;
        if (ds_select_dst("2", "8")) {
            xlog("L_INFO", "VMHA-HUNT $ci ($T_reply_code) to $du at $TV(Sn)\n");
            t_on_failure("HUNT");
            t_on_reply("ANSWER");
            t_relay();
            exit;
        }
    }
    if (ds_next_dst()) {
        xlog("L_INFO", "VMHA-HUNT $ci ($T_reply_code) to $du at $TV(Sn)\n");
        t_on_failure("HUNT");
        t_on_reply("ANSWER");
        t_relay();
        exit;
    }
    xlog("L_ERR", "VMHA-ALLFAILED $ci ($T_reply_code) at $TV(Sn)\n");
    send_reply("503", "All destinations failed");
}

# the destination: $du when a call marked it (ds_mark_dst), $ru when a probe did
event_route[dispatcher:dst-down] {
    if ($du != $null) { $var(d) = $du; } else { $var(d) = $ru; }
    xlog("L_ALERT", "VMHA-DS-DOWN $var(d) at $TV(Sn)\n");
}
event_route[dispatcher:dst-up] {
    if ($du != $null) { $var(d) = $du; } else { $var(d) = $ru; }
    xlog("L_ALERT", "VMHA-DS-UP $var(d) at $TV(Sn)\n");
}
"""


class KamailioPbx:
    """kamailio as the PBX stand-in: INVITEs to it go to the primary's destinations; when they
    do not answer (no response within fr_timer, 408, 480, 5xx, or 503 from a dead port / ICMP),
    to the secondary's.  (See the module docstring for the exact rules.)"""

    def __init__(self, workdir: Path, *, port: int, primary: list[tuple[str, int]],
                 secondary: list[tuple[str, int]], fr_timer_ms: int = 2000,
                 fr_inv_timer_ms: int = 30000, kamailio: str = "kamailio") -> None:
        for host, _ in [*primary, *secondary]:
            if host != "127.0.0.1":
                raise ValueError(f"the lab uses 127.0.0.1 only, not {host!r}")
        if not primary and not secondary:
            raise ValueError("no destination")
        self.workdir = Path(workdir)
        self.port = int(port)
        self.primary = list(primary)
        self.secondary = list(secondary)
        self.fr_timer_ms = int(fr_timer_ms)
        self.fr_inv_timer_ms = int(fr_inv_timer_ms)
        self.kamailio = kamailio
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = self.workdir / "kamailio.log"
        self.cfg_path = self.workdir / "kamailio.cfg"
        self.list_path = self.workdir / "dispatcher.list"
        self.proc: subprocess.Popen | None = None
        self._children: list[int] = []

    # ------------------------------------------------------------------ files

    def _dispatcher_list(self) -> str:
        """Set 1: the primary's ports, set 2: the secondary's; priorities fall top down
        (algorithm 8 takes the highest first)."""
        lines = ["# setid destination flags priority attrs (written by lab/sip.py)"]
        for setid, role, dests in ((1, "primary", self.primary), (2, "secondary", self.secondary)):
            for i, (host, port) in enumerate(dests):
                lines.append(f"{setid} sip:{host}:{port} 0 {1000 - i} name={role}{i}")
        return "\n".join(lines) + "\n"

    def _config(self) -> str:
        mpath = _module_path(self.kamailio)
        return (_CFG.replace("@PORT@", str(self.port))
                .replace("@MPATH@", f'mpath="{mpath}/"' if mpath else "")
                .replace("@FR@", str(self.fr_timer_ms))
                .replace("@FR_INV@", str(self.fr_inv_timer_ms))
                .replace("@LIST@", str(self.list_path)))

    # ------------------------------------------------------------------ life cycle

    def start(self, timeout: float = 15.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        run = self.workdir / "run"
        run.mkdir(exist_ok=True)
        self.list_path.write_text(self._dispatcher_list())
        self.cfg_path.write_text(self._config())
        with open(self.log_path, "ab") as log:
            # -DD: foreground, no daemon; -E: log to stderr; -Y: runtime dir of its own;
            # -m/-M: 16 MiB shared, 4 MiB private per process, so several can run at once
            self.proc = subprocess.Popen(
                [self.kamailio, "-DD", "-E", "-Y", str(run), "-m", "16", "-M", "4",
                 "-f", str(self.cfg_path)],
                cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise RuntimeError(f"kamailio exited with {code} at start-up; log tail:\n"
                                   + _tail(self.log_path))
            status = _options(self.port, 0.2)
            if status and " 200 " in status + " ":
                break
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"kamailio does not answer on {self.address} after "
                                   f"{timeout:g}s; log tail:\n" + _tail(self.log_path))
            time.sleep(0.05)
        self._children = _children(self.proc.pid)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        _stop(proc, self._children)
        self._children = []

    def __enter__(self) -> KamailioPbx:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    # ------------------------------------------------------------------ counters

    def stats(self) -> dict:
        """Counters from the ``VMHA-*`` lines of the log (cheap; the log is re-read):

        ``routed`` INVITEs (first destination chosen), ``answered`` (200 for an INVITE, per
        destination ``"127.0.0.1:port"``), ``first_answer`` (wall-clock time of the first 200
        per destination), ``hunted`` (moved on to the next destination), ``dead`` (marked
        inactive after no reply / 503), ``all_failed`` (503 to the caller), ``no_destination``,
        and ``down`` / ``up``: lists of (destination, time) from the OPTIONS probing."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return {}
        answered: dict[str, int] = {}
        first: dict[str, float] = {}
        for who, at in re.findall(r"VMHA-ANSWER \S+ by (\S+) at (\d+\.\d+)", text):
            answered[who] = answered.get(who, 0) + 1
            first.setdefault(who, float(at))

        def dest(uri: str) -> str:
            return uri.removeprefix("sip:")

        return {
            "routed": len(re.findall(r"VMHA-ROUTE ", text)),
            "answered": answered,
            "first_answer": first,
            "hunted": len(re.findall(r"VMHA-HUNT ", text)),
            "dead": len(re.findall(r"VMHA-DEAD ", text)),
            "all_failed": len(re.findall(r"VMHA-ALLFAILED ", text)),
            "no_destination": len(re.findall(r"VMHA-NODEST ", text)),
            "down": [(dest(d), float(t)) for d, t in
                     re.findall(r"VMHA-DS-DOWN (\S+) at (\d+\.\d+)", text)],
            "up": [(dest(d), float(t)) for d, t in
                   re.findall(r"VMHA-DS-UP (\S+) at (\d+\.\d+)", text)],
        }


_BARESIP_CONFIG = """# vmha lab: headless baresip 1.0 (written by lab/sip.py)
poll_method		epoll
sip_listen		127.0.0.1:{sip_port}
sip_transports		udp
call_local_timeout	120
call_max_calls		1
audio_player		aubridge,lab
audio_source		aufile,{wav}
audio_alert		aubridge,labalert
audio_level		no
audio_buffer		20-160
rtp_ports		{rtp_lo}-{rtp_hi}
jitter_buffer_delay	5-10
rtp_stats		no
net_interface		127.0.0.1
module_path		{modules}
module			g711.so
module			aufile.so
module			aubridge.so
module			sndfile.so
snd_path		{rec}
module_tmp		account.so
module_app		menu.so
"""


class BaresipPhone:
    """A headless baresip softphone that calls ``uri`` once, with ``wav`` as its microphone
    (8 kHz or any rate sndfile reads; make it longer than the call, EOF hangs up), and quits
    after ``seconds`` (baresip's ``-t``).  ``start()`` starts it; ``wait()`` waits for it to
    quit; ``stop()`` stops it by PID.  ``recordings()``: the WAV files sndfile wrote
    (``*-dec.wav`` is what it heard, ``*-enc.wav`` what it sent)."""

    def __init__(self, workdir: Path, *, uri: str, wav: Path, seconds: float = 10.0,
                 sip_port: int, rtp_port: int, user: str = "labphone",
                 baresip: str = "baresip") -> None:
        self.workdir = Path(workdir)
        self.uri = uri
        self.wav = Path(wav).resolve()
        self.seconds = seconds
        self.sip_port = sip_port
        self.rtp_port = rtp_port
        self.user = user
        self.baresip = baresip
        self.log_path = self.workdir / "baresip.log"
        self.rec_dir = self.workdir / "rec"
        self.proc: subprocess.Popen | None = None

    def _modules(self) -> str:
        for d in ("/usr/lib/baresip/modules", "/usr/local/lib/baresip/modules",
                  *glob.glob("/usr/lib/*/baresip/modules")):
            if Path(d, "aufile.so").exists():
                return d
        return "/usr/lib/baresip/modules"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.rec_dir.mkdir(exist_ok=True)
        conf = self.workdir / "conf"
        conf.mkdir(exist_ok=True)
        (conf / "config").write_text(_BARESIP_CONFIG.format(
            sip_port=self.sip_port, wav=self.wav, rtp_lo=self.rtp_port,
            rtp_hi=self.rtp_port + 9, modules=self._modules(), rec=self.rec_dir))
        (conf / "accounts").write_text(
            f"<sip:{self.user}@127.0.0.1:{self.sip_port}>;regint=0;answermode=manual\n")
        (conf / "contacts").write_text("")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.baresip, "-f", str(conf), "-e", f"/dial {self.uri}",
                 "-t", str(max(1, round(self.seconds)))],
                cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=log)

    def wait(self, timeout: float | None = None) -> int:
        """Wait until baresip quits (its ``-t``); its exit code."""
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        _stop(proc, [])

    def __enter__(self) -> BaresipPhone:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def recordings(self) -> list[Path]:
        return sorted(self.rec_dir.glob("*.wav"))


# ============================================================================ audio for SIPp

def _ulaw(sample: int) -> int:
    """G.711 mu-law encoding of one 16-bit sample."""
    sign = 0x80 if sample < 0 else 0
    sample = min(abs(sample), 32635) + 0x84
    exponent = max(0, min(7, sample.bit_length() - 8))
    mantissa = (sample >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def write_tone_ulaw(path: Path, seconds: float = 2.0, freq: float = 440.0, *,
                    lead: float = 0.0, tail: float = 0.0) -> None:
    """A G.711 mu-law 8 kHz mono WAV (format tag 7) for SIPp's ``rtp_stream``: ``lead``
    seconds of silence, the tone, ``tail`` seconds of silence.  (A tone of a whole number of
    periods per second loops seamlessly.)"""
    n = int(8000 * seconds)
    quiet = _ulaw(0)
    data = (bytes([quiet]) * int(8000 * lead)
            + bytes(_ulaw(int(16000 * math.sin(2 * math.pi * freq * i / 8000))) for i in range(n))
            + bytes([quiet]) * int(8000 * tail))
    n = len(data)
    fmt = struct.pack("<HHIIHHH", 7, 1, 8000, 8000, 1, 8, 0)
    fact = struct.pack("<I", n)
    body = (b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
            + b"fact" + struct.pack("<I", 4) + fact
            + b"data" + struct.pack("<I", len(data)) + data)
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


# ============================================================================ SIPp runs (Trio)

def free_udp_port() -> int:
    """One UDP port free on 127.0.0.1 (:func:`lab.pair.free_udp_block` of 1)."""
    return free_udp_block(1)


def kill(proc: trio.Process | None) -> None:
    """SIGKILL ``proc`` by its PID if it is still running (the caller then waits for it)."""
    if proc is not None and proc.returncode is None:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


async def wait_exit(proc: trio.Process, seconds: float = GUARD) -> int:
    """``proc``'s exit code; ``seconds`` is a hang guard only."""
    with trio.fail_after(seconds):
        return await proc.wait()


class Sipp:
    """One running SIPp process (from :func:`sipp`)."""

    def __init__(self, proc: trio.Process, cwd: Path, port: int) -> None:
        self.proc = proc
        self.cwd = cwd
        self.port = port

    async def exit_code(self, seconds: float = GUARD) -> int:
        """Wait for SIPp to end; when it failed, print the tail of its logs."""
        code = await wait_exit(self.proc, seconds)
        if code != 0:
            for f in sorted(self.cwd.glob("*.log")):
                print(f"--- {f.name}\n{f.read_text(errors='replace')[-4000:]}")
            print((self.cwd / "sipp.out").read_text(errors="replace")[-3000:])
        return code


@asynccontextmanager
async def sipp(cwd: Path, scenario: str, *args: str, port: int | None = None):
    """Start SIPp (``-i 127.0.0.1 -p PORT -nostdin``) in ``cwd`` with ``scenario``: a file
    name under :data:`SCENARIOS`, a path, or ``"sn:NAME"`` for a built-in one.  Yields a
    :class:`Sipp`; SIPp is killed by PID at the end."""
    port = port or free_udp_port()
    proc = None
    try:
        with open(cwd / "sipp.out", "ab") as out:
            cmd = ["sipp", "-i", "127.0.0.1", "-p", str(port), "-nostdin", "-trace_err"]
            cmd += ["-sn", scenario[3:]] if scenario.startswith("sn:") else \
                ["-sf", str(SCENARIOS / scenario)]
            proc = await trio.lowlevel.open_process(cmd + list(args), cwd=cwd,
                                                   stdin=subprocess.DEVNULL, stdout=out,
                                                   stderr=out)
        yield Sipp(proc, cwd, port)
    finally:
        kill(proc)
        if proc is not None:
            with trio.CancelScope(shield=True):
                await proc.wait()
