"""The serial lab on real socat ptys: the software SMDI splitter passes the PBX's bytes to every
node, merges the nodes' bytes back to the PBX, logs who sent what, and follows a node's device
going away and coming back.  Timeouts here are hang guards only."""
from __future__ import annotations

import os
import random
import shutil
import signal
import threading
import time
import tty
from pathlib import Path

import pytest
import serial  # pyserial: a dependency of the project, never skipped

from lab.smdi import SerialSplitterLab, SocatPair

pytestmark = pytest.mark.skipif(
    shutil.which("socat") is None,
    reason="socat is not installed: it makes the lab's ptys (apt-get install socat)")

GUARD = 5.0  # seconds: a hang guard, not a speed requirement


def open_tty(path: Path) -> serial.Serial:
    port = serial.Serial(str(path), 9600, timeout=0.2, write_timeout=GUARD)
    port.reset_input_buffer()  # stale bytes buffered while nobody had the device open
    return port


def read_exact(port: serial.Serial, n: int, timeout: float = GUARD) -> bytes:
    buf = bytearray()
    deadline = time.monotonic() + timeout
    while len(buf) < n:
        assert time.monotonic() < deadline, f"got {len(buf)} of {n} bytes: {bytes(buf[:64])!r}..."
        buf += port.read(n - len(buf))
    return bytes(buf)


def read_until(port: serial.Serial, marker: bytes, timeout: float = GUARD) -> bytes:
    buf = bytearray()
    deadline = time.monotonic() + timeout
    while marker not in buf:
        assert time.monotonic() < deadline, f"{marker!r} never arrived ({len(buf)} bytes read)"
        buf += port.read(max(1, port.in_waiting))
    return bytes(buf)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def lab(tmp_path: Path):
    with SerialSplitterLab(tmp_path / "lab", names=("a", "b")) as lab:
        yield lab


def test_socat_pair_links_come_and_go(tmp_path: Path) -> None:
    pair = SocatPair(tmp_path / "x", tmp_path / "y")
    pair.start()
    try:
        assert pair.pid is not None and alive(pair.pid)
        with open_tty(tmp_path / "x") as x, open_tty(tmp_path / "y") as y:
            x.write(bytes(range(256)))
            assert read_exact(y, 256) == bytes(range(256))
    finally:
        pid = pair.pid
        pair.stop()
    assert pair.pid is None and not alive(pid)
    assert not os.path.lexists(tmp_path / "x") and not os.path.lexists(tmp_path / "y")
    pair.stop()  # idempotent


def test_pbx_bytes_reach_every_node_intact(lab: SerialSplitterLab) -> None:
    every_byte = bytes(range(256))
    burst = random.Random(7).randbytes(10 * 1024)
    with open_tty(lab.pbx_tty) as pbx, open_tty(lab.tty("a")) as a, open_tty(lab.tty("b")) as b:
        pbx.write(every_byte)
        assert read_exact(a, 256) == every_byte
        assert read_exact(b, 256) == every_byte
        pbx.write(burst)
        assert read_exact(a, len(burst)) == burst
        assert read_exact(b, len(burst)) == burst
    assert lab.written_by("pbx") == every_byte + burst
    assert lab.written_by("a") == lab.written_by("b") == b""
    assert all(r["to"] == ["a", "b"] for r in lab.log_records() if r.get("from") == "pbx")


def test_nodes_transmit_to_pbx_and_log_says_who(lab: SerialSplitterLab) -> None:
    from_a = b"OP:MWI 5551234 !\x04"
    from_b = b"RMV:MWI 5554321 !\x04" + bytes(range(128, 256))
    with open_tty(lab.pbx_tty) as pbx, open_tty(lab.tty("a")) as a, open_tty(lab.tty("b")) as b:
        a.write(from_a)
        assert read_exact(pbx, len(from_a)) == from_a
        b.write(from_b)
        assert read_exact(pbx, len(from_b)) == from_b
        assert a.read(1) == b"" and b.read(1) == b""  # nodes do not hear each other
    assert lab.written_by("a") == from_a
    assert lab.written_by("b") == from_b
    assert lab.written_by("pbx") == b""
    records = [r for r in lab.log_records() if "hex" in r]
    froms = [r["from"] for r in records]
    assert froms == sorted(froms)  # all of a's chunks were logged before b's
    for r in records:
        assert r["to"] == ["pbx"]
        assert isinstance(r["t"], float) and isinstance(r["wall"], float)
    assert records[0]["t"] <= records[-1]["t"]


def test_dropped_node_misses_data_and_comes_back(lab: SerialSplitterLab) -> None:
    with open_tty(lab.pbx_tty) as pbx, open_tty(lab.tty("b")) as b:
        a = open_tty(lab.tty("a"))
        pbx.write(b"before")
        assert read_exact(a, 6) == b"before"
        assert read_exact(b, 6) == b"before"

        lab.drop("a")  # returns once the splitter logged a down
        assert not os.path.lexists(lab.tty("a"))
        a.close()
        pbx.write(b"while-a-is-down")
        assert read_exact(b, 15) == b"while-a-is-down"
        def sent_while_down(r: dict) -> bool:
            return r.get("from") == "pbx" and b"down" in bytes.fromhex(r["hex"])

        records = lab.wait_for(lambda rs: any(sent_while_down(r) for r in rs))
        assert all(r["to"] == ["b"] for r in records if sent_while_down(r))

        lab.restore("a")  # returns once the splitter logged a up again
        # Open without pyserial (whose open() flushes input) so that anything the splitter kept
        # for a while it was down would show up ahead of the new data.
        fd = os.open(lab.tty("a"), os.O_RDWR | os.O_NOCTTY)
        try:
            tty.setraw(fd)
            pbx.write(b"after-restore")
            got = b""
            deadline = time.monotonic() + GUARD
            while len(got) < 13:
                assert time.monotonic() < deadline, got
                got += os.read(fd, 13 - len(got))
            assert got == b"after-restore"
            assert read_exact(b, 13) == b"after-restore"

            os.write(fd, b"a-is-back")
            assert read_exact(pbx, 9) == b"a-is-back"
        finally:
            os.close(fd)
    assert lab.written_by("a") == b"a-is-back"
    events = [(r["event"], r["name"]) for r in lab.log_records() if r.get("name") == "a"]
    assert events == [("up", "a"), ("down", "a"), ("up", "a")]


def test_pbx_side_can_go_away_too(lab: SerialSplitterLab) -> None:
    lab.drop("pbx")
    with open_tty(lab.tty("a")) as a:
        a.write(b"nobody-hears")
        lab.wait_for(lambda rs: any(r.get("from") == "a" and r["to"] == [] for r in rs))
        lab.restore("pbx")
        with open_tty(lab.pbx_tty) as pbx:
            a.write(b"heard")
            assert read_exact(pbx, 5) == b"heard"  # nothing from while it was down
            pbx.write(b"hello")
            assert read_exact(a, 5) == b"hello"


def test_stuck_node_overflows_without_hurting_the_splitter(tmp_path: Path) -> None:
    with (
        SerialSplitterLab(tmp_path / "lab", names=("a", "b"), max_pending=64 * 1024) as lab,
        open_tty(lab.pbx_tty) as pbx,
    ):
        # Nobody reads a or b: the pty buffers fill, then the splitter's pending output.
        writer = threading.Thread(target=pbx.write, args=(bytes(1 << 20),), daemon=True)
        writer.start()
        writer.join(GUARD)
        assert not writer.is_alive(), "PBX write blocked: the splitter stopped reading"
        lab.wait_event("overflow", "a")
        lab.wait_event("overflow", "b")
        assert lab.splitter is not None and lab.splitter.poll() is None
        with open_tty(lab.tty("b")) as b:
            # What was kept for b arrives; only once the splitter has drained it is there
            # room again (until then new data would be dropped too, by design).
            deadline = time.monotonic() + GUARD
            while not any(r.get("event") == "drained" and r["name"] == "b" for r in lab.log_records()):
                assert time.monotonic() < deadline, "b's pending output never drained"
                b.read(65536)
            pbx.write(b"MARK")
            assert read_until(b, b"MARK").endswith(b"MARK")


def test_stop_leaves_no_process_and_is_idempotent(tmp_path: Path) -> None:
    lab = SerialSplitterLab(tmp_path / "lab", names=("a", "b", "c"))
    lab.start()
    pids = lab.pids()
    assert sorted(pids) == ["socat:a", "socat:b", "socat:c", "socat:pbx", "splitter"]
    assert all(alive(pid) for pid in pids.values())
    lab.stop()
    assert [pid for pid in pids.values() if alive(pid)] == []
    assert lab.pids() == {}
    for side in ("pbx", "a", "b", "c"):
        assert not os.path.lexists(lab.tty(side))
    lab.stop()
    assert lab.log_records()[-1]["event"] == "stop"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_splitter_exits_zero_on_signal(lab: SerialSplitterLab, signum: int) -> None:
    proc = lab.splitter
    assert proc is not None
    os.kill(proc.pid, signum)
    assert proc.wait(GUARD) == 0
    assert lab.log_records()[-1]["event"] == "stop"
    assert (lab.directory / "splitter.err").read_text() == ""
