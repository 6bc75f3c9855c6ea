"""The SIP ports (pjsua2 worker processes) on a real pair, with real SIPp processes as the PBX:
INVITEs with Diversion (each reason), History-Info, no header and garbage headers; SIPp
streaming RTP audio (a WAV) that must appear in the recorded message; a SIPp UAS that checks
the MWI NOTIFY body; a call that reaches the inactive node fails over and is answered.

Hang guards only (``GUARD``); no timing is judged here.
"""
from __future__ import annotations

import re
import shutil
import stat
from pathlib import Path

import pytest
import trio

from failover.config import load_config
from lab.pair import Pair, free_udp_block
from lab.sip import free_udp_port, sipp, write_tone_ulaw
from telephony.core import media
from telephony.sip.driver import RAM_DIR, media_dir_for
from telephony.sip.forkserver import worker_pids
from telephony.sip.settings import RTP_PORTS_PER_PORT
from telephony.store import parse_mime
from tests.integration.conftest import until, wait_active
from tests.integration.test_messaging import FAST, admin
from tests.telephony.sip.test_worker import PJSUA2_MISSING, goertzel

pytestmark = [pytest.mark.multiprocess,
              pytest.mark.skipif(PJSUA2_MISSING is not None, reason=PJSUA2_MISSING or ""),
              pytest.mark.skipif(shutil.which("sipp") is None,
                                 reason="SIPp is not installed: the calling peer "
                                        "(apt-get install sip-tester)")]

VOICE_HZ = 1250.0  # the caller's tone: none of the prompts uses it


def sip(node: str, *, mwi_port: int, count: int = 4, **more) -> dict:
    """``[ports.sip]`` for one node: its own SIP port and RTP range on 127.0.0.1."""
    workers = -(-count // 4)
    return {"ports": {"sip": {"enabled": True, "bind": "127.0.0.1",
                              "sip_port": free_udp_block(workers),
                              # the node's whole RTP block: 4 ports a SIP port, contiguous
                              "rtp_port": free_udp_block(RTP_PORTS_PER_PORT * count),
                              "count": count,
                              "mwi_target": f"sip:{{extension}}@127.0.0.1:{mwi_port}",
                              "mwi_account": "sip:{extension}@vm.example",
                              "notify_retries": 2, "notify_backoff": 0.2, **more}}}


def subscriber(ext: str) -> dict:
    return {"op": "put", "table": "subscribers", "row": {
        "extension": ext, "name": f"Sub {ext}", "mailbox": f"mb{ext}", "mwi_method": "sip",
        "notify": []}}


def sip_port(pair: Pair, name: str) -> int:
    return load_config(pair.node(name).config).ports.sip.sip_port


def port_states(node, kind: str = "sip") -> dict[str, str]:
    st = node.status() or {}
    return {p["name"]: p["state"] for p in st.get("ports", []) if p.get("kind") == kind}


def messages(pair: Pair, mailbox: str) -> list[tuple[dict, bytes]]:
    root = load_config(pair.a.config).store.maildir / mailbox
    out = []
    for sub in ("new", "cur"):
        if (root / sub).exists():
            out += [parse_mime(p.read_bytes()) for p in sorted((root / sub).iterdir())]
    return out


def caller_wav(path: Path) -> None:
    """What the SIPp caller streams: silence over the greeting and beep, 1.5 s of VOICE_HZ,
    then silence (the recording ends on it)."""
    write_tone_ulaw(path, seconds=1.5, freq=VOICE_HZ, lead=2.0, tail=3.0)


def has_voice(wav: bytes) -> bool:
    pcm = media.pcm_of(wav)
    samples = [int.from_bytes(pcm[i:i + 2], "little", signed=True) for i in range(0, len(pcm), 2)]
    if len(samples) < 4000:
        return False
    best = max(range(0, len(samples) - 4000, 800),
               key=lambda i: goertzel(samples[i:i + 4000], VOICE_HZ))
    window = samples[best:best + 4000]
    return goertzel(window, VOICE_HZ) > 20 * max(goertzel(window, 440.0), goertzel(window, 1000.0), 1.0)


async def call(cwd: Path, port: int, header: str) -> int:
    """One SIPp UAC call to ``port`` with one extra ``header`` line, streaming the caller's
    tone; returns SIPp's exit code (0: answered, and the callee hung up or took the BYE).
    ``cwd`` is made for this call (SIPp's logs and its WAV live there)."""
    cwd.mkdir(parents=True, exist_ok=True)
    caller_wav(cwd / "tone.wav")
    args = [f"127.0.0.1:{port}", "-s", "5000", "-m", "1", "-mp", str(free_udp_block(4)),
            "-key", "extra", header]
    async with sipp(cwd, "uac_headers_rtp.xml", *args) as uac:
        return await uac.exit_code(60)


async def calls(cwd: Path, port: int, headers: list[str]) -> list[int]:
    """The calls of ``headers`` at once (at most 4: the ports of one worker)."""
    codes: dict[int, int] = {}

    async def one(i: int, header: str) -> None:
        codes[i] = await call(cwd / f"call{i}", port, header)

    async with trio.open_nursery() as nursery:
        for i, header in enumerate(headers):
            nursery.start_soon(one, i, header)
    return [codes[i] for i in range(len(headers))]


def mwi_log(cwd: Path) -> str:
    return "".join(p.read_text() for p in cwd.glob("*_logs.log"))


CASES = [  # (header line, mailbox, reason)
    ("Diversion: <sip:1001@pbx>;reason=user-busy;counter=1", "mb1001", "busy"),
    ("Diversion: <sip:1002@pbx>;reason=no-answer", "mb1002", "no_answer"),
    ("Diversion: <sip:1003@pbx>;reason=unconditional", "mb1003", "all"),
    ("Diversion: \"x\" <sip:1004@pbx>;reason=deflection", "mb1004", "unknown"),
    # stacked, most recent first: the bottom entry (select = last) is the original called
    # party; the reason is why the call reached voice mail (the most recent redirection)
    ("Diversion: <sip:2999@pbx>;reason=no-answer, <sip:1005@pbx>;reason=user-busy",
     "mb1005", "no_answer"),
    ("History-Info: <sip:1006@pbx?Reason=SIP%3Bcause%3D486>;index=1, <sip:5000@vm>;index=1.1",
     "mb1006", "busy"),
    ("History-Info: <sip:1007@pbx>;index=1, <sip:5000@vm?Reason=SIP%3Bcause%3D408>;index=1.1",
     "mb1007", "no_answer"),
    # no redirection: a direct call from a number that is no subscriber -> the default mailbox
    ("X-Nothing: here", "mb1009", "direct"),
    # garbage: the call is still answered, the reason is unknown -> the default mailbox
    ("Diversion: <<<sip:;;;reason=\x01junk>>>", "mb1009", "unknown"),
    ("History-Info: ,,,;index=;;<", "mb1009", "unknown"),
]


async def test_each_redirection_leaves_a_message_with_its_reason_and_the_callers_audio(pair_dir):
    mwi_port = free_udp_port()
    fast = {"messaging": {**FAST["messaging"], "default_mailbox": "mb1009"}}
    with Pair(pair_dir, extra=fast, extra_a=sip("a", mwi_port=mwi_port),
              extra_b=sip("b", mwi_port=mwi_port)) as pair:
        pair.start()
        await wait_active(pair, "a")
        exts = ["1001", "1002", "1003", "1004", "1005", "1006", "1007", "1009"]
        r = await admin(pair.a, {"op": "db_write", "ops": [subscriber(e) for e in exts]})
        assert r["ok"], r
        port = sip_port(pair, "a")
        await until(lambda: set(port_states(pair.a).values()) == {"idle"}, "a's SIP ports up")
        mwi_cwd = pair_dir / "mwi"
        mwi_cwd.mkdir()
        # one lamp per mailbox: 1001..1007 and 1009 (its second message changes no lamp)
        async with sipp(mwi_cwd, "uas_mwi_200.xml", "-m", "8", "-trace_logs", port=mwi_port) as uas:
            for i in range(0, len(CASES), 4):
                batch = CASES[i:i + 4]
                codes = await calls(pair_dir / "sipp" / str(i), port, [h for h, _, _ in batch])
                assert codes == [0] * len(batch), (codes, batch)
            for mailbox in {m for _, m, _ in CASES}:
                want = sorted(r for _, m, r in CASES if m == mailbox)
                await until(lambda mailbox=mailbox, want=want: len(messages(pair, mailbox)) == len(want),
                            f"messages in {mailbox}")
                got = messages(pair, mailbox)
                assert sorted(h["x-vmha-reason"] for h, _ in got) == want, (mailbox, got)
                for h, wav in got:
                    assert h["x-vmha-node"] == "a" and h["x-vmha-caller"] == "0301234567"
                    fwd = "" if mailbox == "mb1009" else mailbox[2:]
                    assert h["x-vmha-forwarding"] == fwd, h
                    assert has_voice(wav), f"the caller's tone is not in {mailbox}'s message"
            assert await uas.exit_code(60) == 0
            log = mwi_log(mwi_cwd)
            for ext in exts:
                assert f"From=sip:{ext}@vm.example" in log and f"Message-Account: sip:{ext}@" in log, log
            assert log.count("waiting=yes") == 8 and log.count("new=1 old=0") == 8, log
        # the prompts and recordings went through a private directory on the RAM file system
        # (the service made it: its name is found, not created, here)
        made = [d for d in RAM_DIR.glob("vmha-a-*")
                if d == media_dir_for(load_config(pair.a.config).node.data_dir, "a")]
        assert len(made) == 1 and stat.S_IMODE(made[0].stat().st_mode) == 0o700
        assert not any(made[0].iterdir())  # each prompt and recording removed when done


async def test_a_call_at_the_inactive_node_fails_over_and_is_answered_there(pair_dir):
    mwi_port = free_udp_port()
    with Pair(pair_dir, extra=FAST, extra_a=sip("a", mwi_port=mwi_port),
              extra_b=sip("b", mwi_port=mwi_port)) as pair:
        pair.start()
        await wait_active(pair, "a")
        r = await admin(pair.a, {"op": "db_write", "ops": [subscriber("1001")]})
        assert r["ok"], r
        await until(lambda: set(port_states(pair.b).values()) == {"idle"}, "b's SIP ports up")
        mwi_cwd = pair_dir / "mwi"
        mwi_cwd.mkdir()
        async with sipp(mwi_cwd, "uas_mwi_200.xml", "-m", "1", "-trace_logs", port=mwi_port) as uas:
            # the PBX sends a call to the secondary's port: the secondary takes over at once
            code = await call(pair_dir / "sipp", sip_port(pair, "b"),
                              "Diversion: <sip:1001@pbx>;reason=user-busy")
            assert code == 0
            assert pair.b.state() == "active"
            await until(lambda: len(messages(pair, "mb1001")) == 1, "message for 1001")
            (h, wav), = messages(pair, "mb1001")
            assert h["x-vmha-node"] == "b" and h["x-vmha-reason"] == "busy" and has_voice(wav)
            assert await uas.exit_code(60) == 0  # b, now active, lit the lamp
            assert "From=sip:1001@vm.example" in mwi_log(mwi_cwd)
        ev = [e for e in pair.b.events() if e["event"] in ("failover", "activating")]
        assert any("call" in e["message"] for e in ev), ev


async def test_a_refused_notify_is_retried_reported_and_left_unconfirmed(pair_dir):
    mwi_port = free_udp_port()
    with Pair(pair_dir, extra=FAST, extra_a=sip("a", mwi_port=mwi_port)) as pair:
        pair.start()
        await wait_active(pair, "a")
        r = await admin(pair.a, {"op": "db_write", "ops": [subscriber("1001")]})
        assert r["ok"], r
        await until(lambda: set(port_states(pair.a).values()) == {"idle"}, "a's SIP ports up")
        mwi_cwd = pair_dir / "mwi"
        mwi_cwd.mkdir()
        # notify_retries = 2: three NOTIFYs, each answered 403
        async with sipp(mwi_cwd, "uas_mwi_403.xml", "-m", "3", "-trace_logs", port=mwi_port) as uas:
            assert await call(pair_dir / "sipp", sip_port(pair, "a"),
                              "Diversion: <sip:1001@pbx>;reason=no-answer") == 0
            assert await uas.exit_code(60) == 0
        assert mwi_log(mwi_cwd).count("From=sip:1001@vm.example") == 3
        await until(lambda: any(e["event"] == "sip_mwi_failed" and "403" in e["message"]
                                for e in pair.a.events()), "the failure in a's event log")

        def unconfirmed():
            row = (pair.a.admin({"op": "db_get", "table": "mwi_ledger", "key": "mb1001"})
                   or {}).get("row")
            return row and row["state"]["on"] and not row["state"]["confirmed"]

        await until(unconfirmed, "the ledger keeps the refused lamp unconfirmed")
        assert len(messages(pair, "mb1001")) == 1  # the message itself is stored


async def test_a_worker_killed_in_a_call_is_restarted_and_its_ports_come_back(pair_dir):
    import os
    import signal

    mwi_port = free_udp_port()
    with Pair(pair_dir, extra=FAST, extra_a=sip("a", mwi_port=mwi_port, count=6)) as pair:
        pair.start()
        await wait_active(pair, "a")
        r = await admin(pair.a, {"op": "db_write", "ops": [subscriber("1001")]})
        assert r["ok"], r
        await until(lambda: len(port_states(pair.a)) == 6
                    and set(port_states(pair.a).values()) == {"idle"}, "6 SIP ports idle")
        pids = await until(lambda: len(p := worker_pids(pair.a.service_pid())) == 2 and p,
                           "two workers (4 + 2 ports)")
        # w1 (the worker on the first SIP port), by the pid its "ready" gave (a forked worker's
        # command line is its fork server's)
        first = int(re.findall(r"SIP worker w1 ready on \S+ \(pid (\d+)\)",
                               (pair_dir / "a.log").read_text())[-1])
        assert first in pids
        forker = int(Path(f"/proc/{first}/stat").read_text().rsplit(")", 1)[1].split()[1])
        assert b"telephony.sip.forkserver" in Path(f"/proc/{forker}/cmdline").read_bytes()
        media_dir = media_dir_for(load_config(pair.a.config).node.data_dir, "a")  # on /dev/shm

        def tone_recorded():  # lead 2 s + tone 1.5 s from the call's start; greeting ~1.2 s
            return any(p.stat().st_size > 44 + 2 * 8000 * 2.6 for p in media_dir.glob("*-rec-*.wav"))

        async with trio.open_nursery() as nursery:
            result = {}

            async def caller():
                result["code"] = await call(pair_dir / "sipp", sip_port(pair, "a"),
                                            "Diversion: <sip:1001@pbx>;reason=no-answer")

            nursery.start_soon(caller)
            await until(lambda: "in_call" in port_states(pair.a).values(), "a call in progress")
            await until(tone_recorded, "the caller's tone in the recording")
            os.kill(first, signal.SIGKILL)
        assert result["code"] != 0  # the caller's call died with the worker
        await until(lambda: any(e["event"] == "sip_worker_restart" for e in pair.a.events()),
                    "the restart in the event log")
        assert "dropped: SIP worker w1" in (pair_dir / "a.log").read_text()
        await until(lambda: set(port_states(pair.a).values()) == {"idle"}, "ports back")
        assert first not in worker_pids(pair.a.service_pid())
        # what was recorded before the worker died is kept, as after a hang-up
        await until(lambda: len(messages(pair, "mb1001")) == 1, "the cut message stored")
        (h, wav), = messages(pair, "mb1001")
        assert has_voice(wav) and h["x-vmha-reason"] == "no_answer"
        # the restarted worker takes calls again
        assert await call(pair_dir / "sipp2", sip_port(pair, "a"),
                          "Diversion: <sip:1001@pbx>;reason=no-answer") == 0
        await until(lambda: len(messages(pair, "mb1001")) == 2, "a message after the restart")


async def test_register_mode_ports_are_up_only_while_their_lines_are_registered(pair_dir):
    """Each port registers ``vm-N`` with a registrar (a SIPp UAS checking the digest); the
    port is ``down`` in the node's status until its line is registered, and a refused
    registration (403) keeps it down and is in the event log."""
    (pair_dir / "pw").write_text("s3cret\n")
    (pair_dir / "pw").chmod(0o600)  # a secret file: refused when others may read it
    reg_cwd, bad_cwd = pair_dir / "reg", pair_dir / "bad"
    reg_cwd.mkdir()
    bad_cwd.mkdir()
    reg_port, bad_port = free_udp_port(), free_udp_port()
    async with sipp(reg_cwd, "uas_register_auth.xml", "-m", "1", port=reg_port) as registrar, \
            sipp(bad_cwd, "uas_register_403.xml", "-m", "1", port=bad_port) as refuser:
        extra_a = sip("a", mwi_port=free_udp_port(), count=1, mode="register",
                      registrar=f"sip:127.0.0.1:{reg_port}", user="vm",
                      password_file=str(pair_dir / "pw"))
        extra_b = sip("b", mwi_port=free_udp_port(), count=1, mode="register",
                      registrar=f"sip:127.0.0.1:{bad_port}", user="vm",
                      password_file=str(pair_dir / "pw"))
        with Pair(pair_dir, extra=FAST, extra_a=extra_a, extra_b=extra_b) as pair:
            pair.start()
            await wait_active(pair, "a")
            await until(lambda: port_states(pair.a) == {"sip-1": "idle"}, "a's line registered")
            await until(lambda: any(e["event"] == "sip_registration" and "403" in e["message"]
                                    for e in pair.b.events()), "b's refusal in its event log")
            assert port_states(pair.b) == {"sip-1": "down"}
            reg = [e for e in pair.a.events() if e["event"] == "sip_registration"]
            assert reg and "vm-1: registered (200" in reg[0]["message"], reg
            assert await refuser.exit_code(30) == 0
        # a's worker un-registered at shutdown: the registrar saw the whole exchange
        assert await registrar.exit_code(30) == 0


async def test_an_unanswered_notify_times_out_is_retried_and_never_holds_the_call(pair_dir):
    """Nobody listens at the MWI target: each NOTIFY times out after ``notify_timeout`` (the
    workers' SIP transaction timeout) as 408, is retried, then reported; the caller's call
    ended normally meanwhile (the lamp is sent beside the call, not in it)."""
    with Pair(pair_dir, extra=FAST, extra_a=sip("a", mwi_port=free_udp_port(), notify_timeout=1,
                                                 notify_retries=1)) as pair:
        pair.start()
        await wait_active(pair, "a")
        r = await admin(pair.a, {"op": "db_write", "ops": [subscriber("1001")]})
        assert r["ok"], r
        await until(lambda: set(port_states(pair.a).values()) == {"idle"}, "a's SIP ports up")
        assert await call(pair_dir / "sipp", sip_port(pair, "a"),
                          "Diversion: <sip:1001@pbx>;reason=user-busy") == 0
        await until(lambda: len(messages(pair, "mb1001")) == 1, "the message")
        failed = await until(lambda: [e for e in pair.a.events() if e["event"] == "sip_mwi_failed"],
                             "the lamp's failure in the event log")
        assert "408" in failed[0]["message"], failed
        log = (pair_dir / "a.log").read_text()
        # the call had ended before the lamp gave up: "call … ended" precedes the failure
        assert log.index("on sip-1 ended") < log.index("MWI NOTIFY to sip:1001@")


async def operator_call(cwd: Path, port: int, scenario: str) -> int:
    """A SIPp caller forwarded to 1001 who presses 0 during the greeting (``scenario``: the
    PBX takes or refuses the REFER); it streams 3 s of silence, 1.5 s of VOICE_HZ (heard only
    if the flow records: after "please hold", the refused transfer and the beep), then
    silence.  Returns SIPp's exit code (0: every step of the scenario was seen)."""
    cwd.mkdir(parents=True, exist_ok=True)
    write_tone_ulaw(cwd / "tone.wav", seconds=1.5, freq=VOICE_HZ, lead=3.0, tail=3.0)
    args = [f"127.0.0.1:{port}", "-s", "5000", "-m", "1", "-mp", str(free_udp_block(4)),
            "-key", "divnum", "1001", "-trace_logs"]
    async with sipp(cwd, scenario, *args) as uac:
        code = await uac.exit_code(60)
        refer_to = [line.split("Refer-To=", 1)[1] for f in cwd.glob("*_logs.log")
                    for line in f.read_text(errors="replace").splitlines() if "Refer-To=" in line]
        assert refer_to == [f"sip:0@127.0.0.1:{uac.port}"], refer_to  # the PBX's address
        return code


async def test_operator_transfer_taken_leaves_no_message_refused_records_one(pair_dir):
    """``[messaging] operator = "0"``: a caller forwarded to 1001 presses 0 in the greeting.
    (a) The PBX (SIPp) takes the REFER (202, NOTIFY sipfrag 200): the node hangs up (BYE) and
    no message is stored.  (b) The PBX refuses it (603): the flow goes on to the beep and
    records, and the message holds the caller's audio."""
    fast = {"messaging": {**FAST["messaging"], "operator": "0"}}
    with Pair(pair_dir, extra=fast, extra_a=sip("a", mwi_port=free_udp_port(), transfer_timeout=5),
              extra_b=sip("b", mwi_port=free_udp_port(), transfer_timeout=5)) as pair:
        pair.start()
        await wait_active(pair, "a")
        r = await admin(pair.a, {"op": "db_write", "ops": [subscriber("1001")]})
        assert r["ok"], r
        await until(lambda: set(port_states(pair.a).values()) == {"idle"}, "a's SIP ports up")
        port = sip_port(pair, "a")
        log_path = pair_dir / "a.log"

        # (a) taken: the scenario ends only after the node's BYE
        assert await operator_call(pair_dir / "taken", port, "uac_operator_accept_rtp.xml") == 0
        await until(lambda: ": transferred for mailbox mb1001" in log_path.read_text(),
                    "the flow's outcome (transferred) in a's log")
        log = log_path.read_text()
        assert "transfer to 0 (sip:0@127.0.0.1:" in log and "200 OK -> transferred" in log, log
        assert messages(pair, "mb1001") == []        # the flow was over before any recording
        await until(lambda: set(port_states(pair.a).values()) == {"idle"}, "the port free again")

        # (b) refused: the flow goes on, beep and recording, the node hangs up after goodbye
        assert await operator_call(pair_dir / "refused", port, "uac_operator_refuse_rtp.xml") == 0
        await until(lambda: len(messages(pair, "mb1001")) == 1, "the message after the refusal")
        (h, wav), = messages(pair, "mb1001")
        assert h["x-vmha-node"] == "a" and h["x-vmha-reason"] == "no_answer", h
        assert has_voice(wav), "the caller's audio is not in the message"
        log = log_path.read_text()
        assert "603 Decline -> the call goes on" in log, log
        assert log.count(": transferred for mailbox mb1001") == 1
