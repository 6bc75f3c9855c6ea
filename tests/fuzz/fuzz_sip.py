"""SIP text the product reads (telephony.sip.core): the redirection headers of an INVITE
(Diversion, History-Info: ``call_reason``, ``headers_named``, ``parse_diversion``,
``parse_history_info``), the MWI NOTIFY body (``parse_message_summary``), and the SIP INFO
DTMF bodies and request line the worker reads (worker_protocol).

Invariants: none of the header functions raises, whatever the text; ``call_reason`` gives a
``Reason`` and a number of at most ``MAX_FIELD`` printable characters; ``headers_named`` gives
at most ``MAX_ENTRIES`` values of at most ``MAX_HEADER + 1`` characters; a Diversion entry
written back from a redirection reads back as the same redirection; ``parse_message_summary``
raises only ``ValueError``, and what it reads, written with ``message_summary``, reads back
equal; ``dtmf_from_info`` gives one DTMF character or None.
"""
from __future__ import annotations

from telephony.core.events import MAX_FIELD, Reason
from telephony.sip.core.headers import (
    MAX_COUNT,
    MAX_ENTRIES,
    MAX_HEADER,
    call_reason,
    headers_named,
    message_summary,
    parse_diversion,
    parse_history_info,
    parse_message_summary,
)
from telephony.sip.core.worker_protocol import (
    clean_text,
    dtmf_from_info,
    is_plain_dtmf_info,
    request_uri_of,
)
from tests.fuzz.common import Input, check

_REASON_TOKEN = {Reason.BUSY: "user-busy", Reason.NO_ANSWER: "no-answer",
                 Reason.ALL: "unconditional"}
_SAFE = frozenset("0123456789+-.*#abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")


def check_redirects(redirects: list) -> None:
    for r in redirects:
        check(isinstance(r.reason, Reason) and isinstance(r.number, str), f"{r!r:.80}")
        check(len(r.number) <= MAX_FIELD and r.number.isprintable(), f"number {r.number!r:.80}")


def invite(text: str, raw: bytes) -> None:
    for select in ("first", "last"):
        for message in (text, raw):
            reason, number = call_reason(message, select=select)
            check(isinstance(reason, Reason), f"reason {reason!r}")
            check(isinstance(number, str) and len(number) <= MAX_FIELD and number.isprintable(),
                  f"number {number!r:.80}")
    for name in ("Diversion", "History-Info", "m", "Content-Type"):
        values = headers_named(text, name)
        check(len(values) <= MAX_ENTRIES, f"{len(values)} values")
        check(all(len(v) <= MAX_HEADER + 1 for v in values), "over-long value kept")
    div = parse_diversion(headers_named(text, "Diversion"))
    check_redirects(div)
    check_redirects(parse_history_info(headers_named(text, "History-Info")))
    for r in div:
        if r.reason in _REASON_TOKEN and r.number and set(r.number) <= _SAFE:
            again = parse_diversion([f"<sip:{r.number}@cm>;reason={_REASON_TOKEN[r.reason]}"])
            check([(a.number, a.reason) for a in again] == [(r.number, r.reason)],
                  f"Diversion round trip of {r!r:.80} gave {again!r:.120}")


def summary(text: str) -> None:
    try:
        got = parse_message_summary(text)
    except ValueError:
        return
    check(isinstance(got["waiting"], bool), f"{got!r:.80}")
    voice, account = got["voice"], got["account"]
    if voice is None or account is None:
        return
    check(all(0 <= c <= MAX_COUNT for c in voice), f"counts {voice}")
    new, old, unew, uold = voice
    try:
        body = message_summary(new, old, account=account, urgent_new=unew, urgent_old=uold)
    except ValueError:
        return  # an account or urgent counts our writer refuses: reading is tolerant
    back = parse_message_summary(body)
    check(back == {"waiting": new > 0, "account": account, "voice": voice},
          f"summary round trip {got!r:.80} -> {back!r:.80}")


def info(text: str) -> None:
    digit = dtmf_from_info(text)
    check(digit is None or (len(digit) == 1 and digit in "0123456789*#ABCD"), f"digit {digit!r}")
    check(isinstance(is_plain_dtmf_info(text), bool), "is_plain_dtmf_info")
    uri = request_uri_of(text)
    check(isinstance(uri, str) and "\n" not in uri, f"uri {uri!r:.80}")
    check(clean_text(text).encode("utf-8") is not None, "clean_text")


def test_one_input(data: bytes) -> None:
    inp = Input(data)
    mode = inp.u8() % 3
    raw = inp.rest()
    text = raw.decode("utf-8", "surrogateescape")
    text = clean_text(text)
    if mode == 0:
        invite(text, raw)
    elif mode == 1:
        summary(text)
    else:
        info(text)


def seeds() -> list[bytes]:
    """INVITEs with each redirection form, NOTIFY bodies from our writer, INFO bodies."""
    head = ("INVITE sip:2000@10.0.0.5:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n"
            "From: <sip:5551001@cm>;tag=1\r\nTo: <sip:2000@10.0.0.5>\r\nCall-ID: a@b\r\n")
    tail = "Content-Length: 0\r\n\r\n"
    invites = [
        head + 'Diversion: "Line 1020" <sip:1020@cm>;reason=no-answer;privacy=off;counter=1\r\n'
        + "Diversion: <sip:2020@cm>;reason=unconditional, <tel:+1-555-0100>;reason=\"user-busy\"\r\n"
        + tail,
        head + "History-Info: <sip:1002@cm?Reason=SIP%3Bcause%3D486>;index=1\r\n"
        + "History-Info: <sip:2000@cm;cause=486>;index=1.1\r\n"
        + "History-Info: <sip:3000@cm>;index=1.1.1;mp=1.1\r\n" + tail,
        head + "History-Info: <sip:2000@cm>;index=1\r\n h: continued\r\n" + tail,
    ]
    bodies = [message_summary(2, 8, account="sip:1002@cm", urgent_old=2),
              message_summary(0, 0, account="sips:1@x"), "messages-waiting : YES\nVoice-Message: 1/2\n"]
    infos = ["INFO sip:w1@10.0.0.5 SIP/2.0\r\nContent-Type: application/dtmf-relay\r\n\r\n"
             "Signal=5\r\nDuration=160\r\n",
             "INFO sip:w1@10.0.0.5 SIP/2.0\nc: application/dtmf\n\n11"]
    return ([b"\0" + s.encode() for s in invites] + [b"\1" + s.encode() for s in bodies]
            + [b"\2" + s.encode() for s in infos])
