"""The fault campaign's callers (lab/faultload.py) on loopback, with everything real: a pair
of nodes with SIP ports and an SMDI link on the pty splitter, kamailio hunting over both
nodes' ports, SIPp callers (``pbx_exec`` empty: no namespace), the PBX end of the SMDI line
recording the lamps; then the checker (lab/faultcheck.py) on the real history, store,
databases and event logs.  Hang guards only; nothing is timed.

The pure parts (call-log parsing, classification) are tested without processes below.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from failover.config import load_config
from lab.faultcheck import acked_ids, check, safe_call_id
from lab.faultload import (
    Workload,
    caller_number,
    classify,
    node_sections,
    parse_call_log,
    subscriber_ops,
    tone_hz,
)
from lab.pair import Pair, free_udp_block
from lab.sip import KamailioPbx, free_udp_port
from lab.smdi import SerialSplitterLab
from tests.telephony.sip.test_worker import PJSUA2_MISSING

FAST = {"messaging": {"realtime_audio": False, "silence": 1.0, "min_message": 0.2,
                      "max_message": 15}}
MAILBOXES = ["1001", "1002", "1003"]
LAMP_PREFIX = "555"
TERMINALS = {"a": [1, 2, 3, 4], "b": [5, 6, 7, 8]}  # (the SMDI link's; calls say why by SIP)
GUARD = 120.0  # s: a hang guard only (other pairs may load the machine)


def _missing() -> str | None:
    for tool, pkg in (("sipp", "sip-tester"), ("kamailio", "kamailio"), ("socat", "socat")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install {pkg}): the workload test needs it"
    return PJSUA2_MISSING


needs_peers = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")


# ---------------------------------------------------------------------------- pure parts

LOG = """ANSWERED 2026-12-07\t17:57:15.386708\t1796666235.386708 Contact: <sip:vm@10.0.1.2:5080;transport=UDP>
CALLEE_BYE 2026-12-07\t17:57:21.000000\t1796666241.000000
"""


def test_a_call_log_is_parsed_into_tags_and_times():
    log = parse_call_log(LOG)
    assert log["ANSWERED"] == (1796666235.386708, "Contact: <sip:vm@10.0.1.2:5080;transport=UDP>")
    assert log["CALLEE_BYE"][0] == 1796666241.0
    assert parse_call_log("garbage\nANSWERED nope\n") == {}


def test_a_bye_after_the_tone_is_an_ack_and_one_before_it_a_drop():
    log = parse_call_log(LOG)
    seen = classify(log, "", exit_code=0, min_ack_s=4.0, node_addrs={"a": "10.0.1.2", "b": "10.0.2.2"})
    assert (seen["answered"], seen["answered_by"], seen["result"]) == (True, "a", "acked")
    seen = classify(log, "", exit_code=0, min_ack_s=6.0, node_addrs={"b": "10.0.1.2:5080"})
    assert (seen["answered_by"], seen["result"]) == ("b", "dropped")
    seen = classify(log, "", exit_code=0, min_ack_s=1.0)  # no map: the Contact's host
    assert seen["answered_by"] == "10.0.1.2"


def test_other_outcomes_are_told_apart():
    bye = "ANSWERED 2026-12-07\t17:57:15.0\t100.0 Contact: <sip:1.2.3.4>\nCALLER_BYE x\ty\t131.0\n"
    assert classify(parse_call_log(bye), "", exit_code=0, min_ack_s=4)["result"] == "caller_hangup"
    err = "Aborting call on unexpected message ... SIP/2.0 503 All destinations failed\r\n"
    assert classify({}, err, exit_code=1, min_ack_s=4)["result"] == "rejected:503"
    assert classify({}, "Aborting call on UDP retransmission timeout", exit_code=1,
                    min_ack_s=4)["result"] == "no_answer"
    assert classify({"NO_ANSWER": (5.0, "")}, "", exit_code=0, min_ack_s=4)["result"] == "no_answer"
    assert classify({}, "", exit_code=None, min_ack_s=4)["result"] == "error"


def test_callers_and_tones_are_unique_per_call_and_bad_arguments_are_refused(tmp_path):
    assert len({caller_number(n) for n in range(1, 2000)}) == 1999
    tones = [tone_hz(n) for n in range(1, 151)]
    assert len(set(tones)) == 150 and min(tones) >= 500 and max(tones) <= 1990
    with pytest.raises(ValueError):
        caller_number(0)
    for bad in ({"pbx_sip": "nohost"}, {"mailboxes": ["mb1"]}, {"mailboxes": []},
                {"streams": 0}, {"hangup_s": 1.0}):
        args = {"pbx_exec": [], "pbx_sip": "127.0.0.1:5060", "mailboxes": MAILBOXES,
                "workdir": tmp_path / "w", "seed": 1, **bad}
        with pytest.raises(ValueError):
            Workload(**args)
    ops = subscriber_ops(["1001"])
    assert ops[0]["row"]["extension"] == ops[0]["row"]["mailbox"] == "1001"


# ---------------------------------------------------------------------------- real pair

def node_file(lab: SerialSplitterLab, name: str) -> dict:
    """SIP ports (call information from the SIP headers) and lamps on the shared SMDI line."""
    return node_sections(bind="127.0.0.1", sip_port=free_udp_block(1),
                         rtp_port=free_udp_block(16, top=65536 - 1000), smdi_device=lab.tty(name),
                         terminals=TERMINALS[name], mwi_prefix=LAMP_PREFIX)


def wait(pred, what: str, timeout: float = GUARD):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout}s (a hang guard)")


@contextmanager
def lab_pair():
    d = Path(tempfile.mkdtemp(prefix="vmha-fl-", dir="/tmp"))
    kam = None
    try:
        with SerialSplitterLab(d / "serial") as lab, \
                Pair(d, extra=FAST, extra_a=node_file(lab, "a"), extra_b=node_file(lab, "b")) as pair:
            pair.start()
            wait(lambda: pair.states() == {"a": "active", "b": "inactive"}, "a active, b inactive")
            r = pair.a.admin({"op": "db_write", "ops": subscriber_ops(MAILBOXES)}, timeout=10)
            assert r and r["ok"], r
            ports = {n: load_config(pair.node(n).config).ports.sip.sip_port for n in "ab"}
            kam = KamailioPbx(d / "kamailio", port=free_udp_port(),
                              primary=[("127.0.0.1", ports["a"])], secondary=[("127.0.0.1", ports["b"])],
                              fr_timer_ms=3000, fr_inv_timer_ms=15000)  # lenient: a loaded machine
            kam.start()
            yield d, lab, pair, kam, ports
    finally:
        if kam is not None:
            kam.stop()
        shutil.rmtree(d, ignore_errors=True)


@needs_peers
@pytest.mark.multiprocess
def test_callers_leave_messages_with_their_tones_and_the_checker_finds_a_clean_run():
    with lab_pair() as (d, lab, pair, kam, ports):
        wl = Workload([], kam.address, MAILBOXES, d / "workload", seed=3, streams=2,
                      node_addrs={"a": f"127.0.0.1:{ports['a']}", "b": f"127.0.0.1:{ports['b']}"},
                      pbx_tty=lab.pbx_tty, tone_s=1.5, lead_s=2.0, tail_s=3.0, gap_s=(0.1, 0.3),
                      hangup_s=20)
        wl.start()
        try:
            wait(lambda: len(wl.calls()) >= 4, "four calls ended")
        finally:
            wl.stop_calls()
        calls = wl.calls()
        assert all(c["result"] == "acked" and c["answered_by"] == "a" for c in calls), \
            [(c["id"], c["result"], c["answered_by"]) for c in calls]
        # the lamps of the mailboxes called come on, then the run is judged
        want = {LAMP_PREFIX + c["mailbox"] for c in calls}
        wait(lambda: want <= {r["mailbox"] for r in wl.history.lamps() if r["on"]}, "the lamps on")
        wl.stop()
        cfg = {n: load_config(pair.node(n).config) for n in "ab"}
        wait(lambda: len({(pair.node(n).status() or {}).get("replication", {}).get("db", {})
                         .get("checksum") for n in "ab"}) == 1, "the databases converged")
        states = pair.states()
        pair.b.stop()  # b first: stopping a first would make b take over (and send lamps)
        pair.stop()
        wl.history.add_splitter_log(lab.log_path)
        events = {n: cfg[n].node.data_dir / "events.jsonl" for n in "ab"}
        result = check(wl.history, store_dir=cfg["a"].store.maildir,
                       node_dbs={n: cfg[n].node.data_dir / "config.db" for n in "ab"},
                       node_events=events, lamp_log=wl.lamp_log, final_states=states,
                       lamp_prefix=LAMP_PREFIX, lamp_errors=wl.lamp_errors,
                       node_logs={n: d / f"{n}.log" for n in "ab"})
        print(f"\nclean run: {result}")
        assert result["calls"] == len(calls) >= 4
        assert result["acknowledged"] == result["messages"] == len(calls), result
        assert (result["lost"], result["duplicated"], result["wrong_tone"]) == (0, 0, 0), result
        assert result["lamp_mismatches"] == 0 and result["lamp_garbled"] == 0, result
        assert result["same_term_actives"] == 0 and result["outside_term"] == 0, result
        assert result["final_active"] == ["a"] and result["db_checksums_equal"], result
        assert len(wl.history.lamps_sent()) >= len(want)  # a's lamps, from the splitter's log
        assert {r["node"] for r in wl.history.lamps_sent()} == {"a"}
        # the service's own word: a's console log names every call's message as stored
        ids = acked_ids(events, {n: d / f"{n}.log" for n in "ab"})
        assert {i.split(".")[0] for i in ids} == {safe_call_id(c["sip_call_id"]) for c in calls}, ids

        # the same run, broken by hand: each invariant must see it
        def judge():
            return check(wl.history, store_dir=cfg["a"].store.maildir,
                         node_dbs={"a": cfg["a"].node.data_dir / "config.db", "b": "1"},
                         node_events=events, lamp_log=wl.lamp_log,
                         final_states={"a": "active", "b": "active"},
                         lamp_prefix=LAMP_PREFIX, node_logs={n: d / f"{n}.log" for n in "ab"})
        files = sorted(cfg["a"].store.maildir.glob("*/new/*"))
        heard_box = files[0].parent.parent  # every message of one mailbox heard: its lamp is wrong
        for f in heard_box.glob("new/*"):
            f.rename(heard_box / "cur" / (f.name + ":2,S"))
        files = sorted(f for f in cfg["a"].store.maildir.glob("*/*/*") if f.parent.parent != heard_box)
        shutil.copy(files[0], files[0].with_name("copy"))  # a message twice
        files[-1].unlink()  # a message gone
        broken = judge()
        print(f"broken by hand: {broken}")
        assert broken["duplicated"] == 1 and broken["lost"] == 1, broken
        assert broken["lamp_mismatches"] >= 1  # a heard message, and one gone: lamps differ
        assert not broken["db_checksums_equal"] and not broken["final_active_ok"], broken


@needs_peers
@pytest.mark.multiprocess
def test_a_killed_service_fails_over_and_the_checker_charges_the_gap_to_the_fault():
    """SIGKILL of a's messaging service while the callers call: b takes over (kamailio hunts
    to it), nothing acknowledged is lost, nobody answers outside its term, and the seconds
    without an active node are charged to the fault."""
    with lab_pair() as (d, lab, pair, kam, ports):
        wl = Workload([], kam.address, MAILBOXES, d / "workload", seed=5, streams=2,
                      node_addrs={"a": f"127.0.0.1:{ports['a']}", "b": f"127.0.0.1:{ports['b']}"},
                      pbx_tty=lab.pbx_tty, tone_s=1.5, lead_s=2.0, tail_s=3.0, gap_s=(0.1, 0.3),
                      hangup_s=20)
        wl.start()
        try:
            wait(lambda: len(wl.calls()) >= 2, "two calls ended")
            pid = pair.a.service_pid()
            assert pid is not None
            t = time.time()
            os.kill(pid, signal.SIGKILL)
            wait(lambda: pair.b.state() == "active", "b active")
            wl.history.add_fault("kill_service", t, time.time(), node="a")
            wait(lambda: any(c["answered_by"] == "b" and c["result"] == "acked" for c in wl.calls()),
                 "a call answered by b")
        finally:
            wl.stop_calls()
        time.sleep(2)  # lamps of the last calls (a hang guard would be no better: any lamp may come)
        wl.stop()
        cfg = {n: load_config(pair.node(n).config) for n in "ab"}
        wait(lambda: len({(pair.node(n).status() or {}).get("replication", {}).get("db", {})
                         .get("checksum") for n in "ab"}) == 1, "the databases converged")
        states = pair.states()
        until = time.time()
        for n in sorted(states, key=lambda n: states[n] == "active"):  # the active node last
            pair.node(n).stop()
        pair.stop()
        wl.history.add_splitter_log(lab.log_path)
        events = {n: cfg[n].node.data_dir / "events.jsonl" for n in "ab"}
        result = check(wl.history, store_dir=cfg["a"].store.maildir,
                       node_dbs={n: cfg[n].node.data_dir / "config.db" for n in "ab"},
                       node_events=events, lamp_log=wl.lamp_log, final_states=states,
                       lamp_prefix=LAMP_PREFIX, lamp_errors=wl.lamp_errors,
                       node_logs={n: d / f"{n}.log" for n in "ab"}, until=until)
        print(f"\nkilled service: {result}")
        assert result["lost"] == 0 and result["duplicated"] == 0, result
        assert result["same_term_actives"] == 0 and result["outside_term"] == 0, result
        assert result["final_active_ok"] and result["db_checksums_equal"], result
        assert result["lamp_mismatches"] == 0, result
        # b activates only after a deactivated: that gap is the fault's (a start-up gap, if
        # any, is charged to "none")
        assert result["unavailable_s"].get("kill_service", 0) > 0, result
        assert "b" in {c["answered_by"] for c in wl.calls()}


@pytest.mark.skipif(shutil.which("sipp") is None,
                    reason="sipp is not installed (apt-get install sip-tester): the callers are SIPp")
def test_the_callers_run_under_a_network_namespace_prefix(tmp_path):
    """``pbx_exec`` is the ``ip netns exec NS`` prefix: the callers and a SIPp answering
    machine (it answers and never hangs up) in a namespace of their own, on its loopback."""
    ns = f"vfwl{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # left over by a crash
    subprocess.run(["ip", "netns", "add", ns], check=True)
    uas = None
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        prefix = ["ip", "netns", "exec", ns]
        uas = subprocess.Popen([*prefix, "sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", "5060",
                                "-mp", "6000", "-nostdin"], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wl = Workload(prefix, "127.0.0.1:5060", ["1001"], tmp_path / "w", seed=1, streams=1,
                      node_addrs={"uas": "127.0.0.1:5060"}, tone_s=0.5, lead_s=0.2, tail_s=0.5,
                      hangup_s=1.5, gap_s=(0.0, 0.0))
        wl.start()
        try:
            wait(lambda: wl.calls(), "one call ended")
        finally:
            wl.stop()
        c = wl.calls()[0]
        assert (c["answered"], c["answered_by"], c["result"]) == (True, "uas", "caller_hangup"), c
        assert c["caller"] == caller_number(1) and c["sip_call_id"] == "fl1-1-1@faultload"
        assert wl.history.calls() == wl.calls()
    finally:
        if uas is not None:
            uas.kill()
            uas.wait()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
