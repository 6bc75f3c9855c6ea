"""Replication on a real pair: two ``vmha node`` processes on loopback, the node link and the
replication channel through relays that the test can cut and heal.

Each test observes outcomes: rows read back through each node's admin socket, files on disk
and their sha256, the nodes' status (positions, checksums, counters) and event logs.  Waits are
hang guards (``GUARD``), never performance limits; bench/bench_replication.py measures speed.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
from pathlib import Path

import pytest
import trio

from failover.config import load_config
from failover.configure import load_key
from failover.core.replwire import NEED_DATA, Channel, DbChanges, DbEntry, DbSchema, DbState, ReplConnection
from failover.core.state import Role
from lab.pair import Node, Pair
from telephony.configdb import SCHEMA_VERSION, ConfigDB
from tests.integration.conftest import GUARD, until, wait_active

pytestmark = pytest.mark.multiprocess


def sub(ext: str, name: str | None = None) -> dict:
    return {"extension": ext, "name": name or f"User {ext}", "mailbox": f"mb{ext}",
            "mwi_method": "sip", "notify": [{"type": "email", "address": f"u{ext}@example.com"}]}


async def admin(node: Node, request: dict, timeout: float = 10.0) -> dict | None:
    return await trio.to_thread.run_sync(lambda: node.admin(request, timeout=timeout))


async def put(node: Node, *rows: dict) -> dict:
    return await admin(node, {"op": "db_write", "ops": [{"op": "put", "table": "subscribers", "row": r}
                                                        for r in rows]})


async def get(node: Node, ext: str) -> dict | None:
    r = await admin(node, {"op": "db_get", "table": "subscribers", "key": ext})
    return r["row"] if r and r.get("ok") else None


async def rows(node: Node) -> dict[str, dict] | None:
    r = await admin(node, {"op": "db_list", "table": "subscribers"})
    return {x["extension"]: x for x in r["rows"]} if r and r.get("ok") else None


def repl(node: Node) -> dict | None:
    st = node.status()
    return st["replication"] if st else None


def in_sync(pair: Pair) -> bool:
    """Both nodes have applied each other's whole log and their checksums agree."""
    ra, rb = repl(pair.a), repl(pair.b)
    if not (ra and rb):
        return False
    da, db = ra["db"], rb["db"]
    return (da["applied_seq"] == db["head_seq"] and db["applied_seq"] == da["head_seq"]
            and da["checksum"] == db["checksum"] and not da["diverged"] and not db["diverged"])


def files_dir(node: Node, sub: str = "streams") -> Path:
    cfg = load_config(node.config)
    return cfg.replication.files_root / sub


def sha(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # a reserved name (.vmha…): the temp file itself is never replicated, so the only
    # transfer of the content is the file's own
    tmp = path.with_name(f".vmha-{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ============================================================================ database


async def test_writes_on_the_active_appear_on_the_inactive_which_refuses_writes(pair_dir):
    with Pair(pair_dir) as pair:
        pair.start()
        await wait_active(pair, "a")
        r = await put(pair.a, sub("1001"), sub("1002"))
        assert r["ok"], r
        assert await until(lambda: pair.b.admin({"op": "db_get", "table": "subscribers", "key": "1002"})
                           .get("row"), "row on the inactive node")
        # the inactive node refuses writes, names the active node, and writes nothing
        r = await put(pair.b, sub("2001"))
        assert not r["ok"] and "the active node is a" in r["error"], r
        r = await admin(pair.b, {"op": "db_write", "ops": [{"op": "delete", "table": "subscribers",
                                                            "key": "1001"}]})
        assert not r["ok"]
        await until(lambda: in_sync(pair), "both nodes in sync")
        assert set(await rows(pair.a)) == set(await rows(pair.b)) == {"1001", "1002"}
        # bad input on the active node: a clear error, nothing written
        r = await put(pair.a, {**sub("3001"), "mwi_method": "carrier-pigeon"})
        assert not r["ok"] and "mwi_method" in r["error"]
        r = await admin(pair.a, {"op": "db_write", "ops": [
            {"op": "put", "table": "subscribers", "row": sub("3002")},
            {"op": "delete", "table": "subscribers", "key": "9999"}]})  # second op fails: all or nothing
        assert not r["ok"]
        assert set(await rows(pair.a)) == {"1001", "1002"}
        ra = repl(pair.a)["db"]
        assert ra["head_seq"] == 1 and ra["lag_changes"] == 0


async def test_secondary_writes_made_while_active_reach_the_primary_when_it_returns(pair_dir):
    with Pair(pair_dir) as pair:
        pair.start()
        await wait_active(pair, "a")
        assert (await put(pair.a, sub("1001")))["ok"]
        await until(lambda: in_sync(pair), "in sync")
        pair.a.stop()  # SIGTERM: hands over to b (after replication) and exits
        await until(lambda: pair.b.state() == "active", "secondary active after the handover")
        assert (await put(pair.b, sub("1001", "Renamed on b"), sub("1003")))["ok"]
        greeting = files_dir(pair.b) / "greetings" / "1003.wav"
        write_atomic(greeting, secrets.token_bytes(200_000))
        pair.a.start()
        await until(lambda: pair.a.status() and pair.a.status()["node"]["state"] == "inactive",
                    "primary back, inactive")
        await until(lambda: in_sync(pair), "in sync after the primary returned")
        got = await rows(pair.a)
        assert got["1001"]["name"] == "Renamed on b" and "1003" in got
        target = files_dir(pair.a) / "greetings" / "1003.wav"
        await until(lambda: sha(target) == sha(greeting), "greeting replicated back to the primary")
        assert (await admin(pair.a, {"op": "db_conflicts"}))["count"] == 0


async def test_partition_with_writes_on_both_sides_heals_with_the_primary_winning(pair_dir):
    with Pair(pair_dir) as pair:
        pair.start()
        await wait_active(pair, "a")
        assert (await put(pair.a, sub("1001"), sub("1002")))["ok"]
        await until(lambda: in_sync(pair), "in sync")
        pair.cut()
        await until(lambda: pair.b.state() == "active", "secondary active during the partition")
        # both sides write: the same row differently, and rows of their own
        assert (await put(pair.a, sub("1001", "primary's name"), sub("1101")))["ok"]
        assert (await put(pair.b, sub("1001", "secondary's name"), sub("1201")))["ok"]
        assert (await admin(pair.b, {"op": "db_write", "ops": [
            {"op": "delete", "table": "subscribers", "key": "1002"}]}))["ok"]
        pair.heal()
        await until(lambda: pair.a.state() == "active" and pair.b.state() == "inactive",
                    "heal: the primary stays active")
        await until(lambda: in_sync(pair), "databases equal after the heal", timeout=GUARD)
        ra, rb = await rows(pair.a), await rows(pair.b)
        assert ra == rb
        assert ra["1001"]["name"] == "primary's name"  # the primary's change won
        assert {"1101", "1201"} <= set(ra)  # non-conflicting rows from both sides
        conflicts_a = await admin(pair.a, {"op": "db_conflicts"})
        conflicts_b = await admin(pair.b, {"op": "db_conflicts"})
        lost = [c for c in conflicts_a["conflicts"] + conflicts_b["conflicts"]
                if "secondary's name" in json.dumps(c)]
        assert lost, (conflicts_a, conflicts_b)  # the secondary's losing change is kept
        events = [e["event"] for e in pair.a.events() + pair.b.events()]
        assert "db_conflict" in events or "db_snapshot_installed" in events


async def test_kill9_of_the_receiver_during_a_stream_of_changes_loses_nothing(pair_dir):
    with Pair(pair_dir) as pair:
        pair.start()
        await wait_active(pair, "a")
        written = []
        for i in range(300):
            r = await put(pair.a, sub(f"5{i:03d}"))
            assert r["ok"], r
            written.append(f"5{i:03d}")
            if i == 100:
                pair.b.kill()
                os.killpg(pair.b.pid, signal.SIGKILL)  # and its service
            if i == 200:
                pair.b.start()
        await until(lambda: in_sync(pair), "in sync after the receiver came back")
        assert set(await rows(pair.b)) == set(written)


async def test_kill9_of_the_active_node_manager_keeps_every_acknowledged_change(pair_dir):
    with Pair(pair_dir) as pair:
        pair.start()
        await wait_active(pair, "a")
        acked = []
        for i in range(200):
            r = await put(pair.a, sub(f"6{i:03d}"))
            assert r["ok"]
            acked.append(f"6{i:03d}")
        pair.a.kill()  # kill -9 right after the last acknowledged write
        os.killpg(pair.a.pid, signal.SIGKILL)
        await until(lambda: pair.b.state() == "active", "secondary takes over")
        pair.a.start()
        await until(lambda: in_sync(pair), "in sync after the primary returned")
        assert set(await rows(pair.b)) >= set(acked)
        assert set(await rows(pair.a)) == set(await rows(pair.b))


# ============================================================================ forged changes


def _entry(term: int, seq: int, ext: str, tmp: Path) -> DbEntry:
    """A genuine changeset made by a primary-role database in ``term``."""
    db = ConfigDB(tmp / f"forge-{term}-{seq}-{ext}.db", role=Role.PRIMARY)
    try:
        for s in range(1, seq):  # earlier entries, so the seq matches
            db.write(term, [{"op": "put", "table": "system_rules", "row": {"key": f"k{s}", "value": s}}])
        db.write(term, [{"op": "put", "table": "subscribers", "row": sub(ext)}])
        e = db.entries_after(seq - 1)[0]
        return DbEntry(term=term, seq=e.seq, digest=e.digest, changeset=e.changeset)
    finally:
        db.close()


async def _forge_session(node: Node, psk: bytes, entries: list[DbEntry], *, tamper: bool = False,
                         schema: int | None = SCHEMA_VERSION):
    """Play the primary's DB sender: say ``schema`` (None: say nothing, as an older program
    would) and our state, then send ``entries``."""
    cfg = load_config(node.config)
    stream = await trio.open_tcp_stream("127.0.0.1", cfg.replication.listen.port)
    conn = ReplConnection(keys=(psk,), node="a", role=Role.PRIMARY, channel=Channel.DB, dialer=True,
                          nonce=secrets.token_bytes(16))
    await stream.send_all(conn.hello())
    while not conn.established:
        conn.receive_data(await stream.receive_some(65536))
        while conn.next_event() is not NEED_DATA:
            pass
    if schema is not None:
        await stream.send_all(conn.send(DbSchema(schema)))
    await stream.send_all(conn.send(DbState(head_seq=entries[-1].seq, head_term=entries[-1].term,
                                            first_seq=1, applied_seq=0, applied_term=0,
                                            checksum=0, active=True)))
    frame = conn.send(DbChanges(tuple(entries)))
    if tamper:
        frame = frame[:-1] + bytes([frame[-1] ^ 1])  # bad HMAC
    await stream.send_all(frame)
    await trio.sleep(1.0)  # the node answers or drops; the outcome is read from its status
    await stream.aclose()


async def test_forged_and_stale_changesets_are_refused_and_change_nothing(pair_dir, tmp_path):
    with Pair(pair_dir) as pair:
        pair.b.start()  # the secondary alone; the test plays the primary on the DB channel
        await until(lambda: pair.b.state() == "active", "secondary active alone")
        psk = load_key(load_config(pair.b.config).node.key_file)
        good = _entry(4, 1, "7001", tmp_path)
        await _forge_session(pair.b, psk, [good])
        assert await get(pair.b, "7001") is not None  # a genuine changeset applies
        # bad HMAC: dropped by the codec, nothing applied
        await _forge_session(pair.b, psk, [_entry(4, 2, "7002", tmp_path)], tamper=True)
        # an older term than one already applied from the primary
        await _forge_session(pair.b, psk, [_entry(2, 2, "7003", tmp_path)])
        # a term the primary can never hold (odd)
        odd = _entry(4, 2, "7004", tmp_path)
        await _forge_session(pair.b, psk, [DbEntry(5, odd.seq, odd.digest, odd.changeset)])
        # a digest that does not match the changeset
        bad = _entry(4, 2, "7005", tmp_path)
        await _forge_session(pair.b, psk, [DbEntry(bad.term, bad.seq, b"\0" * 32, bad.changeset)])
        # a changeset that is not one
        junk = b"\x54\x01garbage"
        await _forge_session(pair.b, psk, [DbEntry(4, 2, hashlib.sha256(junk).digest(), junk)])
        for ext in ("7002", "7003", "7004", "7005"):
            assert await get(pair.b, ext) is None, ext
        st = repl(pair.b)
        db = st["db"]
        assert db["applied_seq"] == 1
        for reason in ("stale_term", "parity", "digest", "corrupt"):
            assert db.get(f"refused_{reason}", 0) >= 1, (reason, db)
        dropped = sum(v.get("counters", {}).get("dropped_mac", 0) if isinstance(v, dict) else 0
                      for v in st["channels"].values())
        assert dropped >= 1 or "dropped_mac" in json.dumps(st["channels"]), st["channels"]
        assert any(e["event"] == "db_refused" for e in pair.b.events())


async def test_changes_from_a_peer_with_another_schema_version_are_not_applied(pair_dir, tmp_path):
    """A node upgraded first must not take (or give) changes or a snapshot the other program
    cannot read: the database replication pauses, says why, and resumes when versions match."""
    with Pair(pair_dir) as pair:
        pair.b.start()
        await until(lambda: pair.b.state() == "active", "secondary active alone")
        psk = load_key(load_config(pair.b.config).node.key_file)
        await _forge_session(pair.b, psk, [_entry(4, 1, "7101", tmp_path)], schema=SCHEMA_VERSION + 1)
        await _forge_session(pair.b, psk, [_entry(4, 1, "7102", tmp_path)], schema=None)
        assert await get(pair.b, "7101") is None and await get(pair.b, "7102") is None
        db = repl(pair.b)["db"]
        assert db["applied_seq"] == 0 and db["refused_schema"] >= 2, db
        assert db["paused"].startswith("schema unknown (an older program) on the peer"), db
        mismatches = [e["message"] for e in pair.b.events() if e["event"] == "db_schema_mismatch"]
        assert len(mismatches) == 2, mismatches
        assert f"schema {SCHEMA_VERSION + 1} on the peer, {SCHEMA_VERSION} here" in mismatches[0]
        # the other node runs this version again: its changes apply and the pause is over
        await _forge_session(pair.b, psk, [_entry(4, 1, "7103", tmp_path)])
        assert await get(pair.b, "7103") is not None
        db = repl(pair.b)["db"]
        assert db["paused"] is None and db["applied_seq"] == 1, db
        assert any(e["event"] == "db_schema_ok" for e in pair.b.events())


# ============================================================================ files


async def test_a_50mb_transfer_interrupted_by_kill9_of_the_receiver_resumes(pair_dir):
    with Pair(pair_dir) as pair:
        pair.start()
        await wait_active(pair, "a")
        await until(lambda: repl(pair.b) and repl(pair.b)["channels"], "replication up")
        big = files_dir(pair.a, "support") / "big.bin"
        data = secrets.token_bytes(50 * 1024 * 1024)
        write_atomic(big, data)
        want = hashlib.sha256(data).hexdigest()
        target = files_dir(pair.b, "support") / "big.bin"
        tmpdir = load_config(pair.b.config).replication.files_root / ".vmha-tmp"

        def partial() -> bool:
            return tmpdir.exists() and any(p.stat().st_size > 1 << 20 for p in tmpdir.iterdir())

        await until(partial, "transfer under way", poll=0.005)
        pair.b.kill()
        os.killpg(pair.b.pid, signal.SIGKILL)
        assert not target.exists()  # never a partial file at the target path
        pair.b.start()
        await until(lambda: sha(target) == want, "50 MB file complete after the restart")
        ev = [e for e in pair.b.events() if e["event"] == "file_resumed"]
        assert ev, "the transfer resumed from the partial file"


async def test_ten_thousand_small_files_replicate(pair_dir):
    with Pair(pair_dir) as pair:
        pair.start()
        await wait_active(pair, "a")
        src = files_dir(pair.a, "prompts")
        for i in range(10_000):
            p = src / f"d{i // 500}" / f"p{i}.wav"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"RIFF" + i.to_bytes(4, "little") * 8)
        dst = files_dir(pair.b, "prompts")

        def done() -> bool:
            r = repl(pair.a)
            return bool(r and r["files"]["pending"] == 0 and dst.exists()
                        and sum(1 for _ in dst.rglob("*.wav")) == 10_000)

        await until(done, "10,000 files on the inactive node", timeout=120)
        assert (dst / "d7" / "p3500.wav").read_bytes() == (src / "d7" / "p3500.wav").read_bytes()
        # deletions propagate
        for i in range(0, 10_000, 1000):
            (src / f"d{i // 500}" / f"p{i}.wav").unlink()
        await until(lambda: sum(1 for _ in dst.rglob("*.wav")) == 9_990, "deletions replicated",
                    timeout=60)


# ============================================================================ planned handover


async def test_planned_failover_waits_until_the_peer_has_every_change(pair_dir):
    with Pair(pair_dir) as pair:
        pair.start()
        await wait_active(pair, "a")
        for i in range(50):
            assert (await put(pair.a, sub(f"8{i:03d}")))["ok"]
        write_atomic(files_dir(pair.a, "streams") / "last.wav", secrets.token_bytes(300_000))
        r = await admin(pair.a, {"op": "failover"})
        assert r["ok"], r
        await until(lambda: pair.b.state() == "active", "secondary active")
        # at the moment b became active it already had everything
        got = await rows(pair.b)
        assert {f"8{i:03d}" for i in range(50)} <= set(got)
        assert (files_dir(pair.b, "streams") / "last.wav").exists()
        ev = [e for e in pair.a.events() if e["event"] in ("handover_replicated", "handover_unreplicated")]
        assert ev and ev[-1]["event"] == "handover_replicated", ev
        # writes now go to b; a names b
        r = await put(pair.a, sub("8999"))
        assert not r["ok"] and "b" in r["error"]


# ============================================================================ snapshots, disk full


async def test_a_peer_behind_the_start_of_the_log_gets_a_snapshot(pair_dir):
    with Pair(pair_dir, extra={"replication": {"log_max": 100, "log_keep": 0}}) as pair:
        pair.start()
        await wait_active(pair, "a")
        assert (await put(pair.a, sub("1001")))["ok"]
        await until(lambda: in_sync(pair), "in sync")
        for r in pair.relays[2:]:  # replication away, node link up: nobody fails over
            r.reset()
            r.cut()
        for i in range(300):
            assert (await put(pair.a, sub(f"4{i:03d}")))["ok"]
        assert repl(pair.a)["db"]["lag_changes"] >= 300
        for r in pair.relays[2:]:
            r.heal()
        await until(lambda: in_sync(pair), "in sync through a snapshot")
        assert len(await rows(pair.b)) == 301
        assert any(e["event"] == "db_snapshot_installed" for e in pair.b.events())
        assert any(e["event"] == "db_snapshot_sent" for e in pair.a.events())


async def test_kill9_of_the_sender_during_a_50mb_transfer_loses_nothing(pair_dir):
    """The active node dies mid-transfer: the secondary takes over with no partial file; the
    file stays on the primary (its own work, never deleted) and reaches the secondary after
    the failback, resuming from the partial file the secondary kept."""
    with Pair(pair_dir) as pair:
        pair.start()
        await wait_active(pair, "a")
        await until(lambda: repl(pair.b) and repl(pair.b)["channels"], "replication up")
        data = secrets.token_bytes(50 * 1024 * 1024)
        want = hashlib.sha256(data).hexdigest()
        write_atomic(files_dir(pair.a, "support") / "big.bin", data)
        target = files_dir(pair.b, "support") / "big.bin"
        tmpdir = load_config(pair.b.config).replication.files_root / ".vmha-tmp"
        await until(lambda: tmpdir.exists() and any(p.stat().st_size > 1 << 20 for p in tmpdir.iterdir()),
                    "transfer under way", poll=0.005)
        pair.a.kill()
        os.killpg(pair.a.pid, signal.SIGKILL)
        await until(lambda: pair.b.state() == "active", "secondary takes over")
        assert not target.exists()
        pair.a.start()
        await until(lambda: pair.a.state() == "inactive", "primary back, inactive")
        await until(lambda: repl(pair.b)["files"].get("peer_only_kept") == 1, "file kept on the primary")
        assert sha(files_dir(pair.a, "support") / "big.bin") == want
        r = await admin(pair.a, {"op": "failback"})
        assert r["ok"], r
        await until(lambda: pair.a.state() == "active", "failback")
        await until(lambda: sha(target) == want, "file on the secondary after the failback")
        assert any(e["event"] == "file_resumed" for e in pair.b.events())


def _tmpfs(path: Path, size: str) -> str | None:
    """Mount a tmpfs of ``size`` on ``path``: None, or why it could not (a skip reason)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return ("not root: the full-disk test mounts a small tmpfs, which needs root "
                "(run the tests as root, as .ci/setup does in CI)")
    import subprocess
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return f"mount -t tmpfs failed (the full-disk test needs it): {r.stderr.strip()}"
    return None


def _fill(path: Path) -> Path:
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 16, 4096, 512):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


async def test_disk_full_on_the_receiver_pauses_and_resumes_with_nothing_lost(pair_dir):
    disk = pair_dir / "small-disk"
    if (why := _tmpfs(disk, "8m")) is not None:
        pytest.skip(why)
    try:
        extra_b = {"database": {"path": str(disk / "config.db")},
                   "replication": {"files_root": str(disk / "files")}}
        with Pair(pair_dir) as pair:
            import tomllib

            import tomli_w
            doc = tomllib.loads(pair.b.config.read_text())
            for k, v in extra_b.items():
                doc.setdefault(k, {}).update(v)
            pair.b.config.write_text(tomli_w.dumps(doc))
            pair.start()
            await wait_active(pair, "a")
            assert (await put(pair.a, sub("1001")))["ok"]
            await until(lambda: in_sync(pair), "in sync")
            filler = _fill(disk)
            big = {**sub("1002"), "name": "x" * 150}
            for i in range(400):  # enough pages to need more than the free space
                assert (await put(pair.a, {**big, "extension": f"2{i:03d}", "mailbox": f"m2{i:03d}"}))["ok"]
            write_atomic(files_dir(pair.a) / "greet.wav", secrets.token_bytes(2_000_000))
            await until(lambda: repl(pair.b)["db"]["paused"] == "disk full", "database paused")
            await until(lambda: repl(pair.a)["files"]["paused"] == "disk full", "files paused")
            filler.unlink()
            await until(lambda: in_sync(pair), "resumed and in sync")
            assert len(await rows(pair.b)) == 401
            await until(lambda: sha(files_dir(pair.b) / "greet.wav") == sha(files_dir(pair.a) / "greet.wav"),
                        "greeting after the disk was freed")
            events = [e["event"] for e in pair.b.events()]
            assert "db_paused" in events and "db_resumed" in events
    finally:
        import subprocess
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
