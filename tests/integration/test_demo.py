"""``vmha demo`` end to end: real node processes on loopback, run as the operator would."""
from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.multiprocess

ROOT = Path(__file__).resolve().parents[2]
DEMO = [sys.executable, "-m", "failover.cli", "demo"]


def leftovers(workdir: str) -> list[str]:
    """Processes whose command line names the demo's work dir (node managers: --config,
    messaging services: --control, SIP workers: --control and --media-dir, SIP callers: --wav)."""
    out = subprocess.run(["pgrep", "-af", workdir], capture_output=True, text=True,
                         check=False).stdout
    return [line for line in out.splitlines() if line.strip()]


def sip_workers(workdir: str) -> list[str]:
    """``telephony.sip.worker`` processes of the demo's nodes (their own session: not in a
    node's process group, so ``Node.stop`` does not reach them)."""
    out = subprocess.run(["pgrep", "-af", "telephony.sip.worker"], capture_output=True,
                         text=True, check=False).stdout
    return [line for line in out.splitlines() if workdir in line]


def worker_pids(workdir: Path) -> list[int]:
    """Every SIP worker the demo's services started (from the node logs)."""
    text = "".join((workdir / f"{n}.log").read_text(errors="replace") for n in "ab")
    return [int(p) for p in re.findall(r"SIP worker w\d+ ready on 127\.0\.0\.1:\d+ \(pid (\d+)\)", text)]


def check_sip(out: str, workdir: Path, *, takeover: bool) -> None:
    """The SIP part: calls answered, messages stored by both nodes across the takeovers (when
    the demo ran through them: ``takeover``), and no SIP worker left."""
    assert "SIP ports (4 per node, UDP): a 127.0.0.1:" in out, out
    m = re.search(r"SIP calls placed (\d+): answered (\d+), not answered (\d+), failed (\d+)", out)
    assert m, out
    placed, answered, unanswered, failed = map(int, m.groups())
    assert answered > 0 and placed >= answered + unanswered + failed, out
    m = re.search(r"messages in the Maildir store: (\d+) \(recorded by a (\d+), by b (\d+);", out)
    assert m, out
    total, by_a, by_b = map(int, m.groups())
    assert total == by_a + by_b, out
    if takeover:
        assert by_a > 0 and by_b > 0, out  # messages before and after the takeovers
        assert re.search(r"MESSAGE stored by [ab] in mb100[12]: from 030\d+, forwarded by 100[12]",
                         out), out
    pids = worker_pids(workdir)
    assert pids, "no SIP worker was started"
    assert all(gone(pid) for pid in pids), [p for p in pids if not gone(p)]
    assert sip_workers(str(workdir)) == []
    assert "did not end with their service" not in out, out


def check_analog(out: str) -> None:
    """The analog site: its pair's call on a voice-board simulator's line, the in-band digits,
    the message's mailbox and reason (from the message in the analog pair's store), the lamp
    lit by dialling; and its node managers gone."""
    m = re.search(r"analog site: a pair on a voice-board simulator's lines \(2 per node, .*\), "
                  r"node managers a pid (\d+), b pid (\d+)", out)
    assert m, out
    assert all(gone(int(pid)) for pid in m.groups())
    assert re.search(r"analog call: the PBX rings line [ab]/\d \(node [ab]'s analog-\d\); it sends "
                     r"#1001 in band after the answer", out), out
    banner = re.search(r"ANALOG CALL on line ([ab])/(\d) \(node \1's analog-\2\): digits #1001 -> "
                       r"message in mb1001 \(forwarded by 1001, busy, ([\d.]+) s, recorded by \1\); "
                       r"lamp 1001 on: dialled \*911001#? on line \1/(\d)", out)
    assert banner, out
    assert float(banner.group(3)) > 0 and banner.group(4) != banner.group(2), banner.group(0)
    assert re.search(r"analog call \(voice-board simulator, DTMF integration\): line [ab]/\d, digits "
                     r"#1001: message in mb1001 \(forwarded by 1001, busy", out), out


def sccp_cm_pid(out: str) -> int:
    """The CallManager simulator's PID from the demo's start-up line about its SCCP ports."""
    m = re.search(r"SCCP ports \(2 per node\): a CiscoUM1-VI1\.\.CiscoUM1-VI2, b CiscoUM2-VI1\.\."
                  r"CiscoUM2-VI2 on the CallManager simulator 127\.0\.0\.1:\d+ \(pid (\d+), pilot 5000", out)
    assert m, out
    return int(m.group(1))


def check_sccp(out: str) -> None:
    """The SCCP ports: both nodes' stations registered with the CallManager simulator, its
    one call hunted over them, answered by a port of the node that then recorded the message
    (b: after the operator's failover a holds and its ports decline), the message's mailbox
    and reason from the store; and the simulator gone at the end."""
    assert gone(sccp_cm_pid(out))
    assert "SCCP: the 4 ports of both nodes are registered with the CallManager simulator" in out, out
    # a holds after the operator's failover: its ports decline, the hunt goes on to b's
    assert ("SCCP call: the simulator's hunt: CiscoUM1-VI1 declined, CiscoUM1-VI2 declined, "
            "CiscoUM2-VI1 answered") in out, out
    banner = re.search(r"SCCP CALL answered by CiscoUM([12])-VI(\d) \(node ([ab])'s sccp-\2\) after the "
                       r"CallManager simulator hunted pilot 5000: from 0408\d+ -> message in mb1002 "
                       r"\(forwarded by 1002, no_answer, ([\d.]+) s, recorded by \3\)", out)
    assert banner, out
    assert {"1": "a", "2": "b"}[banner.group(1)] == banner.group(3) == "b", banner.group(0)
    assert float(banner.group(4)) > 0, banner.group(0)
    assert re.search(r"SCCP call \(CallManager simulator\): answered by CiscoUM2-VI\d \(node b's "
                     r"sccp-\d\): message in mb1002", out), out


def workdir_of(out: str) -> str:
    m = re.search(r"starting a pair on loopback in (\S+) \(primary a first\)", out)
    assert m, out
    return m.group(1)


def manager_pids(out: str) -> list[int]:
    m = re.search(r"node managers: a pid (\d+), b pid (\d+)", out)
    assert m, out
    return [int(m.group(1)), int(m.group(2))]


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1].startswith("Z")  # a zombie counts as gone
    except FileNotFoundError:
        return True


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def check_monitor(out: str) -> None:
    """The Failover Monitor pages the demo printed answer while it runs: without a session
    the page sends the browser to the login form; with the printed admin token the API shows
    each node's status, and the page itself is served."""
    m = re.search(r"Failover Monitor: a (http://127\.0\.0\.1:\d+)/  b (http://127\.0\.0\.1:\d+)/\n"
                  r"  log in with the admin token (vmha_\S+)\n  \(read-only: (vmha_\S+)\)", out)
    assert m, out
    opener = urllib.request.build_opener(NoRedirect)
    for name, url in (("a", m.group(1)), ("b", m.group(2))):
        try:
            opener.open(url + "/", timeout=10)
            raise AssertionError(f"{url}/ answered without a login")
        except urllib.error.HTTPError as e:
            assert e.code == 303 and e.headers["Location"] == "/login", (url, e.code)
        auth = {"Authorization": f"Bearer {m.group(3)}"}
        with opener.open(urllib.request.Request(url + "/api/v1/status", headers=auth), timeout=10) as r:
            assert json.loads(r.read())["status"]["node"]["name"] == name
        with opener.open(urllib.request.Request(url + "/", headers=auth), timeout=10) as r:
            assert r.status == 200 and b'id="timeline"' in r.read()


def test_demo_runs_its_script_and_cleans_up(tmp_path):
    work = tmp_path / "demo"
    # 45 s: the script (up to ~20 s), the SCCP call (from 20 s), then the analog site's pair
    # and its call
    r = subprocess.run(DEMO + ["--duration", "45", "--dir", str(work)], cwd=ROOT,
                       capture_output=True, text=True, timeout=150)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert workdir_of(out) == str(work)
    assert re.search(r"Failover Monitor: a http://127\.0\.0\.1:\d+/  b http://127\.0\.0\.1:\d+/", out), out
    # the kill -9 part-way and the peer's takeover, with the measured time
    assert re.search(r"KILL -9 of a's messaging service \(pid \d+\)", out), out
    m = re.search(r"TAKEOVER: b is active in term \d+, failover event ([\d.]+) ms after the kill -9", out)
    assert m, out
    assert 0 < float(m.group(1)) < 5000
    assert re.search(r"failover: b active [\d.]+ ms after kill -9 of a's messaging service", out)
    # a SIP call to inactive a: a takes over at once (the guide's call rule: failback by call)
    # and answers it
    assert re.search(r"SIP CALL TAKEOVER: the SIP call to inactive a made it active in term \d+ "
                     r"\(failback event [\d.]+ ms after the caller was started\)", out), out
    assert "SIP CALL TAKEOVER: the SIP call to a was answered by a" in out, out
    # the manual failover through the admin socket
    assert re.search(r"FAILOVER: b is active in term \d+, [\d.]+ ms after the request", out), out
    # the calls on the inactive node's trunk and SIP port after the operator's move: a holds,
    # so it refuses them
    assert "CALL ON INACTIVE a's TRUNK: rejected" in out, out
    assert re.search(r"SIP CALL TO INACTIVE a: not answered \((480|486) [^)]*\): it holds", out), out
    # calls were answered (and the ones on the killed service were cut off)
    m = re.search(r"calls placed (\d+): answered (\d+), dropped (\d+)", out)
    assert m, out
    placed, answered, dropped = map(int, m.groups())
    assert answered >= 10 and placed >= answered + dropped
    # start-up of a, failover to b (kill), failback to a (call), failover to b (operator)
    assert "activations seen (start-up, failovers, failbacks): 4" in out
    assert "processes: all stopped" in out
    assert leftovers(str(work)) == []
    assert all(gone(pid) for pid in manager_pids(out))
    check_sip(out, work, takeover=True)
    # the lamps: the nodes' MWI NOTIFYs reached the demo's phones
    assert re.search(r"MWI NOTIFYs received by the phones: [1-9]", out), out
    check_analog(out)
    check_sccp(out)


def test_demo_stops_cleanly_on_ctrl_c():
    proc = subprocess.Popen(DEMO, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    seen = threading.Event()

    def read() -> None:
        # Ctrl-C once the demo has shown what this test checks (its own counters): the
        # takeover after the kill -9, a loopback call answered and a SIP call answered
        for line in proc.stdout:
            lines.append(line)
            out = "".join(lines)
            if ("TAKEOVER: b is active" in out and re.search(r"calls: answered [1-9]", out)
                    and re.search(r"SIP call \S+ to [ab] .*: answered", out)):
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert seen.wait(timeout=90), "".join(lines)  # a hang guard only
        assert proc.poll() is None, "the demo ended before Ctrl-C"
        check_monitor("".join(lines))
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        reader.join(timeout=10)
        out = "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "stopped by Ctrl-C" in out, out
    assert "TAKEOVER: b is active" in out, out
    assert re.search(r"calls placed \d+: answered [1-9]", out), out
    assert "processes: all stopped" in out
    work = workdir_of(out)
    assert leftovers(work) == []
    assert all(gone(pid) for pid in manager_pids(out))
    check_sip(out, Path(work), takeover=False)
    # stopped before the analog site's call (or during it): said so, and nothing left running
    assert re.search(r"analog call \(voice-board simulator, DTMF integration\): (not placed: the demo "
                     r"stopped before \d+ s|stopped before the call ended|line )", out), out
    # the CallManager simulator is stopped with the nodes, whether its call was placed or not
    assert gone(sccp_cm_pid(out))
    assert re.search(r"SCCP call \(CallManager simulator\): (not placed: the demo stopped before \d+ s|"
                     r"stopped before the call ended|answered by )", out), out
    shutil.rmtree(work, ignore_errors=True)  # the demo keeps its temporary dir for the logs
