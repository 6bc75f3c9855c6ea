"""A built-in SIP caller: one real SIP call from a small pjsua2 user agent, run as its own process.

It plays the PBX that forwards a call to voice mail: ``vmha demo`` uses it when SIPp is not
installed, and it is handy by hand::

    python -m lab.sip_caller --bind 127.0.0.1 --to sip:5000@127.0.0.1:5070 \\
        --diversion 1001 --reason user-busy --from 0301234567 --wav caller.wav --hold 8 [--json]

* The INVITE goes to ``--to`` from ``sip:FROM@BIND:PORT`` (UDP; ``--sip-port``, default any
  free port) with ``Diversion: <sip:DIVERSION@HOST>;reason=REASON;counter=1`` (``HOST`` is
  the host of ``--to``; no Diversion without ``--diversion``).
* Once the call is answered and its audio is up, ``--wav`` (16-bit PCM mono, any rate) is
  played into the call once; afterwards the caller sends silence.
* The call ends when the callee hangs up, or after ``--hold`` seconds from the answer (the
  caller hangs up), or when no final answer came within ``--answer-timeout`` (CANCEL).
* Result: one line on stdout, JSON with ``--json``::

      {"answered": true, "code": 200, "reason": "OK", "duration": 3.42, "by": "remote"}

  ``code``/``reason``: the final answer to the INVITE (200 when answered; 486, 480, 408 ...
  when not); ``duration``: seconds from the answer to the end (0 when not answered); ``by``:
  who ended the call (``remote``, ``local``, or ``timeout`` when nothing answered).
  Exit status 0 when answered, 1 when not, 2 on a usage or start-up error.

pjsua2 rules (as in :mod:`telephony.sip.worker`): one thread owns pjsua2 (``threadCnt=0``,
``mainThreadOnly``, a ``libHandleEvents`` loop), the null sound device with
``sndAutoCloseTime=-1``, SIP and RTP bound to and advertising ``--bind`` only, references
kept to every pjsua2 object while pj may call it, and every callback guarded (an exception
must not cross into pjsua's C stack).  pjlib prints its first lines on stdout, so the result
line goes to the original stdout and everything else to stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import time
from typing import Any

from telephony.sip.pjthread import endpoint_config

try:
    import pjsua2 as pj
except ImportError:  # pragma: no cover - depends on the machine
    pj = None

REASONS = ("user-busy", "no-answer", "unconditional", "deflection", "unavailable",
           "time-of-day", "do-not-disturb", "follow-me", "out-of-service", "away", "unknown")
_USER = re.compile(r"[A-Za-z0-9._~+-]{1,64}")
_URI = re.compile(r"sips?:(?:[^@\s<>\"]+@)?([^\s<>\";:]+)(?::\d+)?(?:;[^\s<>\"]*)?")


def host_of(uri: str) -> str:
    m = _URI.fullmatch(uri)
    if not m:
        raise ValueError(f"not a sip: URI: {uri!r}")
    return m.group(1)


def diversion_header(number: str, host: str, reason: str) -> str:
    return f"<sip:{number}@{host}>;reason={reason};counter=1"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lab.sip_caller",
                                description="Place one SIP call (a PBX forwarding to voice mail).")
    p.add_argument("--bind", default="127.0.0.1", help="local address (SIP and RTP)")
    p.add_argument("--sip-port", type=int, default=0, help="local SIP port (default: any)")
    p.add_argument("--to", required=True, help="Request-URI, e.g. sip:5000@127.0.0.1:5070")
    p.add_argument("--from", dest="from_user", default="0301234567", help="caller's number")
    p.add_argument("--diversion", default="", help="forwarding number (Diversion header)")
    p.add_argument("--reason", default="user-busy", choices=REASONS, help="Diversion reason")
    p.add_argument("--wav", default="", help="16-bit PCM mono WAV played once answered")
    p.add_argument("--hold", type=float, default=10.0, help="hang up this long after the answer")
    p.add_argument("--answer-timeout", type=float, default=15.0,
                   help="give up (CANCEL) without a final answer after this long")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    p.add_argument("--log-level", type=int, default=1, choices=range(7), help="pjsip log level")
    a = p.parse_args(argv)
    try:
        host_of(a.to)
    except ValueError as e:
        p.error(str(e))
    if not _USER.fullmatch(a.from_user):
        p.error("--from must be a SIP user name (digits, letters, . _ ~ + -)")
    if a.diversion and not _USER.fullmatch(a.diversion):
        p.error("--diversion must be a SIP user name (digits, letters, . _ ~ + -)")
    if not 0 <= a.sip_port <= 65535:
        p.error("--sip-port must be 0..65535")
    if not 0 < a.hold <= 3600 or not 0 < a.answer_timeout <= 3600:
        p.error("--hold and --answer-timeout must be 0..3600 s")
    if a.wav and not os.path.isfile(a.wav):
        p.error(f"--wav: no such file {a.wav!r}")
    return a


class Caller:
    """The pj state of one call; every method runs on the one thread that owns pjsua2."""

    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        self.ep: Any = None
        self.acc: Any = None
        self.call: Any = None
        self.player: Any = None
        self.info: Any = None  # the last CallInfo (its media list points into it)
        self.answered_at: float | None = None
        self.ended_at: float | None = None
        self.code = 0
        self.reason = ""
        self.by = ""
        self.hanging_up = False
        self.media_up = False
        self.errors: list[str] = []

    # ------------------------------------------------------------------ callbacks (guarded)

    def guard(self, what: str, fn, *args: Any) -> None:
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - never into pjsua's C stack
            self.errors.append(f"{what}: {type(e).__name__}: {e}")
            print(f"caller: {what} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)

    def on_state(self, call: Any) -> None:
        ci = call.getInfo()
        self.info = ci
        if ci.state == pj.PJSIP_INV_STATE_CONFIRMED and self.answered_at is None:
            self.answered_at = time.monotonic()
            self.code, self.reason = 200, "OK"
        elif ci.state == pj.PJSIP_INV_STATE_DISCONNECTED and self.ended_at is None:
            self.ended_at = time.monotonic()
            if self.answered_at is None:
                self.code, self.reason = ci.lastStatusCode, ci.lastReason
            if not self.by:
                self.by = "local" if self.hanging_up else "remote"

    def on_media(self, call: Any) -> None:
        ci = call.getInfo()
        self.info = ci
        for i, m in enumerate(ci.media):
            if m.type == pj.PJMEDIA_TYPE_AUDIO and m.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                if self.media_up:
                    return
                self.media_up = True
                if self.opts.wav:
                    player = pj.AudioMediaPlayer()
                    player.createPlayer(self.opts.wav, pj.PJMEDIA_FILE_NO_LOOP)
                    self.player = player  # keep it: dropping it stops (and frees) the port
                    player.startTransmit(call.getAudioMedia(i))
                return

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        o = self.opts
        ep = pj.Endpoint()
        self.ep = ep
        ep.libCreate()
        ep.libInit(endpoint_config(pj, max_calls=1, user_agent="vmha-sip-caller",
                                   log_level=o.log_level))
        ep.audDevManager().setNullDev()
        tcfg = pj.TransportConfig()
        tcfg.port = o.sip_port
        tcfg.boundAddress = o.bind
        tcfg.publicAddress = o.bind
        tid = ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
        port = ep.transportGetInfo(tid).localName.rsplit(":", 1)[-1]
        ep.libStart()
        for codec, prio in (("PCMU/8000", 255), ("PCMA/8000", 254)):
            try:
                ep.codecSetPriority(codec, prio)
            except Exception:  # noqa: BLE001, S110
                pass
        acfg = pj.AccountConfig()
        acfg.idUri = f"sip:{o.from_user}@{o.bind}:{port}"
        acfg.sipConfig.transportId = tid
        mt = acfg.mediaConfig.transportConfig
        mt.boundAddress = o.bind  # SDP must not advertise another interface
        mt.publicAddress = o.bind
        mt.port = 0  # RTP on any free port
        acfg.mwiConfig.enabled = False
        acc = pj.Account()
        acc.create(acfg, True)
        self.acc = acc

        caller = self

        class Call(pj.Call):
            def onCallState(self, prm: Any) -> None:
                caller.guard("call state", caller.on_state, self)

            def onCallMediaState(self, prm: Any) -> None:
                caller.guard("media state", caller.on_media, self)

        prm = pj.CallOpParam(True)
        if o.diversion:
            h = pj.SipHeader()
            h.hName = "Diversion"
            h.hValue = diversion_header(o.diversion, host_of(o.to), o.reason)
            prm.txOption.headers.append(h)
        self.call = Call(acc)
        self.call.makeCall(o.to, prm)

    def spin(self, until, seconds: float) -> bool:
        end = time.monotonic() + seconds
        while not until():
            if time.monotonic() >= end:
                return False
            self.ep.libHandleEvents(10)
        return True

    def hangup(self) -> None:
        if self.call is None or self.ended_at is not None:
            return
        self.hanging_up = True
        try:
            self.call.hangup(pj.CallOpParam(True))
        except Exception as e:  # noqa: BLE001 - already gone
            self.errors.append(f"hangup: {e}")
        self.spin(lambda: self.ended_at is not None, 3)

    def run(self, stop) -> None:
        o = self.opts
        self.start()

        def finished() -> bool:
            return self.ended_at is not None or stop()

        self.spin(lambda: finished() or self.answered_at is not None, o.answer_timeout)
        if self.answered_at is None and self.ended_at is None:
            self.by = "timeout" if not stop() else "local"
            self.hangup()  # CANCEL
            if self.ended_at is None or not self.code:
                self.code, self.reason = 408, "no final answer"
        elif self.answered_at is not None:
            self.spin(finished, max(0.0, o.hold - (time.monotonic() - self.answered_at)))
            self.hangup()

    def close(self) -> None:
        if self.ep is None:
            return
        self.player = None  # its conference port goes with it
        self.call = None
        self.info = None
        try:
            self.ep.hangupAllCalls()
            self.spin(lambda: False, 0.05)
            if self.acc is not None:
                self.acc.shutdown()
            self.acc = None
            self.ep.libDestroy()
        except Exception as e:  # noqa: BLE001
            self.errors.append(f"libDestroy: {e}")
        self.ep = None

    def result(self) -> dict:
        answered = self.answered_at is not None
        duration = ((self.ended_at or time.monotonic()) - self.answered_at) if answered else 0.0
        return {"answered": answered, "code": self.code, "reason": self.reason,
                "duration": round(duration, 2), "by": self.by or "local"}


def _pj_message(exc: BaseException) -> str:
    if pj is not None and isinstance(exc, pj.Error):
        return f"{exc.title}: {exc.reason}" if exc.title else str(exc.reason)
    return f"{type(exc).__name__}: {exc}"


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    out = os.fdopen(os.dup(1), "w")  # the result line; pjlib's own prints go to stderr
    sys.stdout.flush()
    os.dup2(2, 1)
    if pj is None:
        print("caller: pjsua2 is not installed (pip install pjsua2-python)", file=sys.stderr)
        return 2
    stopping: list[int] = []
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda signum, frame: stopping.append(signum))
    caller = Caller(opts)
    try:
        caller.run(lambda: bool(stopping))
    except Exception as e:  # noqa: BLE001 - a start-up failure (port taken, bad URI ...)
        print(f"caller: {_pj_message(e)}", file=sys.stderr)
        caller.close()
        res = {"answered": False, "code": 0, "reason": f"caller failed: {type(e).__name__}",
               "duration": 0.0, "by": "local"}
        try:
            print(json.dumps(res) if opts.json else f"call failed: {res['reason']}", file=out,
                  flush=True)
        except BrokenPipeError:
            pass
        return 2
    res = caller.result()
    caller.close()
    line = json.dumps(res) if opts.json else (
        ("answered" if res["answered"] else "not answered")
        + f": {res['code']} {res['reason']}, {res['duration']:.2f} s, ended by {res['by']}")
    try:
        print(line, file=out, flush=True)
    except BrokenPipeError:  # nobody reads any more (the parent stopped): the call is done anyway
        pass
    return 0 if res["answered"] else 1


if __name__ == "__main__":
    sys.exit(main())
