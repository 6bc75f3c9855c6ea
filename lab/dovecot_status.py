"""The test Dovecot (``dovecot.py``) plus a **status account** that may read every user's
INBOX: what ``ImapStore(status_account=...)`` counts all mailboxes with, on one connection.

Every user's mail is also visible as ``shared/<user>/INBOX`` (a Dovecot shared namespace), and
a global ACL file gives the status account ``lr`` (lookup, read: enough for ``STATUS``) on
every mailbox, and each owner its full rights, as before::

    with StatusDovecot(tmp_path, users={...}) as server:
        store = ImapStore(server.host, server.port, credentials=server.credentials,
                          mailboxes=server.mailboxes, status_account=server.status_account)

``deliver_file(user, data, seen)`` writes a message straight into a user's Maildir (what an
LDA does; Dovecot picks it up at the next access): the benchmark fills 10,000 mailboxes so.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from lab.dovecot import USERS, DovecotServer

STATUS_USER = "vmha-status"

EXTRA = """\
# written by lab/dovecot_status.py: the status account's view of every INBOX
namespace inbox {{
  inbox = yes
  separator = /
  prefix =
}}
namespace shared {{
  type = shared
  separator = /
  prefix = shared/%%u/
  location = maildir:{mail}/%%u/Maildir
  subscriptions = no
  list = no
}}
protocol imap {{
  mail_plugins = $mail_plugins acl
}}
plugin {{
  acl = vfile:{acl}
}}
"""


class StatusDovecot(DovecotServer):
    def __init__(self, config_dir: Path, users: dict[str, str] | None = None,
                 port: int | None = None) -> None:
        self.status_password = secrets.token_hex(8)
        users = dict(USERS if users is None else users)
        self.mail_users = sorted(users)
        super().__init__(config_dir, {**users, STATUS_USER: self.status_password}, port)

    @property
    def status_account(self) -> tuple[str, str]:
        return STATUS_USER, self.status_password

    def mailboxes(self) -> list[str]:
        return list(self.mail_users)

    def _write_config(self) -> None:
        super()._write_config()
        acl = self.runtime / "global-acl"
        acl.write_text(f"* owner lrwstipekxa\n* user={STATUS_USER} lr\n")
        os.chmod(acl, 0o644)
        with open(self.conf, "a") as f:
            f.write(EXTRA.format(mail=self.mail_dir, acl=acl))

    def deliver_file(self, user: str, name: str, data: bytes, *, seen: bool = False) -> None:
        """Put one message into ``user``'s Maildir directly (``cur/NAME:2,S`` if ``seen``,
        else ``new/NAME``), owned by the mail user like Dovecot's own files."""
        base = self.mail_dir / user / "Maildir"
        for sub in ("tmp", "new", "cur"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        tmp = base / "tmp" / name
        tmp.write_bytes(data)
        dest = base / ("cur" if seen else "new") / (f"{name}:2,S" if seen else name)
        os.rename(tmp, dest)

    def chown_mail(self) -> None:
        """Give the files written by :meth:`deliver_file` to the mail processes' user."""
        st = os.stat(self.mail_dir)
        for root, dirs, files in os.walk(self.mail_dir):
            for n in dirs + files:
                os.lchown(os.path.join(root, n), st.st_uid, st.st_gid)
