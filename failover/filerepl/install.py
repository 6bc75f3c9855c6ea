"""The receiver's disk work (in worker threads): temp files, atomic install, deletions, and
conflict preservation.

Atomic: the data goes to a temp file under ``<root>/.vmha-tmp/`` (small files are gathered in
memory and written at ``FileEnd``), the whole-file sha256 is checked, then fsync, rename over
the target, fsync of the directory.  A file announced with ``wait_offer`` has a temp file
named by sha256(path + digest) that survives a lost connection or a crash (recorded in the
index as a *partial*), and its length is offered so the transfer resumes.

A local file that must be overwritten or deleted and whose content is neither the synced
content nor the incoming one is first moved to ``<data_dir>/conflicts/files/<term>-<seq>/
<path>`` (version of the incoming change).
"""
from __future__ import annotations

import errno
import hashlib
import os
import secrets
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import apsw

from failover.core.manifest import IndexEntry, ReplicatedPaths, Sig
from failover.core.transfer import Incoming
from failover.filerepl.hashing import HASH_BLOCK, Unstable, hash_file, sig
from failover.filerepl.index import IndexDb
from telephony.runtime.files import fsync_dir

DIGEST_MISMATCH = "digest mismatch"


@dataclass(eq=False)
class TempFile:
    """The temp file of an incoming transfer (``Incoming.handle``)."""
    tmp: Path | None
    fd: int | None = None
    hasher: Any = None
    offset: int = 0  # bytes it holds (a resumable partial)
    resumable: bool = False

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            try:
                os.close(fd)
            except OSError:
                pass

    def remove(self) -> None:
        if self.tmp is not None:
            tmp, self.tmp = self.tmp, None
            try:
                os.unlink(tmp)
            except OSError:
                pass


class Installer:
    """Writes what the peer sends below ``root``; ``db()`` is the open index (None once
    replication stopped)."""

    def __init__(self, root: Path, paths: ReplicatedPaths, tmp_dir: Path, conflicts_dir: Path,
                 db: Callable[[], IndexDb | None]):
        self.root = root
        self.paths = paths
        self.tmp_dir = tmp_dir
        self.conflicts_dir = conflicts_dir
        self.db = db

    def _need_db(self) -> IndexDb:
        db = self.db()
        if db is None:
            raise OSError(errno.ESHUTDOWN, "file replication is stopped")
        return db

    def write_all(self, fd: int, data) -> None:
        """Seam for tests (disk-full injection): write all of ``data`` to ``fd``."""
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]

    def local_digest(self, rel: str, st: os.stat_result, info: IndexEntry | None) -> bytes:
        """The digest of the file at ``rel`` (``st``), from the index if unchanged."""
        if info is not None and info.sig is not None and info.sig == sig(st):
            return info.digest
        got = None
        for _ in range(3):
            try:
                got = hash_file(self.root / rel)
                break
            except Unstable:
                continue
        if got is None:
            return b""  # unreadable or changing: never equal to a digest
        return got[1]

    # ---- temp files

    def open_incoming(self, inc: Incoming, info: IndexEntry | None) -> TempFile | None:
        """The temp file for ``inc``: resumable (with what it holds) if ``wait_offer``, else
        a new one; None if the target already holds the content."""
        os.makedirs(self.tmp_dir, exist_ok=True)
        if not inc.wait_offer:
            tmp = self.tmp_dir / f"t-{secrets.token_hex(8)}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            return TempFile(tmp, fd, hashlib.sha256())
        try:
            st = os.lstat(self.root / inc.path)
            if stat.S_ISREG(st.st_mode) and st.st_size == inc.size \
                    and self.local_digest(inc.path, st, info) == inc.digest:
                return None
        except (FileNotFoundError, NotADirectoryError):
            pass
        name = "r-" + hashlib.sha256(inc.path.encode("utf-8") + inc.digest).hexdigest()
        old = self._need_db().set_partial(inc.path, name)
        if old is not None and old != name:
            try:
                os.unlink(self.tmp_dir / old)
            except FileNotFoundError:
                pass
        tmp = self.tmp_dir / name
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            have = os.fstat(fd).st_size
            if have > inc.size:
                os.ftruncate(fd, 0)
                have = 0
            h = hashlib.sha256()
            off = 0
            while off < have:
                data = os.pread(fd, min(HASH_BLOCK, have - off), off)
                if not data:
                    break
                h.update(data)
                off += len(data)
            if off != have:
                os.ftruncate(fd, off)
            os.lseek(fd, off, os.SEEK_SET)
        except BaseException:
            os.close(fd)
            raise
        return TempFile(tmp, fd, h, off, resumable=True)

    def write_chunk(self, tf: TempFile, data: bytes) -> None:
        self.write_all(tf.fd, data)
        tf.hasher.update(data)

    def discard(self, inc: Incoming, keep: bool) -> None:
        """Close ``inc``'s temp file; remove it (and forget the partial) unless ``keep``."""
        tf: TempFile = inc.handle
        tf.close()
        if not keep:
            tf.remove()
            db = self.db()
            if inc.resumable and db is not None:
                try:
                    db.drop_partial(inc.path)
                except apsw.Error:
                    pass

    # ---- install

    def commit(self, inc: Incoming, infos: dict[str, IndexEntry | None]
               ) -> tuple[str | None, Sig | None, list, list]:
        """Verify and install; returns (error, sig of the installed file, conflicts,
        displaced paths).  A digest mismatch removes the temp file."""
        conflicts: list = []
        displaced: list = []
        target = self.root / inc.path
        if inc.mode == "have":
            try:
                st = os.lstat(target)
            except (FileNotFoundError, NotADirectoryError):
                return "target changed", None, conflicts, displaced
            if not (stat.S_ISREG(st.st_mode)
                    and self.local_digest(inc.path, st, infos.get(inc.path)) == inc.digest):
                return "target changed", None, conflicts, displaced
            return None, sig(st), conflicts, displaced
        if inc.mode == "mem":
            if hashlib.sha256(inc.buf).digest() != inc.digest:
                return DIGEST_MISMATCH, None, conflicts, displaced
            tmp = self.tmp_dir / f"t-{secrets.token_hex(8)}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            inc.handle = tf = TempFile(tmp)  # removed by a discard if the install fails
            try:
                self.write_all(fd, inc.buf)
                os.fsync(fd)
            finally:
                os.close(fd)
        else:
            tf = inc.handle
            if tf.hasher.digest() != inc.digest:
                tf.close()
                tf.remove()
                if inc.resumable:
                    self._need_db().drop_partial(inc.path)
                return DIGEST_MISMATCH, None, conflicts, displaced
            os.fsync(tf.fd)
            tf.close()
        term, seq = inc.version_term, inc.version_seq
        self._ensure_parents(inc.path, infos, term, seq, conflicts, displaced)
        try:
            st = os.lstat(target)
        except (FileNotFoundError, NotADirectoryError):
            st = None
        if st is not None:
            self._displace(inc.path, st, infos.get(inc.path), inc.digest, term, seq, conflicts,
                           displaced, False)
        os.rename(tf.tmp, target)
        tf.tmp = None
        fsync_dir(target.parent)
        if inc.resumable:
            self._need_db().drop_partial(inc.path)
        return None, sig(os.lstat(target)), conflicts, displaced

    def delete(self, rel: str, term: int, seq: int, info: IndexEntry | None) -> tuple[list, list]:
        """Delete the file at ``rel`` (moving it to the conflicts if it was changed here);
        returns (conflicts, displaced paths)."""
        conflicts: list = []
        displaced: list = []
        try:
            st = os.lstat(self.root / rel)
        except (FileNotFoundError, NotADirectoryError):
            return conflicts, [(rel, False)]
        if stat.S_ISREG(st.st_mode):
            self._displace(rel, st, info, None, term, seq, conflicts, displaced, True)
            if not conflicts:
                fsync_dir((self.root / rel).parent)
        # a directory, symlink or special file there is not ours to delete
        return conflicts, displaced

    def _to_conflicts(self, rel: str, term: int, seq: int) -> Path:
        """Move whatever is at ``rel`` to the conflicts directory; returns where."""
        src = self.root / rel
        dest = self.conflicts_dir / f"{term}-{seq}" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        n = 0
        base = dest
        while os.path.lexists(dest):
            n += 1
            dest = base.with_name(f"{base.name}.{n}")
        try:
            os.rename(src, dest)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            shutil.move(str(src), str(dest))
        fsync_dir(dest.parent)
        fsync_dir(src.parent)
        return dest

    def _displace(self, rel: str, st: os.stat_result, info: IndexEntry | None,
                  incoming: bytes | None, term: int, seq: int, conflicts: list,
                  displaced: list, remove: bool) -> None:
        """Something is at ``rel`` and must go (or be overwritten, when ``remove`` is False):
        move it to the conflicts directory unless it is the synced or the incoming content."""
        if stat.S_ISREG(st.st_mode):
            d = self.local_digest(rel, st, info)
            synced = info.synced if info is not None else None
            if d == incoming or (synced is not None and d == synced):
                if remove:
                    os.unlink(self.root / rel)
                    displaced.append((rel, False))
                return
        elif stat.S_ISDIR(st.st_mode):
            try:
                os.rmdir(self.root / rel)
                displaced.append((rel, True))
                return
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
        dest = self._to_conflicts(rel, term, seq)
        conflicts.append((rel, str(dest)))
        displaced.append((rel, stat.S_ISDIR(st.st_mode)))

    def _ensure_parents(self, rel: str, infos: dict, term: int, seq: int, conflicts: list,
                        displaced: list) -> None:
        top = self.paths.top_of(rel)
        assert top is not None
        os.makedirs(self.root / top, exist_ok=True)
        cur = top
        for comp in rel[len(top) + 1:].split("/")[:-1]:
            cur = f"{cur}/{comp}"
            p = self.root / cur
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                os.mkdir(p)
                fsync_dir(p.parent)
                continue
            if stat.S_ISDIR(st.st_mode):
                continue
            self._displace(cur, st, infos.get(cur), None, term, seq, conflicts, displaced, True)
            os.mkdir(p)
            fsync_dir(p.parent)
