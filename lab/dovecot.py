"""A real Dovecot IMAP server for tests: private config, passwd-file users, Maildir, on
127.0.0.1 and a free port, started as a foreground process and stopped by its PID.

::

    with DovecotServer(tmp_path) as server:        # or server.start() / server.stop()
        store = ImapStore(server.host, server.port, credentials=server.credentials)
        server.stop(); ...; server.start()          # same port, same mail

The config and the log (``dovecot.log``) go to ``tmp_path``.  The runtime directories (base_dir,
state, mail) go to a private directory under the system temp dir with mode 0755, because uid
``mail`` (the mail processes) and ``dovenull`` (imap-login) must be able to traverse the path
and pytest's own temp root is 0700.  It is removed by :meth:`cleanup` (called on exit).

Run as root, Dovecot switches to uid ``mail`` for the mail processes, as in a real install.
Run as any other user, it runs every one of its processes as that user (Dovecot's non-root
mode: ``default_internal_user``, ``default_login_user`` and the userdb's uid are the invoking
user), so the IMAP tests need no root.
"""
from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from lab.pair import free_port

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
#: mbNNNN -> its password, for mailboxes 1001..1010.
USERS = {f"mb{n}": f"secret-{n}" for n in range(1001, 1011)}

CONFIG = """\
# written by lab/dovecot.py
base_dir = {run}
state_dir = {state}
instance_name = vmha-test-{port}
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
log_path = /dev/stderr
info_log_path = /dev/stderr
first_valid_uid = {mail_uid}
{user_mode}mail_location = maildir:{mail}/%u/Maildir
mail_max_userip_connections = 50
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {users}
}}
userdb {{
  driver = static
  args = uid={mail_uid} gid={mail_gid} home={mail}/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
protocol imap {{
  mail_plugins =
}}
"""


#: the settings that make a non-root Dovecot run every process as the invoking user
USER_MODE = """\
default_internal_user = {user}
default_internal_group = {group}
default_login_user = {user}
"""


def available() -> str | None:
    """None if Dovecot can run here, else what is missing (a skip reason outside CI)."""
    if not Path(DOVECOT).is_file():
        return "Dovecot is not installed: the IMAP store's tests need it (apt-get install dovecot-imapd)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("mail")
        except KeyError:
            return "there is no user 'mail' for Dovecot's mail processes (run as non-root, or add it)"
    return None


def _mail_owner() -> tuple[int, int, str]:
    """(uid, gid, settings): uid ``mail`` as root, else the invoking user and its user mode."""
    if os.geteuid() == 0:
        mail = pwd.getpwnam("mail")
        return mail.pw_uid, mail.pw_gid, ""
    me = pwd.getpwuid(os.geteuid())
    group = grp.getgrgid(os.getegid()).gr_name
    return os.geteuid(), os.getegid(), USER_MODE.format(user=me.pw_name, group=group)


class DovecotServer:
    def __init__(self, config_dir: Path, users: dict[str, str] | None = None,
                 port: int | None = None) -> None:
        self.config_dir = Path(config_dir)
        self.users = dict(USERS if users is None else users)
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.runtime = Path(tempfile.mkdtemp(prefix="vmha-dovecot-"))
        os.chmod(self.runtime, 0o755)
        self.mail_dir = self.runtime / "mail"
        self.conf = self.config_dir / "dovecot.conf"
        self.log_path = self.config_dir / "dovecot.log"
        self._write_config()

    # ---------------------------------------------------------------- setup

    def _write_config(self) -> None:
        uid, gid, user_mode = _mail_owner()
        for sub in ("run", "state", "mail"):
            (self.runtime / sub).mkdir(exist_ok=True)
        os.chown(self.mail_dir, uid, gid)
        users = self.runtime / "users"
        users.write_text("".join(f"{u}:{{PLAIN}}{p}::::::\n" for u, p in self.users.items()))
        os.chmod(users, 0o644)
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(CONFIG.format(
            run=self.runtime / "run", state=self.runtime / "state", mail=self.mail_dir,
            users=users, port=self.port, mail_uid=uid, mail_gid=gid, user_mode=user_mode))

    def credentials(self, mailbox: str) -> tuple[str, str]:
        """The account of ``mailbox`` (mailbox id = user name); KeyError if unknown."""
        return mailbox, self.users[mailbox]

    def mailboxes(self) -> list[str]:
        return sorted(self.users)

    def reset_mail(self) -> None:
        """Remove every user's mail (Dovecot recreates an empty Maildir at the next login).
        Call only while no IMAP session is open."""
        for entry in self.mail_dir.iterdir():
            shutil.rmtree(entry, ignore_errors=True)

    # ---------------------------------------------------------------- process

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 15.0) -> None:
        if self.running:
            return
        pidfile = self.runtime / "run" / "master.pid"
        pidfile.unlink(missing_ok=True)  # left behind by a killed master
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen([DOVECOT, "-F", "-c", str(self.conf)],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dovecot exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self._greets():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"dovecot did not answer on {self.host}:{self.port} within "
                                   f"{timeout} s:\n{self.log_tail()}")
            time.sleep(0.02)

    def _greets(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=2) as s:
                return s.recv(64).startswith(b"* OK")
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to the master, SIGKILL to its process group if it does not exit in time."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        # the login/auth children exit when the master does; wait until the port is closed
        deadline = time.monotonic() + timeout
        while self._accepts() and time.monotonic() < deadline:
            time.sleep(0.02)

    def _accepts(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.runtime, ignore_errors=True)

    def __enter__(self) -> DovecotServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()
