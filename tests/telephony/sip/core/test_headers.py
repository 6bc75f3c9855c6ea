"""SIP header parsing and MWI bodies (telephony/sip/core/headers.py): Diversion (RFC 5806) and
History-Info (RFC 7044 / RFC 4458 causes) from docs/protocols.md 2.2-2.3, the call-arrival reason, the
RFC 3842 message-summary body of 4.1, bounds and property tests (no exceptions on any input)."""
from __future__ import annotations

import pathlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telephony.core.events import MAX_FIELD, CallArrival, Reason
from telephony.sip.core.headers import (
    MAX_COUNT,
    MAX_ENTRIES,
    MAX_HEADER,
    Redirect,
    call_reason,
    headers_named,
    message_summary,
    parse_diversion,
    parse_history_info,
    parse_message_summary,
)

ROOT = pathlib.Path(__file__).resolve().parents[2]
B, N, A, U, D = Reason.BUSY, Reason.NO_ANSWER, Reason.ALL, Reason.UNKNOWN, Reason.DIRECT


def invite(*headers: str, body: str = "", eol: str = "\r\n") -> str:
    """A raw INVITE as pjsua2's rdata.wholeMsg gives it."""
    lines = ["INVITE sip:2000@192.0.2.10:5070 SIP/2.0",
             "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1a2b3c",
             'From: "Caller" <sip:1001@192.0.2.1>;tag=abc',
             "To: <sip:2000@192.0.2.10>",
             "Call-ID: 1234@192.0.2.1",
             "CSeq: 101 INVITE",
             *headers,
             "Content-Type: application/sdp",
             f"Content-Length: {len(body)}"]
    return eol.join(lines) + eol + eol + body


def pairs(redirects: list[Redirect]) -> list[tuple[str, Reason]]:
    return [(r.number, r.reason) for r in redirects]




# --------------------------------------------------------------------------- headers_named

def test_headers_named_in_order_case_insensitive_and_only_the_named_ones():
    msg = invite("Diversion: <sip:1@cm>;reason=user-busy", "X-Other: 1",
                 "DIVERSION : <sip:2@cm>;reason=no-answer", "diversion:<sip:3@cm>")
    assert headers_named(msg, "Diversion") == ["<sip:1@cm>;reason=user-busy",
                                               "<sip:2@cm>;reason=no-answer", "<sip:3@cm>"]
    assert headers_named(msg, "diversion") == headers_named(msg, "DIVERSION")
    assert headers_named(msg, "History-Info") == []
    assert headers_named(msg, "CSeq") == ["101 INVITE"]


def test_headers_named_joins_folded_lines():
    msg = invite("Diversion: \"Line 1020\" <sip:1020@cm>;\r\n  reason=no-answer;\r\n\tprivacy=off",
                 "History-Info:\r\n <sip:1002@cm>;index=1")
    assert headers_named(msg, "Diversion") == ['"Line 1020" <sip:1020@cm>; reason=no-answer; privacy=off']
    assert headers_named(msg, "History-Info") == ["<sip:1002@cm>;index=1"]


def test_headers_named_stops_at_the_blank_line():
    msg = invite("Diversion: <sip:1@cm>",
                 body="Diversion: <sip:9@cm>\r\nHistory-Info: <sip:9@cm>;index=1\r\n")
    assert headers_named(msg, "Diversion") == ["<sip:1@cm>"]
    assert headers_named(msg, "History-Info") == []


def test_headers_named_bare_lf_leading_blank_lines_and_bytes():
    msg = "\r\n\r\n" + invite("Diversion: <sip:1@cm>", eol="\n")
    assert headers_named(msg, "Diversion") == ["<sip:1@cm>"]
    assert headers_named(msg.encode(), "Diversion") == ["<sip:1@cm>"]
    assert headers_named(None, "Diversion") == []          # type: ignore[arg-type]


def test_headers_named_compact_forms_and_empty_values():
    msg = invite("m: <sip:a@b>", "Contact: <sip:c@d>", "Diversion:", "Diversion:   ")
    assert headers_named(msg, "Contact") == ["<sip:a@b>", "<sip:c@d>"]
    assert headers_named(msg, "m") == ["<sip:a@b>", "<sip:c@d>"]
    assert headers_named(msg, "Diversion") == ["", ""]


def test_headers_named_is_bounded():
    msg = invite(*[f"Diversion: <sip:{i}@cm>" for i in range(MAX_ENTRIES + 8)])
    values = headers_named(msg, "Diversion")
    assert values == [f"<sip:{i}@cm>" for i in range(MAX_ENTRIES)]
    long = "<sip:1@cm>;x=" + "a" * (3 * MAX_HEADER)
    (v,) = headers_named(invite("Diversion: " + long), "Diversion")
    assert v == long[:MAX_HEADER + 1]
    folded = "Diversion: <sip:1@cm>" + "".join(f"\r\n ;p{i}=" + "b" * 100 for i in range(200))
    (v,) = headers_named(invite(folded), "Diversion")
    assert MAX_HEADER < len(v) <= MAX_HEADER + 1


# --------------------------------------------------------------------------- Diversion

DIVERSION_REASONS = [
    ("unknown", U), ("user-busy", B), ("no-answer", N), ("unavailable", U), ("unconditional", A),
    ("time-of-day", U), ("do-not-disturb", U), ("deflection", U), ("follow-me", U),
    ("out-of-service", U), ("away", U), ("x-cisco-token", U), ('"it is a quoted string"', U),
    ('"no-answer, quoted"', U), ("USER-BUSY", B), ("No-Answer", N), ('"user-busy"', B),
    ("", U),
]


@pytest.mark.parametrize("reason, expected", DIVERSION_REASONS)
def test_diversion_reason_values(reason, expected):
    (r,) = parse_diversion([f'"Line 1020" <sip:1020@cm>;reason={reason};privacy=off;screen=yes'])
    assert (r.number, r.reason) == ("1020", expected)


def test_diversion_without_reason_is_unknown():
    assert pairs(parse_diversion(["<sip:1020@cm>;counter=1"])) == [("1020", U)]


def test_diversion_cucm_style_with_all_params():
    value = ('"Line 1020" <sip:1020@10.10.10.1>;reason=no-answer;privacy=off;screen=yes;'
             'counter=1;limit=5')
    (r,) = parse_diversion([value])
    assert r == Redirect("1020", N, value)


THREE_HOPS = ['"A" <sip:1020@cm>;reason=no-answer;privacy=off;screen=yes',
              '"B" <sip:2020@cm>;reason=unconditional;privacy=off;screen=yes',
              '"C" <sip:3020@cm>;reason=user-busy;privacy=off;screen=yes']


def test_diversion_three_hops_most_recent_first_in_one_header_and_in_three():
    expected = [("1020", N), ("2020", A), ("3020", B)]      # CUCM line guide, top to bottom
    assert pairs(parse_diversion([", ".join(THREE_HOPS)])) == expected
    assert pairs(parse_diversion([",".join(THREE_HOPS)])) == expected
    assert pairs(parse_diversion(THREE_HOPS)) == expected
    assert pairs(parse_diversion([THREE_HOPS[0], ", ".join(THREE_HOPS[1:])])) == expected
    assert [r.raw for r in parse_diversion([", ".join(THREE_HOPS)])] == THREE_HOPS


def test_diversion_cucm_10_5_example_two_headers():
    msg = invite('Diversion: "Vishnu" <sip:1100@10.106.107.10>;reason=no-answer;privacy=off;screen=yes',
                 'Diversion: "Operator" <sip:1408@10.106.107.10>;reason=no-answer;privacy=off;screen=yes')
    assert pairs(parse_diversion(headers_named(msg, "Diversion"))) == [("1100", N), ("1408", N)]
    assert call_reason(msg, select="first") == (N, "1100")
    assert call_reason(msg, select="last") == (N, "1408")
    assert call_reason(msg) == (N, "1408")


def test_diversion_tel_uris():
    assert pairs(parse_diversion(["<tel:+1-408-555-0100;phone-context=+1>;reason=user-busy",
                                  "tel:2020;reason=no-answer"])) == [("+1-408-555-0100", B), ("2020", N)]


def test_diversion_user_part_kept_as_sent():
    """No normalisation: that is the integration profile's NumberRule job.  Only user
    parameters after ';' (phone-context) are cut off, as Asterisk does."""
    values = ["<sip:+1-408-555-0100@cm>;reason=user-busy",
              "<sip:+14085550100;phone-context=cisco.com@cm;user=phone>;reason=user-busy",
              "<sip:(408)555.0100@cm>", "<sips:alice.smith:secret@cm:5061;transport=tls>",
              "<sip:%2B1020@cm>", "<sip:cm.example.com>;reason=user-busy",
              "<urn:service:sos>;reason=user-busy"]
    assert [r.number for r in parse_diversion(values)] == [
        "+1-408-555-0100", "+14085550100", "(408)555.0100", "alice.smith", "%2B1020", "", ""]


def test_diversion_quoted_display_names_with_commas_and_angles():
    value = ('"Smith, John <sales>" <sip:1020@cm>;reason=no-answer, '
             '"say \\"hi\\", <x>" <sip:2020@cm>;reason=user-busy,'
             'Plain Name <sip:3020@cm>;reason=unconditional')
    assert pairs(parse_diversion([value])) == [("1020", N), ("2020", B), ("3020", A)]
    # an escaped quote does not end the display name, so the comma after it does not split
    assert pairs(parse_diversion(['"a\\",b" <sip:1@cm>;reason=user-busy'])) == [("1", B)]


def test_diversion_addr_spec_form_and_blanks_around_params():
    assert pairs(parse_diversion(["sip:1002@cm;reason=user-busy",
                                  "<sip:1003@cm> ; Reason = no-answer ;privacy=off"])) == \
        [("1002", B), ("1003", N)]


def test_diversion_quoted_param_with_comma_does_not_split():
    assert pairs(parse_diversion(['<sip:1@x>;reason="a, b", <sip:2@x>;reason=user-busy'])) == \
        [("1", U), ("2", B)]


@pytest.mark.parametrize("bad", [
    "<sip:1002@cm;reason=user-busy",          # unclosed <
    '"Line 1020 <sip:1020@cm>;reason=no-answer',  # unclosed quote
    "1002;reason=user-busy",                  # no URI scheme
    ";reason=user-busy",                      # no URI at all
    "<>;reason=user-busy",
    "<sip:1002@>;reason=user-busy",           # sip URI without host
    "<sip:10 02@cm>;reason=user-busy",        # blank inside the URI
    "<sip:1002@cm> junk;reason=user-busy",    # text after >
    '"Line" junk <sip:1@cm>',                 # text between the display name and <
    "Name;x=1 <sip:1@cm>",                    # not a display name
    "a>b <sip:1@cm>",
    "<sip:1002@cm\x00>;reason=user-busy",
    "<sip:<1002>@cm>",
    f"<sip:{'9' * (MAX_FIELD + 1)}@cm>;reason=user-busy",
    "",
    "   ",
])
def test_diversion_malformed_entries_are_skipped(bad):
    assert parse_diversion([bad]) == []
    # ... and do not disturb the good ones around them
    got = parse_diversion(["<sip:1@cm>;reason=user-busy", bad, "<sip:2@cm>;reason=no-answer"])
    assert pairs(got) == [("1", B), ("2", N)]
    got = parse_diversion([f"<sip:1@cm>;reason=user-busy, {bad}"])
    assert pairs(got) == [("1", B)]


def test_diversion_longest_user_part_that_fits_a_call_arrival():
    (r,) = parse_diversion([f"<sip:{'9' * MAX_FIELD}@cm>"])
    assert r.number == "9" * MAX_FIELD


def test_diversion_value_length_bound():
    pad = "<sip:1@cm>;reason=user-busy;x="
    ok = pad + "a" * (MAX_HEADER - len(pad))
    assert len(ok) == MAX_HEADER and pairs(parse_diversion([ok])) == [("1", B)]
    assert parse_diversion([ok + "a"]) == []
    assert parse_diversion(["<sip:1@cm>;reason=user-busy, " + "<sip:2@cm>, " * 1000]) == []
    assert parse_diversion(["<sip:1@cm>;reason=user-busy, " + "<sip:2@cm>, " * 300]) == \
        parse_diversion(["<sip:1@cm>;reason=user-busy, " + "<sip:2@cm>, " * (MAX_ENTRIES - 1)])


def test_diversion_entry_bound():
    many = ", ".join(f"<sip:{i}@cm>;reason=user-busy" for i in range(MAX_ENTRIES + 10))
    got = parse_diversion([many])
    assert [r.number for r in got] == [str(i) for i in range(MAX_ENTRIES)]
    got = parse_diversion([f"<sip:{i}@cm>" for i in range(MAX_ENTRIES + 10)])
    assert len(got) == MAX_ENTRIES


def test_diversion_accepts_a_lone_string_and_ignores_non_strings():
    assert pairs(parse_diversion("<sip:1@cm>;reason=user-busy")) == [("1", B)]     # type: ignore[arg-type]
    assert pairs(parse_diversion([None, 5, "<sip:1@cm>"])) == [("1", U)]           # type: ignore[list-item]
    assert parse_diversion(None) == []                                              # type: ignore[arg-type]
    # at most MAX_ENTRIES values are looked at, even empty ones
    assert parse_diversion([""] * MAX_ENTRIES + ["<sip:1@cm>"]) == []
    assert pairs(parse_diversion([""] * (MAX_ENTRIES - 1) + ["<sip:1@cm>"])) == [("1", U)]


# --------------------------------------------------------------------------- History-Info

def test_history_info_protocols_example():
    msg = invite("History-Info: <sip:1002@cm>;index=1", "History-Info: <sip:2000@cm;cause=408>;index=1.1")
    got = parse_history_info(headers_named(msg, "History-Info"))
    assert got == [Redirect("1002", N, "<sip:1002@cm>;index=1, <sip:2000@cm;cause=408>;index=1.1")]


@pytest.mark.parametrize("cause, expected", [
    (302, A), (486, B), (408, N), (480, U), (487, U), (503, U), (404, U), (200, U), ("abc", U),
])
def test_history_info_cause_map(cause, expected):
    got = parse_history_info([f"<sip:1002@cm>;index=1, <sip:2000@cm;cause={cause}>;index=1.1"])
    assert pairs(got) == [("1002", expected)]


@pytest.mark.parametrize("value", [
    # RFC 7044 10.2: the response that ended the request to 1002, on 1002's entry
    "<sip:1002@cm?Reason=SIP%3Bcause%3D486%3Btext%3D%22Busy%20Here%22>;index=1, <sip:2000@cm>;index=1.1;mp=1",
    "<sip:1002@cm?Reason=sip%3bcause%3d486>;index=1, <sip:2000@cm>;index=1.1",
    # the same on the new target (the last entry) as some senders place it
    "<sip:1002@cm>;index=1, <sip:2000@cm?Reason=SIP%3Bcause%3D486>;index=1.1",
    # unescaped, from a non-compliant gateway
    "<sip:1002@cm?Reason=SIP;cause=486>;index=1, <sip:2000@cm>;index=1.1",
    # the cause= URI parameter wins over a Reason
    "<sip:1002@cm?Reason=SIP%3Bcause%3D408>;index=1, <sip:2000@cm;cause=486>;index=1.1",
    "<sip:1002@cm?X-Foo=1&Reason=SIP%3Bcause%3D486>;index=1, <sip:2000@cm>;index=1.1",
])
def test_history_info_escaped_reason_forms(value):
    assert pairs(parse_history_info([value])) == [("1002", B)]


def test_history_info_q850_reason_is_not_a_sip_cause():
    value = "<sip:1002@cm?Reason=Q.850%3Bcause%3D17>;index=1, <sip:2000@cm>;index=1.1"
    assert pairs(parse_history_info([value])) == [("1002", U)]
    value = ("<sip:1002@cm?Reason=Q.850%3Bcause%3D17&Reason=SIP%3Bcause%3D486>;index=1, "
             "<sip:2000@cm>;index=1.1")
    assert pairs(parse_history_info([value])) == [("1002", B)]


HI_CHAIN = ["<sip:3020@cm>;index=1", "<sip:2020@cm;cause=486>;index=1.1",
            "<sip:1020@cm;cause=302>;index=1.1.1", "<sip:2000@cm;cause=408>;index=1.1.1.1"]


def test_history_info_three_hops_matches_the_diversion_stack():
    # 3020 busy -> 2020 forward all -> 1020 no answer -> voice mail 2000 (CUCM's three hops)
    expected = [("1020", N), ("2020", A), ("3020", B)]
    assert pairs(parse_history_info(HI_CHAIN)) == expected
    assert pairs(parse_history_info([", ".join(HI_CHAIN)])) == expected
    assert pairs(parse_history_info(HI_CHAIN)) == pairs(parse_diversion(THREE_HOPS))


def test_history_info_out_of_order_indices():
    shuffled = [HI_CHAIN[2], HI_CHAIN[0], HI_CHAIN[3], HI_CHAIN[1]]
    assert parse_history_info(shuffled) == parse_history_info(HI_CHAIN)
    assert parse_history_info([", ".join(reversed(HI_CHAIN))]) == parse_history_info(HI_CHAIN)


def test_history_info_indices_sort_numerically_per_component():
    # sequential forking from 1: 1.9 tried (no answer) before 1.10 (busy): 1.10 is the latest
    value = ("<sip:4000@cm;cause=486>;index=1.10;mp=1, <sip:1002@cm>;index=1, "
             "<sip:3000@cm;cause=408>;index=1.9;mp=1")
    assert pairs(parse_history_info([value])) == [("1002", B), ("1002", N)]


def test_history_info_entries_without_cause():
    # the user changed: a redirection, reason unknown
    assert pairs(parse_history_info(["<sip:1002@cm>;index=1, <sip:2000@cm>;index=1.1"])) == [("1002", U)]
    # mapped (mp) to a new target: a redirection even when the user part looks the same
    assert pairs(parse_history_info(["<sip:1002@a>;index=1, <sip:1002@b>;index=1.1;mp=1"])) == [("1002", U)]
    # not redirections: a lone entry, the same user at its contact (rc), the same user again
    assert parse_history_info(["<sip:2000@cm>;index=1"]) == []
    assert parse_history_info(["<sip:2000@cm>;index=1, <sip:2000@192.0.2.10:5070>;index=1.1;rc=1"]) == []
    assert parse_history_info(["<sip:vm@cm>;index=1, <sip:vm-box@192.0.2.10>;index=1.1;rc=1"]) == []
    assert parse_history_info(["<sip:2000@cm>;index=1, <sip:2000@cm>;index=1.1"]) == []


def test_history_info_forking_parent_and_reason_of_the_failed_branch():
    # bob is tried at his phone (1.1, no answer), then mapped to voice mail from 1 (1.2)
    value = ("<sip:bob@example.com>;index=1, "
             "<sip:bob@192.0.2.4?Reason=SIP%3Bcause%3D408>;index=1.1;rc=1, "
             "<sip:vm@example.com>;index=1.2;mp=1")
    assert pairs(parse_history_info([value])) == [("bob", N)]


def test_history_info_parent_named_by_mp_and_by_index():
    # mp names the entry the target came from, even when the index says otherwise
    value = "<sip:1002@cm>;index=1, <sip:1003@cm>;index=1.1;mp=1, <sip:2000@cm;cause=486>;index=1.1.1;mp=1"
    assert pairs(parse_history_info([value])) == [("1002", B), ("1002", U)]
    # without a tag the parent is the index minus its last component, not the entry before
    value = ("<sip:1002@cm>;index=1, <sip:1002-desk@192.0.2.4?Reason=SIP%3Bcause%3D408>;index=1.1;rc=1, "
             "<sip:2000@cm>;index=1.2")
    assert pairs(parse_history_info([value])) == [("1002", N)]


def test_history_info_first_entry_with_a_cause_has_no_known_forwarder():
    assert pairs(parse_history_info(["<sip:2000@cm;cause=486>;index=1"])) == [("", B)]


def test_history_info_index_handling():
    # no index anywhere: wire order
    assert pairs(parse_history_info(["<sip:1002@cm>, <sip:2000@cm;cause=486>"])) == [("1002", B)]
    # some entries with a bad or missing index are dropped
    value = ("<sip:1002@cm>;index=1, <sip:7777@cm;cause=302>;index=x, <sip:8888@cm>, "
             "<sip:2000@cm;cause=486>;index=1.1")
    assert pairs(parse_history_info([value])) == [("1002", B)]


def test_history_info_bounds_and_garbage():
    values = ["<sip:1@cm>;index=1"] + [f"<sip:{i}@cm;cause=486>;index=1{'.1' * i}"
                                       for i in range(1, MAX_ENTRIES + 20)]
    got = parse_history_info(values)
    assert len(got) == MAX_ENTRIES - 1 and got[-1].number == "1" and got[0].number == str(MAX_ENTRIES - 2)
    got = parse_history_info([", ".join(f"<sip:{i}@c>" for i in range(MAX_ENTRIES + 20))])
    assert [r.number for r in got] == [str(i) for i in reversed(range(MAX_ENTRIES - 1))]
    assert parse_history_info(["<sip:1@cm>;index=1, <sip:2@cm;cause=486>;index=1.1;"
                               + "x" * MAX_HEADER]) == []
    assert parse_history_info(["", "<sip:1@cm", ";index=1", "\x00\xff"]) == []


@pytest.mark.parametrize("div_reason, cause, reason", [
    ("user-busy", 486, B), ("no-answer", 408, N), ("unconditional", 302, A), ("unknown", 404, U),
    ("deflection", 480, U), ("unavailable", 503, U),
])
def test_history_info_compares_with_diversion(div_reason, cause, reason):
    div = parse_diversion([f"<sip:1002@cm>;reason={div_reason}"])
    hi = parse_history_info([f"<sip:1002@cm>;index=1, <sip:2000@cm;cause={cause}>;index=1.1"])
    assert pairs(div) == pairs(hi) == [("1002", reason)]


# --------------------------------------------------------------------------- call_reason

def test_direct_call():
    assert call_reason(invite()) == (D, "")
    assert call_reason(invite(), select="first") == (D, "")
    assert call_reason(invite("History-Info: <sip:2000@cm>;index=1")) == (D, "")


@pytest.mark.parametrize("div_reason, cause, reason", [
    ("user-busy", 486, B), ("no-answer", 408, N), ("unconditional", 302, A), ("unknown", 404, U),
    ("follow-me", 487, U),
])
@pytest.mark.parametrize("select", ["first", "last"])
def test_each_reason_via_both_headers(div_reason, cause, reason, select):
    div = invite(f'Diversion: "Line 1002" <sip:1002@cm>;reason={div_reason};privacy=off;screen=yes')
    hi = invite("History-Info: <sip:1002@cm>;index=1", f"History-Info: <sip:2000@cm;cause={cause}>;index=1.1")
    assert call_reason(div, select=select) == call_reason(hi, select=select) == (reason, "1002")


def test_select_first_and_last_with_three_hops():
    div = invite(*(f"Diversion: {h}" for h in THREE_HOPS))
    hi = invite(*(f"History-Info: {h}" for h in HI_CHAIN))
    for msg in (div, hi):
        # the reason is always the most recent redirection's (1020, no answer)
        assert call_reason(msg, select="first") == (N, "1020")
        assert call_reason(msg, select="last") == (N, "3020")
        assert call_reason(msg) == (N, "3020")


def test_diversion_wins_over_history_info():
    msg = invite("History-Info: <sip:5555@cm>;index=1, <sip:2000@cm;cause=302>;index=1.1",
                 "Diversion: <sip:1002@cm>;reason=user-busy")
    assert call_reason(msg) == (B, "1002")


def test_garbage_diversion_falls_back_to_history_info_when_that_has_a_redirection():
    msg = invite("Diversion: <sip:1002@cm;reason=user-busy",
                 "History-Info: <sip:5555@cm>;index=1, <sip:2000@cm;cause=302>;index=1.1")
    assert call_reason(msg) == (A, "5555")
    msg = invite("Diversion: <sip:1002@cm;reason=user-busy", "History-Info: <sip:2000@cm>;index=1")
    assert call_reason(msg) == (U, "")


def test_bad_select_is_a_value_error():
    for bad in ("middle", "", "FIRST", None, 1):
        with pytest.raises(ValueError):
            call_reason(invite(), select=bad)          # type: ignore[arg-type]


def _latin1_noise(seed: int, n: int) -> str:
    rng = random.Random(seed)
    return bytes(rng.randrange(256) for _ in range(n)).decode("latin-1").replace("\r", "").replace("\n", "")


@pytest.mark.parametrize("header", [
    "Diversion: " + _latin1_noise(1, 300),
    "History-Info: " + _latin1_noise(2, 300),
    "Diversion: <sip:1002@cm;reason=user-busy",
    "Diversion: <<<<<",
    "History-Info: <sip:1002@cm;index=1, <sip:2000@cm;cause=486>;index=1.1",
    "Diversion:",
    "Diversion:    ",
    "History-Info:",
    "Diversion: " + "<sip:1002@cm>;reason=user-busy;x=" + "a" * 10_000,
    "History-Info: " + "<sip:1002@cm>;index=1, <sip:2000@cm;cause=486>;index=1.1;" + "y" * 10_000,
    "Diversion: " + "," * 10_000,
    'Diversion: "' + "q" * 10_000,
    "Diversion: ;reason=user-busy",
    "History-Info: <sip:1002@cm>;index=1, garbage",
    "History-Info: <sip:2000@cm>;index=1, <sip:2000@cm>",     # an entry without index among indexed ones
])
@pytest.mark.parametrize("select", ["first", "last"])
def test_garbage_headers_give_unknown(header, select):
    assert call_reason(invite(header), select=select) == (U, "")


def test_garbage_messages_never_raise():
    for seed in range(50):
        noise = bytes(random.Random(seed).randrange(256) for _ in range(2000)).decode("latin-1")
        reason, number = call_reason(noise)
        assert isinstance(reason, Reason) and isinstance(number, str)
        reason, number = call_reason("INVITE x SIP/2.0\r\nDiversion: " + noise)
        assert isinstance(reason, Reason) and isinstance(number, str)
    assert call_reason("") == (D, "")
    assert call_reason(None) == (U, "")          # type: ignore[arg-type]
    assert call_reason(invite("Diversion: <sip:1@cm>;reason=user-busy").encode()) == (B, "1")


def test_folded_header_and_body_lines():
    msg = invite('Diversion: "Line 1020"\r\n <sip:1020@cm>;\r\n\treason=no-answer',
                 body="v=0\r\nDiversion: <sip:6666@cm>;reason=user-busy\r\n")
    assert call_reason(msg) == (N, "1020")
    only_body = invite(body="Diversion: <sip:6666@cm>;reason=user-busy\r\n"
                            "History-Info: <sip:1@cm>;index=1, <sip:2@cm;cause=486>;index=1.1\r\n")
    assert call_reason(only_body) == (D, "")
    assert call_reason(invite("Diversion: <sip:1020@cm>;reason=no-answer", eol="\n")) == (N, "1020")


def test_forwarding_number_fits_a_call_arrival():
    msg = invite(f"Diversion: <sip:{'7' * MAX_FIELD}@cm>;reason=user-busy")
    reason, number = call_reason(msg)
    arrival = CallArrival(node="a", port="sip-1", call_id="x", calling="1001", called="2000",
                          forwarding=number, reason=reason, integration="cucm-sip")
    assert arrival.forwarding == "7" * MAX_FIELD and arrival.reason is B
    assert call_reason(invite(f"Diversion: <sip:{'7' * (MAX_FIELD + 1)}@cm>;reason=user-busy")) == (U, "")


# --------------------------------------------------------------------------- message-summary

RFC3842_EXAMPLE = ("Messages-Waiting: yes\r\nMessage-Account: sip:vm@pbx.example\r\n"
                   "Voice-Message: 2/8 (0/2)\r\n")


def test_message_summary_golden():
    assert message_summary(2, 8, account="sip:vm@pbx.example", urgent_old=2) == RFC3842_EXAMPLE
    assert message_summary(0, 3, account="sip:1002@cm") == \
        "Messages-Waiting: no\r\nMessage-Account: sip:1002@cm\r\nVoice-Message: 0/3 (0/0)\r\n"
    assert message_summary(1, 0, account="sips:1002@cm:5061", urgent_new=1) == \
        "Messages-Waiting: yes\r\nMessage-Account: sips:1002@cm:5061\r\nVoice-Message: 1/0 (1/0)\r\n"
    assert message_summary(0, 0, account="SIP:1002@127.0.0.1") == \
        "Messages-Waiting: no\r\nMessage-Account: SIP:1002@127.0.0.1\r\nVoice-Message: 0/0 (0/0)\r\n"


@pytest.mark.parametrize("kwargs", [
    dict(new=-1, old=0), dict(new=0, old=-5), dict(new=True, old=0), dict(new=1.0, old=0),
    dict(new="1", old=0), dict(new=None, old=0), dict(new=MAX_COUNT + 1, old=0),
    dict(new=1, old=0, urgent_new=2), dict(new=1, old=1, urgent_old=2), dict(new=1, old=1, urgent_new=-1),
    dict(new=1, old=0, account="1002@cm"), dict(new=1, old=0, account="tel:1002"),
    dict(new=1, old=0, account="sip:"), dict(new=1, old=0, account="sip:10 02@cm"),
    dict(new=1, old=0, account="sip:1002@cm\r\nX-Evil: 1"), dict(new=1, old=0, account="sip:1002@cm\n"),
    dict(new=1, old=0, account="<sip:1002@cm>"), dict(new=1, old=0, account=None),
    dict(new=1, old=0, account="sip:1002@cm>"), dict(new=1, old=0, account='sip:"x"@cm'),
    dict(new=1, old=0, account="sip:1002@cm\t"), dict(new=1, old=0, account=""),
])
def test_message_summary_bad_input(kwargs):
    kwargs.setdefault("account", "sip:1002@cm")
    new, old = kwargs.pop("new"), kwargs.pop("old")
    with pytest.raises(ValueError):
        message_summary(new, old, **kwargs)


def test_parse_message_summary_round_trip_and_tolerance():
    assert parse_message_summary(RFC3842_EXAMPLE) == {"waiting": True, "account": "sip:vm@pbx.example",
                                                     "voice": (2, 8, 0, 2)}
    assert parse_message_summary("messages-waiting :NO\nvoice-message: 3 / 4\n") == \
        {"waiting": False, "account": None, "voice": (3, 4, 0, 0)}
    assert parse_message_summary("Messages-Waiting: yes\r\nFax-Message: 1/2\r\n"
                                 "Voice-Message: 1/2 ( 1 / 0 )\r\nX: y\r\n") == \
        {"waiting": True, "account": None, "voice": (1, 2, 1, 0)}
    # a bad status line is skipped for a later good one; a bad Voice-Message line gives None
    assert parse_message_summary("Messages-Waiting: maybe\r\nMessages-Waiting: yes\r\n"
                                 "Voice-Message: x/2\r\n") == \
        {"waiting": True, "account": None, "voice": None}
    body = f"Messages-Waiting: yes\r\nVoice-Message: {MAX_COUNT + 1}/0\r\n"
    assert parse_message_summary(body)["voice"] is None
    assert parse_message_summary("Messages-Waiting: yes\r\nMessages-Waiting: no\r\n")["waiting"] is True


@pytest.mark.parametrize("body", ["", "Voice-Message: 1/2\r\n", "Messages-Waiting: maybe\r\n",
                                  "Messages-Waiting:\r\n", "Messages-Waiting yes\r\n", None,
                                  b"Messages-Waiting: yes"])
def test_parse_message_summary_needs_a_status_line(body):
    with pytest.raises(ValueError):
        parse_message_summary(body)


# --------------------------------------------------------------------------- properties

SIPISH = st.text(alphabet=st.sampled_from(list('<>";,=@:?%&\\ \t\r\nsipSIPtel.-+19index=causereason')),
                 max_size=200)
FRAGMENTS = st.lists(st.sampled_from([
    "<sip:1002@cm>", "<sip:2000@cm;cause=486>", ";index=1", ";index=1.1", ";reason=user-busy", ", ",
    '"Name, <x>" ', "<", ">", '"', ";", "?Reason=SIP%3Bcause%3D408", ";mp=1", ";rc=1", "tel:+1-5",
    "\r\n ", "\r\n", "Diversion: ", "History-Info: ", "\r\n\r\n", "sip:", "@", ",",
]), max_size=30).map("".join)
TEXT = st.one_of(st.text(max_size=300), SIPISH, FRAGMENTS)


def _check_redirects(got):
    assert isinstance(got, list) and len(got) <= MAX_ENTRIES
    for r in got:
        assert isinstance(r, Redirect) and isinstance(r.reason, Reason) and isinstance(r.raw, str)
        assert isinstance(r.number, str) and len(r.number) <= MAX_FIELD
        assert all(c > " " and c.isprintable() for c in r.number)


@settings(max_examples=300, deadline=None)
@given(st.lists(TEXT, max_size=40))
def test_parsers_never_raise(values):
    _check_redirects(parse_diversion(values))
    _check_redirects(parse_history_info(values))


@settings(max_examples=300, deadline=None)
@given(TEXT, TEXT, st.sampled_from(["first", "last"]))
def test_call_reason_never_raises(headers, body, select):
    for raw in (headers, invite(f"Diversion: {headers}"), invite(f"History-Info: {headers}"),
                "INVITE x SIP/2.0\r\n" + headers + "\r\n\r\n" + body):
        reason, number = call_reason(raw, select=select)
        assert isinstance(reason, Reason) and isinstance(number, str) and len(number) <= MAX_FIELD
        values = headers_named(raw, "Diversion")
        assert len(values) <= MAX_ENTRIES and all(isinstance(v, str) and len(v) <= MAX_HEADER + 1
                                                  for v in values)


NUMBER = st.text(alphabet="0123456789+-.", min_size=1, max_size=12)
KINDS = [("user-busy", 486, B), ("no-answer", 408, N), ("unconditional", 302, A), ("unknown", 404, U)]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(NUMBER, st.sampled_from(KINDS)), min_size=1, max_size=8), st.booleans(),
       st.randoms(use_true_random=False))
def test_generated_chains_parse_the_same_from_both_headers(hops, one_header, rnd):
    """hops: most recent first, as a Diversion stack lists them."""
    entries = [f'"N {n}" <sip:{n}@cm>;reason={k[0]};privacy=off' for n, k in hops]
    div_values = [", ".join(entries)] if one_header else entries
    expected = [(n, k[2]) for n, k in hops]
    assert pairs(parse_diversion(div_values)) == expected
    # History-Info lists targets oldest first: the original called party, then each new target
    chain = list(reversed(hops))
    hi = [f"<sip:{chain[0][0]}@cm>;index=1"]
    for i, (_n, k) in enumerate(chain):
        target = chain[i + 1][0] if i + 1 < len(chain) else "2000"
        hi.append(f"<sip:{target}@cm;cause={k[1]}>;index=1{'.1' * (i + 1)}")
    rnd.shuffle(hi)
    assert pairs(parse_history_info(hi)) == expected
    first, last = call_reason(invite(*(f"History-Info: {h}" for h in hi)), select="first"), \
        call_reason(invite(*(f"Diversion: {v}" for v in div_values)), select="last")
    assert first == (hops[0][1][2], hops[0][0]) and last == (hops[0][1][2], hops[-1][0])


COUNT = st.integers(min_value=0, max_value=MAX_COUNT)


@settings(max_examples=300, deadline=None)
@given(COUNT, COUNT, st.data(), st.from_regex(r"sips?:[A-Za-z0-9+.\-]{1,20}@[a-z0-9.]{1,20}", fullmatch=True))
def test_message_summary_round_trip(new, old, data, account):
    un = data.draw(st.integers(0, new))
    uo = data.draw(st.integers(0, old))
    body = message_summary(new, old, account=account, urgent_new=un, urgent_old=uo)
    assert body.endswith("\r\n") and body.count("\r\n") == 3 and "\n" not in body.replace("\r\n", "")
    assert parse_message_summary(body) == \
        {"waiting": new > 0, "account": account, "voice": (new, old, un, uo)}
