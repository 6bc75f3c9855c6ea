"""The service's health view (telephony/health.py): drivers' scores from the port registry and
the message store's probe, on a real Maildir directory and a real Dovecot."""
from __future__ import annotations

import os
import socket

import pytest
import trio

from lab.pair import free_port
from telephony.health import DriverHealth, disk_state, driver_scores, store_probe_interval
from telephony.runtime.ports import PortRegistry, PortState
from telephony.store import ImapStore, MaildirStore
from tests.telephony.conftest import needs_dovecot
from tests.util import until


def test_scores_by_driver_kind_from_the_registry():
    reg = PortRegistry()
    for i in range(1, 5):
        reg.register(f"sip-{i}", "sip", PortState.IDLE)
    reg.register("smdi", "smdi", PortState.DOWN)
    reg.get("smdi").detail = "serial port /dev/ttyX gone"
    reg.get("sip-3").state = PortState.DOWN
    reg.get("sip-4").state = PortState.IN_CALL  # busy is usable
    got = driver_scores(reg.status())
    assert got == [{"name": "sip", "score": 75, "detail": "3/4 ports usable; down: sip-3"},
                   {"name": "smdi", "score": 0,
                    "detail": "0/1 ports usable; down: smdi (serial port /dev/ttyX gone)"}]
    many = [{"name": f"p{i}", "kind": "sccp", "state": "down"} for i in range(300)]
    (d,) = driver_scores(many)
    assert d["score"] == 0 and len(d["detail"]) <= 200 and "and 292 more" in d["detail"]
    assert driver_scores([]) == []


def test_the_registry_tells_of_real_port_changes_only():
    """A driver sets ``port.state``/``port.detail`` directly: each real change calls the
    registry's ``on_change`` (the service's health reporter), a write of the same value not."""
    calls = []
    reg = PortRegistry(on_change=lambda: calls.append("x"))
    reg.register("sip-1", "sip", PortState.IDLE)
    reg.register("sip-2", "sip", PortState.IDLE)
    assert len(calls) == 2  # a new port is a change too
    port = reg.get("sip-1")
    port.state = PortState.IDLE
    port.detail = ""
    assert len(calls) == 2
    port.state = PortState.DOWN
    port.detail = "not registered"
    port.detail = "not registered"
    assert len(calls) == 4
    reg.set_state("sip", PortState.IDLE)  # sip-1 changes, sip-2 does not
    assert len(calls) == 5
    assert reg.claim("sip") is port and len(calls) == 6
    assert port == type(port)("sip-1", "sip", PortState.RINGING, "not registered")


def test_store_probe_interval_from_the_file(tmp_path):
    f = tmp_path / "n.toml"
    f.write_text("[node]\nname = 'a'\n")
    assert store_probe_interval(f) == 2.0 and store_probe_interval(None) == 2.0
    f.write_text("[health]\nstore_probe = 0.5\n")
    assert store_probe_interval(f) == 0.5
    for bad in ("0", "true", "'2'", "4000"):
        f.write_text(f"[health]\nstore_probe = {bad}\n")
        with pytest.raises(ValueError, match="health.store_probe"):
            store_probe_interval(f)


async def test_maildir_probe_follows_the_directory(tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    h = DriverHealth("a")
    changes = []  # the service reports health at once when a score changes
    h.on_change = lambda: changes.append(h.store_score)
    h.watch(MaildirStore(root), None)
    (before,) = h.drivers([])
    assert before == {"name": "store", "score": 100, "detail": "not probed yet"}
    await h.probe_once()
    assert h.drivers([])[-1]["score"] == 100 and "writable" in h.store_detail
    assert list(root.iterdir()) == []  # the probe file is gone again
    root.rmdir()
    root.write_text("not a directory\n")  # the mount replaced by a file
    await h.probe_once()
    assert h.drivers([])[-1]["score"] == 0 and "not a directory" in h.store_detail
    await h.probe_once()
    root.unlink()
    root.mkdir()
    await h.probe_once()
    assert h.store_score == 100 and h.probes == 4
    assert changes == [0, 100]  # score changes only, not every probe


async def test_a_hanging_probe_is_abandoned_and_never_stacked(tmp_path):
    """The probe's file is a FIFO nobody reads: opening it blocks, as on a hung mount."""
    root = tmp_path / "store"
    root.mkdir()
    fifo = root / ".vmha-probe-a"
    os.mkfifo(fifo)
    conf = tmp_path / "n.toml"
    conf.write_text("[health]\nstore_probe = 0.5\n")  # timeout: 1 s
    h = DriverHealth("a")
    h.watch(MaildirStore(root), conf)
    await h.probe_once()
    assert h.store_score == 0 and h.store_detail == "no answer within 1s" and h.hanging
    await h.probe_once()  # no second thread while the first one hangs
    assert h.store_score == 0 and "has not returned" in h.store_detail
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader: the hung open returns
    try:
        await until(lambda: not h.hanging, "the abandoned probe returned", timeout=10)
    finally:
        os.close(fd)
    await h.probe_once()
    assert h.store_score == 100 and list(root.iterdir()) == []


async def test_imap_probe_of_a_port_nobody_listens_on_fails():
    h = DriverHealth("a")
    h.watch(ImapStore("127.0.0.1", free_port(), credentials=lambda m: ("u", "p"), timeout=2), None)
    await h.probe_once()
    assert h.store_score == 0 and "refused" in h.store_detail.lower()


async def test_a_store_that_never_answers_fails_after_the_timeout():
    """A server that accepts and never greets: the probe gives up after the store's timeout."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        h = DriverHealth("a")
        h.watch(ImapStore("127.0.0.1", srv.getsockname()[1], credentials=lambda m: ("u", "p"),
                          timeout=1), None)
        await h.probe_once()
    assert h.store_score == 0 and ("timed out" in h.store_detail or "no answer" in h.store_detail)


@needs_dovecot
async def test_imap_probe_of_dovecot_and_of_it_stopped(dovecot_server):
    h = DriverHealth("a")
    h.watch(ImapStore(dovecot_server.host, dovecot_server.port,
                      credentials=dovecot_server.credentials, timeout=3), None)
    await h.probe_once()
    assert h.store_score == 100 and "answers" in h.store_detail
    await trio.to_thread.run_sync(dovecot_server.stop)
    try:
        await h.probe_once()
        assert h.store_score == 0
    finally:
        await trio.to_thread.run_sync(dovecot_server.start)
    await h.probe_once()
    assert h.store_score == 100


async def test_run_probes_every_interval(tmp_path):
    f = tmp_path / "n.toml"
    f.write_text("[health]\nstore_probe = 0.1\n")
    h = DriverHealth("a")
    h.watch(MaildirStore(tmp_path), f)
    with trio.move_on_after(1.0):
        await h.run()
    assert h.probes >= 3


async def test_without_a_store_nothing_is_probed():
    h = DriverHealth("a")
    assert h.drivers([{"name": "loop-1", "kind": "loopback", "state": "idle"}]) == [
        {"name": "loopback", "score": 100, "detail": "1/1 ports usable"}]
    with trio.move_on_after(0.2):
        await h.run()
    assert h.probes == 0


def test_disk_state_of_a_real_file_system(tmp_path):
    st = os.statvfs(tmp_path)
    free = st.f_bavail * st.f_frsize
    score, detail = disk_state(tmp_path, min_free=free // 2)
    assert score == 100 and "MiB free" in detail
    score, detail = disk_state(tmp_path, min_free=free + (1 << 30))
    assert score == 0 and "disk full" in detail and str(tmp_path) in detail
    with pytest.raises(OSError):
        disk_state(tmp_path / "missing")


async def test_a_full_data_dir_disk_scores_0_and_recovers(tmp_path):
    """A real tmpfs filled to the last byte: the disk entry drops to 0, then comes back."""
    mnt = tmp_path / "data"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("not root: this test mounts a small tmpfs, which needs root "
                    "(run the tests as root, as .ci/setup does in CI)")
    import subprocess
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    try:
        h = DriverHealth("a")
        changes = []
        h.on_change = lambda: changes.append(h.disk_score)
        h.watch(None, None, mnt)
        await h.check_disk()
        assert [d for d in h.drivers([]) if d["name"] == "disk"][0]["score"] == 100
        filler = mnt / "filler"
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * (1 << 20))
            except OSError:
                pass
        await h.check_disk()
        (disk,) = [d for d in h.drivers([]) if d["name"] == "disk"]
        assert disk["score"] == 0 and "disk full" in disk["detail"], disk
        filler.unlink()
        await h.check_disk()
        assert [d for d in h.drivers([]) if d["name"] == "disk"][0]["score"] == 100
        assert changes == [0, 100]
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
