"""The index file ``<data_dir>/repl/files.db`` (SQLite through ``apsw``, not replicated).

One row per local file of the replicated directories (path, size, sha256 digest, version,
local stat signature, synced digest), the per-node version counter, and the receiver's
resumable partial temp files.  Used from worker threads only, serialised by a lock.
"""
from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Iterable

import apsw

from failover.core.manifest import IndexEntry


class IndexDb:
    """The index file."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.conn = apsw.Connection(str(path))
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        with self.conn:
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS files(path TEXT PRIMARY KEY, size INTEGER NOT NULL, "
                "digest BLOB NOT NULL, version_term INTEGER NOT NULL, "
                "version_seq INTEGER NOT NULL, st_ino INTEGER, st_size INTEGER, "
                "st_mtime_ns INTEGER, st_ctime_ns INTEGER, synced_digest BLOB) WITHOUT ROWID;"
                "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
                "CREATE TABLE IF NOT EXISTS partials(path TEXT PRIMARY KEY, name TEXT NOT NULL);")

    def load(self) -> tuple[dict[str, IndexEntry], int, dict[str, str]]:
        with self.lock:
            index = {}
            for row in self.conn.execute("SELECT path, size, digest, version_term, version_seq, "
                                         "st_ino, st_size, st_mtime_ns, st_ctime_ns, "
                                         "synced_digest FROM files"):
                p, size, digest, vt, vs, ino, ssz, mt, ct, synced = row
                sig = None if ino is None else (ino, ssz, mt, ct)
                index[p] = IndexEntry(size, bytes(digest), vt, vs, sig,
                                      None if synced is None else bytes(synced))
            seq = 0
            for (v,) in self.conn.execute("SELECT value FROM meta WHERE key = 'seq'"):
                seq = v
            partials = dict(self.conn.execute("SELECT path, name FROM partials"))
            return index, seq, partials

    def write(self, rows: list[tuple], deletes: list[str], seq: int) -> None:
        with self.lock, self.conn:
            if rows:
                self.conn.executemany(
                    "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            if deletes:
                self.conn.executemany("DELETE FROM files WHERE path = ?", [(p,) for p in deletes])
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('seq', ?)", (seq,))

    def set_partial(self, path: str, name: str) -> str | None:
        """Record ``name`` as the partial temp of ``path``; returns the previous one."""
        with self.lock, self.conn:
            old = None
            for (n,) in self.conn.execute("SELECT name FROM partials WHERE path = ?", (path,)):
                old = n
            self.conn.execute("INSERT OR REPLACE INTO partials VALUES (?, ?)", (path, name))
            return old

    def drop_partial(self, path: str) -> None:
        with self.lock, self.conn:
            self.conn.execute("DELETE FROM partials WHERE path = ?", (path,))

    def drop_partials(self, paths: Iterable[str]) -> None:
        with self.lock, self.conn:
            self.conn.executemany("DELETE FROM partials WHERE path = ?", [(p,) for p in paths])

    def close(self) -> None:
        with self.lock:
            self.conn.close()


def row(path: str, e: IndexEntry) -> tuple:
    """The ``files`` row of ``e``."""
    sig = e.sig or (None, None, None, None)
    return (path, e.size, e.digest, e.version_term, e.version_seq, *sig, e.synced)


def open_index(db_path: Path, tmp_dir: Path) -> tuple[IndexDb, dict[str, IndexEntry], int]:
    """Open and load the index; remove the temp files of ``tmp_dir`` except the resumable
    partials it records (and forget the recorded ones that are gone)."""
    os.makedirs(tmp_dir, exist_ok=True)
    db = IndexDb(db_path)
    index, seq, partials = db.load()
    keep = set(partials.values())
    for name in os.listdir(tmp_dir):
        if name in keep:
            continue
        try:
            p = tmp_dir / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        except OSError:
            pass
    gone = [p for p, n in partials.items() if not (tmp_dir / n).exists()]
    if gone:
        db.drop_partials(gone)
    return db, index, seq
