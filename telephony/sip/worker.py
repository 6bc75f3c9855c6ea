"""A SIP worker process: up to 4 SIP ports (pjsua2 calls) driven by the messaging service.

The ``pjsua2-python`` wheel holds at most 4 calls per process (``PJSUA_MAX_CALLS=4``), so the
messaging service runs one worker per group of up to 4 ports.  The worker is thin: SIP and
media, no decisions.  It connects to the service's Unix socket and speaks JSON lines.

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
  registrar that challenges them gets them ``failed`` 401/407).  Re-registration (``--reg-expires``, default 300 s) is
  pjsua's; an INVITE whose Request-URI matches no user goes to the first account.
* SIP: UDP on ``BIND:SIP_PORT``.  RTP/RTCP: UDP on ``BIND``, ports ``RTP_PORT`` ..
  ``RTP_PORT + 4*K - 1`` (2 RTP/RTCP pairs per port, so a call's ports may be taken while the
  last call's close).  SDP always advertises ``BIND``.
* ``--media-dir``: relative ``path`` values of ``play`` and ``record`` are taken under it.
* ``--answer-timeout S``: an INVITE neither answered nor rejected by the service within S
  seconds (default 30) is rejected with 480.
* ``--tsx-timeout MS``: SIP transaction timeout (Timer B/F; pjsip's default is 64*T1 =
  32000 ms).  It is how long an unanswered NOTIFY waits before ``notify_result`` 408.  pjsua2
  does not expose it: the worker calls ``pjsip_tsx_set_timers`` (exported by the wheel's
  ``_pjsua2`` library) through ctypes, keeping T1/T2/T4 at 500/4000/5000 ms.
* ``--log-level``: pjsip's log level (default 2) on stderr; Python logging is on stderr too.

Media: the conference bridge and the (null) sound device run at 8000 Hz, so recordings are
8 kHz 16-bit mono WAV.  Played WAVs must be 16-bit PCM mono (any rate; the bridge resamples).

Recorder flushing (measured here, pjsua2-python 2.15.1.post1, 8 kHz 16-bit = 16,000 bytes/s):
pjmedia's WAV writer buffers 4000 bytes (``PJMEDIA_FILE_PORT_BUFSIZE``, 250 ms) and its file
I/O goes through stdio's 4096-byte buffer, so the file on disk is EMPTY for the first ~0.5 s
and then grows in steps of exactly 4096 bytes, one every ~256 ms (sizes 4096, 8192, ... at
0.49, 0.73, 0.97, 1.21 s after ``record``).  The 44-byte header is in the first step, with its
RIFF and data lengths 0 until the recorder is closed.  So a tail reader sees a sample 0.25 to
0.5 s after it was heard, must read raw 16-bit PCM from byte 44 on and ignore the header's
lengths.  Closing is asynchronous (the 2.14+ conference bridge removes ports on its clock
thread, a frame later): ``recorded`` is sent once the file is closed and its header holds the
final lengths, and ``bytes`` is then the whole file (44 + 2 * samples).

Protocol (one JSON object per line, UTF-8, ``\\n``, at most 65,536 bytes per line).

Worker -> service, every line has ``"ev"``::

    {"ev":"ready","name":..,"pid":..,"sip":"127.0.0.1:5070","ports":K,"mode":"trunk",
     "rtp":[first,last],"accounts":[..]}
    {"ev":"registration","account":"u-1","state":"registered"|"failed"|"unregistered",
     "code":200,"reason":"OK","expires":300}
    {"ev":"incoming","call":"NAME-3","sip_call_id":..,"from":"<uri>","to":"<uri>",
     "request_uri":..,"raw":"<INVITE text, at most 16 KiB>","remote":"127.0.0.1:5061",
     "account":..}
    {"ev":"busy","sip_call_id":..,"from":..,"to":..,"code":486,"reason":..}
    {"ev":"media","call":..}
    {"ev":"dtmf","call":..,"digit":"5","via":"rfc2833"|"info"}
    {"ev":"played","call":..,"id":N,"how":"eof"|"stopped"}
    {"ev":"recorded","call":..,"id":N,"path":..,"bytes":B}
    {"ev":"disconnected","call":..,"code":..,"reason":..,"by":"remote"|"local"}
    {"ev":"notify_result","id":N,"code":200,"reason":"OK"}
    {"ev":"transfer_result","call":..,"id":N,"code":200,"reason":"OK"}
    {"ev":"stats","calls":n,"media_ports":m,"pending_notifies":p}
    {"ev":"error","message":..,"ref":<the op's id, if it had one>,"op":..,"call":..}

Service -> worker, every line has ``"op"``::

    {"op":"answer","call":..}                      200 OK (SDP answer); then "media"
    {"op":"reject","call":..,"code":486}           a final 3xx-6xx to an unanswered call
    {"op":"play","call":..,"id":N,"path":"x.wav"}   -> "played" eof when the file ends
    {"op":"stop_play","call":..,"id":N}             -> "played" stopped
    {"op":"record","call":..,"id":N,"path":"m.wav"} the file grows while recording
    {"op":"stop_record","call":..,"id":N}           -> "recorded"
    {"op":"hangup","call":..}                      BYE (or 603 if not yet answered)
    {"op":"transfer","call":..,"id":N,"target":"sip:0@10.0.0.5:5060"}
                                                   blind transfer (REFER) -> "transfer_result"
    {"op":"notify","id":N,"target":"sip:1001@pbx","account":"sip:1001@pbx","body":"..",
     "headers":{"Event":"message-summary","Subscription-State":"active"}}
    {"op":"stats"}
    {"op":"shutdown"}

Rules:

* The worker answers nothing by itself: an INVITE gets 180 Ringing at once and an
  ``incoming`` event; without ``answer`` or ``reject`` within 30 s (``--answer-timeout``) it
  is rejected with 480 (then ``disconnected`` code 480, by local).  More INVITEs than
  ``--ports`` at once are refused by pjsua itself with 486 Busy Here; they are reported as
  ``busy`` (``Endpoint.onRejectedIncomingCall``; no call id is given out).
* ``disconnected`` ``code`` is the call's last SIP status: 200 after a BYE either way, the
  rejection's code (486, 480, 603 ...) for a call never answered, 487 for a CANCEL.
* A call's ids (``id`` of play/record) are the service's; one id is one play or one recording
  at a time on that call.  Play and record need ``media`` first.  At hang-up, plays still
  running end with ``played`` stopped and recordings with ``recorded`` (the file is closed
  and complete), all before ``disconnected``, which is the call's last event.
* DTMF: RFC 2833 telephone-events and SIP INFO (``application/dtmf-relay`` ``Signal=5``, or
  ``application/dtmf`` ``5``; both are answered 200) come out as ``dtmf`` events.
* ``notify``: an out-of-dialog NOTIFY (``Account.sendRequest``) to ``target``,
  ``Content-Type: application/simple-message-summary`` (unless ``headers`` has a
  ``Content-Type``), with ``headers`` added (Via, From, To, Call-ID, CSeq, Contact, Route,
  Max-Forwards and Content-Length are the stack's and refused).  ``account`` is the From URI
  (default: the first account's URI).  pjsua takes From from the sending account and ignores
  ``SipTxOption.localUri`` here, so a From URI that is none of the port accounts is sent from
  one extra non-registering account whose URI is switched per NOTIFY (``Account.modify``).
  Any number of NOTIFYs may be pending, with any From URIs.  Every notify that
  passed its checks ends in exactly one ``notify_result`` (the final status; a timeout is 408,
  after ``--tsx-timeout``).  One that fails before it is sent gets an ``error`` with ``ref``
  and no ``notify_result``.  Two pending notifies may not share an ``id``.
* ``transfer``: a blind transfer of an answered call (RFC 3515 REFER, ``Call.xfer``) with
  ``Refer-To: <target>`` (a ``sip:``/``sips:`` URI of at most 256 characters).  One transfer
  at a time per call.  Every transfer that passed its checks ends in exactly one
  ``transfer_result`` on that call, before its ``disconnected``; ``code`` is

  - the status line of the ``message/sipfrag`` NOTIFY that carries a final status (2xx-6xx;
    normally the one with ``Subscription-State: terminated``), or the status of a NOTIFY
    that terminates the subscription with a 1xx body;
  - the REFER's own final status when it is refused (e.g. 403, 405, 603);
  - 200 "Accepted" when the REFER's 2xx says ``Refer-Sub: false`` (RFC 4488: no NOTIFY
    will come; pjsua counts the transfer as done);
  - 500 when pjsua ended the subscription without a status (e.g. the REFER timed out);
  - 487 "call ended before the transfer's final status" (", REFER accepted" added when a
    2xx to the REFER or a NOTIFY had come) when the call ends first (either side's BYE, the
    worker's shutdown).

  On a 2xx result the worker hangs the call up itself (BYE, RFC 5589: the transferor ends
  its dialog with the transferee), so ``disconnected`` (by local) follows unless the far end
  was quicker.  On any other result the call goes on unchanged.  A transfer that fails
  before the REFER is sent (call unknown, not answered, or pjsua refusing) gets an
  ``error`` with ``ref`` and no ``transfer_result``.
* A bad line (not JSON, not an object, no ``"op"``, unknown op, bad fields, unknown call, a
  line over 64 KiB) gets ``error`` and changes nothing.
* ``shutdown``, SIGTERM, SIGINT and the control socket closing all do the same: hang up every
  call (their events are still sent if the socket is open), wait up to 5 s for pending
  NOTIFYs, ``libDestroy``, exit 0.  A NOTIFY still pending after 5 s gets ``notify_result``
  408 "worker shut down"; then pj is not destroyed (``libDestroy`` with a pending
  ``sendRequest`` transaction aborts the process) and the process ends with ``os._exit(0)``.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import logging
import math
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from telephony.core.control import ControlError, parse_line
from telephony.sip.pjthread import PjThread, PjThreadStopped, endpoint_config

try:  # the worker cannot run without it; the op checks below can
    import pjsua2 as pj
except ImportError:  # pragma: no cover - depends on the machine
    pj = None

log = logging.getLogger("telephony.sip.worker")

MAX_LINE = 65536
RAW_LIMIT = 16384            # characters of the INVITE passed in "incoming"
NO_ANSWER_TIMEOUT = 30.0     # s before an unanswered INVITE is rejected with 480
NOTIFY_WAIT = 5.0            # s shutdown waits for pending NOTIFYs
HANGUP_WAIT = 2.0            # s shutdown waits for calls to disconnect
UNREGISTER_WAIT = 1.5        # s shutdown waits for un-REGISTER answers
RECORDER_CLOSE_WAIT = 2.0    # s to wait for a destroyed recorder's file to be complete
MAX_WHEEL_CALLS = 4          # PJSUA_MAX_CALLS of the pjsua2 wheels
RTP_PORTS_PER_CALL = 4       # 2 RTP/RTCP pairs per port
MAX_ID = 2**53               # ids stay exact in JSON numbers
MAX_BODY = 16384
MAX_HEADERS = 32
NOTIFY_TYPE = "application/simple-message-summary"
MAX_TRANSFER_URI = 256       # characters of a transfer's target URI
_TOKEN = re.compile(r"[A-Za-z0-9!%*_+`'~.-]{1,64}")
_FORBIDDEN_HEADERS = {"via", "from", "to", "call-id", "cseq", "content-length", "contact",
                      "max-forwards", "route", "record-route", "v", "f", "t", "i", "m", "l"}
_URI = re.compile(r"sips?:[^\s<>\"]{1,1000}")


class OpError(ValueError):
    """An op the worker will not carry out; the message goes back in an ``error`` event."""


# ============================================================================ op checks (pure)

def _str(msg: dict, name: str, limit: int = 64, *, required: bool = True) -> str | None:
    v = msg.get(name)
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v:
        raise OpError(f"{name} must be a non-empty string")
    if len(v) > limit:
        raise OpError(f"{name} is longer than {limit} characters")
    if "\x00" in v:
        raise OpError(f"{name} contains NUL")
    return v


def _id(msg: dict, name: str = "id") -> int:
    v = msg.get(name)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_ID:
        raise OpError(f"{name} must be an integer from 0 to 2**53")
    return v


def _line_safe(name: str, v: str) -> str:
    if "\r" in v or "\n" in v:
        raise OpError(f"{name} must not contain CR or LF")
    return v


def check_op(msg: dict) -> dict:
    """Check one op (a dict with a string ``op``) and return its fields, normalized.
    Raises :class:`OpError`.  Fields this version does not know are ignored."""
    op = msg["op"]
    out: dict[str, Any] = {"op": op}
    if op in ("answer", "hangup"):
        out["call"] = _str(msg, "call")
    elif op == "reject":
        out["call"] = _str(msg, "call")
        code = msg.get("code", 486)
        if isinstance(code, bool) or not isinstance(code, int) or not 300 <= code <= 699:
            raise OpError("code must be an integer from 300 to 699")
        out["code"] = code
    elif op in ("play", "record"):
        out["call"] = _str(msg, "call")
        out["id"] = _id(msg)
        out["path"] = _str(msg, "path", 4096)
        if op == "record" and not out["path"].lower().endswith(".wav"):
            raise OpError("path of a recording must end in .wav")
    elif op in ("stop_play", "stop_record"):
        out["call"] = _str(msg, "call")
        out["id"] = _id(msg)
    elif op == "notify":
        out["id"] = _id(msg)
        target = _str(msg, "target", 1024)
        if not _URI.fullmatch(target):
            raise OpError("target must be a sip: or sips: URI")
        out["target"] = target
        account = _str(msg, "account", 1024, required=False)
        if account is not None and not _URI.fullmatch(account):
            raise OpError("account must be a sip: or sips: URI")
        out["account"] = account
        body = msg.get("body", "")
        if not isinstance(body, str) or len(body) > MAX_BODY or "\x00" in body:
            raise OpError(f"body must be a string of at most {MAX_BODY} characters")
        out["body"] = body
        headers = msg.get("headers", {})
        if headers is None:
            headers = {}
        if not isinstance(headers, dict) or len(headers) > MAX_HEADERS:
            raise OpError(f"headers must be an object of at most {MAX_HEADERS} names")
        content_type = NOTIFY_TYPE
        extra: list[tuple[str, str]] = []
        for name, value in headers.items():
            if not _TOKEN.fullmatch(name):
                raise OpError(f"header name {name!r:.40} is not a SIP token")
            if not isinstance(value, str) or len(value) > 1024:
                raise OpError(f"header {name} must be a string of at most 1024 characters")
            _line_safe(f"header {name}", value)
            if name.lower() in _FORBIDDEN_HEADERS:
                raise OpError(f"header {name} is set by the SIP stack")
            if name.lower() in ("content-type", "c"):
                content_type = value
            else:
                extra.append((name, value))
        out["content_type"] = content_type
        out["headers"] = extra
    elif op == "transfer":
        out["call"] = _str(msg, "call")
        out["id"] = _id(msg)
        target = _str(msg, "target", MAX_TRANSFER_URI)
        _line_safe("target", target)
        if not _URI.fullmatch(target):
            raise OpError("target must be a sip: or sips: URI")
        out["target"] = target
    elif op in ("shutdown", "stats"):
        pass
    else:
        raise OpError(f"unknown op {op!r:.40}")
    return out


def request_uri_of(raw: str) -> str:
    first = raw.split("\n", 1)[0].strip()
    parts = first.split(" ")
    return parts[1] if len(parts) == 3 and parts[2].startswith("SIP/") else ""


def dtmf_from_info(raw: str) -> str | None:
    """The digit of an INFO with ``application/dtmf`` (body ``5``) or
    ``application/dtmf-relay`` (``Signal=5``), or None."""
    head, _, body = raw.replace("\r\n", "\n").partition("\n\n")
    m = re.search(r"^(?:Content-Type|c)\s*:\s*([^;\s]+)", head, re.M | re.I)
    if not m:
        return None
    ctype = m.group(1).lower()
    if ctype == "application/dtmf-relay":
        s = re.search(r"^\s*Signal\s*=\s*(\S+)", body, re.M | re.I)
        digit = s.group(1) if s else ""
    elif ctype == "application/dtmf":
        digit = body.strip()
    else:
        return None
    if digit == "10":
        digit = "*"
    elif digit == "11":
        digit = "#"
    return digit.upper() if len(digit) == 1 and digit.upper() in "0123456789*#ABCD" else None


def wav_complete(path: str) -> tuple[bool, int]:
    """(header final, file size): pjmedia's WAV writer fills in the RIFF and data lengths
    only when it closes the file."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(44)
            size = os.fstat(fh.fileno()).st_size
    except OSError:
        return True, 0
    if len(head) < 44 or head[:4] != b"RIFF":
        return False, size
    riff = int.from_bytes(head[4:8], "little")
    return riff == size - 8 and riff > 36, size


def clean_text(text: Any) -> str:
    """SIP text as valid Unicode: SWIG decodes non-UTF-8 bytes to lone surrogates, which
    would not encode; they become U+FFFD."""
    if not isinstance(text, str):
        return ""
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def encode_event(ev: dict) -> bytes:
    """One event line, at most MAX_LINE bytes: an over-long ``raw`` is cut further."""
    while True:
        line = json.dumps(ev, ensure_ascii=False, separators=(",", ":")).encode(
            "utf-8", "replace") + b"\n"
        if len(line) <= MAX_LINE:
            return line
        if isinstance(ev.get("raw"), str) and ev["raw"]:
            ev = {**ev, "raw": ev["raw"][: len(ev["raw"]) // 2]}
            continue
        return encode_event({"ev": "error", "message": f"{ev.get('ev')} event too long"})


class LineReader:
    """Bounded ``\\n`` framing with resynchronisation: a line over ``limit`` bytes is skipped
    up to its end and reported once (as a ``ControlError``)."""

    def __init__(self, limit: int = MAX_LINE) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._skipping = False

    def feed(self, data: bytes) -> list[dict | ControlError]:
        out: list[dict | ControlError] = []
        self._buf += data
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > self.limit:
                    if not self._skipping:
                        out.append(ControlError(f"line longer than {self.limit} bytes", b""))
                    self._skipping = True
                    self._buf.clear()
                return out
            raw = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            if self._skipping:
                self._skipping = False
                continue
            if len(raw) > self.limit:
                out.append(ControlError(f"line longer than {self.limit} bytes", b""))
                continue
            if raw.strip():
                out.append(parse_line(raw.rstrip(b"\r")))


# ============================================================================ the pj side

@dataclass
class CallState:
    wid: str
    pj_id: int
    call: Any                      # the pj.Call; None once DISCONNECTED (reference dropped)
    acc: Any                       # the pj.Account it came in on
    account: str
    sip_call_id: str
    deadline: float | None         # monotonic time of the 480, while not answered
    answered: bool = False
    local_end: bool = False        # we hung up / rejected
    audio: Any = None              # the call's AudioMedia while media is active
    media_sent: bool = False
    players: dict[int, Any] = field(default_factory=dict)
    recorders: dict[int, tuple[Any, str]] = field(default_factory=dict)
    ended: bool = False
    end_code: int = 0
    end_reason: str = ""
    reported_end: bool = False
    closing_recs: list[tuple[int, str, float]] = field(default_factory=list)
    transfer: int | None = None    # id of the transfer waiting for its final status
    transfer_accepted: bool = False  # its REFER got a 2xx (or a NOTIFY came)


def _pj_message(exc: BaseException) -> str:
    if pj is not None and isinstance(exc, pj.Error):
        return f"{exc.title}: {exc.reason}" if exc.title else str(exc.reason)
    return f"{type(exc).__name__}: {exc}"


@dataclass
class Options:
    control: str
    name: str
    bind: str
    sip_port: int
    rtp_port: int
    ports: int
    media_dir: str
    mode: str = "trunk"
    registrar: str | None = None
    users: list[str] = field(default_factory=list)
    password: str | None = None
    reg_expires: int = 300
    tsx_timeout: int | None = None
    answer_timeout: float = NO_ANSWER_TIMEOUT
    log_level: int = 2


class Engine:
    """All pjsua2 state.  Every method runs on the pj thread (see pjthread.py)."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.pjt: PjThread | None = None
        self.ep: Any = None
        self.accounts: list[Any] = []
        self.notifier: Any = None          # the account of NOTIFYs with other From URIs
        self.calls: dict[str, CallState] = {}
        self.by_pj: dict[int, str] = {}
        self.seq = 0
        self.dead: list[Any] = []          # pj objects dropped in callbacks, freed next poll
        self.notifies: dict[int, tuple[int, Any, Any]] = {}  # token address -> (id, token, acc)
        self.finishing: set[str] = set()   # calls with recorders still closing
        self.ending: dict[str, CallState] = {}
        self.closing = False
        self.closed = False
        self.destroyed = False
        self.started = False
        self._log_writer: Any = None
        self.rtp_range = (opts.rtp_port, opts.rtp_port + RTP_PORTS_PER_CALL * opts.ports - 1)

    # ------------------------------------------------------------------ plumbing

    def emit(self, ev: str, **fields: Any) -> None:
        assert self.pjt is not None
        self.pjt.emit({"ev": ev, **fields})

    def guard(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        """Run a callback body; nothing escapes into pj."""
        try:
            fn(*args)
        except Exception:
            log.exception("callback %s failed", what)

    def on_pj(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run now if on the pj thread, else queue it there (media/clock-thread callbacks)."""
        assert self.pjt is not None
        if self.pjt.on_pj_thread():
            self.guard(getattr(fn, "__name__", "job"), fn, *args)
        else:
            self.pjt.submit(fn, *args)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        o = self.opts
        classes = _pj_classes()
        ep = classes.Endpoint(self)
        self.ep = ep
        ep.libCreate()
        cfg = endpoint_config(pj, max_calls=min(o.ports, MAX_WHEEL_CALLS),
                              user_agent="vmha-sip-worker", log_level=o.log_level)
        self._log_writer = classes.LogWriter()
        cfg.logConfig.writer = self._log_writer
        ep.libInit(cfg)
        if o.tsx_timeout:
            set_tsx_timeout(o.tsx_timeout)
        ep.audDevManager().setNullDev()
        tcfg = pj.TransportConfig()
        tcfg.port = o.sip_port
        tcfg.boundAddress = o.bind
        tcfg.publicAddress = o.bind
        self.tid = ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
        ep.libStart()
        for codec, prio in (("PCMU/8000", 255), ("PCMA/8000", 254)):
            try:
                ep.codecSetPriority(codec, prio)
            except Exception:
                log.warning("codec %s not available", codec)
        if o.mode == "trunk":
            self._add_account(o.name, f"sip:{o.name}@{o.bind}:{o.sip_port}", None)
        else:
            assert o.registrar is not None
            host = o.registrar.split(":", 1)[1].split(";", 1)[0]
            if "@" in host:
                host = host.split("@", 1)[1]
            host = host.rsplit(":", 1)[0] if not host.startswith("[") else host
            for user in o.users:
                self._add_account(user, f"sip:{user}@{host}", user)
        self.started = True

    def _add_account(self, name: str, uri: str, user: str | None) -> None:
        o = self.opts
        acfg = pj.AccountConfig()
        acfg.idUri = uri
        acfg.sipConfig.transportId = self.tid
        mt = acfg.mediaConfig.transportConfig
        mt.boundAddress = o.bind                 # gotcha 2: SDP must not leak another address
        mt.publicAddress = o.bind
        mt.port = o.rtp_port
        mt.portRange = RTP_PORTS_PER_CALL * o.ports
        acfg.mwiConfig.enabled = False
        if user is not None:
            acfg.regConfig.registrarUri = o.registrar
            acfg.regConfig.timeoutSec = o.reg_expires
            acfg.regConfig.retryIntervalSec = 30
            acfg.regConfig.unregWaitMsec = 1000
            if o.password is not None:
                acfg.sipConfig.authCreds.append(
                    pj.AuthCredInfo("digest", "*", user, 0, o.password))
        acc = _pj_classes().Account(self, name)
        acc.uri = uri
        acc.create(acfg, not self.accounts)
        self.accounts.append(acc)

    def _notify_account(self, uri: str | None) -> Any:
        """The account a NOTIFY goes out from: its URI is the From.  ``Account.sendRequest``
        takes From from the account (``SipTxOption.localUri`` is ignored there), so a From
        URI that is none of the port accounts is sent from one extra non-registering account
        whose idUri is switched with ``Account.modify`` (measured: well under 1 ms; pending
        requests keep their From; 20 NOTIFYs with 20 From URIs at once all got 200).  One
        account for any number of From URIs: pjsua has 8 accounts at most (a 9th aborts)."""
        if not uri:
            return self.accounts[0]
        for acc in self.accounts:
            if acc.uri == uri:
                return acc
        acfg = pj.AccountConfig()
        acfg.idUri = uri
        acfg.sipConfig.transportId = self.tid
        mt = acfg.mediaConfig.transportConfig     # an INVITE may match its URI: same media
        mt.boundAddress = mt.publicAddress = self.opts.bind
        mt.port = self.opts.rtp_port
        mt.portRange = RTP_PORTS_PER_CALL * self.opts.ports
        acfg.mwiConfig.enabled = False
        acc = self.notifier
        if acc is None:
            acc = _pj_classes().Account(self, self.accounts[0].name)
            acc.create(acfg, False)
            acc.uri = uri
            self.notifier = acc
        elif acc.uri != uri:
            acc.modify(acfg)
            acc.uri = uri
        return acc

    def poll(self) -> None:
        self.dead.clear()
        self.ep.libHandleEvents(10)
        self._check_closing()
        if self.calls:
            now = time.monotonic()
            for st in list(self.calls.values()):
                if st.deadline is not None and now >= st.deadline and not st.ended:
                    st.deadline = None
                    log.info("%s not answered in %g s: 480", st.wid, self.opts.answer_timeout)
                    try:
                        self._hangup(st, 480)
                    except Exception:
                        log.exception("480 for %s failed", st.wid)

    def _check_closing(self) -> None:
        for wid in list(self.finishing):
            st = self.ending.get(wid)
            if st is None:
                self.finishing.discard(wid)
            else:
                self._check_recs(st)
        for wid in [w for w, st in self.ending.items() if st.reported_end]:
            del self.ending[wid]
        for st in list(self.calls.values()):
            if st.closing_recs:
                self._check_recs(st)

    def _spin(self, until: Callable[[], bool], seconds: float) -> bool:
        end = time.monotonic() + seconds
        while not until():
            if time.monotonic() >= end:
                return False
            self.dead.clear()
            self.ep.libHandleEvents(10)
            self._check_closing()
            assert self.pjt is not None
            self.pjt.run_pending_jobs()
        return True

    def close(self) -> None:
        """Graceful teardown on the pj thread (also after a failed start)."""
        self.closing = True
        if self.ep is None:
            return
        if not self.started:      # start() failed half-way
            try:
                self.ep.libDestroy()
                self.destroyed = True
            except Exception:
                log.exception("libDestroy after a failed start")
            return
        t0 = time.monotonic()
        try:
            for st in list(self.calls.values()):
                if not st.ended and st.call is not None:
                    try:
                        self._hangup(st, 503 if not st.answered else None)
                    except Exception:
                        log.exception("hang-up of %s failed", st.wid)
            self._spin(lambda: not self.calls, HANGUP_WAIT)
            for st in list(self.calls.values()):   # left over: tear down what we hold
                st.call = None
                self._end_call(st, 0, "worker shut down")
            self._spin(lambda: not self.finishing, RECORDER_CLOSE_WAIT + 0.5)
            registered = [a for a in self.accounts if a.registered]
            for acc in registered:       # un-REGISTER now, while events can still be reported
                try:
                    acc.setRegistration(False)
                except Exception as exc:
                    log.warning("un-REGISTER of %s: %s", acc.name, _pj_message(exc))
                    acc.registered = False
            self._spin(lambda: not any(a.registered for a in registered), UNREGISTER_WAIT)
            self._spin(lambda: not self.notifies, max(0.0, NOTIFY_WAIT - (time.monotonic() - t0)))
        except Exception:
            log.exception("shutdown step failed")
        self.closed = True
        if self.notifies:
            for nid, _token, _acc in list(self.notifies.values()):
                self.emit("notify_result", id=nid, code=408, reason="worker shut down")
            log.warning("%d NOTIFY still pending: pj is left undestroyed", len(self.notifies))
            return                                      # gotcha 4: libDestroy would abort
        self.dead.clear()
        for acc in ([self.notifier] if self.notifier else []) + self.accounts:
            try:
                acc.shutdown()
            except Exception:
                log.exception("account shutdown failed")
        self.accounts.clear()
        self.notifier = None
        self.ep.libDestroy()
        self.ep = None
        self.destroyed = True

    # ------------------------------------------------------------------ incoming calls

    def on_incoming(self, acc: Any, prm: Any) -> None:
        pj_id = prm.callId
        old = self.by_pj.get(pj_id)
        if old is not None:  # never replace a live Call object (gotcha 3)
            log.error("pj call %d is still %s; ignoring the new INVITE", pj_id, old)
            return
        raw = clean_text(prm.rdata.wholeMsg)
        remote = clean_text(prm.rdata.srcAddress)
        call = _pj_classes().Call(self, acc, pj_id)
        self.seq += 1
        wid = f"{self.opts.name}-{self.seq}"
        call.wid = wid
        ci = call.getInfo()
        st = CallState(wid=wid, pj_id=pj_id, call=call, acc=acc, account=acc.name,
                       sip_call_id=ci.callIdString,
                       deadline=time.monotonic() + self.opts.answer_timeout)
        self.calls[wid] = st
        self.by_pj[pj_id] = wid
        op = pj.CallOpParam()
        op.statusCode = 180
        try:
            call.answer(op)
        except Exception as exc:
            log.warning("180 for %s failed: %s", wid, _pj_message(exc))
        self.emit("incoming", call=wid, sip_call_id=clean_text(ci.callIdString),
                  **{"from": clean_text(ci.remoteUri)}, to=clean_text(ci.localUri),
                  request_uri=request_uri_of(raw), raw=raw[:RAW_LIMIT], remote=remote,
                  account=acc.name)

    def on_rejected(self, prm: Any) -> None:
        self.emit("busy", sip_call_id=clean_text(prm.callId),
                  **{"from": clean_text(prm.remoteInfo)}, to=clean_text(prm.localInfo),
                  code=prm.statusCode, reason=clean_text(prm.reason))

    def on_call_state(self, call: Any) -> None:
        ci = call.getInfo()
        wid = getattr(call, "wid", None)
        st = self.calls.get(wid) if wid else None
        if st is None or st.call is not call:
            return
        if ci.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            # drop the Call now, inside its DISCONNECTED callback (gotcha 3): pjsua may give
            # its id to the next INVITE before the next poll
            self.by_pj.pop(st.pj_id, None)
            st.call = None
            st.audio = None          # the slot is gone (or someone else's) from now on
            call.wid = None
            assert self.pjt is not None
            self.pjt.submit(self._end_call, st, ci.lastStatusCode, clean_text(ci.lastReason))

    def _end_call(self, st: CallState, code: int, reason: str) -> None:
        if st.ended:
            return
        st.ended = True
        st.end_code, st.end_reason = code, reason
        if st.transfer is not None:   # pjsua reports nothing for a call that is hanging up
            tid, st.transfer = st.transfer, None
            self.emit("transfer_result", call=st.wid, id=tid, code=487,
                      reason="call ended before the transfer's final status"
                             + (", REFER accepted" if st.transfer_accepted else ""))
        for pid in list(st.players):
            self._drop_player(st, pid)
            self.emit("played", call=st.wid, id=pid, how="stopped")
        self.calls.pop(st.wid, None)
        self.ending[st.wid] = st
        for rid in list(st.recorders):
            self._close_recorder(st, rid)
        self._check_recs(st)

    def on_media_state(self, call: Any) -> None:
        st = self.calls.get(getattr(call, "wid", None) or "")
        if st is None or st.call is not call:
            return
        ci = call.getInfo()
        audio = None
        for i, m in enumerate(ci.media):
            if m.type == pj.PJMEDIA_TYPE_AUDIO and m.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                audio = call.getAudioMedia(i)
                break
        st.audio = audio
        if audio is None:
            return
        for player in st.players.values():   # after a re-INVITE: connect again
            player.startTransmit(audio)
        for rec, _path in st.recorders.values():
            audio.startTransmit(rec)
        if not st.media_sent:
            st.media_sent = True
            self.emit("media", call=st.wid)

    def on_dtmf(self, wid: str | None, digit: str, via: str) -> None:
        st = self.calls.get(wid or "")
        if st is not None and not st.ended:
            self.emit("dtmf", call=st.wid, digit=digit, via=via)

    # ------------------------------------------------------------------ ops (from Trio)

    def _call(self, wid: str) -> CallState:
        if self.closing:
            raise OpError("the worker is shutting down")
        st = self.calls.get(wid)
        if st is None or st.ended or st.call is None:
            raise OpError(f"no call {wid!r:.70}")
        return st

    def _hangup(self, st: CallState, code: int | None) -> None:
        op = pj.CallOpParam()
        if code is not None:
            op.statusCode = code
        st.local_end = True
        st.deadline = None
        st.call.hangup(op)

    def op_answer(self, f: dict) -> None:
        st = self._call(f["call"])
        if st.answered:
            raise OpError(f"call {st.wid} is already answered")
        op = pj.CallOpParam()
        op.statusCode = 200
        st.call.answer(op)
        st.answered = True
        st.deadline = None

    def op_reject(self, f: dict) -> None:
        st = self._call(f["call"])
        if st.answered:
            raise OpError(f"call {st.wid} is answered: hang it up instead")
        self._hangup(st, f["code"])

    def op_hangup(self, f: dict) -> None:
        st = self._call(f["call"])
        self._hangup(st, None if st.answered else 603)

    def _path(self, path: str) -> str:
        return path if os.path.isabs(path) else os.path.join(self.opts.media_dir, path)

    def op_play(self, f: dict) -> None:
        st = self._call(f["call"])
        if st.audio is None:
            raise OpError(f"call {st.wid} has no active media")
        pid = f["id"]
        if pid in st.players:
            raise OpError(f"play {pid} is already running on {st.wid}")
        path = self._path(f["path"])
        if not os.path.isfile(path):
            raise OpError(f"no such file: {path}")
        player = _pj_classes().Player(self, st.wid, pid)
        player.createPlayer(path, pj.PJMEDIA_FILE_NO_LOOP)
        player.startTransmit(st.audio)
        st.players[pid] = player

    def on_player_eof(self, wid: str, pid: int, player: Any) -> None:
        st = self.calls.get(wid)
        if st is None or st.players.get(pid) is not player:
            return           # stopped or hung up already
        self._drop_player(st, pid)
        self.emit("played", call=wid, id=pid, how="eof")

    def _drop_player(self, st: CallState, pid: int) -> None:
        player = st.players.pop(pid)
        if st.audio is not None:
            try:
                player.stopTransmit(st.audio)
            except Exception as exc:
                log.debug("stopTransmit: %s", _pj_message(exc))
        self.dead.append(player)   # freed at the next poll, outside any callback

    def op_stop_play(self, f: dict) -> None:
        st = self._call(f["call"])
        pid = f["id"]
        if pid not in st.players:
            raise OpError(f"no play {pid} on {st.wid}")
        self._drop_player(st, pid)
        self.emit("played", call=st.wid, id=pid, how="stopped")

    def op_record(self, f: dict) -> None:
        st = self._call(f["call"])
        if st.audio is None:
            raise OpError(f"call {st.wid} has no active media")
        rid = f["id"]
        if rid in st.recorders:
            raise OpError(f"recording {rid} is already running on {st.wid}")
        path = self._path(f["path"])
        if not os.path.isdir(os.path.dirname(path) or "."):
            raise OpError(f"no such directory: {os.path.dirname(path)}")
        if any(os.path.abspath(p) == os.path.abspath(path) for _r, p in st.recorders.values()):
            raise OpError(f"{path} is being recorded already")
        rec = pj.AudioMediaRecorder()
        rec.createRecorder(path)
        st.audio.startTransmit(rec)
        st.recorders[rid] = (rec, path)

    def _close_recorder(self, st: CallState, rid: int) -> None:
        rec, path = st.recorders.pop(rid)
        if st.audio is not None:
            try:
                st.audio.stopTransmit(rec)
            except Exception as exc:
                log.debug("stopTransmit: %s", _pj_message(exc))
        # Dropping the last reference destroys the recorder, but pjmedia's conference bridge
        # (2.14+) removes ports asynchronously: the WAV writer flushes, fixes the header and
        # closes the file a frame or two later, on the clock thread.  "recorded" waits for it.
        del rec
        st.closing_recs.append((rid, path, time.monotonic() + RECORDER_CLOSE_WAIT))
        self._check_recs(st)

    def _check_recs(self, st: CallState) -> None:
        """Emit "recorded" for recorders whose file is complete (then "disconnected" if the
        call ended and nothing is left)."""
        now = time.monotonic()
        for item in list(st.closing_recs):
            rid, path, deadline = item
            done, size = wav_complete(path)
            if done or now >= deadline:
                if not done:
                    log.warning("%s: header not final after %.1f s", path, RECORDER_CLOSE_WAIT)
                st.closing_recs.remove(item)
                self.emit("recorded", call=st.wid, id=rid, path=path, bytes=size)
        if st.ended and not st.closing_recs and not st.reported_end:
            st.reported_end = True
            self.finishing.discard(st.wid)
            self.emit("disconnected", call=st.wid, code=st.end_code, reason=st.end_reason,
                      by="local" if st.local_end else "remote")
        elif st.closing_recs:
            self.finishing.add(st.wid)

    def op_stop_record(self, f: dict) -> None:
        st = self._call(f["call"])
        rid = f["id"]
        if rid not in st.recorders:
            raise OpError(f"no recording {rid} on {st.wid}")
        self._close_recorder(st, rid)

    def op_notify(self, f: dict) -> None:
        if self.closing:
            raise OpError("the worker is shutting down")
        if any(nid == f["id"] for nid, _t, _a in self.notifies.values()):
            raise OpError(f"notify {f['id']} is still pending")
        prm = pj.SendRequestParam()
        prm.method = "NOTIFY"
        prm.txOption.targetUri = f["target"]
        acc = self._notify_account(f["account"])
        prm.txOption.contentType = f["content_type"]
        prm.txOption.msgBody = f["body"]
        for name, value in f["headers"]:
            h = pj.SipHeader()
            h.hName = name
            h.hValue = value
            prm.txOption.headers.append(h)
        token = pj.SipHeader()   # any pj object: its address names this request
        prm.userData = token
        acc.sendRequest(prm)
        self.notifies[int(token.this)] = (f["id"], token, acc)

    def op_transfer(self, f: dict) -> None:
        st = self._call(f["call"])
        if not st.answered:
            raise OpError(f"call {st.wid} is not answered: a transfer needs an answered call")
        if st.transfer is not None:
            raise OpError(f"transfer {st.transfer} is still pending on {st.wid}")
        st.transfer, st.transfer_accepted = f["id"], False
        try:
            st.call.xfer(f["target"], pj.CallOpParam(True))
        except Exception:
            if st.transfer == f["id"]:     # no result was reported: the op failed
                st.transfer = None
                raise
            log.warning("%s: transfer %s reported before xfer() returned an error", st.wid,
                        f["id"])
            return
        log.info("%s: transfer %s: REFER to %s", st.wid, f["id"], f["target"])

    def on_transfer_status(self, call: Any, prm: Any) -> None:
        """``Call.onCallTransferStatus`` (pj thread): pjsua reports 100 "Accepted" for the
        REFER's 2xx, the sipfrag status of each NOTIFY, the REFER's final status when it is
        refused, 200 for ``Refer-Sub: false`` and 500 for a subscription ended without one;
        ``finalNotify`` when the subscription is over.  Nothing comes once the call is
        hanging up (then :meth:`_end_call` reports 487)."""
        st = self.calls.get(getattr(call, "wid", None) or "")
        code, final = int(prm.statusCode), bool(prm.finalNotify)
        reason = clean_text(prm.reason)
        if st is None or st.call is not call or st.ended or st.transfer is None:
            prm.cont = False
            return
        if not final and code < 200:     # accepted, or a provisional NOTIFY: wait on
            st.transfer_accepted = True
            return
        tid, st.transfer = st.transfer, None
        prm.cont = False                 # no more reports for this REFER
        log.info("%s: transfer %s: %d %s%s", st.wid, tid, code, reason,
                 "" if final else " (subscription still active)")
        self.emit("transfer_result", call=st.wid, id=tid, code=code, reason=reason)
        if 200 <= code < 300:
            assert self.pjt is not None
            self.pjt.submit(self._hang_up_transferred, st)   # not inside pjsua's callback

    def _hang_up_transferred(self, st: CallState) -> None:
        """RFC 5589: after a successful transfer the transferor sends BYE."""
        if st.ended or st.call is None:
            return                       # the far end hung up first
        try:
            self._hangup(st, None)
        except Exception as exc:
            log.warning("BYE after the transfer of %s failed: %s", st.wid, _pj_message(exc))

    def on_send_request(self, prm: Any) -> None:
        key = int(prm.userData) if prm.userData is not None else None
        entry = self.notifies.get(key) if key is not None else None
        if entry is None:
            return
        tsx = prm.e.body.tsxState.tsx
        code = tsx.statusCode
        if code < 200:
            return
        del self.notifies[key]
        self.emit("notify_result", id=entry[0], code=code, reason=clean_text(tsx.statusText))

    def op_stats(self, f: dict) -> dict:
        return {"ev": "stats", "calls": len(self.calls), "media_ports": self.ep.mediaActivePorts(),
                "pending_notifies": len(self.notifies)}

    def on_reg_state(self, acc: Any, prm: Any) -> None:
        code = prm.code
        expires = prm.expiration
        if 200 <= code < 300:
            state = "registered" if expires > 0 else "unregistered"
        else:
            state = "failed"
        acc.registered = state == "registered"
        self.emit("registration", account=acc.name, state=state, code=code,
                  reason=clean_text(prm.reason),
                  expires=expires)

    def on_info(self, wid: str | None, raw: str, tsx_ptr: int, rdata_ptr: int) -> None:
        """An INFO in a call, still unanswered (Trying).  pjsua answers and reports
        application/dtmf-relay itself (onDtmfDigit); application/dtmf is answered 200 here."""
        m = re.search(r"^(?:Content-Type|c)\s*:\s*application/dtmf\s*(?:;|\r?$)", raw,
                      re.M | re.I)
        if not m:
            return
        if not respond_in_tsx(tsx_ptr, rdata_ptr, 200):
            log.warning("could not answer INFO application/dtmf on %s", wid)
        digit = dtmf_from_info(raw)
        if digit is not None:
            self.on_dtmf(wid, digit, "info")

    def dispatch(self, f: dict) -> Any:
        """Run one checked op (pj thread).  A pj.Error becomes an OpError here, so that no
        pj object goes to the Trio thread."""
        try:
            return getattr(self, "op_" + f["op"])(f)
        except pj.Error as exc:
            raise OpError(_pj_message(exc)) from None


class _CApi:
    """A few pjsip C functions that pjsua2 does not wrap, from the wheel's own library (it
    exports them; ``ctypes.CDLL`` of the loaded module's path returns the same handle)."""

    _lib: Any = None

    @classmethod
    def lib(cls) -> Any:
        if cls._lib is None:
            lib = ctypes.CDLL(pj._pjsua2.__file__)
            lib.pjsip_tsx_set_timers.argtypes = [ctypes.c_uint] * 4
            lib.pjsip_tsx_set_timers.restype = None
            lib.pjsua_get_pjsip_endpt.argtypes = []
            lib.pjsua_get_pjsip_endpt.restype = ctypes.c_void_p
            lib.pjsip_endpt_create_response.argtypes = [
                ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                ctypes.POINTER(ctypes.c_void_p)]
            lib.pjsip_endpt_create_response.restype = ctypes.c_int
            lib.pjsip_tsx_send_msg.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
            lib.pjsip_tsx_send_msg.restype = ctypes.c_int
            cls._lib = lib
        return cls._lib


def set_tsx_timeout(ms: int) -> None:
    """Timer B/F (the transaction timeout) through ``pjsip_tsx_set_timers``: pjsua2 has no
    setting for it.  T1, T2 and T4 stay at the RFC 3261 values (500, 4000, 5000 ms)."""
    _CApi.lib().pjsip_tsx_set_timers(500, 4000, 5000, int(ms))


def respond_in_tsx(tsx_ptr: int, rdata_ptr: int, code: int) -> bool:
    """Answer an incoming request's transaction (``pjsip_endpt_create_response`` +
    ``pjsip_tsx_send_msg``, as pjsua does for INFO dtmf-relay).  pjsua2 cannot answer a
    request it does not handle itself; without this an INFO application/dtmf gets
    "500 Unhandled by dialog usages".  Call it on the pj thread, inside the transaction's
    Trying callback."""
    lib = _CApi.lib()
    endpt = lib.pjsua_get_pjsip_endpt()
    if not (endpt and tsx_ptr and rdata_ptr):
        return False
    tdata = ctypes.c_void_p()
    if lib.pjsip_endpt_create_response(endpt, rdata_ptr, code, None, ctypes.byref(tdata)) != 0:
        return False
    return lib.pjsip_tsx_send_msg(tsx_ptr, tdata) == 0


_CLASSES: Any = None


def _pj_classes() -> Any:
    """The pjsua2 subclasses (defined once pjsua2 is known to import)."""
    global _CLASSES
    if _CLASSES is not None:
        return _CLASSES
    if pj is None:
        raise RuntimeError("pjsua2 is not installed (pip install pjsua2-python==2.15.1.post1)")

    class LogWriter(pj.LogWriter):
        def write(self, entry: Any) -> None:
            try:
                sys.stderr.write(entry.msg if entry.msg.endswith("\n") else entry.msg + "\n")
            except Exception:
                pass

    class Endpoint(pj.Endpoint):
        def __init__(self, engine: Engine) -> None:
            super().__init__()
            self.engine = engine

        def onRejectedIncomingCall(self, prm: Any) -> None:
            self.engine.guard("rejected", self.engine.on_rejected, prm)

    class Account(pj.Account):
        def __init__(self, engine: Engine, name: str) -> None:
            super().__init__()
            self.engine = engine
            self.name = name
            self.registered = False

        def onIncomingCall(self, prm: Any) -> None:
            self.engine.guard("incoming", self.engine.on_incoming, self, prm)

        def onRegState(self, prm: Any) -> None:
            self.engine.guard("reg", self.engine.on_reg_state, self, prm)

        def onSendRequest(self, prm: Any) -> None:
            self.engine.guard("send_request", self.engine.on_send_request, prm)

    class Call(pj.Call):
        def __init__(self, engine: Engine, acc: Any, call_id: int) -> None:
            super().__init__(acc, call_id)
            self.engine = engine
            self.wid: str | None = None

        def onCallState(self, prm: Any) -> None:
            self.engine.guard("call_state", self.engine.on_call_state, self)

        def onCallMediaState(self, prm: Any) -> None:
            self.engine.guard("media_state", self.engine.on_media_state, self)

        def onCallTransferStatus(self, prm: Any) -> None:
            self.engine.guard("transfer_status", self.engine.on_transfer_status, self, prm)

        def onDtmfDigit(self, prm: Any) -> None:
            try:
                via = "info" if prm.method == pj.PJSUA_DTMF_METHOD_SIP_INFO else "rfc2833"
                self.engine.on_pj(self.engine.on_dtmf, self.wid, prm.digit, via)
            except Exception:
                log.exception("dtmf callback failed")

        def onCallTsxState(self, prm: Any) -> None:
            try:
                e = prm.e
                if e.type != pj.PJSIP_EVENT_TSX_STATE:
                    return
                ts = e.body.tsxState
                tsx = ts.tsx
                if (tsx.role == pj.PJSIP_ROLE_UAS and tsx.method == "INFO"
                        and tsx.state == pj.PJSIP_TSX_STATE_TRYING
                        and ts.type == pj.PJSIP_EVENT_RX_MSG):
                    rdata = ts.src.rdata
                    self.engine.on_info(self.wid, rdata.wholeMsg, int(tsx.pjTransaction),
                                        int(rdata.pjRxData))
            except Exception:
                log.exception("tsx callback failed")

    class Player(pj.AudioMediaPlayer):
        def __init__(self, engine: Engine, wid: str, pid: int) -> None:
            super().__init__()
            self.engine = engine
            self.wid = wid
            self.pid = pid

        def onEof2(self) -> None:
            try:  # may run on a pjmedia thread: only queue a job
                assert self.engine.pjt is not None
                self.engine.pjt.submit(self.engine.on_player_eof, self.wid, self.pid, self)
            except Exception:
                log.exception("eof callback failed")

    class _C:
        pass

    c = _C()
    c.LogWriter, c.Endpoint, c.Account = LogWriter, Endpoint, Account
    c.Call, c.Player = Call, Player
    _CLASSES = c
    return c


# ============================================================================ the Trio side

class Worker:
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
                                      "message": f"start failed: {_pj_message(exc)}"})
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
        ev: dict[str, Any] = {"ev": "error", "message": message[:1000]}
        if isinstance(msg, dict):
            if "id" in msg and isinstance(msg["id"], int) and not isinstance(msg["id"], bool):
                ev["ref"] = msg["id"]
            if isinstance(msg.get("op"), str):
                ev["op"] = msg["op"][:64]
            if isinstance(msg.get("call"), str):
                ev["call"] = msg["call"][:64]
        self.out_send.send_nowait(ev)

    async def _reader(self) -> None:
        assert self.sock is not None
        reader = LineReader()
        while True:
            try:
                data = await self.sock.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                data = b""
            if not data:
                self.request_stop("control socket closed")
                return
            for msg in reader.feed(data):
                if isinstance(msg, ControlError):
                    self._error(f"bad line: {msg.reason}")
                    continue
                await self._handle(msg)
                if self.stop.is_set():
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
            self._error(_pj_message(exc), msg)
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
        if not a.registrar or not _URI.fullmatch(a.registrar):
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
            try:
                with open(a.password_file, encoding="utf-8") as fh:
                    password = fh.readline().rstrip("\r\n")
            except OSError as exc:
                p.error(f"cannot read --password-file: {exc}")
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
        log.error("pjsua2 is not installed (pip install pjsua2-python==2.15.1.post1)")
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
