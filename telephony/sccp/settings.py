"""``[ports.sccp]``: the SCCP voice-mail ports' settings, declared once (docs/configuration.md,
docs/sccp.md).

:data:`KEYS` is the file's schema for the section (checks, defaults, the docs' cells);
:class:`SccpSettings` is what the node's file gives the service, which builds the driver
(:class:`telephony.sccp.driver.SccpPorts`) from it; its field defaults come from the same
keys, and a settings object built in code is checked by the same definitions.
:func:`problems` are the rules between keys, :func:`binds` the sockets the ports bind.  Pure.
"""
from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from integrations.cucm_sccp import MWI_OFF_NUMBER, MWI_ON_NUMBER
from telephony.core.events import Reason
from telephony.core.settings import (
    Address,
    Bad,
    Choice,
    Flag,
    Key,
    Num,
    Pattern,
    Problem,
    Strings,
    boolean,
    check_typed,
    default_of,
    got,
    parse_address,
)
from telephony.sccp.core.callinfo import REDIRECT_REASONS, reason_table

__all__ = ["SECTION", "KIND", "KEYS", "MAX_PORTS", "MAX_SERVERS", "CODECS", "DTMF_MODES",
           "MWI_STYLES", "SccpSettings", "parse_range", "problems", "binds"]

SECTION = "ports.sccp"
#: the driver's kind and its ports' names (``sccp-1`` ...: port N is device prefix + N)
KIND = "sccp"
MAX_PORTS = 256
#: CallManagers in a device pool's list (primary, secondary, tertiary, ...)
MAX_SERVERS = 5
#: a device name: at most 15 characters (RegisterReq's field is 16 bytes, NUL-terminated)
MAX_DEVICE_NAME = 15
CODECS = ("pcmu", "pcma")
DTMF_MODES = ("both", "inband", "rfc2833")
MWI_STYLES = ("callmanager", "cme")
PACKET_MS = (10, 20, 30)
#: entries of the redirect-reason table at most
MAX_REASONS = 64
#: CallManager's SCCP port
DEFAULT_SCCP_PORT = 2000


def _servers(v: Any, ctx: Any) -> tuple[Address, ...]:
    if not isinstance(v, list) or not v or len(v) > MAX_SERVERS \
            or not all(isinstance(x, str) for x in v):
        raise Bad(f'expected an array of 1 to {MAX_SERVERS} "host:port" strings, {got(v)}')
    out: list[Address] = []
    for text in v:
        try:
            out.append(parse_address(text, wildcard=False))
        except ValueError as e:
            raise Bad(f"{text!r}: {e}") from None
    if len(set(out)) != len(out):
        raise Bad(f"a server is listed twice, {got(v)}")
    return tuple(out)


def _servers_typed(v: Any) -> None:
    if not isinstance(v, tuple) or not 1 <= len(v) <= MAX_SERVERS \
            or not all(isinstance(a, Address) and not a.is_wildcard for a in v) \
            or len(set(v)) != len(v):
        raise Bad(f"expected a tuple of 1 to {MAX_SERVERS} distinct addresses, {got(v)}")


def _ipv4(v: Any, ctx: Any) -> str:
    """An IPv4 address (SCCP carries 4-byte addresses: protocol versions up to 16)."""
    try:
        if not isinstance(v, str):
            raise ValueError
        a = ipaddress.IPv4Address(v)
    except ValueError:
        raise Bad(f"expected an IPv4 address, {got(v)}") from None
    if a.is_unspecified or a.is_multicast:
        raise Bad(f"expected a unicast IPv4 address (not 0.0.0.0), {got(v)}")
    return str(a)


def parse_range(v: object) -> tuple[int, int]:
    """``"20000-20999"`` -> ``(20000, 20999)``: UDP ports 1024..65535, ``lo < hi``.
    ``ValueError`` saying what is wrong."""
    m = re.fullmatch(r"\s*(\d{1,5})\s*-\s*(\d{1,5})\s*", v) if isinstance(v, str) else None
    if m is None:
        raise ValueError('expected a port range like "20000-20999"')
    lo, hi = int(m[1]), int(m[2])
    if not 1024 <= lo < hi <= 65535:
        raise ValueError("the ports are 1024 to 65535, the range goes upwards and holds an "
                         "RTP/RTCP pair")
    return lo, hi


def _range(v: Any, ctx: Any) -> tuple[int, int]:
    try:
        return parse_range(v)
    except ValueError as e:
        raise Bad(f"{e}, {got(v)}") from None


def _range_typed(v: Any) -> None:
    if not (isinstance(v, tuple) and len(v) == 2 and all(type(x) is int for x in v)
            and 1024 <= v[0] < v[1] <= 65535):
        raise Bad(f"expected (lo, hi) UDP ports 1024..65535 with lo < hi, {got(v)}")


def _packet_ms(v: Any, ctx: Any) -> int:
    if type(v) is not int or v not in PACKET_MS:
        raise Bad(f"expected 10, 20 or 30 (milliseconds of audio per RTP packet), {got(v)}")
    return v


def _reasons(v: Any, ctx: Any) -> tuple[tuple[int, Reason], ...]:
    """A table ``{code: reason}`` (TOML keys are strings: ``"1" = "busy"``)."""
    if not isinstance(v, Mapping) or len(v) > MAX_REASONS:
        raise Bad(f'expected a table of at most {MAX_REASONS} entries like {{"1" = "busy"}}, '
                  f"{got(v)}")
    try:
        return tuple(sorted(reason_table(v).items()))
    except ValueError as e:
        raise Bad(str(e)) from None


def _reasons_typed(v: Any) -> None:
    if not (isinstance(v, tuple) and all(
            isinstance(p, tuple) and len(p) == 2 and type(p[0]) is int and 0 <= p[0] <= 0xFFFF_FFFF
            and isinstance(p[1], Reason) and p[1] is not Reason.DIRECT for p in v)) \
            or len({p[0] for p in v}) != len(v) or len(v) > MAX_REASONS:
        raise Bad(f"expected a tuple of distinct (code, Reason) pairs, {got(v)}")


class _Codecs(Strings):
    """The codecs offered, in order of preference: at least one."""

    def __call__(self, v: Any, ctx: Any) -> tuple[str, ...]:
        out = super().__call__(v, ctx)
        if not out:
            raise Bad(f"expected at least one of {', '.join(CODECS)}, {got(v)}")
        return out

    def typed(self, v: Any) -> None:
        if not isinstance(v, tuple):
            raise Bad(f"expected a tuple of codec names, {got(v)}")
        self(list(v), None)


servers = Flag(_servers, "array of strings", f'`"host:port"`, 1 – {MAX_SERVERS}, distinct',
               typed=_servers_typed)
ipv4 = Flag(_ipv4, "IP address", "IPv4 address", typed=lambda v: _ipv4(v, None))
port_range = Flag(_range, "port range", '`"lo-hi"`: 1024 – 65535', typed=_range_typed)
packet_ms = Flag(_packet_ms, "integer", "`10`, `20`, `30`", typed=lambda v: _packet_ms(v, None))
reasons = Flag(_reasons, "table", "code → `busy`, `no_answer`, `all`, `unknown`",
               typed=_reasons_typed)
device_prefix = Pattern(r"[A-Za-z0-9._-]{1,14}",
                        "1 to 14 of A-Z a-z 0-9 . _ - (device i is the prefix + i)",
                        kind="string", allowed="A-Z a-z 0-9 . _ -, 1 – 14 characters")
dn = Pattern(r"[0-9*#]{1,24}", "1 to 24 of the digits 0-9, * and #", kind="string",
             allowed="`0`–`9`, `*`, `#`, 1 – 24")

KEYS: dict[str, Key] = {
    # a subscriber's lamps go by the driver its mwi_method names: both nodes serve the same
    "enabled": Key(boolean, False, shared=True),
    "count": Key(Num(1, MAX_PORTS, integer=True), 4),
    "device_prefix": Key(device_prefix, "CiscoUM1-VI"),
    "servers": Key(servers, None),  # required when enabled
    "station_ip": Key(ipv4, None),  # the TCP connection's local address
    "rtp_host": Key(ipv4, None),  # the TCP connection's local address
    "rtp_ports": Key(port_range, "20000-20999"),
    "codecs": Key(_Codecs(CODECS, what="codecs"), list(CODECS)),
    "packet_ms": Key(packet_ms, 20),
    "jitter_ms": Key(Num(0, 1000, integer=True), 60),
    "dtmf": Key(Choice({m: m for m in DTMF_MODES}), "both"),
    "device_type": Key(Num(1, 65535, integer=True), 7),
    "protocol_version": Key(Num(1, 16, integer=True), 11),
    "keepalive_max": Key(Num(1, 600), None),  # None: CallManager's interval as sent
    "rehome_probe": Key(Num(1, 3600), 30.0),
    "mwi_style": Key(Choice({m: m for m in MWI_STYLES}), "callmanager"),
    "mwi_on": Key(dn, MWI_ON_NUMBER),
    "mwi_off": Key(dn, MWI_OFF_NUMBER),
    "mwi_timeout": Key(Num(1, 60), 8.0),
    "mwi_retries": Key(Num(0, 10, integer=True), 2),
    "redirect_reasons": Key(reasons, {str(k): str(v) for k, v in REDIRECT_REASONS.items()}),
}

_d = functools.partial(default_of, KEYS)  # a field's default: its key's


@dataclass(frozen=True)
class SccpSettings:
    """``[ports.sccp]`` (see docs/configuration.md for each key)."""

    enabled: bool = False
    count: int = _d("count")
    device_prefix: str = _d("device_prefix")
    servers: tuple[Address, ...] | None = None
    station_ip: str | None = None
    rtp_host: str | None = None
    rtp_ports: tuple[int, int] = _d("rtp_ports")
    codecs: tuple[str, ...] = _d("codecs")
    packet_ms: int = _d("packet_ms")
    jitter_ms: int = _d("jitter_ms")
    dtmf: str = _d("dtmf")
    device_type: int = _d("device_type")
    protocol_version: int = _d("protocol_version")
    keepalive_max: float | None = None
    rehome_probe: float = _d("rehome_probe")
    mwi_style: str = _d("mwi_style")
    mwi_on: str = _d("mwi_on")
    mwi_off: str = _d("mwi_off")
    mwi_timeout: float = _d("mwi_timeout")
    mwi_retries: int = _d("mwi_retries")
    redirect_reasons: tuple[tuple[int, Reason], ...] = field(
        default_factory=lambda: _d("redirect_reasons"))

    def __post_init__(self) -> None:
        check_typed(self, KEYS)

    @property
    def reasons(self) -> dict[int, Reason]:
        """The redirect-reason table: CallManager's code -> the call's reason."""
        return dict(self.redirect_reasons)

    def port_names(self) -> list[str]:
        """The driver's ports, in order (``sccp-N`` registers as device prefix + N)."""
        return [f"{KIND}-{i}" for i in range(1, self.count + 1)]

    def device_name(self, i: int) -> str:
        """Port ``sccp-i``'s device name."""
        return f"{self.device_prefix}{i}"

    def rtp_pairs(self) -> int:
        """How many RTP/RTCP pairs (even RTP port, RTCP = RTP + 1) ``rtp_ports`` holds."""
        lo, hi = self.rtp_ports
        first = lo + (lo & 1)
        return 0 if first + 1 > hi else (hi - 1 - first) // 2 + 1


def problems(s: SccpSettings) -> list[Problem]:
    """Rules between the section's keys, when the ports are on."""
    if not s.enabled:
        return []
    out: list[Problem] = []
    if s.servers is None:
        out.append(Problem(f"{SECTION}.servers", "required with ports.sccp.enabled = true: "
                           'CallManager\'s SCCP address(es), e.g. ["10.0.0.5:2000"]'))
    longest = s.device_name(s.count)
    if len(longest) > MAX_DEVICE_NAME:
        out.append(Problem(f"{SECTION}.device_prefix", f"device {longest!r} is "
                           f"{len(longest)} characters long: at most {MAX_DEVICE_NAME} "
                           f"(shorten the prefix or lower {SECTION}.count)"))
    if s.rtp_pairs() < s.count:
        out.append(Problem(f"{SECTION}.rtp_ports", f"{s.rtp_pairs()} RTP/RTCP pairs in "
                           f"{s.rtp_ports[0]}-{s.rtp_ports[1]} for {s.count} ports: one pair "
                           "per port at least"))
    if s.mwi_on == s.mwi_off:
        out.append(Problem(f"{SECTION}.mwi_off", f"the same number as {SECTION}.mwi_on "
                           f"({s.mwi_on}): the lamp would never go out"))
    return out


def binds(s: SccpSettings) -> list[tuple[str, str, str, int, int]]:
    """The UDP ports the RTP endpoints bind, ``(setting, proto, host, lo, hi)`` (the host is
    ``rtp_host``, else the wildcard: the connection's local address is known only at run
    time).  The SCCP connections themselves bind nothing (they dial CallManager)."""
    if not s.enabled:
        return []
    return [(f"{SECTION}.rtp_ports", "udp", s.rtp_host or "0.0.0.0", s.rtp_ports[0],
             s.rtp_ports[1])]
