"""A SIP worker process: up to 4 SIP ports (pjsua2 calls) driven by the messaging service.

The ``pjsua2-python`` wheel holds at most 4 calls per process (``PJSUA_MAX_CALLS=4``), so the
messaging service runs one worker per group of up to 4 ports.  The worker is thin: SIP and
media, no decisions.  It connects to the service's Unix socket and speaks JSON lines: the
protocol (its events, ops, limits and rules) is in :mod:`telephony.sip.core.worker_protocol`.

This module is the process: the command line and the Trio side (:class:`Worker`: the socket,
signals, and the bridge to the one thread that owns pjsua2, :mod:`telephony.sip.pjthread`).
The pjsua2 side is :mod:`telephony.sip.engine`.

Command line::

    python -m telephony.sip.worker --control PATH --name NAME --bind 127.0.0.1 \\
        --sip-port 5070 --rtp-port 40000 --ports 4 --media-dir DIR \\
        [--mode trunk|register] \\
        [--registrar sip:HOST:PORT (--user U | --users u1,u2,..) [--password-file F] \\
         [--reg-expires 300]] [--answer-timeout 30] [--tsx-timeout MS] [--log-level 0..6]

* ``--mode trunk`` (default): one local account ``sip:NAME@BIND:SIP_PORT`` that takes every
  INVITE (a SIP trunk from the PBX; nothing registers).
* ``--mode register``: one account per port, registering to ``--registrar``.  The users are
  ``--users u1,u2,..`` (exactly ``--ports`` names) or ``--user U``, which means ``U-1`` ..
  ``U-K``.  The account of user ``u`` is ``sip:u@REGISTRAR_HOST``; its Contact is the worker's
  own ``BIND:SIP_PORT``.  ``--password-file``: the first line of the file is the digest
  password of every user (realm ``*``); without it the accounts have no credentials (a
  registrar that challenges them gets them ``failed`` 401/407).  Re-registration
  (``--reg-expires``, default 300 s) is pjsua's; an INVITE whose Request-URI matches no user
  goes to the first account.
* SIP: UDP on ``BIND:SIP_PORT``.  RTP/RTCP: UDP on ``BIND``, ports ``RTP_PORT`` ..
  ``RTP_PORT + 4*K - 1`` (2 RTP/RTCP pairs per port, so a call's ports may be taken while the
  last call's close).  SDP always advertises ``BIND``.
* ``--media-dir``: relative ``path`` values of ``play`` and ``record`` are taken under it.
* ``--answer-timeout S``: an INVITE neither answered nor rejected by the service within S
  seconds (default 30) is rejected with 480.
* ``--tsx-timeout MS``: SIP transaction timeout (Timer B/F; pjsip's default is 64*T1 =
  32000 ms).  It is how long an unanswered NOTIFY waits before ``notify_result`` 408.  pjsua2
  does not expose it: the worker calls ``pjsip_tsx_set_timers`` (exported by the wheel's
  ``_pjsua2`` library) through ctypes (:mod:`telephony.sip.pjcapi`), keeping T1/T2/T4 at 500/4000/5000 ms.
* ``--log-level``: pjsip's log level (default 2) on stderr; Python logging is on stderr too.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import re
import signal
import sys

import trio

from telephony.core.control import ControlError
from telephony.core.framing import LineFramer
from telephony.runtime.files import SecretFileError, read_secret
from telephony.sip.core.worker_protocol import (
    MAX_LINE,
    MAX_WHEEL_CALLS,
    NO_ANSWER_TIMEOUT,
    RTP_PORTS_PER_CALL,
    SIP_URI,
    OpError,
    check_op,
    encode_event,
    error_event,
    take_ops,
)
from telephony.sip.engine import Engine, Options
from telephony.sip.pjclasses import INSTALL_HINT, pj, pj_message
from telephony.sip.pjthread import PjThread, PjThreadStopped

log = logging.getLogger("telephony.sip.worker")


class Worker:
    """The Trio side of one worker process: reads the service's ops from the control socket,
    hands checked ops to the engine on the pj thread, and writes the engine's events back."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.engine = Engine(opts)
        self.pjt = PjThread(self.engine, name=f"pj-{opts.name}")
        self.engine.pjt = self.pjt
        self.out_send, self.out_recv = trio.open_memory_channel[dict](math.inf)
        self.stop = trio.Event()
        self.stop_reason = ""
        self.sock: trio.SocketStream | None = None
        self.broken = False

    def request_stop(self, reason: str) -> None:
        if not self.stop.is_set():
            log.info("stopping: %s", reason)
            self.stop_reason = reason
            self.stop.set()

    async def run(self) -> int:
        o = self.opts
        self.sock = await trio.open_unix_socket(o.control)
        try:
            try:
                await self.pjt.__aenter__()
            except BaseException as exc:
                log.exception("pjsua2 start failed")
                await self._send_now({"ev": "error",
                                      "message": f"start failed: {pj_message(exc)}"})
                return 1
            self.out_send.send_nowait({
                "ev": "ready", "name": o.name, "pid": os.getpid(),
                "sip": f"{o.bind}:{o.sip_port}", "ports": o.ports, "mode": o.mode,
                "rtp": list(self.engine.rtp_range),
                "accounts": [a.name for a in self.engine.accounts]})
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer)
                    nursery.start_soon(self._forward)
                    async with trio.open_nursery() as inner:
                        inner.start_soon(self._reader)
                        inner.start_soon(self._signals)
                        inner.start_soon(self._watch_pj)
                        await self.stop.wait()
                        inner.cancel_scope.cancel()
                    await self.pjt.stop()        # graceful close; its events still go out
            finally:
                await self.pjt.stop()            # idempotent, shielded
            return 1 if self.pjt.crash is not None else 0
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await self.sock.aclose()
                except Exception:
                    pass

    async def _send_now(self, ev: dict) -> None:
        assert self.sock is not None
        try:
            await self.sock.send_all(encode_event(ev))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.broken = True

    async def _writer(self) -> None:
        async for ev in self.out_recv:
            if self.broken:
                continue
            await self._send_now(ev)
            if self.broken:
                self.request_stop("control socket broken")

    async def _forward(self) -> None:
        async with self.out_send:
            async for ev in self.pjt.events:
                self.out_send.send_nowait(ev)

    async def _watch_pj(self) -> None:
        await self.pjt.finished.wait()
        self.request_stop("pj thread ended")

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                self.request_stop(f"signal {signum}")
                return

    def _error(self, message: str, msg: dict | None = None) -> None:
        self.out_send.send_nowait(error_event(message, msg))

    async def _reader(self) -> None:
        assert self.sock is not None
        framer = LineFramer(MAX_LINE, resync=True)
        while True:
            try:
                data = await self.sock.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                data = b""
            framer.receive_data(data)
            for msg in take_ops(framer):
                if isinstance(msg, ControlError):
                    self._error(f"bad line: {msg.reason}")
                    continue
                await self._handle(msg)
                if self.stop.is_set():
                    return
            if not data:
                self.request_stop("control socket closed")
                return

    async def _handle(self, msg: dict) -> None:
        try:
            f = check_op(msg)
        except OpError as exc:
            self._error(str(exc), msg)
            return
        if f["op"] == "shutdown":
            self.request_stop("shutdown op")
            return
        try:
            result = await self.pjt.call(self.engine.dispatch, f)
        except OpError as exc:
            self._error(str(exc), msg)
            return
        except PjThreadStopped:
            self._error("the worker is shutting down", msg)
            return
        except Exception as exc:
            self._error(pj_message(exc), msg)
            return
        if isinstance(result, dict):
            self.out_send.send_nowait(result)


def parse_args(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(prog="python -m telephony.sip.worker",
                                description="SIP worker: up to 4 SIP ports on pjsua2")
    p.add_argument("--control", required=True, help="Unix socket of the messaging service")
    p.add_argument("--name", required=True)
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--sip-port", type=int, required=True)
    p.add_argument("--rtp-port", type=int, required=True)
    p.add_argument("--ports", type=int, default=MAX_WHEEL_CALLS)
    p.add_argument("--media-dir", required=True)
    p.add_argument("--mode", choices=("trunk", "register"), default="trunk")
    p.add_argument("--registrar")
    p.add_argument("--user")
    p.add_argument("--users")
    p.add_argument("--password-file")
    p.add_argument("--reg-expires", type=int, default=300)
    p.add_argument("--tsx-timeout", type=int, help="SIP transaction timeout in ms (Timer B/F)")
    p.add_argument("--answer-timeout", type=float, default=NO_ANSWER_TIMEOUT,
                   help="seconds before an unanswered INVITE gets 480 (default 30)")
    p.add_argument("--log-level", type=int, default=2, choices=range(0, 7))
    a = p.parse_args(argv)
    if not 1 <= a.ports <= MAX_WHEEL_CALLS:
        p.error(f"--ports must be 1..{MAX_WHEEL_CALLS} (the pjsua2 wheel's call limit)")
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,32}", a.name):
        p.error("--name must be 1-32 of A-Z a-z 0-9 . _ -")
    for opt in ("sip_port", "rtp_port"):
        if not 1 <= getattr(a, opt) <= 65535:
            p.error(f"--{opt.replace('_', '-')} must be a UDP port")
    if a.rtp_port + RTP_PORTS_PER_CALL * a.ports - 1 > 65535:
        p.error("--rtp-port leaves no room for the RTP range")
    if a.tsx_timeout is not None and not 500 <= a.tsx_timeout <= 64000:
        p.error("--tsx-timeout must be 500..64000 ms")
    users: list[str] = []
    password: str | None = None
    if a.mode == "register":
        if not a.registrar or not SIP_URI.fullmatch(a.registrar):
            p.error("--mode register needs --registrar sip:HOST[:PORT]")
        if a.users:
            users = [u.strip() for u in a.users.split(",")]
            if len(users) != a.ports:
                p.error("--users must name exactly --ports users")
        elif a.user:
            users = [f"{a.user}-{i}" for i in range(1, a.ports + 1)]
        else:
            p.error("--mode register needs --user or --users")
        for u in users:
            if not re.fullmatch(r"[A-Za-z0-9._~+-]{1,64}", u):
                p.error(f"bad user name {u!r}")
        if len(set(users)) != len(users):
            p.error("user names must differ")
        if a.password_file:
            try:  # a secret: refused when group or others may read it
                password = read_secret(a.password_file).partition("\n")[0].rstrip("\r")
            except SecretFileError as exc:
                p.error(f"--password-file: {exc}")
    if not 0.1 <= a.answer_timeout <= 3600:
        p.error("--answer-timeout must be 0.1..3600 s")
    if a.reg_expires < 30 or a.reg_expires > 86400:
        p.error("--reg-expires must be 30..86400 s")
    return Options(control=a.control, name=a.name, bind=a.bind, sip_port=a.sip_port,
                   rtp_port=a.rtp_port, ports=a.ports, media_dir=a.media_dir, mode=a.mode,
                   registrar=a.registrar, users=users, password=password,
                   reg_expires=a.reg_expires, tsx_timeout=a.tsx_timeout,
                   answer_timeout=a.answer_timeout, log_level=a.log_level)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    sys.stdout.flush()
    os.dup2(2, 1)   # pjlib prints its first lines (before libInit's log config) on stdout
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s worker {opts.name} %(levelname)s %(message)s")
    if pj is None:
        log.error(INSTALL_HINT)
        return 2
    worker = Worker(opts)
    code = trio.run(worker.run)
    if worker.engine.ep is not None and not worker.engine.destroyed:
        # pj was left undestroyed (pending NOTIFY, or a crash): its destructors would abort
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
