"""A real SMTP server process for tests (aiosmtpd).

As a script::

    python lab/smtp_server.py --port P --maildir DIR [--host 127.0.0.1]
        [--auth USER:PASSWORD]

stores every message it accepts as ``DIR/NNNNNN.eml`` (the bytes received) with its envelope
in ``DIR/NNNNNN.json`` (``mail_from``, ``rcpt_tos``), each written to a temporary name and
renamed, so a reader never sees half a message.  It prints ``ready HOST:PORT`` once it
accepts connections and exits 0 on SIGTERM (or SIGINT).

As a module: :class:`SmtpServerProcess` / :func:`smtp_server` start it on a free port as a
child process, wait until the port accepts connections, and stop it by PID.  Nothing here
imports aiosmtpd unless run as the script.
"""
from __future__ import annotations

import argparse
import email
import email.policy
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from email.message import EmailMessage
from pathlib import Path
from typing import Iterator

SCRIPT = Path(__file__).resolve()
GUARD = 20.0  # seconds: only a guard against a hang


# --------------------------------------------------------------------------- the server

class _MaildirHandler:
    def __init__(self, maildir: Path) -> None:
        self.maildir = maildir
        self._lock = threading.Lock()
        self._n = len(list(maildir.glob("*.eml")))

    async def handle_DATA(self, server, session, envelope) -> str:  # aiosmtpd hook
        with self._lock:
            self._n += 1
            n = self._n
        base = self.maildir / f"{n:06d}"
        meta = {"mail_from": envelope.mail_from, "rcpt_tos": list(envelope.rcpt_tos),
                "peer": list(session.peer) if session.peer else None}
        for suffix, data in ((".json", json.dumps(meta).encode()),
                             (".eml", envelope.original_content or envelope.content)):
            tmp = base.with_suffix(suffix + ".tmp")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, base.with_suffix(suffix))
        return "250 Message accepted for delivery"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="test SMTP server storing messages in a directory")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--maildir", type=Path, required=True)
    ap.add_argument("--auth", help="USER:PASSWORD: require AUTH (PLAIN/LOGIN, no TLS)")
    args = ap.parse_args(argv)
    args.maildir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")

    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    params: dict = {}
    if args.auth:
        user, _, password = args.auth.partition(":")

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = (isinstance(auth_data, LoginPassword)
                  and auth_data.login == user.encode() and auth_data.password == password.encode())
            return AuthResult(success=ok, handled=False)  # False: the server answers 535

        params = {"authenticator": authenticator, "auth_required": True,
                  "auth_require_tls": False}

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    controller = Controller(_MaildirHandler(args.maildir), hostname=args.host, port=args.port,
                            **params)
    controller.start()
    print(f"ready {args.host}:{args.port}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        controller.stop()
    return 0


# --------------------------------------------------------------------------- test helpers

def port_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class SmtpServerProcess:
    """``python lab/smtp_server.py`` as a child process.  ``start()`` and
    ``stop()`` may be repeated (the port stays the same, so a client configured once reaches
    the server again after a restart)."""

    def __init__(self, maildir: Path, *, host: str = "127.0.0.1", port: int | None = None,
                 auth: str | None = None) -> None:
        self.maildir = Path(maildir)
        self.host = host
        from lab.pair import free_port  # here: the script itself runs without the repo on sys.path
        self.port = port or free_port(host)
        self.auth = auth
        self.proc: subprocess.Popen | None = None
        self.log = self.maildir.parent / f"smtp-server-{self.port}.log"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        if self.running:
            raise RuntimeError(f"SMTP server already running (pid {self.pid})")
        cmd = [sys.executable, str(SCRIPT), "--host", self.host, "--port", str(self.port),
               "--maildir", str(self.maildir)]
        if self.auth:
            cmd += ["--auth", self.auth]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + GUARD
        while not port_accepts(self.host, self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"SMTP server exited with {self.proc.returncode}:\n"
                                   + self.log.read_text(errors="replace"))
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("SMTP server did not accept connections in time")
            time.sleep(0.02)

    def stop(self) -> int | None:
        """SIGTERM by PID, wait; SIGKILL if it does not exit.  Returns the exit status."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                return proc.wait(timeout=GUARD)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                return proc.wait()
        return proc.returncode

    def files(self) -> list[Path]:
        return sorted(self.maildir.glob("*.eml"))

    def messages(self) -> list[EmailMessage]:
        out = []
        for path in self.files():
            with open(path, "rb") as f:
                out.append(email.message_from_binary_file(f, policy=email.policy.default))
        return out

    def envelopes(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted(self.maildir.glob("*.json"))]


@contextmanager
def smtp_server(maildir: Path, **kw) -> Iterator[SmtpServerProcess]:
    """Start the server on a free port; stop it by PID on the way out."""
    server = SmtpServerProcess(maildir, **kw)
    try:
        server.start()
        yield server
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
