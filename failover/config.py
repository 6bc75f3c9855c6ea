"""One node's configuration: a TOML file read into frozen dataclasses.

``load_config(path)`` reads a file, ``parse_config(data, source)`` checks an already-parsed dict.
The schema is a table (``SCHEMA``): section -> key -> :class:`~telephony.core.settings.Key`.
This module defines the node manager's sections ([node], [link], [failover], [failback],
[licence], [service], [admin], [replication], [log]) and composes the messaging service's
(``telephony.settings``: the port drivers' [ports.*], [database], [store], [notify],
[messaging], and the keys of the node manager's sections the service reads too).  The
``[integration]`` section, which wires the service's parts, is ``WIRING``; the whole file's
schema is ``FILE_SCHEMA``.  Every unknown key and every bad value is a :class:`ConfigError`
naming the file, the dotted key and what was expected; nothing else escapes.  All problems
found in one pass are reported together.

docs/configuration.md documents every key; tests check the page against the schema.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import ipaddress
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from failover.core.health import HEALTH_KEYS, HealthSettings
from failover.core.state import FailbackType, Mode, Role, Timing
from failover.web import settings as web
from telephony import settings as telephony
from telephony.core.settings import (
    Addr,
    Address,
    Bad,
    Choice,
    ConfigError,
    Ctx,
    Key,
    Num,
    Problem,
    boolean,
    check_node_name,
    check_values,
    clock,
    enum_choice,
    got,
    must_match,
    node_name,
    parse_address,
    path,
    schema_tree,
    walk,
)
from telephony.loopback import settings as loopback
from telephony.sccp import settings as sccp
from telephony.settings import (
    DatabaseSection,
    Integration,
    MessagingSection,
    NotifySection,
    PortsSection,
    StoreSection,
    read_toml,
)
from telephony.sip import settings as sip

__all__ = [
    "Address", "ConfigError", "Problem", "NodeConfig", "NodeSection", "LinkSection",
    "FailoverSection", "FailbackSection", "LicenceSection", "ServiceSection", "AdminSection",
    "LogSection", "ReplicationSection", "Profile", "PROFILES", "GuideSetting",
    "guide_settings", "SCHEMA", "WIRING", "FILE_SCHEMA", "DEFAULT_LINK_PORT", "load_config",
    "parse_config", "parse_address", "check_node_name", "settings_that_must_match",
    "shared_settings_digest", "MUST_MATCH", "EXIT_CONFIG", "Bind", "listen_binds",
    "peer_binds", "is_loopback", "hosts_overlap", "binds_collide", "same_host",
    "port_collisions", "RTP_PORTS_PER_SIP_PORT",
]

DEFAULT_LINK_PORT = 3653  # the guide's Node Manager port
EXIT_CONFIG = 2  # `vmha node` exit code: its configuration stops it from starting
_SUN_PATH_MAX = 107  # bytes usable in sockaddr_un.sun_path (108 with the NUL)
_EPS = 1e-9  # float slack when comparing products of seconds


# ============================================================================ checks (schema cells)

_DIR_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")


class _DirList:
    kind = "array of names"
    allowed = "plain one-level names"

    def __call__(self, v: Any, ctx: Ctx) -> tuple[str, ...]:
        if not (isinstance(v, list) and all(isinstance(s, str) for s in v)):
            raise Bad(f"expected an array of directory names, {got(v)}")
        for name in v:
            if not _DIR_NAME.fullmatch(name) or name.startswith(".vmha") or name in (".", ".."):
                raise Bad(f"{name!r} is not a plain directory name (letters, digits, _ . -; "
                          "one level, relative to replication.files_root)")
        if len(set(v)) != len(v):
            raise Bad(f"a directory is listed twice, {got(v)}")
        return tuple(v)


class _Command:
    kind = "array of strings"
    allowed = "non-empty, each non-empty"

    def __call__(self, v: Any, ctx: Ctx) -> tuple[str, ...]:
        if not (isinstance(v, list) and v and all(isinstance(s, str) and s for s in v)):
            raise Bad(f"expected a non-empty array of non-empty strings, {got(v)}")
        return tuple(v)


# ============================================================================ profiles


@dataclass(frozen=True)
class Profile:
    ping_interval: float
    missed_pings: int
    realtime_priority: int
    why: str

    @property
    def peer_timeout(self) -> float:
        return self.ping_interval * self.missed_pings


PROFILES: dict[str, Profile] = {
    "default": Profile(0.1, 6, 0, "fails over 0.6 s after the last heartbeat; safe on any "
                       "switched LAN without special scheduling"),
    "fast": Profile(0.02, 6, 10, "fails over 0.12 s after the last heartbeat; needs a quiet "
                    "dedicated link and real-time scheduling so a busy CPU does not miss pings"),
    "guide": Profile(1.0, 30, 0, "the guide's defaults (Ping Interval 1000 ms, Missed Pings "
                     "Before Failover 30): fails over after 30 s, tolerates long network blips"),
}


class GuideSetting(NamedTuple):
    guide: str  # the setting's name in the guide (Failover Monitor / Node Manager)
    key: str  # our dotted key
    guide_value: str  # the guide's default or the guide-compatible value
    value: Any  # the same, as our TOML value
    note: str


def guide_settings() -> tuple[GuideSetting, ...]:
    """The guide's failover settings mapped to our keys, with guide-compatible values."""
    return (
        GuideSetting("Ping Interval (ms)", "failover.ping_interval", "1000", 1.0,
                     "our unit is seconds"),
        GuideSetting("Missed Pings Before Failover", "failover.missed_pings", "30", 30,
                     "1000 ms x 30 = the guide's 30-second failover delay"),
        GuideSetting("Failback Type", "failback.type", "Manual / Scheduled", "manual",
                     '"manual" or "scheduled"'),
        GuideSetting("Scheduled Failback Start", "failback.window_start", "(time of day)", "22:00",
                     'local time "HH:MM"; only with type = "scheduled"'),
        GuideSetting("Scheduled Failback End", "failback.window_end", "(time of day)", "23:00",
                     "may be earlier than the start: the window then crosses midnight"),
        GuideSetting("Node Manager manual mode", "failover.mode", "automatic", "automatic",
                     '"manual": no automatic failover or failback, only commands'),
        GuideSetting("Node Manager TCP port", "link.listen", "3653", "<cluster-ip>:3653",
                     "the peer's link.peer uses the same port"),
        GuideSetting("Licence: secondary never in contact with its primary",
                     "licence.no_contact_limit", "4 hours",
                     14400, "seconds"),
        GuideSetting("Licence: since the last contact with the primary",
                     "licence.after_contact_limit", "60 days",
                     5184000, "seconds"),
    )

# ============================================================================ the schema

_T = telephony.SERVICE_KEYS  # keys of these sections the messaging service reads too

SCHEMA: dict[str, dict[str, Key]] = {
    "node": {
        **_T["node"],  # name, role, data_dir
        "key_file": Key(path, None),  # <data_dir>/link.key
    },
    "link": {
        "listen": Key(Addr(), f"0.0.0.0:{DEFAULT_LINK_PORT}"),
        "peer": Key(Addr(wildcard=False)),
        "peer_name": Key(node_name),
        "connect_timeout": Key(Num(0.01, 300), 1.0),
        "reconnect_min": Key(Num(0.001, 60), 0.05),
        "reconnect_max": Key(Num(0.001, 3600), 2.0),
    },
    "failover": {
        "profile": Key(Choice({p: p for p in PROFILES}), "default"),
        "ping_interval": Key(Num(0.005, 10), None, shared=True),  # from the profile
        "missed_pings": Key(Num(2, 1000, integer=True), None, shared=True),  # from the profile
        "lease": Key(Num(0.001, 10000), None),  # ping_interval * (missed_pings - 1)
        "startup_wait": Key(Num(0, 86400), None),  # max(ping_interval * missed_pings, 1 s)
        "mode": Key(enum_choice(Mode), "automatic"),
        "call_takeover": Key(boolean, True),
        "handover_timeout": Key(Num(0.01, 3600), 2.0),
        "drain_timeout": Key(Num(0, 86400), 300.0),
        "realtime_priority": Key(Num(0, 99, integer=True), None),  # from the profile
    },
    "failback": {
        "type": Key(enum_choice(FailbackType), "manual", shared=True),
        "window_start": Key(clock, None, shared=True),
        "window_end": Key(clock, None, shared=True),
    },
    "licence": {
        "no_contact_limit": Key(Num(1, 10 * 365 * 86400), 4 * 3600.0, shared=True),
        "after_contact_limit": Key(Num(1, 10 * 365 * 86400), 60 * 86400.0, shared=True),
    },
    "service": {
        "health_interval": _T["service"]["health_interval"],
        "health_timeout": _T["service"]["health_timeout"],
        "start_timeout": Key(Num(0.1, 3600), 10.0),
        "max_restarts": Key(Num(0, 1000, integer=True), 5),
        "restart_window": Key(Num(1, 86400), 60.0),
        "restart_backoff": Key(Num(0.01, 3600), 0.5),
        "restart_backoff_max": Key(Num(0.01, 86400), 30.0),
        "restart_backoff_alone": Key(Num(0.01, 60), 2.0),
        "offer_hold": _T["service"]["offer_hold"],
        "command": Key(_Command(), None),
    },
    "health": HEALTH_KEYS,  # driver health as a failover trigger (failover/core/health.py)
    **{s: telephony.SECTIONS[s] for s in telephony.SECTIONS if s.startswith("ports.")},
    "admin": {
        "socket": Key(path, None),  # <data_dir>/run/admin.sock
    },
    "http": web.HTTP_KEYS,  # the admin HTTP API and the Failover Monitor page (failover/web)
    **{s: telephony.SECTIONS[s] for s in telephony.SECTIONS if not s.startswith("ports.")},
    "replication": {
        "enabled": Key(boolean, True, shared=True),
        "listen": Key(Addr(), None),  # link.listen host, link port + 1
        "peer": Key(Addr(wildcard=False), None),  # link.peer host, port + 1
        "handover_wait": Key(Num(0, 3600), 10.0, shared=True),
        "files_root": _T["replication"]["files_root"],  # <data_dir>/files
        "directories": Key(_DirList(), ["prompts", "streams", "support", "spool"], shared=True),
        "batch_delay": Key(Num(0, 3600), 0.0),
        "sweep_interval": Key(Num(0.05, 86400), 60.0),
        "max_frame": Key(Num(65536, 64 * 1024 * 1024, integer=True, kind="bytes"), 4 * 1024 * 1024,
                         shared=True),
        "log_keep": _T["replication"]["log_keep"],
        "log_max": _T["replication"]["log_max"],
    },
    "log": {
        **_T["log"],  # level
        "console": Key(boolean, True),
    },
}

#: the section that wires the messaging service's parts (docs/integrations.md)
WIRING: dict[str, dict[str, Key]] = {"integration": telephony.INTEGRATION}

#: the whole file: every section of SCHEMA, and [integration] after the port drivers'
FILE_SCHEMA: dict[str, dict[str, Key]] = {}
for _s, _keys in SCHEMA.items():
    FILE_SCHEMA[_s] = _keys
    if _s == "ports.sip":
        FILE_SCHEMA.update(WIRING)

_TREE = schema_tree(FILE_SCHEMA)


# ============================================================================ dataclasses

@dataclass(frozen=True)
class NodeSection:
    name: str
    role: Role
    data_dir: Path
    key_file: Path


@dataclass(frozen=True)
class LinkSection:
    listen: Address
    peer: Address
    peer_name: str
    connect_timeout: float
    reconnect_min: float
    reconnect_max: float


@dataclass(frozen=True)
class FailoverSection(Timing):
    profile: str
    ping_interval: float
    missed_pings: int
    lease: float | None  # as written; None = derived (see NodeConfig.lease_s)
    startup_wait: float | None  # as written; None = derived (see NodeConfig.startup_wait_s)
    mode: Mode
    call_takeover: bool
    handover_timeout: float
    drain_timeout: float
    realtime_priority: int


def _seconds(t: _dt.time) -> float:
    return t.hour * 3600.0 + t.minute * 60 + t.second + t.microsecond / 1e6


@dataclass(frozen=True)
class FailbackSection:
    type: FailbackType
    window_start: _dt.time | None
    window_end: _dt.time | None

    @property
    def window_seconds(self) -> tuple[float, float] | None:
        """(start, end) in seconds after local midnight; end < start crosses midnight."""
        if self.window_start is None or self.window_end is None:
            return None
        return _seconds(self.window_start), _seconds(self.window_end)

    def in_window(self, local_seconds: float) -> bool:
        w = self.window_seconds
        if self.type is not FailbackType.SCHEDULED or w is None:
            return False
        start, end = w
        if start <= end:
            return start <= local_seconds < end
        return local_seconds >= start or local_seconds < end


@dataclass(frozen=True)
class LicenceSection:
    no_contact_limit: float
    after_contact_limit: float


@dataclass(frozen=True)
class ServiceSection:
    health_interval: float
    health_timeout: float
    start_timeout: float
    max_restarts: int
    restart_window: float
    restart_backoff: float
    restart_backoff_max: float
    restart_backoff_alone: float
    offer_hold: float
    command: tuple[str, ...] | None


@dataclass(frozen=True)
class AdminSection:
    socket: Path


@dataclass(frozen=True)
class ReplicationSection:
    enabled: bool
    listen: Address
    peer: Address
    handover_wait: float
    files_root: Path
    directories: tuple[str, ...]
    batch_delay: float
    sweep_interval: float
    max_frame: int
    log_keep: int
    log_max: int


@dataclass(frozen=True)
class LogSection:
    level: str
    console: bool


@dataclass(frozen=True)
class NodeConfig:
    source: str
    node: NodeSection
    link: LinkSection
    failover: FailoverSection
    failback: FailbackSection
    licence: LicenceSection
    service: ServiceSection
    ports: PortsSection
    admin: AdminSection
    log: LogSection
    database: DatabaseSection
    replication: ReplicationSection
    store: StoreSection
    notify: NotifySection
    messaging: MessagingSection
    integration: Integration
    health: HealthSettings = HealthSettings()
    http: web.HttpSettings = web.HttpSettings()

    @property
    def peer_timeout(self) -> float:
        """Silence after which the peer counts as gone: ping_interval * missed_pings."""
        return self.failover.peer_timeout

    @property
    def lease_s(self) -> float:
        return self.failover.lease_s

    @property
    def startup_wait_s(self) -> float:
        return self.failover.startup_wait_s

    @property
    def run_dir(self) -> Path:
        return self.node.data_dir / "run"

    @property
    def control_socket(self) -> Path:
        return self.run_dir / "control.sock"

    def supervisor_config(self):
        """The pure supervisor's settings (``failover.core.supervisor.SupervisorConfig``)."""
        from failover.core.supervisor import SupervisorConfig

        f = self.failover
        return SupervisorConfig(
            node=self.node.name, role=self.node.role, peer_name=self.link.peer_name,
            ping_interval=f.ping_interval, missed_pings=f.missed_pings, lease=f.lease_s,
            startup_wait=f.startup_wait_s, mode=f.mode, call_takeover=f.call_takeover,
            handover_timeout=f.handover_timeout, drain_timeout=f.drain_timeout,
            failback_type=self.failback.type, failback_window=self.failback.window_seconds,
            licence_no_contact=self.licence.no_contact_limit,
            licence_after_contact=self.licence.after_contact_limit,
            health_timeout=self.service.health_timeout, start_timeout=self.service.start_timeout,
            max_restarts=self.service.max_restarts, restart_window=self.service.restart_window,
            restart_backoff=self.service.restart_backoff,
            restart_backoff_max=self.service.restart_backoff_max,
            restart_backoff_alone=self.service.restart_backoff_alone,
            handover_wait=self.replication.handover_wait if self.replication.enabled else 0.0,
            health=self.health,
        )


# ============================================================================ loading


def load_config(path: str | os.PathLike) -> NodeConfig:
    """Read and check one node's TOML file.  Raises only :class:`ConfigError`."""
    p = Path(path)
    return parse_config(read_toml(p), str(p), base_dir=p.absolute().parent)


def parse_config(data: dict, source: str, *, base_dir: str | os.PathLike | None = None) -> NodeConfig:
    """Check an already-parsed TOML document.  Relative paths are taken from ``base_dir``
    (default: the directory of ``source``).  Raises only :class:`ConfigError`."""
    source = str(source)
    ctx = Ctx(Path(base_dir).absolute() if base_dir is not None else Path(source).absolute().parent)
    problems: list[Problem] = []
    if not isinstance(data, dict):
        raise ConfigError(source, "expected a TOML document (a table)")
    raw: dict[str, dict[str, Any]] = {}
    walk(data, _TREE, "", raw, problems)
    values = check_values(raw, FILE_SCHEMA, ctx, problems)
    if problems:
        raise ConfigError(source, problems)
    cfg = _build(values, source)
    problems = _cross_checks(cfg)
    if problems:
        raise ConfigError(source, problems)
    return cfg


def _build(v: dict[str, dict[str, Any]], source: str) -> NodeConfig:
    n, f = v["node"], v["failover"]
    prof = PROFILES[f["profile"]]
    data_dir = n["data_dir"]
    return NodeConfig(
        source=source,
        node=NodeSection(n["name"], n["role"], data_dir,
                         n["key_file"] or data_dir / "link.key"),
        link=LinkSection(**v["link"]),
        failover=FailoverSection(**{
            **f,
            "ping_interval": f["ping_interval"] if f["ping_interval"] is not None else prof.ping_interval,
            "missed_pings": f["missed_pings"] if f["missed_pings"] is not None else prof.missed_pings,
            "realtime_priority": (f["realtime_priority"] if f["realtime_priority"] is not None
                                  else prof.realtime_priority),
        }),
        failback=FailbackSection(**v["failback"]),
        licence=LicenceSection(**v["licence"]),
        service=ServiceSection(**{**v["service"], "health_interval": telephony.health_interval(
            v["service"]["health_interval"], v["service"]["health_timeout"])}),
        health=HealthSettings(**v["health"]),
        admin=AdminSection(v["admin"]["socket"] or data_dir / "run" / "admin.sock"),
        http=web.build(v["http"], data_dir),
        log=LogSection(**v["log"]),
        replication=_replication(v["replication"], v["link"], data_dir),
        **telephony.build(v, data_dir),
    )


def _next_port(a: Address) -> Address:
    return Address(a.host, a.port + 1 if a.port < 65535 else a.port)


def _replication(r: dict, link: dict, data_dir: Path) -> ReplicationSection:
    return ReplicationSection(**{
        **r,
        "listen": r["listen"] or _next_port(link["listen"]),
        "peer": r["peer"] or _next_port(link["peer"]),
        "files_root": telephony.files_root(r["files_root"], data_dir),
    })


def _telephony(c: NodeConfig) -> dict[str, Any]:
    return {"ports": c.ports, "database": c.database, "store": c.store, "notify": c.notify,
            "messaging": c.messaging, "integration": c.integration}


def _cross_checks(c: NodeConfig) -> list[Problem]:
    """Rules between keys.  Each problem names the key the operator should change."""
    out: list[Problem] = []
    f = c.failover
    if c.link.peer_name == c.node.name:
        out.append(Problem("link.peer_name", f"must differ from node.name ({c.node.name!r})"))
    if c.link.reconnect_min > c.link.reconnect_max:
        out.append(Problem("link.reconnect_min",
                           f"{c.link.reconnect_min:g} is above link.reconnect_max "
                           f"({c.link.reconnect_max:g})"))
    if c.service.restart_backoff > c.service.restart_backoff_max:
        out.append(Problem("service.restart_backoff",
                           f"{c.service.restart_backoff:g} is above service.restart_backoff_max "
                           f"({c.service.restart_backoff_max:g})"))
    if not f.ping_interval - _EPS <= f.lease_s < f.peer_timeout - _EPS:  # _EPS: 0.1 * 6 > 0.6
        key = "failover.lease" if f.lease is not None else "failover.missed_pings"
        out.append(Problem(key, f"the lease ({f.lease_s:g} s) must be at least ping_interval "
                                f"({f.ping_interval:g} s) and shorter than ping_interval x missed_pings "
                                f"({f.peer_timeout:g} s), so the service fences itself before "
                                "the peer takes over"))
    s = c.service
    if s.health_interval > s.health_timeout / 2:  # room for one keep-alive that is late
        out.append(Problem("service.health_timeout", f"{s.health_timeout:g} s must be at least "
                           f"twice service.health_interval ({s.health_interval:g} s)"))
    fb = c.failback
    if fb.type is FailbackType.SCHEDULED:
        for k in ("window_start", "window_end"):
            if getattr(fb, k) is None:
                out.append(Problem(f"failback.{k}", 'required when failback.type = "scheduled"'))
        if fb.window_start is not None and fb.window_start == fb.window_end:
            out.append(Problem("failback.window_end", "equals window_start: the window would be empty"))
    else:
        for k in ("window_start", "window_end"):
            if getattr(fb, k) is not None:
                out.append(Problem(f"failback.{k}", 'only allowed with failback.type = "scheduled" '
                                   '(with "manual" it would never be used)'))
    out += telephony.problems(_telephony(c))  # the messaging service's rules
    out += web.problems(c.http)
    r = c.replication
    if r.enabled:
        for key, a, b in (("replication.listen", r.listen, c.link.listen),
                          ("replication.peer", r.peer, c.link.peer)):
            if a == b:
                out.append(Problem(key, f"{a} is the node link's address; replication needs its "
                                        "own port (default: the link port + 1)"))
        if r.listen.port == 0:
            out.append(Problem("replication.listen", "port 0 (ephemeral) is not allowed"))
    for key, sock in (("admin.socket", c.admin.socket), ("node.data_dir", c.control_socket)):
        if len(os.fsencode(str(sock))) > _SUN_PATH_MAX:
            out.append(Problem(key, f"the socket path {str(sock)!r} is longer than "
                                    f"{_SUN_PATH_MAX} bytes, the limit for a Unix socket"))
    return out


# ============================================================================ the pair

#: keys that must be equal on both nodes (marked ``shared`` in the schema), in file order
MUST_MATCH: tuple[str, ...] = must_match(FILE_SCHEMA)


def _get(c: NodeConfig, dotted: str) -> Any:
    v: Any = c
    for part in dotted.split("."):
        v = getattr(v, part)
    if isinstance(v, tuple):
        return list(v)
    if isinstance(v, (Role, Mode, FailbackType)):
        return v.name.lower()
    if isinstance(v, _dt.time):
        return v.strftime("%H:%M")
    return v


def shared_settings_digest(c: NodeConfig) -> int:
    """64 bits of SHA-256 over the :data:`MUST_MATCH` keys and their values.  The node link
    carries it in every status frame, so each node sees at run time whether its peer runs
    with the same shared settings (``vmha configure --check`` names the keys).  Never 0,
    which on the wire means "not said"."""
    text = json.dumps([[key, _get(c, key)] for key in MUST_MATCH], default=str)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") or 1


def settings_that_must_match(a: NodeConfig, b: NodeConfig) -> list[str]:
    """Problems that stop ``a`` and ``b`` working as a pair, one ``"KEY: detail"`` string each.

    Empty list = a valid pair.  Checks that the roles differ, that each ``link.peer_name`` is the
    other's ``node.name``, that each ``link.peer`` port is the other's ``link.listen`` port (and
    host, when both are IP literals and the listener is not a wildcard), and that every key in
    ``MUST_MATCH`` is equal.  ``failover.mode`` may differ: it is each node manager's start-up
    mode and can be changed at run time on one node."""
    out: list[str] = []
    an, bn = a.node.name, b.node.name
    if a.node.role is b.node.role:
        out.append(f"node.role: both {an} and {bn} are {a.node.role.label}: one must be primary, "
                   "the other secondary")
    for x, y in ((a, b), (b, a)):
        if x.link.peer_name != y.node.name:
            out.append(f"link.peer_name: {x.node.name} expects its peer to be "
                       f"{x.link.peer_name!r} but the other node is {y.node.name!r}")
        pairs = [("link.peer", x.link.peer, y.link.listen)]
        if x.replication.enabled and y.replication.enabled:
            pairs.append(("replication.peer", x.replication.peer, y.replication.listen))
        for key, dial, lis in pairs:
            other_host = (dial.is_ip and lis.is_ip and not lis.is_wildcard
                          and ipaddress.ip_address(dial.host) != ipaddress.ip_address(lis.host))
            if dial.port != lis.port or other_host:
                out.append(f"{key}: {x.node.name} dials {dial} but {y.node.name} listens on {lis}")
    for key in MUST_MATCH:
        va, vb = _get(a, key), _get(b, key)
        if va != vb:
            out.append(f"{key}: {an} has {va!r}, {bn} has {vb!r}")
    return out


# ============================================================================ ports that bind

#: RTP ports one SIP port takes (two RTP/RTCP pairs): telephony.sip.settings
RTP_PORTS_PER_SIP_PORT = sip.RTP_PORTS_PER_PORT


class Bind(NamedTuple):
    """One socket a node binds (or, with ``peer=True``, one its file says the peer binds).

    ``proto`` is ``"tcp"``, ``"udp"`` or ``"unix"`` (then ``host`` is the socket's path and the
    ports are 0); ``lo``..``hi`` is a port range (``lo == hi`` for one port)."""

    source: str  # the file
    setting: str  # "[section] key" as the operator writes it
    proto: str
    host: str
    lo: int
    hi: int
    peer: bool = False

    @property
    def address(self) -> str:
        if self.proto == "unix":
            return self.host
        ports = str(self.lo) if self.lo == self.hi else f"{self.lo}-{self.hi}"
        return f"[{self.host}]:{ports}" if ":" in self.host else f"{self.host}:{ports}"

    def __str__(self) -> str:
        return f"{self.source} {self.setting} {self.address}"


def listen_binds(c: NodeConfig) -> list[Bind]:
    """Every socket this node binds: the node link and replication listeners (node manager),
    the loopback trunk, the SIP signalling ports and RTP ranges (messaging service and its
    workers), the SCCP ports' RTP range, and the admin and control Unix sockets."""
    src = c.source
    out = [Bind(src, "link.listen", "tcp", c.link.listen.host, c.link.listen.port, c.link.listen.port)]
    r = c.replication
    if r.enabled:
        out.append(Bind(src, "replication.listen", "tcp", r.listen.host, r.listen.port, r.listen.port))
    # the messaging service's: the loopback trunk, the SIP workers' ports and RTP ranges
    for setting, proto, host, lo, hi in (loopback.binds(c.ports.loopback) + sip.binds(c.ports.sip)
                                         + sccp.binds(c.ports.sccp)):
        out.append(Bind(src, setting, proto, host, lo, hi))
    if (h := c.http.listen) is not None:
        out.append(Bind(src, "http.listen", "tcp", h.host, h.port, h.port))
    out.append(Bind(src, "admin.socket", "unix", str(c.admin.socket), 0, 0))
    out.append(Bind(src, "node.data_dir (run/control.sock)", "unix", str(c.control_socket), 0, 0))
    return out


def peer_binds(c: NodeConfig) -> list[Bind]:
    """The peer's listeners as this node's file knows them: ``link.peer`` and, with
    replication, ``replication.peer``."""
    out = [Bind(c.source, "link.peer", "tcp", c.link.peer.host, c.link.peer.port,
                c.link.peer.port, peer=True)]
    if c.replication.enabled:
        p = c.replication.peer
        out.append(Bind(c.source, "replication.peer", "tcp", p.host, p.port, p.port, peer=True))
    return out


def _ip(host: str):
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _norm(host: str) -> str:
    ip = _ip(host)
    return str(ip) if ip is not None else host.lower().rstrip(".")


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or the name ``localhost``."""
    ip = _ip(host)
    return ip.is_loopback if ip is not None else _norm(host) == "localhost"


def hosts_overlap(h1: str, h2: str, proto: str = "tcp") -> bool:
    """Whether sockets bound to ``h1`` and ``h2`` on one machine can take the same address.

    Equal addresses overlap; ``0.0.0.0`` overlaps every IPv4 address; ``::`` every IPv6
    address, and for UDP also every IPv4 one (the TCP listeners set ``IPV6_V6ONLY``; a UDP
    socket of the SIP stack may be dual-stack).  127.0.0.1 and 127.0.0.2 are different
    addresses.  Host names are not looked up: equal names overlap, ``localhost`` overlaps
    127.0.0.1 and ::1, and a name overlaps the wildcards."""
    a, b = _ip(h1), _ip(h2)
    for x, y in ((a, b), (b, a)):
        if x is not None and x.is_unspecified:
            if y is None:
                return True
            return x.version == y.version or (x.version == 6 and proto == "udp")
    if a is not None and b is not None:
        return a == b
    if a is None and b is None:
        return _norm(h1) == _norm(h2)
    name, ip = (h1, b) if a is None else (h2, a)
    return _norm(name) == "localhost" and str(ip) in ("127.0.0.1", "::1")


def binds_collide(x: Bind, y: Bind) -> bool:
    """Same protocol, overlapping port ranges and overlapping addresses (one machine assumed).
    TCP and UDP on the same number do not collide; Unix sockets collide on the same path."""
    if x.proto != y.proto:
        return False
    if x.proto == "unix":
        return os.path.normpath(x.host) == os.path.normpath(y.host)
    return x.lo <= y.hi and y.lo <= x.hi and hosts_overlap(x.host, y.host, x.proto)


def same_host(a: NodeConfig, b: NodeConfig) -> bool:
    """Whether the two nodes of a pair run on one machine: either dials the other on a
    loopback address, or both have the same host address (a node's address is its
    ``link.listen`` host, and the peer's ``link.peer`` host, which also covers a node that
    listens on a wildcard)."""
    if is_loopback(a.link.peer.host) or is_loopback(b.link.peer.host):
        return True

    def hosts(x: NodeConfig, y: NodeConfig) -> set[str]:
        out = {_norm(y.link.peer.host)}
        if not x.link.listen.is_wildcard:
            out.add(_norm(x.link.listen.host))
        return out

    return bool(hosts(a, b) & hosts(b, a))


def _collision(x: Bind, y: Bind) -> str:
    text = f"{x} collides with {y}"
    if y.peer:
        text += " (where the peer listens, on this host)"
    return text + (" (UDP)" if x.proto == "udp" else "")


def port_collisions(a: NodeConfig, b: NodeConfig | None = None) -> list[str]:
    """Sockets that cannot all be bound, one line each naming both settings and the address:
    ``primary.toml replication.listen 127.0.0.1:13654 collides with secondary.toml
    link.listen 127.0.0.1:13654``.

    With one node (at node start): its own sockets against each other and against the peer's
    link and replication listeners its file names, when those are on this host (a loopback
    address, or the host of one of this node's own listen addresses).  With a pair: each
    node's own sockets, and every socket of one against every socket of the other when
    :func:`same_host` says they share a machine."""
    out: list[str] = []

    def within(binds: list[Bind]) -> None:
        for i, x in enumerate(binds):
            for y in binds[i + 1:]:
                if binds_collide(x, y):
                    out.append(_collision(x, y))

    own_a = listen_binds(a)
    within(own_a)
    if b is None:
        local = {_norm(x.host) for x in own_a if x.proto != "unix" and _ip(x.host) is not None
                 and not _ip(x.host).is_unspecified}
        for p in peer_binds(a):
            if is_loopback(p.host) or _norm(p.host) in local:
                out.extend(_collision(x, p) for x in own_a if binds_collide(x, p))
        return out
    own_b = listen_binds(b)
    within(own_b)
    if same_host(a, b):
        out.extend(_collision(x, y) for x in own_a for y in own_b if binds_collide(x, y))
    return out
