"""Why a SIP call reached voice mail, and the MWI NOTIFY body.  Pure: strings in, values out
(no trio, sockets, pjsua2 or clock).

References: ``docs/protocols.md`` section 2.1 (RFC 3842 message-summary), 2.2 and 2.3
(Diversion, History-Info, the cause -> reason map) and 2.4 (the cross-protocol reason table).

**Diversion** (RFC 5806; Cisco Unified CM sends it)::

    Diversion: "Line 1020" <sip:1020@cm>;reason=no-answer;privacy=off;screen=yes;counter=1

Each entry names a party that *forwarded* the call and why.  Entries stack **most recent
first**, whether as comma-separated values of one header or as separate headers (a header
further down the message is older).  ``reason`` maps ``user-busy`` -> BUSY, ``no-answer`` ->
NO_ANSWER, ``unconditional`` -> ALL; everything else (``unknown``, ``unavailable``,
``deflection``, ``time-of-day``, ``do-not-disturb``, ``follow-me``, ``out-of-service``,
``away``, any other token, a missing reason) -> UNKNOWN.  Matching ignores case, and a value
in double quotes is unquoted first, as Asterisk does (``reason="user-busy"`` -> BUSY).

**History-Info** (RFC 7044) lists the *targets* the request was sent to, each with an
``index`` (``1``, ``1.1``, ``1.1.1``; ``1.2`` is the second try from ``1``)::

    History-Info: <sip:1002@cm>;index=1
    History-Info: <sip:2000@cm;cause=486>;index=1.1

The entry carrying the cause is the **new** target; the party that forwarded is the entry it
was retargeted *from* (Asterisk's reading, RFC 7544's mapping).  So the example is "1002
forwarded on busy to 2000", the same call as ``Diversion: <sip:1002@cm>;reason=user-busy``,
and :func:`parse_history_info` returns the same list as :func:`parse_diversion` does for that
Diversion: ``[Redirect("1002", Reason.BUSY, ...)]``.  The cause comes from, first match wins:

1. the new target's ``cause=`` URI parameter (RFC 4458): 302 -> ALL, 486 -> BUSY,
   408 -> NO_ANSWER, anything else (404, 480, 487, 503, not a number) -> UNKNOWN;
2. a ``Reason`` header escaped into the URI of the entry just before it in index order
   (``<sip:1002@cm?Reason=SIP%3Bcause%3D486>;index=1``): RFC 7044 puts there the response
   that ended the request to that target, which is what caused the retargeting.  The
   unescaped ``?Reason=SIP;cause=486`` that some gateways send is read too; only the ``SIP``
   protocol counts (a ``Q.850`` Reason is ignored);
3. for the last entry only (the target now being called, which cannot have failed), its own
   escaped Reason, the placement some senders use.

See :func:`parse_history_info` for which retargetings count as redirections.

**The call-arrival reason** (:func:`call_reason`): Diversion when present, else History-Info,
else a direct call.  The *reason* is always the most recent redirection's (why the call is at
voice mail now).  The *number*, which picks the mailbox, is a per-system choice
(``SipProfile.select``): ``"first"`` is the most recent redirecting party (top Diversion entry,
Cisco Unity Express), ``"last"`` the original called party (bottom entry, Unity Connection's
usual choice).  Numbers are the URI's user part as sent (``+1-555-0100`` stays so); turning them
into extensions is the integration profile's job (``NumberRule``).

**Robustness.**  None of the header functions raises on any input.  A malformed entry is
skipped: an unclosed ``<`` or quote, text after ``>``, no URI scheme, a ``sip:`` URI without
host, white space or a non-printable character inside the URI, a user part longer than
``events.MAX_FIELD``.  A header value longer than :data:`MAX_HEADER` is skipped whole; at most
:data:`MAX_ENTRIES` header values and :data:`MAX_ENTRIES` entries per header kind are looked
at.  A header that is present but yields nothing makes the reason UNKNOWN.

**MWI body** (RFC 3842, docs/protocols.md 2.1): :func:`message_summary` writes
``Messages-Waiting: yes|no``, ``Message-Account: <uri>``, ``Voice-Message: n/o (un/uo)``
with CRLF line ends, the way Asterisk does; :func:`parse_message_summary` reads one back.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from telephony.core.events import MAX_FIELD, Reason

#: Characters of one header value considered; a longer value is treated as malformed.
MAX_HEADER = 4096
#: Header values, and entries, considered per header kind.
MAX_ENTRIES = 32
#: Largest message count :func:`message_summary` writes and :func:`parse_message_summary` reads.
MAX_COUNT = 2**31 - 1

SELECT = ("first", "last")

_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_HEADER_LINE = re.compile(rf"({_TOKEN})[ \t]*:(.*)\Z", re.S)
_LINE_BREAK = re.compile(r"\r?\n")
_TOKEN_RE = re.compile(rf"{_TOKEN}\Z")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):(.*)\Z", re.S)
_INDEX = re.compile(r"\d{1,9}(?:\.\d{1,9})*\Z")
_CAUSE = re.compile(r"\d{1,3}\Z")
_WS = " \t"

#: RFC 3261 7.3.3 (and RFC 3515, 3892, 3903, 4028, 6665) compact header names.
_COMPACT = {"a": "accept-contact", "b": "referred-by", "c": "content-type", "d": "request-disposition",
            "e": "content-encoding", "f": "from", "i": "call-id", "j": "reject-contact",
            "k": "supported", "l": "content-length", "m": "contact", "o": "event", "r": "refer-to",
            "s": "subject", "t": "to", "u": "allow-events", "v": "via", "x": "session-expires"}

_DIVERSION_REASONS = {"user-busy": Reason.BUSY, "no-answer": Reason.NO_ANSWER,
                      "unconditional": Reason.ALL}
_CAUSE_REASONS = {302: Reason.ALL, 486: Reason.BUSY, 408: Reason.NO_ANSWER}
_BAD_CAUSE = -1


@dataclass(frozen=True)
class Redirect:
    """One redirection: who forwarded the call and why.

    ``number`` is the user part of the forwarding party's URI as sent, up to any ``;``
    user parameter (``sip:+1-555-0100;phone-context=x@cm`` -> ``+1-555-0100``; for ``tel:`` the
    subscriber number), no percent-decoding, at most ``events.MAX_FIELD`` printable characters;
    ``""`` when the URI has no user part or is not a sip/sips/tel URI.  ``raw`` is the text as
    received, for logs: the Diversion entry, or for History-Info the two entries of the
    retargeting (``"<from entry>, <to entry>"``, or only the to-entry when it is the first).
    """

    number: str
    reason: Reason
    raw: str


# --------------------------------------------------------------------------- raw message

def _canonical(name: str) -> str:
    n = name.strip(_WS).lower()
    return _COMPACT.get(n, n)


def headers_named(raw_message: str, name: str) -> list[str]:
    """The values of every header ``name`` in a raw SIP message, in message order.

    Names match without regard to case, and a compact form matches its long form both ways
    (``m`` / ``Contact``; Diversion and History-Info have none).  The start line and lines
    that are not headers are skipped; a line starting with a space or tab continues the
    previous header (joined with one space).  Leading empty lines are skipped; the next empty
    line ends the headers, so nothing in the body counts.  Lines may end in CRLF or a bare LF.
    Bounded: at most :data:`MAX_ENTRIES` values (the first ones); a value is cut to
    ``MAX_HEADER + 1`` characters, so that an over-long one stays recognisably too long and the
    parsers drop it.  Values are stripped of surrounding blanks; an empty header gives ``""``.
    ``bytes`` are decoded as UTF-8 (bad bytes replaced); any other type gives ``[]``.
    """
    if isinstance(raw_message, (bytes, bytearray)):
        raw_message = bytes(raw_message).decode("utf-8", "replace")
    if not isinstance(raw_message, str) or not isinstance(name, str):
        return []
    want = _canonical(name)
    values: list[str] = []
    current: list[str] | None = None     # pieces of the wanted value being collected
    size = 0
    started = False
    for line in _LINE_BREAK.split(raw_message):
        if not line:
            if started:
                break
            continue
        started = True
        if line[0] in _WS:
            if current is not None and size <= MAX_HEADER:
                piece = line.strip(_WS + "\r")
                if piece:
                    current.append(piece)
                    size += len(piece) + 1
            continue
        if current is not None:
            values.append(" ".join(p for p in current if p)[:MAX_HEADER + 1])
            current = None
        if len(values) >= MAX_ENTRIES:
            break
        m = _HEADER_LINE.match(line)
        if m and _canonical(m.group(1)) == want:
            first = m.group(2).strip(_WS + "\r")
            current, size = [first], len(first)
    if current is not None and len(values) < MAX_ENTRIES:
        values.append(" ".join(p for p in current if p)[:MAX_HEADER + 1])
    return values


# --------------------------------------------------------------------------- entries

@dataclass(frozen=True)
class _Entry:
    raw: str
    number: str
    uri_params: dict[str, str]
    reason_cause: int | None       # cause of a SIP Reason header escaped into the URI
    params: dict[str, str]         # header parameters after the URI (names lower-cased)


def _split_outside(value: str, sep: str, *, angles: bool) -> list[tuple[str, bool]]:
    """``value`` split at ``sep`` where it is outside a quoted string (and, with ``angles``,
    outside ``<...>``): ``(text, balanced)`` pieces; only the last piece can be unbalanced (a
    quote or ``<`` still open at the end)."""
    out: list[tuple[str, bool]] = []
    in_quote = in_angle = escape = False
    start = 0
    for i, ch in enumerate(value):
        if in_quote:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_quote = False
        elif in_angle:
            if ch == ">":
                in_angle = False
        elif ch == '"':
            in_quote = True
        elif ch == "<" and angles:
            in_angle = True
        elif ch == sep:
            out.append((value[start:i], True))
            start = i + 1
    out.append((value[start:], not (in_quote or in_angle)))
    return out


def _split_entries(value: str) -> list[tuple[str, bool]]:
    """Comma-separated entries of one header value: ``(text, balanced)``.  Commas inside
    ``<...>`` or a quoted string do not split; an entry whose quote or ``<`` is still open at
    the end of the value is not balanced."""
    return _split_outside(value, ",", angles=True)


def _quoted_end(s: str, start: int) -> int:
    """Index just past the quoted string opening at ``s[start]``, or -1 if it never closes."""
    escape = False
    for i in range(start + 1, len(s)):
        ch = s[i]
        if escape:
            escape = False
        elif ch == "\\":
            escape = True
        elif ch == '"':
            return i + 1
    return -1


def _split_params(tail: str) -> list[str]:
    """``;a=1;b="x;y"`` -> ``['a=1', 'b="x;y"']`` (the text before the first ``;`` is dropped)."""
    return [text for text, _ in _split_outside(tail, ";", angles=False)[1:]]


def _params(pieces: list[str]) -> dict[str, str]:
    """name -> value (lower-cased names, first occurrence wins, bad names ignored)."""
    out: dict[str, str] = {}
    for piece in pieces:
        name, _, value = piece.partition("=")
        name = name.strip(_WS).lower()
        if _TOKEN_RE.match(name) and name not in out:
            out[name] = value.strip(_WS)
    return out


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1], flags=re.S)
    return value


def _reason_header_cause(headers: str) -> int | None:
    """The cause of the first ``Reason: SIP;cause=NNN`` among URI headers (``a=b&c=d``)."""
    for hdr in headers.split("&"):
        hname, _, hvalue = hdr.partition("=")
        if hname.strip(_WS).lower() != "reason":
            continue
        text = unquote(hvalue, errors="replace")
        protocol, _, rest = text.partition(";")
        if protocol.strip(_WS).upper() != "SIP":
            continue
        cause = _params(_split_params(";" + rest)).get("cause")
        if cause is not None:
            return int(cause) if _CAUSE.match(cause) else _BAD_CAUSE
    return None


def _parse_uri(uri: str) -> tuple[str, dict[str, str], int | None] | None:
    """``(number, uri params, Reason cause)`` of a URI, or None if it is not one."""
    if not uri or any(c <= " " or not c.isprintable() for c in uri):
        return None
    m = _SCHEME.match(uri)
    if not m:
        return None
    scheme, body = m.group(1).lower(), m.group(2)
    if scheme in ("sip", "sips"):
        at = body.find("@")
        if at >= 0:
            user, rest = body[:at].partition(":")[0], body[at + 1:]
        else:
            user, rest = "", body
        number = user.partition(";")[0]
        before, _, headers = rest.partition("?")
        host, *pieces = before.split(";")
        if not host:
            return None
    elif scheme == "tel":
        before, _, headers = body.partition("?")
        number, *pieces = before.split(";")
        if not number:
            return None
    else:
        return "", {}, None
    if len(number) > MAX_FIELD:
        return None
    return number, _params(pieces), _reason_header_cause(headers)


def _parse_entry(text: str) -> _Entry | None:
    """One name-addr or addr-spec with its parameters, or None when malformed."""
    s = text.strip(_WS)
    if not s:
        return None
    if s.startswith('"'):
        end = _quoted_end(s, 0)
        if end < 0:
            return None
        rest = s[end:].lstrip(_WS)
        if not rest.startswith("<"):
            return None
    elif "<" in s:
        lt = s.index("<")
        if any(c in s[:lt] for c in '">;'):
            return None
        rest = s[lt:]
    else:
        rest = None
    if rest is not None:
        gt = rest.find(">")
        if gt < 0:
            return None
        uri, tail = rest[1:gt].strip(_WS), rest[gt + 1:].lstrip(_WS)
        if "<" in uri or (tail and not tail.startswith(";")):
            return None
    else:
        uri, semi, tail = s.partition(";")
        uri, tail = uri.rstrip(_WS), semi + tail
        if ">" in uri or '"' in uri:
            return None
    parsed = _parse_uri(uri)
    if parsed is None:
        return None
    number, uri_params, reason_cause = parsed
    return _Entry(s, number, uri_params, reason_cause, _params(_split_params(tail)))


def _entries(values: Any) -> tuple[list[_Entry], int]:
    """The well-formed entries of up to MAX_ENTRIES values / entries, and how many were bad."""
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, (list, tuple)):
        return [], 1
    good: list[_Entry] = []
    bad = seen = 0
    for value in values[:MAX_ENTRIES]:
        if not isinstance(value, str) or len(value) > MAX_HEADER or not value.strip(_WS):
            bad += 1
            continue
        for text, balanced in _split_entries(value):
            if not text.strip(_WS):
                continue
            if seen >= MAX_ENTRIES:
                return good, bad
            seen += 1
            entry = _parse_entry(text) if balanced else None
            if entry is None:
                bad += 1
            else:
                good.append(entry)
    return good, bad


# --------------------------------------------------------------------------- Diversion

def _diversion_reason(value: str | None) -> Reason:
    if value is None:
        return Reason.UNKNOWN
    return _DIVERSION_REASONS.get(_unquote(value).strip(_WS).lower(), Reason.UNKNOWN)


def _diversion(values: Any) -> tuple[list[Redirect], int]:
    entries, bad = _entries(values)
    return [Redirect(e.number, _diversion_reason(e.params.get("reason")), e.raw)
            for e in entries], bad


def parse_diversion(values: list[str]) -> list[Redirect]:
    """The redirections in Diversion header values (RFC 5806), in wire order, which is
    **most recent first**: the first value's first entry is the party that forwarded the call
    to us.  Each value may hold several comma-separated entries.  Reasons: see the module
    docstring.  Malformed entries, entries without a URI and values longer than
    :data:`MAX_HEADER` are skipped; at most :data:`MAX_ENTRIES` entries are looked at.  Never
    raises (a lone ``str`` is taken as one value)::

        parse_diversion(['"A" <sip:1020@cm>;reason=no-answer, <sip:2020@cm>;reason=unconditional'])
        == [Redirect("1020", Reason.NO_ANSWER, ...), Redirect("2020", Reason.ALL, ...)]
    """
    return _diversion(values)[0]


# --------------------------------------------------------------------------- History-Info

@dataclass(frozen=True)
class _Hop:
    entry: _Entry
    index: tuple[int, ...] | None
    cause: int | None
    tag: tuple[int, ...] | None    # the rc= or mp= index naming the entry it came from
    rc: bool
    mp: bool


def _index(value: str | None) -> tuple[int, ...] | None:
    if value is None or not _INDEX.match(value):
        return None
    return tuple(int(p) for p in value.split("."))


def _cause_reason(cause: int | None) -> Reason:
    return Reason.UNKNOWN if cause is None else _CAUSE_REASONS.get(cause, Reason.UNKNOWN)


def _history_info(values: Any) -> tuple[list[Redirect], int, int]:
    """(redirections most recent first, well-formed entries used, bad entries)."""
    entries, bad = _entries(values)
    hops = []
    for e in entries:
        cause = e.uri_params.get("cause")
        hops.append(_Hop(e, _index(e.params.get("index")),
                         None if cause is None else int(cause) if _CAUSE.match(cause) else _BAD_CAUSE,
                         _index(e.params.get("mp", e.params.get("rc"))),
                         "rc" in e.params, "mp" in e.params))
    if any(h.index is not None for h in hops):
        bad += sum(h.index is None for h in hops)
        hops = sorted((h for h in hops if h.index is not None), key=lambda h: h.index)
    out: list[Redirect] = []
    by_index: dict[tuple[int, ...], _Hop] = {}
    for k, cur in enumerate(hops):
        prev = hops[k - 1] if k else None
        parent = by_index.get(cur.tag) if cur.tag is not None else None
        if parent is None and cur.index is not None and len(cur.index) > 1:
            parent = by_index.get(cur.index[:-1])
        if parent is None:
            parent = prev
        cause = cur.cause
        if cause is None and prev is not None:
            cause = prev.entry.reason_cause
        if cause is None and k == len(hops) - 1:
            cause = cur.entry.reason_cause
        retargeted = (parent is not None and not cur.rc and parent.entry.number != ""
                      and cur.entry.number != "" and parent.entry.number != cur.entry.number)
        if cause is not None or cur.mp or retargeted:
            raw = cur.entry.raw if parent is None else f"{parent.entry.raw}, {cur.entry.raw}"
            out.append(Redirect(parent.entry.number if parent else "", _cause_reason(cause), raw))
        if cur.index is not None:
            by_index.setdefault(cur.index, cur)
    out.reverse()
    return out, len(hops), bad


def parse_history_info(values: list[str]) -> list[Redirect]:
    """The redirections in History-Info header values (RFC 7044), **most recent first**, so
    the result compares directly with :func:`parse_diversion`'s for the same call.

    Entries are put in index order (numerically per component: 1 < 1.1 < 1.1.1 < 1.2 < 2;
    when no entry has an index, wire order; otherwise entries without a valid index are
    dropped).  Each entry after the first is a retargeting *to* it *from* its parent: the entry
    named by its ``mp=``/``rc=`` parameter, else the entry whose index is its own minus the last
    component (``1.1`` for ``1.1.1``), else the entry just before it.  A retargeting is a
    redirection when it has a cause (see the module docstring for where the cause is read), or
    the new entry carries ``mp=`` (RFC 7044: mapped to another user), or the user part changed
    and the new entry does not carry ``rc=`` (RFC 7044: same user, new contact).  The
    redirection's ``number`` is the parent's user part, its ``reason`` the mapped cause
    (UNKNOWN without one).  A first entry that carries a cause gives a redirection from an
    unknown party (``number=""``).  Never raises::

        parse_history_info(["<sip:1002@cm>;index=1, <sip:2000@cm;cause=486>;index=1.1"])
        == [Redirect("1002", Reason.BUSY, "<sip:1002@cm>;index=1, <sip:2000@cm;cause=486>;index=1.1")]
        == parse_diversion(["<sip:1002@cm>;reason=user-busy"])   # apart from raw

    A chain 1020 -(no answer)-> 2020 -(forward all)-> 3020 -(busy)-> 2000 gives
    ``[3020 BUSY, 2020 ALL, 1020 NO_ANSWER]``; entries that are not redirections
    (``<sip:2000@cm>;index=1`` alone, or an ``rc=`` hop to the same user) give ``[]``.
    """
    return _history_info(values)[0]


# --------------------------------------------------------------------------- call reason

def call_reason(raw_message: str, *, select: str = "last") -> tuple[Reason, str]:
    """``(reason, forwarding number)`` of an INVITE's raw text (pjsua2's ``rdata.wholeMsg``).

    * Diversion headers that yield a redirection decide; else History-Info headers that yield
      one; the reason is that of the most recent redirection (the first in the list); the
      number is the first entry's (``select="first"``: the most recent redirecting party) or
      the last one's (``select="last"``: the original called party).
    * No Diversion and no History-Info, or only History-Info entries that are all well formed
      and show no redirection (a direct call through an RFC 7044 proxy): ``(DIRECT, "")``.
    * A Diversion or History-Info header present but yielding nothing (garbage, empty, too
      long), with no redirection in the other kind: ``(UNKNOWN, "")``.

    The number is at most ``events.MAX_FIELD`` printable characters (it fits a
    :class:`~telephony.core.events.CallArrival`).  Never raises, whatever the message (a non-string
    gives ``(UNKNOWN, "")``); ``ValueError`` only when ``select`` is not ``"first"`` or
    ``"last"``.
    """
    if not isinstance(select, str) or select not in SELECT:
        raise ValueError(f"select must be 'first' or 'last', not {select!r:.40}")
    if not isinstance(raw_message, (str, bytes, bytearray)):
        return Reason.UNKNOWN, ""
    div_values = headers_named(raw_message, "Diversion")
    hi_values = headers_named(raw_message, "History-Info")
    redirects: list[Redirect] = []
    hi_used = hi_bad = 0
    if div_values:
        redirects = _diversion(div_values)[0]
    if not redirects and hi_values:
        redirects, hi_used, hi_bad = _history_info(hi_values)
    if redirects:
        chosen = redirects[0] if select == "first" else redirects[-1]
        return redirects[0].reason, chosen.number
    if div_values or (hi_values and (hi_bad or not hi_used)):
        return Reason.UNKNOWN, ""
    return Reason.DIRECT, ""


# --------------------------------------------------------------------------- MWI body

def _count(name: str, value: Any) -> int:
    if type(value) is not int or not 0 <= value <= MAX_COUNT:
        raise ValueError(f"{name} must be an int in 0..{MAX_COUNT}, not {value!r:.40}")
    return value


_ACCOUNT = re.compile(r"sips?:[!-~]+\Z", re.I)


def message_summary(new: int, old: int, *, account: str, urgent_new: int = 0,
                    urgent_old: int = 0) -> str:
    """The RFC 3842 ``application/simple-message-summary`` body (docs/protocols.md 2.1)::

        message_summary(2, 8, account="sip:1002@cm", urgent_old=2)
        == "Messages-Waiting: yes\\r\\nMessage-Account: sip:1002@cm\\r\\nVoice-Message: 2/8 (0/2)\\r\\n"

    ``Messages-Waiting`` is ``yes`` iff ``new > 0``.  ValueError for a count that is not an int
    in 0..:data:`MAX_COUNT` (bools are refused), an urgent count above its total, or an account
    that is not a ``sip:``/``sips:`` URI of printable ASCII without spaces, ``<``, ``>`` or ``"``.
    """
    new, old = _count("new", new), _count("old", old)
    urgent_new, urgent_old = _count("urgent_new", urgent_new), _count("urgent_old", urgent_old)
    if urgent_new > new or urgent_old > old:
        raise ValueError(f"urgent counts {urgent_new}/{urgent_old} exceed the totals {new}/{old}")
    if not (isinstance(account, str) and _ACCOUNT.match(account)
            and not any(c in account for c in '<>"')):
        raise ValueError(f"account must be a sip: or sips: URI, not {account!r:.80}")
    return (f"Messages-Waiting: {'yes' if new > 0 else 'no'}\r\n"
            f"Message-Account: {account}\r\n"
            f"Voice-Message: {new}/{old} ({urgent_new}/{urgent_old})\r\n")


_SUMMARY_LINE = re.compile(rf"({_TOKEN})[ \t]*:(.*)\Z", re.S)
_VOICE = re.compile(r"(\d{1,10})[ \t]*/[ \t]*(\d{1,10})"
                    r"(?:[ \t]*\([ \t]*(\d{1,10})[ \t]*/[ \t]*(\d{1,10})[ \t]*\))?\Z")


def parse_message_summary(body: str) -> dict:
    """Read a message-summary body, tolerantly (for simulators and tests)::

        {"waiting": bool, "account": str | None, "voice": (new, old, urgent_new, urgent_old) | None}

    Header names ignore case, blanks around ``:``, ``/`` and the parentheses are allowed, lines
    may end in CRLF or LF, unknown lines are skipped, the first valid line of each kind wins.
    ``voice`` is None without a valid ``Voice-Message`` line (urgent counts default to 0; a
    count above :data:`MAX_COUNT` is invalid).  ValueError when there is no valid
    ``Messages-Waiting: yes|no`` line, or ``body`` is not a string.
    """
    if not isinstance(body, str):
        raise ValueError(f"a message-summary body must be a string, not {type(body).__name__}")
    waiting: bool | None = None
    account: str | None = None
    voice: tuple[int, int, int, int] | None = None
    for line in _LINE_BREAK.split(body):
        m = _SUMMARY_LINE.match(line)
        if not m:
            continue
        name, value = m.group(1).lower(), m.group(2).strip(" \t\r")
        if name == "messages-waiting" and waiting is None and value.lower() in ("yes", "no"):
            waiting = value.lower() == "yes"
        elif name == "message-account" and account is None:
            account = value
        elif name == "voice-message" and voice is None:
            v = _VOICE.match(value)
            if v:
                counts = tuple(int(g) if g is not None else 0 for g in v.groups())
                if all(c <= MAX_COUNT for c in counts):
                    voice = counts  # type: ignore[assignment]
    if waiting is None:
        raise ValueError("no valid 'Messages-Waiting: yes|no' line in the message-summary body")
    return {"waiting": waiting, "account": account, "voice": voice}
