"""The SIP worker's pipe protocol: what the SIP driver and a worker process
(:mod:`telephony.sip.worker`) say to each other on the worker's Unix socket, the checks of the
driver's ops, the encoding of the worker's events, and the worker's limits.

Pure: no trio, sockets, threads, pjsua2 or clock.  The worker's shell cuts the socket's bytes
with :class:`telephony.core.framing.LineFramer` (``resync=True``) and hands the framer to
:func:`take_ops`; it encodes every event with :func:`encode_event`.

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
    {"ev":"stats","calls":n,"media_ports":m,"pending_notifies":p,"clock":bool,"clock_starts":k}
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

Media: the conference bridge and the (null) sound device run at 8000 Hz, so recordings are
8 kHz 16-bit mono WAV.  Played WAVs must be 16-bit PCM mono (any rate; the bridge resamples).
Relative ``path`` values of ``play`` and ``record`` are taken under the worker's
``--media-dir``.  How a recording's file grows on disk while it is recorded (what a tail
reader sees) is in :mod:`telephony.sip.engine`.

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
  line over 64 KiB) gets ``error`` and changes nothing.  An over-long line is skipped up to
  its ``\\n`` and reported once, when its end (or the end of the stream) comes; lines that
  are empty or blank are ignored.
* ``shutdown``, SIGTERM, SIGINT and the control socket closing all do the same: hang up every
  call (their events are still sent if the socket is open), wait up to 5 s for pending
  NOTIFYs, ``libDestroy``, exit 0.  A NOTIFY still pending after 5 s gets ``notify_result``
  408 "worker shut down"; then pj is not destroyed (``libDestroy`` with a pending
  ``sendRequest`` transaction aborts the process) and the process ends with ``os._exit(0)``.
"""
from __future__ import annotations

import json
import re
from typing import Any, Final

from telephony.core.control import ControlError, parse_line
from telephony.core.framing import MAX_LINE, Closed, LineFramer, NeedData, Overlong, Unfinished

__all__ = ["MAX_LINE", "RAW_LIMIT", "NO_ANSWER_TIMEOUT", "NOTIFY_WAIT", "MAX_WHEEL_CALLS",
           "RTP_PORTS_PER_CALL", "MAX_ID", "MAX_BODY", "MAX_HEADERS", "NOTIFY_TYPE",
           "MAX_TRANSFER_URI", "SIP_URI", "OpError", "check_op", "take_ops", "encode_event",
           "error_event", "request_uri_of", "dtmf_from_info", "is_plain_dtmf_info",
           "clean_text"]

# ============================================================================ limits

# MAX_LINE (65,536 bytes) is the framer's: the longest line either way
RAW_LIMIT: Final = 16384           # characters of the INVITE passed in "incoming"
NO_ANSWER_TIMEOUT: Final = 30.0    # s before an unanswered INVITE is rejected with 480
NOTIFY_WAIT: Final = 5.0           # s shutdown waits for pending NOTIFYs
MAX_WHEEL_CALLS: Final = 4         # PJSUA_MAX_CALLS of the pjsua2 wheels
RTP_PORTS_PER_CALL: Final = 4      # 2 RTP/RTCP pairs per port
MAX_ID: Final = 2**53              # ids stay exact in JSON numbers
MAX_BODY: Final = 16384
MAX_HEADERS: Final = 32
NOTIFY_TYPE: Final = "application/simple-message-summary"
MAX_TRANSFER_URI: Final = 256      # characters of a transfer's target URI
#: a ``sip:``/``sips:`` URI as the ops (and the worker's ``--registrar``) take it
SIP_URI: Final = re.compile(r"sips?:[^\s<>\"]{1,1000}")
_TOKEN = re.compile(r"[A-Za-z0-9!%*_+`'~.-]{1,64}")
_FORBIDDEN_HEADERS = {"via", "from", "to", "call-id", "cseq", "content-length", "contact",
                      "max-forwards", "route", "record-route", "v", "f", "t", "i", "m", "l"}


class OpError(ValueError):
    """An op the worker will not carry out; the message goes back in an ``error`` event."""


# ============================================================================ ops in

def take_ops(framer: LineFramer) -> list[dict | ControlError]:
    """Every op line ``framer`` holds complete, in order: a dict with a string ``"op"`` (its
    fields not yet checked: :func:`check_op`) or a :class:`ControlError` for a line that is
    no op (not UTF-8, not JSON, not an object, no string ``"op"``) or is over the framer's
    limit (``resync=True`` skipped it).  Blank lines and, at the end of the stream, an
    unfinished last line are dropped.  Never raises for any bytes the framer was given."""
    out: list[dict | ControlError] = []
    while True:
        item = framer.next_line()
        if isinstance(item, (NeedData, Closed)):
            return out
        if isinstance(item, Overlong):
            out.append(ControlError(f"line longer than {framer.max_line} bytes", b""))
        elif isinstance(item, Unfinished):
            continue
        elif item.strip():
            out.append(parse_line(item.rstrip(b"\r")))


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
        if not SIP_URI.fullmatch(target):
            raise OpError("target must be a sip: or sips: URI")
        out["target"] = target
        account = _str(msg, "account", 1024, required=False)
        if account is not None and not SIP_URI.fullmatch(account):
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
        if not SIP_URI.fullmatch(target):
            raise OpError("target must be a sip: or sips: URI")
        out["target"] = target
    elif op in ("shutdown", "stats"):
        pass
    else:
        raise OpError(f"unknown op {op!r:.40}")
    return out


# ============================================================================ events out

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


def error_event(message: str, msg: dict | None = None) -> dict:
    """The ``error`` event for a refused line or op: ``ref``, ``op`` and ``call`` are taken
    from ``msg`` (the op as it came) when they are there and of the right type."""
    ev: dict[str, Any] = {"ev": "error", "message": message[:1000]}
    if isinstance(msg, dict):
        if "id" in msg and isinstance(msg["id"], int) and not isinstance(msg["id"], bool):
            ev["ref"] = msg["id"]
        if isinstance(msg.get("op"), str):
            ev["op"] = msg["op"][:64]
        if isinstance(msg.get("call"), str):
            ev["call"] = msg["call"][:64]
    return ev


def clean_text(text: Any) -> str:
    """SIP text as valid Unicode: SWIG decodes non-UTF-8 bytes to lone surrogates, which
    would not encode; they become U+FFFD."""
    if not isinstance(text, str):
        return ""
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


# ============================================================================ SIP text of the events

def request_uri_of(raw: str) -> str:
    """The Request-URI of a request's text (its first line), or ``""``."""
    first = raw.split("\n", 1)[0].strip()
    parts = first.split(" ")
    return parts[1] if len(parts) == 3 and parts[2].startswith("SIP/") else ""


def is_plain_dtmf_info(raw: str) -> bool:
    """Whether an INFO's text has ``Content-Type: application/dtmf`` (the body the worker
    answers itself; pjsua handles ``application/dtmf-relay``)."""
    return re.search(r"^(?:Content-Type|c)\s*:\s*application/dtmf\s*(?:;|\r?$)", raw,
                     re.M | re.I) is not None


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
