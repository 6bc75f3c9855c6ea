"""``[ports.sip]``: the SIP ports' settings, declared once (docs/configuration.md, docs/sip.md).

:data:`KEYS` is the file's schema for the section (checks, defaults, the docs' cells);
:class:`SipProfile` is what the driver (:class:`telephony.sip.driver.SipPorts`) takes, its
field defaults taken from the same keys; :class:`SipSection` is the section as read from the
file (the driver's settings and its ``enabled`` switch); :func:`binds` are the sockets the
workers bind (the port-collision checks of ``vmha node`` and ``vmha configure``).  Pure.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, fields

from integrations.base import IntegrationProfile
from integrations.cucm_sip import CUCM_SIP
from telephony.core.settings import (
    Bad,
    Choice,
    Flag,
    Key,
    Num,
    Problem,
    boolean,
    check_typed,
    default_of,
    got,
    ip_host,
    node_name,
    path,
)

__all__ = ["SECTION", "KIND", "KEYS", "RTP_PORTS_PER_PORT", "SipProfile", "SipSection",
           "section", "problems", "binds", "worker_rtp_port", "rtp_span"]

SECTION = "ports.sip"
#: the port driver's kind and its ports' names (``sip-1`` ...)
KIND = "sip"
#: RTP ports one SIP port takes: two RTP/RTCP pairs (``telephony.sip.worker``)
RTP_PORTS_PER_PORT = 4


def worker_rtp_port(rtp_port: int, per_worker: int, i: int) -> int:
    """The first RTP port of worker ``i`` (0-based): the workers' ranges are contiguous,
    ``RTP_PORTS_PER_PORT * per_worker`` ports each, from ``rtp_port`` up.  The one place the
    layout is defined (the driver, the port-collision checks, the integration's limits)."""
    return rtp_port + RTP_PORTS_PER_PORT * per_worker * i


def rtp_span(rtp_port: int, per_worker: int, count: int) -> tuple[int, int]:
    """``(lo, hi)``: every RTP port ``count`` SIP ports in workers of ``per_worker`` take."""
    workers = -(-count // per_worker)
    last = count - (workers - 1) * per_worker          # the last worker's ports
    hi = worker_rtp_port(rtp_port, per_worker, workers - 1) + RTP_PORTS_PER_PORT * last - 1
    return rtp_port, hi


def _sip_uri(v, ctx=None) -> str:
    if not (isinstance(v, str) and len(v) <= 200 and (v == "" or v.startswith(("sip:", "sips:")))
            and not any(c.isspace() or c in '<>"' for c in v)):
        raise Bad(f'expected a sip: URI without spaces, {got(v)}')
    return v


sip_uri = Flag(_sip_uri, "sip URI", typed=_sip_uri)
user_name = Flag(node_name.fn, "name", typed=node_name.typed)

KEYS: dict[str, Key] = {
    # a subscriber's lamps go by the driver its mwi_method names: both nodes serve the same
    "enabled": Key(boolean, False, shared=True),
    "bind": Key(ip_host, "127.0.0.1"),
    "sip_port": Key(Num(1, 65535, integer=True), 5070),
    "rtp_port": Key(Num(1024, 65000, integer=True), 20000),
    "count": Key(Num(1, 1024, integer=True), 4),
    "per_worker": Key(Num(1, 4, integer=True), 4),
    "mode": Key(Choice({"trunk": "trunk", "register": "register"}), "trunk"),
    "registrar": Key(sip_uri, ""),
    "user": Key(user_name, "vm"),
    "password_file": Key(path, None),
    "select": Key(Choice({"last": "last", "first": "first"}), "last"),
    "mwi_target": Key(sip_uri, "sip:{extension}@127.0.0.1:5060", doc_range=False),
    "mwi_account": Key(sip_uri, "sip:{extension}@127.0.0.1", doc_range=False),
    "notify_retries": Key(Num(0, 10, integer=True), 3),
    "notify_backoff": Key(Num(0.01, 60), 1.0),
    "notify_timeout": Key(Num(1, 64), 32.0),
    "transfer_timeout": Key(Num(1, 120), 10.0),
}


_d = functools.partial(default_of, KEYS)  # a field's default: its key's


@dataclass(frozen=True)
class SipProfile:
    """One node's SIP ports, as the driver takes them.

    * ``count`` ports, in workers of at most ``per_worker`` (the pjsua2 wheel holds 4 calls
      per process); worker *i* listens on ``bind:sip_port + i`` and takes the RTP ports from
      :func:`worker_rtp_port` on (``rtp_port + 4 per_worker i``, four a port, contiguous).
    * ``mode``: ``trunk`` (the PBX or a proxy sends calls to the workers' addresses) or
      ``register`` (each port registers ``user-N`` with ``registrar``).
    * ``select``: which redirection picks the mailbox: ``last`` (the original called party,
      the bottom Diversion entry) or ``first`` (the most recent redirecting party).
    * MWI: an unsolicited NOTIFY to ``mwi_target`` (``{extension}`` is replaced), with
      ``Message-Account`` ``mwi_account``; 403 and timeouts are retried ``notify_retries``
      times with backoff from ``notify_backoff`` seconds; a NOTIFY without a final answer
      counts as a timeout after ``notify_timeout`` seconds (the SIP transaction timeout).
    * Transfer: a blind transfer (REFER) counts as failed when the PBX has not reported a 2xx
      final status within ``transfer_timeout`` seconds (the call then goes on).

    Every value is checked by its key's check (:data:`KEYS`), then the rules between them;
    a bad one is a ``ValueError``.
    """

    bind: str = _d("bind")
    sip_port: int = _d("sip_port")
    rtp_port: int = _d("rtp_port")
    count: int = _d("count")
    per_worker: int = _d("per_worker")
    mode: str = _d("mode")
    registrar: str = _d("registrar")
    user: str = _d("user")
    password_file: str = ""  # "" = none
    select: str = _d("select")
    mwi_target: str = _d("mwi_target")
    mwi_account: str = _d("mwi_account")
    notify_retries: int = _d("notify_retries")
    notify_backoff: float = _d("notify_backoff")
    notify_timeout: float = _d("notify_timeout")
    transfer_timeout: float = _d("transfer_timeout")
    base: IntegrationProfile = CUCM_SIP  # the number rules and the integration's name

    def __post_init__(self) -> None:
        check_typed(self, KEYS, _PROFILE_KEYS)
        if self.mode == "register" and not self.registrar.startswith(("sip:", "sips:")):
            raise ValueError("register mode needs a registrar sip: URI")
        for name in ("mwi_target", "mwi_account"):
            v = getattr(self, name)
            if not (v.startswith(("sip:", "sips:")) and "{extension}" in v):
                raise ValueError(f"{name} must be a sip: URI containing {{extension}}, not {v!r}")
        last = self.sip_port + self.workers - 1
        if last > 65535:
            raise ValueError(f"SIP ports {self.sip_port}..{last} do not fit 1..65535")
        lo, hi = rtp_span(self.rtp_port, self.per_worker, self.count)
        if hi > 65535:
            raise ValueError(f"RTP ports {lo}..{hi} for {self.count} SIP ports do not fit "
                             f"1..65535 (setting ports.sip.rtp_port)")

    @property
    def workers(self) -> int:
        return -(-self.count // self.per_worker)

    def worker_rtp(self, i: int) -> int:
        """Worker ``i``'s first RTP port (:func:`worker_rtp_port`)."""
        return worker_rtp_port(self.rtp_port, self.per_worker, i)

    def worker_ports(self, i: int) -> list[str]:
        """The port names of worker ``i`` (0-based): sip-1.. in order."""
        lo = i * self.per_worker
        return [f"{KIND}-{n + 1}" for n in range(lo, min(lo + self.per_worker, self.count))]

    def port_names(self) -> list[str]:
        """Every port, in line order: ``sip-1`` … ``sip-<count>``."""
        return [f"{KIND}-{n}" for n in range(1, self.count + 1)]

    def target(self, extension: str) -> str:
        return self.mwi_target.replace("{extension}", extension)

    def account(self, extension: str) -> str:
        return self.mwi_account.replace("{extension}", extension)


_PROFILE_KEYS = tuple(k for k in KEYS if k not in ("enabled", "password_file"))


@dataclass(frozen=True)
class SipSection(SipProfile):
    """``[ports.sip]`` as the node's file gives it (each key checked by the loader): the
    driver's settings and whether the driver is on.  :meth:`profile` checks the rules between
    the keys; the loader does that only when the driver is on (a disabled section's
    combination is never used)."""

    enabled: bool = False

    def __post_init__(self) -> None:
        pass  # see problems()

    def profile(self) -> SipProfile:
        """The driver's settings (ValueError on a bad combination)."""
        return SipProfile(**{f.name: getattr(self, f.name) for f in fields(SipProfile)})


def section(values: dict) -> SipSection:
    """The section from its checked values (``password_file``: a path or None)."""
    return SipSection(**{**values, "password_file": str(values["password_file"] or "")})


def problems(s: SipSection) -> list[Problem]:
    """Rules between the section's keys, when the driver is on (key ``ports.sip``)."""
    if not s.enabled:
        return []
    try:
        s.profile()
    except ValueError as e:
        return [Problem(SECTION, str(e))]
    return []


def binds(s: SipSection) -> list[tuple[str, str, str, int, int]]:
    """The UDP ports the workers bind, ``(setting, proto, host, lo, hi)``: worker *i* on
    ``sip_port + i``, its RTP ports from :func:`worker_rtp_port` (two RTP/RTCP pairs a port)."""
    if not s.enabled:
        return []
    workers = -(-s.count // s.per_worker)
    out = [(f"{SECTION}.sip_port", "udp", s.bind, s.sip_port, s.sip_port + workers - 1)]
    for i in range(workers):
        n = min(s.per_worker, s.count - i * s.per_worker)
        lo = worker_rtp_port(s.rtp_port, s.per_worker, i)
        out.append((f"{SECTION}.rtp_port", "udp", s.bind, lo, lo + RTP_PORTS_PER_PORT * n - 1))
    return out
