"""The message store as one Maildir per mailbox under a root directory both nodes can reach
(the default store).  The file name (the Maildir key, the message's ``uid``) is derived from the
``message_id``, so a second delivery of the same message finds the first one."""
from __future__ import annotations

import builtins
import errno
import hashlib
import os
import secrets
from pathlib import Path

import trio

from telephony.core import mime
from telephony.core.ids import MAILBOX_RE
from telephony.core.message import VoiceMessage
from telephony.core.mime import StoreError
from telephony.runtime.files import fsync_dir, write_new_file
from telephony.store.base import StoreUnavailable, error_text

__all__ = ["MaildirStore"]


def _check_uid_maildir(uid: object) -> str:
    if (not isinstance(uid, str) or not 0 < len(uid) <= 200 or uid.startswith(".")
            or any(c in uid for c in "/:") or any(ord(c) < 0x20 or ord(c) == 0x7F for c in uid)):
        raise StoreError(f"bad message uid {uid!r}")
    return uid


class MaildirStore:
    """One Maildir per mailbox: ``root/<mailbox>/{tmp,new,cur}``.

    ``root`` must exist (it is the shared store; a missing root means it is not mounted:
    StoreUnavailable); mailbox directories are created on first delivery.  The key (``uid``)
    of a message is ``sha256(message_id)`` (first 32 hex digits): the file is written to
    ``tmp/``, fsynced and hard-linked to ``new/<key>`` (an existing file of that name means a
    duplicate).  Heard = the Maildir ``S`` flag (``cur/<key>:2,S``).  The files are ordinary
    Maildir messages (:class:`mailbox.Maildir` reads them)."""

    KEY_HEX = 32

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._closed = False

    def __repr__(self) -> str:
        return f"MaildirStore({str(self.root)!r})"

    @classmethod
    def key_for(cls, message_id: str) -> str:
        return hashlib.sha256(message_id.encode("utf-8")).hexdigest()[:cls.KEY_HEX]

    # ---------------------------------------------------------------- async API

    async def _run(self, fn, *args):
        if self._closed:
            raise StoreUnavailable("the message store is closed")
        try:
            return await trio.to_thread.run_sync(fn, *args)
        except OSError as e:
            what = "disk full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else error_text(e)
            raise StoreUnavailable(f"message store {self.root}: {what}") from e

    async def deliver(self, msg: VoiceMessage) -> bool:
        mime.check_message(msg)  # a bad message is refused before any I/O
        return await self._run(self._deliver, msg)

    async def counts(self, mailbox: str) -> tuple[int, int]:
        mime.check_mailbox(mailbox)
        return await self._run(self._counts, mailbox)

    async def list(self, mailbox: str, *, new_only: bool = False) -> builtins.list[mime.StoredMessage]:
        mime.check_mailbox(mailbox)
        return await self._run(self._list, mailbox, new_only)

    async def fetch_audio(self, mailbox: str, uid: str) -> bytes:
        mime.check_mailbox(mailbox)
        _check_uid_maildir(uid)
        return await self._run(self._fetch, mailbox, uid)

    async def mark_heard(self, mailbox: str, uid: str) -> None:
        mime.check_mailbox(mailbox)
        _check_uid_maildir(uid)
        await self._run(self._mark, mailbox, uid)

    async def all_counts(self) -> dict[str, tuple[int, int]]:
        return await self._run(self._all_counts)

    async def aclose(self) -> None:
        self._closed = True

    # ---------------------------------------------------------------- worker-thread side

    def _check_root(self) -> None:
        if not self.root.is_dir():
            raise StoreUnavailable(f"message store {self.root} is not there (not mounted?)")

    def _mailbox_dir(self, mailbox: str) -> Path:
        self._check_root()
        return self.root / mailbox

    @staticmethod
    def _find(d: Path, key: str) -> Path | None:
        p = d / "new" / key
        if p.exists():
            return p
        try:
            with os.scandir(d / "cur") as it:
                for e in it:
                    if e.name == key or e.name.startswith(key + ":"):
                        return Path(e.path)
        except FileNotFoundError:
            pass
        return None

    def _deliver(self, msg: VoiceMessage) -> bool:
        data = mime.build_mime(msg)
        d = self._mailbox_dir(msg.mailbox)
        for sub in ("tmp", "new", "cur"):
            os.makedirs(d / sub, mode=0o700, exist_ok=True)
        key = self.key_for(msg.message_id)
        if self._find(d, key) is not None:
            return False
        tmp = d / "tmp" / f"{key}.{os.getpid()}.{secrets.token_hex(4)}"
        target = d / "new" / key
        try:
            write_new_file(tmp, data, 0o600)
            try:
                os.link(tmp, target)  # atomic, never replaces: an existing name is a duplicate
            except FileExistsError:
                return False
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                    raise
                if target.exists():  # no hard links here (some network file systems)
                    return False
                os.rename(tmp, target)
            fsync_dir(target.parent)
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        # A copy moved to cur/ (heard) between our look and our link: keep that one.
        try:
            with os.scandir(d / "cur") as it:
                heard_copy = any(e.name.startswith(key + ":") or e.name == key for e in it)
        except FileNotFoundError:
            heard_copy = False
        if heard_copy and target.exists():
            try:
                os.unlink(target)
                return False
            except FileNotFoundError:
                pass  # ours was just marked heard: it is the copy in cur/
        return True

    @staticmethod
    def _entries(d: Path):
        """(key, path, heard) of every message file of the Maildir ``d``."""
        for sub in ("new", "cur"):
            try:
                it = os.scandir(d / sub)
            except FileNotFoundError:
                continue
            with it:
                for e in it:
                    if e.name.startswith("."):
                        continue
                    key, _, info = e.name.partition(":")
                    heard = sub == "cur" and info.startswith("2,") and "S" in info[2:]
                    yield key, Path(e.path), heard

    def _counts(self, mailbox: str) -> tuple[int, int]:
        d = self._mailbox_dir(mailbox)
        new = heard = 0
        for _key, _path, h in self._entries(d):
            if h:
                heard += 1
            else:
                new += 1
        return new, heard

    @staticmethod
    def _read_head(path: Path) -> tuple[bytes, int]:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            buf = b""
            while len(buf) < mime.HEADER_LIMIT:
                chunk = f.read(16384)
                if not chunk:
                    break
                buf += chunk
                if b"\n\n" in buf or b"\r\n\r\n" in buf:
                    break
        return buf, st.st_mtime_ns

    def _list(self, mailbox: str, new_only: bool) -> builtins.list[mime.StoredMessage]:
        d = self._mailbox_dir(mailbox)
        found = []
        for key, path, heard in self._entries(d):
            if new_only and heard:
                continue
            try:
                head, mtime = self._read_head(path)
            except FileNotFoundError:  # renamed (marked heard) while we looked
                again = self._find(d, key)
                if again is None:
                    continue
                head, mtime = self._read_head(again)
                heard = ":2," in again.name and "S" in again.name.split(":2,", 1)[1]
                if new_only and heard:
                    continue
            try:
                h = mime.parse_headers(head)
            except StoreError:
                h = {}
            m = mime.stored_message(key, h, heard)
            found.append((mime.age_key(m), mtime, key, m))
        found.sort(key=lambda t: t[:3])
        return [t[3] for t in found]

    def _fetch(self, mailbox: str, uid: str) -> bytes:
        d = self._mailbox_dir(mailbox)
        for _ in range(3):
            p = self._find(d, uid)
            if p is None:
                break
            try:
                with open(p, "rb") as f:
                    data = f.read(mime.MAX_MESSAGE + 1)
            except FileNotFoundError:
                continue  # moved to cur/ meanwhile
            return mime.parse_mime(data)[1]
        raise StoreError(f"no message {uid} in mailbox {mailbox}")

    def _mark(self, mailbox: str, uid: str) -> None:
        d = self._mailbox_dir(mailbox)
        for _ in range(3):
            p = self._find(d, uid)
            if p is None:
                break
            flags = p.name.split(":2,", 1)[1] if ":2," in p.name else ""
            if "S" in flags:
                return
            dest = d / "cur" / f"{uid}:2,{''.join(sorted(set(flags) | {'S'}))}"
            try:
                os.rename(p, dest)
            except FileNotFoundError:
                continue
            fsync_dir(dest.parent)
            if p.parent != dest.parent:
                fsync_dir(p.parent)
            return
        raise StoreError(f"no message {uid} in mailbox {mailbox}")

    def _all_counts(self) -> dict[str, tuple[int, int]]:
        self._check_root()
        out: dict[str, tuple[int, int]] = {}
        with os.scandir(self.root) as it:
            names = sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
        for name in names:
            if not MAILBOX_RE.fullmatch(name):
                continue
            new, heard = self._counts(name)
            if new or heard:
                out[name] = (new, heard)
        return out
