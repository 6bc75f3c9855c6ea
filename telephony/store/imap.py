"""The message store on a real IMAP server (Dovecot): one account per mailbox (its INBOX),
through the standard library's :mod:`imaplib` in worker threads, one connection per call."""
from __future__ import annotations

import builtins
import imaplib
import re
import ssl as _ssl
from collections.abc import Callable

import trio

from telephony.core.message import VoiceMessage
from telephony.core.mime import (
    MAX_MESSAGE,
    StoredMessage,
    StoreError,
    age_key,
    build_mime,
    check_mailbox,
    check_message,
    parse_headers,
    parse_mime,
    parse_time,
    stored_message,
)
from telephony.store.base import StoreUnavailable, error_text

__all__ = ["ImapStore", "STATUS_WINDOW", "STATUS_PER_LOGIN"]


def _quote(text: str) -> str:
    """An IMAP quoted string (the text is printable ASCII)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


#: STATUS commands :meth:`ImapStore.all_counts` keeps unanswered on one connection
STATUS_WINDOW = 256
#: mailboxes counted per login of the status account: Dovecot keeps every user it opened
#: through the shared namespace in the session's memory (about 60 KB each; its default
#: ``vsz_limit`` of 256 MB ends a session after some 4,000), so 10,000 mailboxes are counted
#: on 10 connections, run side by side (at most ``max_connections``)
STATUS_PER_LOGIN = 1000
#: a STATUS refused because the status account does not see the INBOX: never created (Dovecot
#: creates it at the owner's first login or delivery), or no rights (the same answer)
_NONEXISTENT = re.compile(rb"\[NONEXISTENT\]|doesn't exist", re.I)
_STATUS_LINE = re.compile(rb'\* STATUS (?:"((?:[^"\\]|\\.)*)"|([^\s"(]+)) \(([^)]*)\)\s*\Z')


def _check_uid_imap(uid: object) -> str:
    if not isinstance(uid, str) or not re.fullmatch(r"[1-9][0-9]{0,9}", uid) or int(uid) >= 2**32:
        raise StoreError(f"bad IMAP uid {uid!r}: a number 1..4294967295")
    return uid


def _ok(typ: str, data, what: str) -> None:
    if typ != "OK":
        text = b" ".join(x for x in (data or []) if isinstance(x, bytes)).decode("ascii", "replace")
        raise StoreUnavailable(f"IMAP {what} failed: {typ} {text}".rstrip())


def _fetch_items(data) -> builtins.list[tuple[bytes, bytes | None]]:
    """(metadata, literal) pairs of a FETCH response as imaplib returns it."""
    out = []
    items = builtins.list(data or [])
    for i, item in enumerate(items):
        if isinstance(item, tuple):
            meta = item[0]
            if i + 1 < len(items) and isinstance(items[i + 1], bytes):
                meta += b" " + items[i + 1]
            out.append((meta, item[1]))
        elif isinstance(item, bytes) and (i == 0 or not isinstance(items[i - 1], tuple)):
            out.append((item, None))
    return out


def _uid_of(meta: bytes) -> int | None:
    m = re.search(rb"\bUID (\d+)", meta)
    return int(m.group(1)) if m else None


def _close(conn: imaplib.IMAP4, clean: bool) -> None:
    """End an IMAP connection: LOGOUT when it is in a known state, then close the socket."""
    try:
        if clean:
            conn.logout()
    except (OSError, imaplib.IMAP4.error):
        pass
    finally:
        try:
            conn.shutdown()
        except OSError:
            pass


class ImapStore:
    """A real IMAP server, one account per mailbox (its INBOX), via :mod:`imaplib` in worker
    threads with one connection per call (at most ``max_connections`` at once; Dovecot allows
    10 per user and address by default).

    ``credentials(mailbox) -> (user, password)``; a LookupError from it means "no account"
    (StoreError).  ``mailboxes() -> [mailbox, ...]`` lists the mailboxes :meth:`all_counts`
    reports on.  Every network error, timeout, refused login or NO/BAD answer raises
    StoreUnavailable; ``timeout`` bounds each network operation.

    ``status_account = (user, password)``: an account that may read every mailbox's INBOX,
    which it sees as ``status_name.format(mailbox=...)`` (Dovecot: a shared namespace
    ``shared/%%u/`` and an ACL giving that user ``lr``).  With it :meth:`all_counts` logs in
    once per :data:`STATUS_PER_LOGIN` mailboxes and sends their ``STATUS`` commands
    pipelined on that connection (:data:`STATUS_WINDOW` outstanding); a mailbox the account
    does not see is counted with its own login.  Without it, one login per mailbox."""

    def __init__(self, host: str, port: int, *, credentials: Callable[[str], tuple[str, str]],
                 timeout: float = 5.0, ssl: bool = False,
                 mailboxes: Callable[[], builtins.list[str]] | None = None,
                 ssl_context: _ssl.SSLContext | None = None, max_connections: int = 8,
                 status_account: tuple[str, str] | None = None,
                 status_name: str = "shared/{mailbox}/INBOX") -> None:
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"bad IMAP port {port!r}")
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"timeout must be > 0, got {timeout!r}")
        self.host = host
        self.port = port
        self.timeout = float(timeout)
        self.ssl = ssl
        self._ssl_context = ssl_context
        self._credentials = credentials
        self._mailboxes = mailboxes
        if status_account is not None and not (
                isinstance(status_account, tuple) and len(status_account) == 2
                and all(isinstance(x, str) and x for x in status_account)):
            raise ValueError("status_account must be a (user, password) pair of strings")
        if "{mailbox}" not in status_name or any(c in status_name for c in '"\\\r\n'):
            raise ValueError(f"status_name must contain {{mailbox}} and no quote, backslash or "
                             f"line end, not {status_name!r}")
        self.status_account = status_account
        self.status_name = status_name
        #: mailboxes the last all_counts() counted with their own login (not visible to the
        #: status account)
        self.status_fallbacks = 0
        self._limiter = trio.CapacityLimiter(max_connections)
        self._closed = False

    def __repr__(self) -> str:
        return f"ImapStore({self.host!r}, {self.port})"

    # ---------------------------------------------------------------- async API

    async def _run(self, mailbox: str, fn, *args, select: bool = True, readonly: bool = False):
        if self._closed:
            raise StoreUnavailable("the message store is closed")
        return await trio.to_thread.run_sync(
            lambda: self._session(mailbox, fn, *args, select=select, readonly=readonly),
            limiter=self._limiter)

    async def deliver(self, msg: VoiceMessage) -> bool:
        check_message(msg)  # a bad message is refused before any I/O
        return await self._run(msg.mailbox, self._deliver, msg)

    async def counts(self, mailbox: str) -> tuple[int, int]:
        check_mailbox(mailbox)
        return await self._run(mailbox, self._counts, select=False)

    async def list(self, mailbox: str, *, new_only: bool = False) -> builtins.list[StoredMessage]:
        check_mailbox(mailbox)
        return await self._run(mailbox, self._list, new_only, readonly=True)

    async def fetch_audio(self, mailbox: str, uid: str) -> bytes:
        check_mailbox(mailbox)
        _check_uid_imap(uid)
        return await self._run(mailbox, self._fetch, mailbox, uid, readonly=True)

    async def mark_heard(self, mailbox: str, uid: str) -> None:
        check_mailbox(mailbox)
        _check_uid_imap(uid)
        await self._run(mailbox, self._mark, mailbox, uid)

    async def all_counts(self) -> dict[str, tuple[int, int]]:
        if self._mailboxes is None:
            raise StoreError("this ImapStore was made without mailboxes=...: it cannot list "
                             "its mailboxes")
        names = sorted(set(self._mailboxes()))
        for name in names:
            check_mailbox(name)
        if self.status_account is not None:
            if self._closed:
                raise StoreUnavailable("the message store is closed")
            counted: dict[str, tuple[int, int]] = {}
            unseen: builtins.list[str] = []

            failed: builtins.list[Exception] = []

            async def chunk(part: builtins.list[str]) -> None:
                try:
                    got, hidden = await trio.to_thread.run_sync(self._status_all, part,
                                                                limiter=self._limiter)
                except (StoreUnavailable, StoreError) as e:
                    failed.append(e)
                    return
                counted.update(got)
                unseen.extend(hidden)

            async with trio.open_nursery() as nursery:
                for k in range(0, len(names), STATUS_PER_LOGIN):
                    nursery.start_soon(chunk, names[k:k + STATUS_PER_LOGIN])
            if failed:
                raise failed[0]
            unseen.sort()
            self.status_fallbacks = len(unseen)
            if not unseen:
                return {k: v for k, v in sorted(counted.items()) if v[0] or v[1]}
            # not visible to the status account: never created (no mail yet), or the account
            # lacks the rights (Dovecot answers both the same): each with its own login, which
            # also creates its INBOX, so the next count sees it
            names = unseen
        else:
            counted, unseen = {}, []
        out: dict[str, tuple[int, int]] = dict(counted)
        errors: builtins.list[Exception] = []

        async def one(name: str) -> None:
            try:
                out[name] = await self.counts(name)
            except (StoreUnavailable, StoreError) as e:
                errors.append(e)

        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(one, name)
        if errors:
            raise errors[0]
        return {k: v for k, v in sorted(out.items()) if v[0] or v[1]}

    async def aclose(self) -> None:
        self._closed = True

    # ---------------------------------------------------------------- worker-thread side

    def _status_all(self, names: builtins.list[str]
                    ) -> tuple[dict[str, tuple[int, int]], builtins.list[str]]:
        """(new, heard) of every mailbox in ``names`` the status account sees, and the names
        it does not see (``NO [NONEXISTENT]``), over one connection of the status account:
        ``STATUS <name> (MESSAGES UNSEEN)`` pipelined, at most STATUS_WINDOW unanswered.
        Any other NO/BAD, a lost connection or an answer not understood raises
        StoreUnavailable naming the mailbox."""
        where = f"{self.host}:{self.port}"
        conn = self._connect("", account=self.status_account)
        by_name = {self.status_name.format(mailbox=n): n for n in names}
        out: dict[str, tuple[int, int]] = {}
        hidden: builtins.list[str] = []
        pending: dict[bytes, str] = {}
        todo = iter(names)
        seq = 0
        clean = False

        def send_more() -> None:
            nonlocal seq
            lines = []
            while len(pending) < STATUS_WINDOW:
                name = next(todo, None)
                if name is None:
                    break
                seq += 1
                tag = f"S{seq}".encode()
                pending[tag] = name
                lines.append(tag + b" STATUS " + _quote(self.status_name.format(mailbox=name))
                             .encode("ascii") + b" (MESSAGES UNSEEN)\r\n")
            if lines:
                conn.send(b"".join(lines))

        try:
            send_more()
            while pending:
                line = conn.readline()
                if not line:
                    raise StoreUnavailable(f"IMAP server {where} closed the connection during "
                                           f"STATUS ({len(out)} of {len(names)} mailboxes counted)")
                m = _STATUS_LINE.match(line)
                if m is not None:
                    quoted, atom, items = m.groups()
                    raw = (quoted.decode("ascii", "replace").replace('\\"', '"')
                           .replace("\\\\", "\\") if quoted is not None
                           else atom.decode("ascii", "replace"))
                    name = by_name.get(raw)
                    msgs = re.search(rb"MESSAGES (\d+)", items)
                    unseen = re.search(rb"UNSEEN (\d+)", items)
                    if name is None or not (msgs and unseen):
                        raise StoreUnavailable(f"IMAP STATUS answer not understood: {line!r:.200}")
                    total, new = int(msgs.group(1)), int(unseen.group(1))
                    out[name] = (new, max(0, total - new))
                    continue
                tag, _, rest = line.partition(b" ")
                if tag in pending:
                    name = pending.pop(tag)
                    if rest.startswith(b"NO") and _NONEXISTENT.search(rest):
                        hidden.append(name)
                    elif not rest.startswith(b"OK"):
                        raise StoreUnavailable(
                            f"IMAP STATUS of mailbox {name} ({self.status_name.format(mailbox=name)}) "
                            f"as {self.status_account[0]!r} refused by {where}: "
                            f"{rest.decode('ascii', 'replace').strip()}")
                    elif name not in out:
                        raise StoreUnavailable(f"IMAP server {where} answered STATUS of mailbox "
                                               f"{name} without its counts")
                    if len(pending) <= STATUS_WINDOW // 2:
                        send_more()
                # other untagged lines (e.g. an alert) are ignored
            clean = True
            return out, sorted(hidden)
        except imaplib.IMAP4.abort as e:
            raise StoreUnavailable(f"IMAP connection to {where} lost: {error_text(e)}") from e
        except OSError as e:
            raise StoreUnavailable(f"IMAP server {where}: {error_text(e)}") from e
        finally:
            _close(conn, clean)

    def _connect(self, mailbox: str, account: tuple[str, str] | None = None) -> imaplib.IMAP4:
        if account is not None:
            user, password = account
            mailbox = f"(status account for all {mailbox or 'mailboxes'})"
        else:
            try:
                user, password = self._credentials(mailbox)
            except LookupError:
                raise StoreError(f"no IMAP account for mailbox {mailbox}") from None
        where = f"{self.host}:{self.port}"
        try:
            if self.ssl:
                ctx = self._ssl_context or _ssl.create_default_context()
                conn = imaplib.IMAP4_SSL(self.host, self.port, ssl_context=ctx,
                                         timeout=self.timeout)
            else:
                conn = imaplib.IMAP4(self.host, self.port, timeout=self.timeout)
        except (OSError, imaplib.IMAP4.error) as e:
            raise StoreUnavailable(f"cannot connect to IMAP server {where}: "
                                   f"{error_text(e)}") from e
        try:
            conn.login(user, password)
        except imaplib.IMAP4.abort as e:
            conn.shutdown()
            raise StoreUnavailable(f"IMAP server {where} dropped the connection during login: "
                                   f"{error_text(e)}") from e
        except imaplib.IMAP4.error as e:
            conn.shutdown()
            raise StoreUnavailable(f"IMAP login as {user!r} (mailbox {mailbox}) refused by "
                                   f"{where}: {error_text(e)}") from None
        except OSError as e:
            conn.shutdown()
            raise StoreUnavailable(f"IMAP server {where}: {error_text(e)}") from e
        return conn

    def _session(self, mailbox: str, fn, *args, select: bool, readonly: bool):
        conn = self._connect(mailbox)
        where = f"{self.host}:{self.port}"
        clean = False
        try:
            if select:
                typ, data = conn.select("INBOX", readonly=readonly)
                _ok(typ, data, f"SELECT INBOX of mailbox {mailbox}")
            try:
                result = fn(conn, *args)
            except StoreError:
                clean = True  # the connection is fine, the request was not
                raise
            clean = True
            return result
        except imaplib.IMAP4.abort as e:
            raise StoreUnavailable(f"IMAP connection to {where} lost: {error_text(e)}") from e
        except imaplib.IMAP4.error as e:
            raise StoreUnavailable(f"IMAP server {where}: {error_text(e)}") from e
        except OSError as e:
            raise StoreUnavailable(f"IMAP server {where}: {error_text(e)}") from e
        finally:
            _close(conn, clean)

    @staticmethod
    def _find_uids(conn: imaplib.IMAP4, message_id: str) -> builtins.list[int]:
        """UIDs of the messages whose Message-ID is exactly ``<message_id>`` (IMAP SEARCH is
        a case-insensitive substring match, so the hits are checked)."""
        want = f"<{message_id}>"
        typ, data = conn.uid("SEARCH", "HEADER", "Message-ID", _quote(want))
        _ok(typ, data, "UID SEARCH")
        hits = [x for x in (data[0] or b"").split()] if data and data[0] else []
        if not hits:
            return []
        typ, data = conn.uid("FETCH", b",".join(hits).decode(),
                             "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        _ok(typ, data, "UID FETCH")
        found = set()
        for meta, literal in _fetch_items(data):
            uid = _uid_of(meta)
            if uid is not None and literal is not None:
                if parse_headers(literal).get("message-id") == want:
                    found.add(uid)
        return sorted(found)

    def _deliver(self, conn: imaplib.IMAP4, msg: VoiceMessage) -> bool:
        if self._find_uids(conn, msg.message_id):
            return False
        data = build_mime(msg)
        when = parse_time(msg.recorded_at)
        typ, resp = conn.append("INBOX", "", imaplib.Time2Internaldate(when), data)
        _ok(typ, resp, "APPEND")
        m = re.search(rb"APPENDUID \d+ (\d+)", b" ".join(x for x in resp if isinstance(x, bytes)))
        mine = int(m.group(1)) if m else None
        # Another node may have appended the same message meanwhile: keep the oldest copy.
        # (Our copy may also be gone already: the other node's re-check expunged it.)
        conn.noop()
        uids = self._find_uids(conn, msg.message_id)
        if len(uids) > 1:
            uidset = ",".join(map(str, uids[1:]))
            typ, resp = conn.uid("STORE", uidset, "+FLAGS.SILENT", r"(\Deleted)")
            _ok(typ, resp, "UID STORE \\Deleted")
            typ, resp = conn.uid("EXPUNGE", uidset)
            _ok(typ, resp, "UID EXPUNGE")
        if mine is None:  # no UIDPLUS: we cannot tell whose copy stayed
            return len(uids) <= 1
        return bool(uids) and uids[0] == mine

    @staticmethod
    def _counts(conn: imaplib.IMAP4) -> tuple[int, int]:
        typ, data = conn.status("INBOX", "(MESSAGES UNSEEN)")
        _ok(typ, data, "STATUS")
        text = b" ".join(x for x in data if isinstance(x, bytes))
        msgs = re.search(rb"MESSAGES (\d+)", text)
        unseen = re.search(rb"UNSEEN (\d+)", text)
        if not (msgs and unseen):
            raise StoreUnavailable(f"IMAP STATUS answer not understood: {text!r}")
        total, new = int(msgs.group(1)), int(unseen.group(1))
        return new, max(0, total - new)

    @staticmethod
    def _list(conn: imaplib.IMAP4, new_only: bool) -> builtins.list[StoredMessage]:
        typ, data = conn.uid("SEARCH", "UNSEEN" if new_only else "ALL")
        _ok(typ, data, "UID SEARCH")
        hits = data[0].split() if data and data[0] else []
        if not hits:
            return []
        typ, data = conn.uid("FETCH", b",".join(hits).decode(), "(UID FLAGS BODY.PEEK[HEADER])")
        _ok(typ, data, "UID FETCH")
        found = []
        for meta, literal in _fetch_items(data):
            uid = _uid_of(meta)
            if uid is None or literal is None:
                continue
            flags = re.search(rb"FLAGS \(([^)]*)\)", meta)
            heard = bool(flags) and b"\\seen" in flags.group(1).lower()
            if new_only and heard:
                continue
            try:
                h = parse_headers(literal)
            except StoreError:
                h = {}
            m = stored_message(str(uid), h, heard)
            found.append((age_key(m), uid, m))
        found.sort(key=lambda t: t[:2])
        return [t[2] for t in found]

    @staticmethod
    def _exists(conn: imaplib.IMAP4, mailbox: str, uid: str) -> int:
        typ, data = conn.uid("FETCH", uid, "(UID RFC822.SIZE)")
        _ok(typ, data, "UID FETCH")
        for meta, _lit in _fetch_items(data):
            if _uid_of(meta) == int(uid):
                size = re.search(rb"RFC822\.SIZE (\d+)", meta)
                return int(size.group(1)) if size else 0
        raise StoreError(f"no message {uid} in mailbox {mailbox}")

    def _fetch(self, conn: imaplib.IMAP4, mailbox: str, uid: str) -> bytes:
        size = self._exists(conn, mailbox, uid)
        if size > MAX_MESSAGE:
            raise StoreError(f"message {uid} in mailbox {mailbox} is {size} bytes: at most "
                             f"{MAX_MESSAGE} are accepted")
        typ, data = conn.uid("FETCH", uid, "(UID BODY.PEEK[])")
        _ok(typ, data, "UID FETCH")
        for meta, literal in _fetch_items(data):
            if _uid_of(meta) == int(uid) and literal is not None:
                return parse_mime(literal)[1]
        raise StoreError(f"no message {uid} in mailbox {mailbox}")

    def _mark(self, conn: imaplib.IMAP4, mailbox: str, uid: str) -> None:
        self._exists(conn, mailbox, uid)
        typ, data = conn.uid("STORE", uid, "+FLAGS.SILENT", r"(\Seen)")
        _ok(typ, data, "UID STORE \\Seen")
