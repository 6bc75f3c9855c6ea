"""Comparing the replicated directories on disk with the index (in a worker thread).

Below a configured directory symbolic links are never followed: a path below a symlink (even
a loop) counts as gone.  A path that cannot be looked at (a ``stat`` or directory read failing
other than "not found") is reported, never counted as removed, and nothing at or below it is
either: an unreadable directory never turns into deletions on the peer.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Iterator, Mapping

from failover.core.manifest import RESERVED_PREFIX, IndexEntry, ReplicatedPaths, Sig
from failover.core.replwire import check_path
from failover.filerepl.hashing import Unstable, error_text, hash_file, sig


def name_error(rel: str) -> str | None:
    """Why a local file's name cannot be replicated, None if it can."""
    try:
        rel.encode("utf-8")
    except UnicodeError:
        return "name is not UTF-8"
    try:
        check_path(rel)
    except ValueError as e:
        return str(e)
    return None


def kind_of(st: os.stat_result) -> str:
    return "symbolic link" if stat.S_ISLNK(st.st_mode) else "special file"


class Scanner:
    """Looks at the files below ``root`` of the replicated directories."""

    def __init__(self, root: Path, paths: ReplicatedPaths):
        self.root = root
        self.paths = paths

    def hash_file(self, rel: str) -> tuple[int, bytes, Sig | None] | None:
        return hash_file(self.root / rel)

    def walk(self, top: str, skipped: list,
             errors: list) -> Iterator[tuple[str, os.stat_result]]:
        """Regular files under ``top`` (relative), not following symlinks below it.  A
        directory or entry that cannot be read goes to ``errors`` (path, why)."""
        stack = [top]
        while stack:
            d = stack.pop()
            try:
                it = os.scandir(self.root / d)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as e:
                errors.append((d, error_text(e)))
                continue
            with it:
                while True:
                    try:  # reading the directory itself can fail half-way (EIO, ESTALE)
                        entry = next(it, None)
                    except OSError as e:
                        errors.append((d, error_text(e)))
                        break
                    if entry is None:
                        break
                    name = entry.name
                    if name.startswith(RESERVED_PREFIX):
                        continue
                    rel = f"{d}/{name}"
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    except OSError as e:
                        errors.append((rel, error_text(e)))
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(rel)
                    elif stat.S_ISREG(st.st_mode):
                        why = name_error(rel)
                        if why:
                            skipped.append((rel, why))
                        else:
                            yield rel, st
                    else:
                        skipped.append((rel, kind_of(st)))

    def scan_sync(self, snap: Mapping[str, IndexEntry], only: list[str] | None):
        """Compare the disk with ``snap`` (everything, or ``only`` these paths).  Returns
        (changed, removed, unstable, skipped, errors, looked): ``errors`` are the paths that
        could not be looked at (a stat or directory read failed other than "not found"),
        ``looked`` the paths (and directories) looked at without error.  Nothing at or below
        a path in ``errors`` counts as removed."""
        changed: list[tuple[str, int, bytes, Sig | None]] = []
        removed: list[str] = []
        unstable: list[str] = []
        skipped: list[tuple[str, str]] = []
        errors: list[tuple[str, str]] = []
        seen: set[str] = set()
        directories = self.paths.directories

        def visit(rel: str, st: os.stat_result) -> None:
            seen.add(rel)
            old = snap.get(rel)
            if old is not None and old.sig is not None and old.sig == sig(st):
                return
            try:
                got = self.hash_file(rel)
            except Unstable:
                unstable.append(rel)
                return
            except OSError as e:
                errors.append((rel, error_text(e)))
                return
            if got is None:
                seen.discard(rel)
                return
            changed.append((rel, *got))

        def unknown(p: str) -> bool:
            """``p`` is at or below a path that could not be looked at."""
            return any(p == bad or p.startswith(bad + "/") for bad, _ in errors)

        if only is None:
            for top in directories:
                for rel, st in self.walk(top, skipped, errors):
                    visit(rel, st)
            removed = [p for p in snap if p not in seen and not unknown(p)]
            return changed, removed, unstable, skipped, errors, list(directories)

        # a configured directory that cannot be looked at (a symlink loop, a share that went
        # away): nothing below it is looked at, nothing below it is removed
        for top in sorted({self.paths.top_of(rel) or rel for rel in only} & set(directories)):
            try:
                os.stat(self.root / top)
            except (FileNotFoundError, NotADirectoryError):
                pass
            except OSError as e:
                errors.append((top, error_text(e)))
        prefixes = []
        for rel in only:
            if unknown(rel):
                continue
            try:  # a configured directory may be a symlink; nothing below it is followed
                st = (os.stat if rel in directories else os.lstat)(self.root / rel)
            except (FileNotFoundError, NotADirectoryError):
                st = None
            except OSError as e:
                if e.errno == errno.ELOOP and rel not in directories:
                    st = None  # below a symbolic link (a loop): not in the tree
                else:  # EACCES, EIO, ESTALE...: look again later, remove nothing
                    errors.append((rel, error_text(e)))
                    continue
            if st is not None and stat.S_ISREG(st.st_mode):
                why = name_error(rel)
                if why:
                    skipped.append((rel, why))
                else:
                    visit(rel, st)
            elif st is not None and stat.S_ISDIR(st.st_mode):
                for sub, sst in self.walk(rel, skipped, errors):
                    visit(sub, sst)
                prefixes.append(rel + "/")
            else:
                if st is not None:
                    skipped.append((rel, kind_of(st)))
                if rel in snap and rel not in seen:
                    removed.append(rel)
                prefixes.append(rel + "/")
        if prefixes:
            pre = tuple(prefixes)
            for p in snap:
                if p.startswith(pre) and p not in seen and not unknown(p):
                    try:
                        st = os.lstat(self.root / p)
                        gone = not stat.S_ISREG(st.st_mode)
                    except (FileNotFoundError, NotADirectoryError):
                        gone = True
                    except OSError as e:
                        if e.errno == errno.ELOOP:
                            gone = True  # below a symbolic link (a loop): not in the tree
                        else:
                            errors.append((p, error_text(e)))
                            continue
                    if gone:
                        removed.append(p)
        looked = [rel for rel in only if not unknown(rel)]
        return changed, removed, unstable, skipped, errors, looked
