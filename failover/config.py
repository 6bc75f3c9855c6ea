"""One node's configuration: a TOML file read into frozen dataclasses.

``load_config(path)`` reads a file, ``parse_config(data, source)`` checks an already-parsed dict.
The schema is a table (``SCHEMA``): section -> key -> (check, default).  Every unknown key and
every bad value is a :class:`ConfigError` naming the file, the dotted key and what was expected;
nothing else escapes.  All problems found in one pass are reported together.

docs/configuration.md documents every key; tests check that the page names every key of SCHEMA.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import ipaddress
import json
import math
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

from failover.core.state import FailbackType, Mode, Role, Timing

__all__ = [
    "Address", "ConfigError", "Problem", "NodeConfig", "NodeSection", "LinkSection",
    "FailoverSection", "FailbackSection", "LicenceSection", "ServiceSection", "LoopbackPorts",
    "PortsSection", "AdminSection", "LogSection", "ReplicationSection", "DatabaseSection",
    "StoreSection", "NotifySection", "MessagingSection", "Profile", "PROFILES", "GuideSetting",
    "guide_settings", "SCHEMA", "DEFAULT_LINK_PORT", "load_config", "parse_config",
    "parse_address", "check_node_name", "settings_that_must_match", "MUST_MATCH",
    "EXIT_CONFIG", "Bind", "listen_binds", "peer_binds", "is_loopback", "hosts_overlap",
    "binds_collide", "same_host", "port_collisions",
]

DEFAULT_LINK_PORT = 3653  # the guide's Node Manager port
EXIT_CONFIG = 2  # `vmha node` exit code: its configuration stops it from starting
_SUN_PATH_MAX = 107  # bytes usable in sockaddr_un.sun_path (108 with the NUL)
_EPS = 1e-9  # float slack when comparing products of seconds


# ============================================================================ errors


@dataclass(frozen=True)
class Problem:
    key: str  # dotted key ("failover.ping_interval"), "" when the problem is the file itself
    message: str


class ConfigError(Exception):
    """A configuration problem.  ``str()`` gives one line per problem: ``FILE: KEY: message``."""

    def __init__(self, source: str | os.PathLike, problems: list[Problem] | str, key: str = ""):
        self.source = str(source)
        if isinstance(problems, str):
            problems = [Problem(key, problems)]
        self.problems = tuple(problems)
        super().__init__("\n".join(
            f"{self.source}: {p.key}: {p.message}" if p.key else f"{self.source}: {p.message}"
            for p in self.problems))

    @property
    def key(self) -> str:
        """The dotted key of the first problem ("" for a file-level problem)."""
        return self.problems[0].key if self.problems else ""


class _Bad(Exception):
    """Raised by a check: the message says what was expected."""


def _got(v: Any) -> str:
    kind = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array",
            dict: "table"}.get(type(v), type(v).__name__)
    text = repr(v)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"got {text} ({kind})"


# ============================================================================ value types


@dataclass(frozen=True)
class Address:
    """A ``host:port`` pair; IPv6 hosts are written ``[v6]:port``."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_wildcard(self) -> bool:
        return self.host in ("0.0.0.0", "::")

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")
_ADDR = re.compile(r"\[(?P<v6>[^\]]+)\]:(?P<p6>\d{1,5})|(?P<host>[^:\[\]]+):(?P<port>\d{1,5})")


def parse_address(text: str, *, min_port: int = 1, wildcard: bool = True) -> Address:
    """Parse ``host:port`` or ``[v6]:port``; raises ``ValueError`` saying what is wrong."""
    m = _ADDR.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError('expected "host:port" (IPv6: "[addr]:port")')
    host = m["v6"] if m["v6"] is not None else m["host"]
    port = int(m["p6"] if m["v6"] is not None else m["port"])
    if m["v6"] is not None:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in brackets is not an IPv6 address") from None
    elif re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv4 address") from None
    elif len(host) > 253 or not _HOSTNAME.fullmatch(host):
        raise ValueError(f"{host!r} is not a valid host name")
    if not min_port <= port <= 65535:
        raise ValueError(f"port must be {min_port}..65535")
    addr = Address(host, port)
    if not wildcard and addr.is_wildcard:
        raise ValueError(f"{host} is a wildcard address; give the peer's real address")
    return addr


_NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")


def check_node_name(text: object) -> str:
    """A node name: 1..32 ASCII letters, digits, '_', '.', '-'.  Raises ``ValueError``."""
    if not isinstance(text, str) or not _NAME.fullmatch(text):
        raise ValueError("expected a node name: 1 to 32 characters from A-Z a-z 0-9 _ . -")
    return text


# ============================================================================ checks (schema cells)


@dataclass(frozen=True)
class _Ctx:
    base_dir: Path  # relative paths are taken from here (the TOML file's directory)


class _Num:
    def __init__(self, lo: float, hi: float, *, integer: bool = False, unit: str = "seconds"):
        self.lo, self.hi, self.integer, self.unit = lo, hi, integer, unit

    @property
    def expected(self) -> str:
        what = "an integer" if self.integer else f"a number of {self.unit}"
        return f"{what} from {self.lo:g} to {self.hi:g}"

    def __call__(self, v: Any, ctx: _Ctx) -> float | int:
        ok_type = int if self.integer else (int, float)
        if isinstance(v, bool) or not isinstance(v, ok_type):
            raise _Bad(f"expected {self.expected}, {_got(v)}")
        if not (math.isfinite(v) and self.lo <= v <= self.hi):
            raise _Bad(f"expected {self.expected}, {_got(v)}")
        return int(v) if self.integer else float(v)


class _Choice:
    def __init__(self, options: dict[str, Any]):
        self.options = options

    def __call__(self, v: Any, ctx: _Ctx) -> Any:
        if not isinstance(v, str) or v not in self.options:
            raise _Bad("expected one of " + ", ".join(f'"{o}"' for o in self.options) + f", {_got(v)}")
        return self.options[v]


def _bool(v: Any, ctx: _Ctx) -> bool:
    if not isinstance(v, bool):
        raise _Bad(f"expected true or false, {_got(v)}")
    return v


def _name(v: Any, ctx: _Ctx) -> str:
    try:
        return check_node_name(v)
    except ValueError as e:
        raise _Bad(f"{e}, {_got(v)}") from None


class _Addr:
    def __init__(self, *, wildcard: bool = True):
        self.wildcard = wildcard

    def __call__(self, v: Any, ctx: _Ctx) -> Address:
        if not isinstance(v, str):
            raise _Bad(f'expected "host:port", {_got(v)}')
        try:
            return parse_address(v, wildcard=self.wildcard)
        except ValueError as e:
            raise _Bad(f"{e}, {_got(v)}") from None


def _path(v: Any, ctx: _Ctx) -> Path:
    if not isinstance(v, str) or not v or "\0" in v:
        raise _Bad(f"expected a path (string), {_got(v)}")
    if v.startswith("~"):
        raise _Bad(f"'~' is not expanded: give an absolute path or one relative to the file, {_got(v)}")
    return Path(os.path.normpath(ctx.base_dir / v))


_HHMM = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")


def _clock(v: Any, ctx: _Ctx) -> _dt.time:
    if isinstance(v, _dt.time) and v.tzinfo is None:
        return v
    m = _HHMM.fullmatch(v) if isinstance(v, str) else None
    if m is None:
        raise _Bad(f'expected a local time "HH:MM" (00:00 to 23:59), {_got(v)}')
    return _dt.time(int(m[1]), int(m[2]))


_DIR_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")


def _dir_list(v: Any, ctx: _Ctx) -> tuple[str, ...]:
    if not (isinstance(v, list) and all(isinstance(s, str) for s in v)):
        raise _Bad(f"expected an array of directory names, {_got(v)}")
    for name in v:
        if not _DIR_NAME.fullmatch(name) or name.startswith(".vmha") or name in (".", ".."):
            raise _Bad(f"{name!r} is not a plain directory name (letters, digits, _ . -; "
                       "one level, relative to replication.files_root)")
    if len(set(v)) != len(v):
        raise _Bad(f"a directory is listed twice, {_got(v)}")
    return tuple(v)


_EMAIL = re.compile(r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9.-]{1,253}")
_MAILBOX_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _email(v: Any, ctx: _Ctx) -> str:
    if not isinstance(v, str) or not _EMAIL.fullmatch(v):
        raise _Bad(f'expected an e-mail address like "vmha@example.com", {_got(v)}')
    return v


def _mailbox_id(v: Any, ctx: _Ctx) -> str:
    if not isinstance(v, str) or not _MAILBOX_ID.fullmatch(v):
        raise _Bad(f"expected a mailbox id (letters, digits, _ . -, at most 64), {_got(v)}")
    return v


def _dtmf_digits(v: Any, ctx: _Ctx) -> str:
    """An extension dialled by the system (a transfer destination): 1 to 31 DTMF digits."""
    if not isinstance(v, str) or not re.fullmatch(r"[0-9*#]{1,31}", v):
        raise _Bad(f"expected 1 to 31 of the digits 0-9, * and #, {_got(v)}")
    return v


def _command(v: Any, ctx: _Ctx) -> tuple[str, ...]:
    if not (isinstance(v, list) and v and all(isinstance(s, str) and s for s in v)):
        raise _Bad(f"expected a non-empty array of non-empty strings, {_got(v)}")
    return tuple(v)


def _device(v: Any, ctx: _Ctx) -> str:
    """A serial device path (relative to the file) or a pyserial URL (kept as is)."""
    if isinstance(v, str) and "://" in v:
        if any(c.isspace() or c == "\0" for c in v):
            raise _Bad(f"expected a pyserial URL without spaces, {_got(v)}")
        return v
    return str(_path(v, ctx))


def _terminals(v: Any, ctx: _Ctx) -> tuple[int, ...]:
    if not (isinstance(v, list) and v and all(type(x) is int and 0 <= x <= 9999 for x in v)):
        raise _Bad(f"expected a non-empty array of terminal numbers 0..9999, {_got(v)}")
    if len(set(v)) != len(v):
        raise _Bad(f"a terminal number is listed twice, {_got(v)}")
    return tuple(v)


def _wire_text(v: Any, ctx: _Ctx) -> str:
    """Text put on the serial line: ASCII; ``\\xNN`` escapes (``"!\\x04"``) are decoded."""
    if not isinstance(v, str) or len(v) > 32:
        raise _Bad(f"expected a string of up to 32 characters, {_got(v)}")
    try:
        text = v.encode("ascii").decode("unicode_escape")
    except (UnicodeEncodeError, UnicodeDecodeError):
        raise _Bad(f"expected ASCII with \\xNN escapes, {_got(v)}") from None
    if not text.isascii():
        raise _Bad(f"expected ASCII with \\xNN escapes, {_got(v)}")
    return text


def _host(v: Any, ctx: _Ctx) -> str:
    """An IP address to bind (SIP and RTP are bound to it: SDP never names another one)."""
    import ipaddress

    try:
        return str(ipaddress.ip_address(v)) if isinstance(v, str) else _fail_host(v)
    except ValueError:
        raise _Bad(f"expected an IP address, {_got(v)}") from None


def _fail_host(v: Any) -> str:
    raise _Bad(f"expected an IP address, {_got(v)}")


def _sip_uri(v: Any, ctx: _Ctx) -> str:
    if not (isinstance(v, str) and len(v) <= 200 and (v == "" or v.startswith(("sip:", "sips:")))
            and not any(c.isspace() or c in '<>"' for c in v)):
        raise _Bad(f'expected a sip: URI without spaces, {_got(v)}')
    return v


def _digits(v: Any, ctx: _Ctx) -> str:
    if not (isinstance(v, str) and len(v) <= 16 and (v == "" or (v.isascii() and v.isdigit()))):
        raise _Bad(f"expected up to 16 digits, {_got(v)}")
    return v


_REQUIRED = object()


class _K(NamedTuple):
    check: Callable[[Any, _Ctx], Any]
    default: Any = _REQUIRED  # _REQUIRED, None (absent = derived later) or a raw TOML value


def _enum(e) -> _Choice:
    return _Choice({m.name.lower(): m for m in e})


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
        GuideSetting("Licence: secondary never in contact with its primary", "licence.no_contact_limit", "4 hours",
                     14400, "seconds"),
        GuideSetting("Licence: since the last contact with the primary", "licence.after_contact_limit", "60 days",
                     5184000, "seconds"),
    )


# ============================================================================ the schema

SCHEMA: dict[str, dict[str, _K]] = {
    "node": {
        "name": _K(_name),
        "role": _K(_enum(Role)),
        "data_dir": _K(_path),
        "key_file": _K(_path, None),  # <data_dir>/link.key
    },
    "link": {
        "listen": _K(_Addr(), f"0.0.0.0:{DEFAULT_LINK_PORT}"),
        "peer": _K(_Addr(wildcard=False)),
        "peer_name": _K(_name),
        "connect_timeout": _K(_Num(0.01, 300), 1.0),
        "reconnect_min": _K(_Num(0.001, 60), 0.05),
        "reconnect_max": _K(_Num(0.001, 3600), 2.0),
    },
    "failover": {
        "profile": _K(_Choice({p: p for p in PROFILES}), "default"),
        "ping_interval": _K(_Num(0.005, 10), None),  # from the profile
        "missed_pings": _K(_Num(2, 1000, integer=True), None),  # from the profile
        "lease": _K(_Num(0.001, 10000), None),  # ping_interval * (missed_pings - 1)
        "startup_wait": _K(_Num(0, 86400), None),  # max(ping_interval * missed_pings, 1 s)
        "mode": _K(_enum(Mode), "automatic"),
        "call_takeover": _K(_bool, True),
        "handover_timeout": _K(_Num(0.01, 3600), 2.0),
        "drain_timeout": _K(_Num(0, 86400), 300.0),
        "realtime_priority": _K(_Num(0, 99, integer=True), None),  # from the profile
    },
    "failback": {
        "type": _K(_enum(FailbackType), "manual"),
        "window_start": _K(_clock, None),
        "window_end": _K(_clock, None),
    },
    "licence": {
        "no_contact_limit": _K(_Num(1, 10 * 365 * 86400), 4 * 3600.0),
        "after_contact_limit": _K(_Num(1, 10 * 365 * 86400), 60 * 86400.0),
    },
    "service": {
        "health_interval": _K(_Num(0.001, 10), 0.02),
        "health_timeout": _K(_Num(0.01, 300), 1.0),
        "start_timeout": _K(_Num(0.1, 3600), 10.0),
        "max_restarts": _K(_Num(0, 1000, integer=True), 5),
        "restart_window": _K(_Num(1, 86400), 60.0),
        "restart_backoff": _K(_Num(0.01, 3600), 0.5),
        "restart_backoff_max": _K(_Num(0.01, 86400), 30.0),
        "restart_backoff_alone": _K(_Num(0.01, 60), 2.0),
        "offer_hold": _K(_Num(0, 60), 2.0),
        "command": _K(_command, None),
    },
    "ports.loopback": {
        "enabled": _K(_bool, True),
        "listen": _K(_Addr(), None),  # required when enabled: no ephemeral port for a real node
        "count": _K(_Num(1, 256, integer=True), 4),
    },
    "ports.smdi": {
        "enabled": _K(_bool, False),
        "device": _K(_device, None),  # required when enabled
        "baudrate": _K(_Num(50, 4_000_000, integer=True), 9600),
        "bytesize": _K(_Num(5, 8, integer=True), 7),
        "parity": _K(_Choice({p: p for p in ("none", "even", "odd", "mark", "space")}), "even"),
        "stopbits": _K(_Choice({"1": 1, "1.5": 1.5, "2": 2}), "1"),
        "terminals": _K(_terminals, None),  # required when enabled
        "desk": _K(_Num(0, 999, integer=True), None),  # absent: any message desk
        "record_wait": _K(_Num(0.1, 3600), 30.0),
        "ring_wait": _K(_Num(0, 60), 3.0),
        "strip": _K(_Num(0, 32, integer=True), 0),
        "keep_last": _K(_Num(0, 32, integer=True), 0),
        "mwi_on": _K(_wire_text, "OP:MWI "),
        "mwi_off": _K(_wire_text, "RMV:MWI "),
        "mwi_suffix": _K(_wire_text, "!\x04"),
        "mwi_pad": _K(_Num(0, 32, integer=True), 0),
        "mwi_prefix": _K(_digits, ""),
        "mwi_gap": _K(_Num(0, 10), 0.0),
        "failure_window": _K(_Num(0.1, 3600), 10.0),
    },
    "ports.sip": {
        "enabled": _K(_bool, False),
        "bind": _K(_host, "127.0.0.1"),
        "sip_port": _K(_Num(1, 65535, integer=True), 5070),
        "rtp_port": _K(_Num(1024, 65000, integer=True), 20000),
        "count": _K(_Num(1, 1024, integer=True), 4),
        "per_worker": _K(_Num(1, 4, integer=True), 4),
        "mode": _K(_Choice({"trunk": "trunk", "register": "register"}), "trunk"),
        "registrar": _K(_sip_uri, ""),
        "user": _K(_name, "vm"),
        "password_file": _K(_path, None),
        "select": _K(_Choice({"last": "last", "first": "first"}), "last"),
        "mwi_target": _K(_sip_uri, "sip:{extension}@127.0.0.1:5060"),
        "mwi_account": _K(_sip_uri, "sip:{extension}@127.0.0.1"),
        "notify_retries": _K(_Num(0, 10, integer=True), 3),
        "notify_backoff": _K(_Num(0.01, 60), 1.0),
        "notify_timeout": _K(_Num(1, 64), 32.0),
        "transfer_timeout": _K(_Num(1, 120), 10.0),
    },
    "admin": {
        "socket": _K(_path, None),  # <data_dir>/run/admin.sock
    },
    "database": {
        "path": _K(_path, None),  # <data_dir>/config.db
    },
    "store": {
        "kind": _K(_Choice({"maildir": "maildir", "imap": "imap"}), "maildir"),
        "maildir": _K(_path, None),  # <data_dir>/../store: shared by a pair made by vmha configure
        "imap": _K(_Addr(wildcard=False), None),  # required with kind = "imap"
        "imap_passwords": _K(_path, None),  # required with kind = "imap"
        "timeout": _K(_Num(0.1, 300), 5.0),
    },
    "notify": {
        "smtp": _K(_Addr(wildcard=False), None),  # absent: no e-mail notification
        "sender": _K(_email, "vmha@localhost"),
        "attach_audio": _K(_bool, False),
    },
    "messaging": {
        "default_mailbox": _K(_mailbox_id, None),
        "max_message": _K(_Num(1, 3600), 120.0),
        "silence": _K(_Num(0.2, 60), 3.0),
        "min_message": _K(_Num(0, 60), 0.5),
        "mwi_resync_at": _K(_clock, "03:00"),
        "mwi_coalesce": _K(_Num(0, 60), 1.0),
        "realtime_audio": _K(_bool, True),
        "operator": _K(_dtmf_digits, None),  # absent: 0 does not transfer
    },
    "replication": {
        "enabled": _K(_bool, True),
        "listen": _K(_Addr(), None),  # link.listen host, link port + 1
        "peer": _K(_Addr(wildcard=False), None),  # link.peer host, port + 1
        "handover_wait": _K(_Num(0, 3600), 10.0),
        "files_root": _K(_path, None),  # <data_dir>/files
        "directories": _K(_dir_list, ["prompts", "streams", "support", "spool"]),
        "batch_delay": _K(_Num(0, 3600), 0.0),
        "sweep_interval": _K(_Num(0.05, 86400), 60.0),
        "max_frame": _K(_Num(65536, 64 * 1024 * 1024, integer=True), 4 * 1024 * 1024),
        "log_keep": _K(_Num(0, 10_000_000, integer=True), 1000),
        "log_max": _K(_Num(100, 100_000_000, integer=True), 100_000),
    },
    "log": {
        "level": _K(_Choice({s: s for s in ("debug", "info", "warning", "error")}), "info"),
        "console": _K(_bool, True),
    },
}


def _schema_tree() -> dict:
    """SCHEMA's dotted section names as nested dicts; leaves are the sections' key tables."""
    tree: dict = {}
    for dotted, keys in SCHEMA.items():
        *parents, last = dotted.split(".")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = keys
    return tree


_TREE = _schema_tree()


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
        return start <= local_seconds < end if start <= end else (local_seconds >= start or local_seconds < end)


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
class LoopbackPorts:
    enabled: bool
    listen: Address | None  # None only when disabled
    count: int


@dataclass(frozen=True)
class SmdiPorts:
    """``[ports.smdi]``: the serial SMDI link through a data splitter (docs/smdi.md)."""

    enabled: bool
    device: str | None
    baudrate: int
    bytesize: int
    parity: str
    stopbits: float
    terminals: tuple[int, ...] | None
    desk: int | None
    record_wait: float
    ring_wait: float
    strip: int
    keep_last: int
    mwi_on: str
    mwi_off: str
    mwi_suffix: str
    mwi_pad: int
    mwi_prefix: str
    mwi_gap: float
    failure_window: float

    def serial_settings(self):
        """``integrations.smdi.SerialSettings`` (ValueError on a bad combination)."""
        from integrations.smdi import SerialSettings

        return SerialSettings(device=self.device or "", baudrate=self.baudrate,
                              bytesize=self.bytesize, parity=self.parity, stopbits=self.stopbits)

    def profile(self):
        """``integrations.smdi.SmdiProfile`` (ValueError on a bad combination)."""
        from integrations.smdi import SmdiProfile
        from telephony.smdi.core.codec import MwiFormat

        return SmdiProfile(
            terminals=self.terminals or (), desk=self.desk, record_wait=self.record_wait,
            ring_wait=self.ring_wait, strip=self.strip, keep_last=self.keep_last,
            mwi=MwiFormat(on_prefix=self.mwi_on, off_prefix=self.mwi_off, suffix=self.mwi_suffix,
                          pad_to=self.mwi_pad),
            mwi_prefix=self.mwi_prefix, mwi_gap=self.mwi_gap, failure_window=self.failure_window)


@dataclass(frozen=True)
class SipPorts:
    """``[ports.sip]``: SIP ports on pjsua2 worker processes (docs/sip.md)."""

    enabled: bool
    bind: str
    sip_port: int
    rtp_port: int
    count: int
    per_worker: int
    mode: str
    registrar: str
    user: str
    password_file: Path | None
    select: str
    mwi_target: str
    mwi_account: str
    notify_retries: int
    notify_backoff: float
    notify_timeout: float
    transfer_timeout: float

    def profile(self):
        """``integrations.cucm_sip.SipProfile`` (ValueError on a bad combination)."""
        from integrations.cucm_sip import SipProfile

        return SipProfile(bind=self.bind, sip_port=self.sip_port, rtp_port=self.rtp_port,
                          count=self.count, per_worker=self.per_worker, mode=self.mode,
                          registrar=self.registrar, user=self.user,
                          password_file=str(self.password_file or ""), select=self.select,
                          mwi_target=self.mwi_target, mwi_account=self.mwi_account,
                          notify_retries=self.notify_retries, notify_backoff=self.notify_backoff,
                          notify_timeout=self.notify_timeout,
                          transfer_timeout=self.transfer_timeout)


@dataclass(frozen=True)
class PortsSection:
    loopback: LoopbackPorts
    smdi: SmdiPorts
    sip: SipPorts


@dataclass(frozen=True)
class AdminSection:
    socket: Path


@dataclass(frozen=True)
class DatabaseSection:
    path: Path


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
class StoreSection:
    kind: str
    maildir: Path
    imap: Address | None
    imap_passwords: Path | None
    timeout: float


@dataclass(frozen=True)
class NotifySection:
    smtp: Address | None
    sender: str
    attach_audio: bool


@dataclass(frozen=True)
class MessagingSection:
    default_mailbox: str | None
    max_message: float
    silence: float
    min_message: float
    mwi_resync_at: _dt.time
    mwi_coalesce: float
    realtime_audio: bool
    operator: str | None


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
        )


# ============================================================================ loading


def load_config(path: str | os.PathLike) -> NodeConfig:
    """Read and check one node's TOML file.  Raises only :class:`ConfigError`."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as e:  # the message ends "(at line N, column M)"
        raise ConfigError(p, f"invalid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(p, f"invalid TOML: not UTF-8 ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ConfigError(p, f"cannot read: {e.strerror or e}") from None
    return parse_config(data, str(p), base_dir=p.absolute().parent)


def parse_config(data: dict, source: str, *, base_dir: str | os.PathLike | None = None) -> NodeConfig:
    """Check an already-parsed TOML document.  Relative paths are taken from ``base_dir``
    (default: the directory of ``source``).  Raises only :class:`ConfigError`."""
    source = str(source)
    ctx = _Ctx(Path(base_dir).absolute() if base_dir is not None else Path(source).absolute().parent)
    problems: list[Problem] = []
    if not isinstance(data, dict):
        raise ConfigError(source, "expected a TOML document (a table)")
    raw: dict[str, dict[str, Any]] = {}
    _walk(data, _TREE, "", raw, problems)
    values: dict[str, dict[str, Any]] = {}
    for section, keys in SCHEMA.items():
        given = raw.get(section, {})
        out = values[section] = {}
        for key, spec in keys.items():
            dotted = f"{section}.{key}"
            if key in given:
                v = given[key]
            elif spec.default is _REQUIRED:
                problems.append(Problem(dotted, "required key is missing"))
                continue
            elif spec.default is None:
                out[key] = None
                continue
            else:
                v = spec.default
            try:
                out[key] = spec.check(v, ctx)
            except _Bad as e:
                problems.append(Problem(dotted, str(e)))
    if problems:
        raise ConfigError(source, problems)
    cfg = _build(values, source)
    problems = _cross_checks(cfg)
    if problems:
        raise ConfigError(source, problems)
    return cfg


def _walk(data: dict, tree: dict, prefix: str, raw: dict, problems: list[Problem]) -> None:
    for k in data:
        if k not in tree:
            dotted = prefix + str(k)
            where = f"in [{prefix[:-1]}]" if prefix else "sections"
            problems.append(Problem(dotted, f"unknown key (known {where}: {', '.join(tree)})"))
    for name, sub in tree.items():
        dotted = prefix + name
        if name not in data:
            continue
        table = data[name]
        if not isinstance(table, dict):
            problems.append(Problem(dotted, f"expected a table [{dotted}], {_got(table)}"))
            continue
        if all(isinstance(v, _K) for v in sub.values()):  # a section's key table
            raw[dotted] = table
            for k in table:
                if k not in sub:
                    problems.append(Problem(f"{dotted}.{k}", "unknown key (known in "
                                            f"[{dotted}]: {', '.join(sub)})"))
        else:
            _walk(table, sub, dotted + ".", raw, problems)


def _build(v: dict[str, dict[str, Any]], source: str) -> NodeConfig:
    n, f = v["node"], v["failover"]
    prof = PROFILES[f["profile"]]
    data_dir = n["data_dir"]
    return NodeConfig(
        source=source,
        node=NodeSection(n["name"], n["role"], data_dir, n["key_file"] or data_dir / "link.key"),
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
        service=ServiceSection(**v["service"]),
        ports=PortsSection(LoopbackPorts(**v["ports.loopback"]), SmdiPorts(**v["ports.smdi"]),
                           SipPorts(**v["ports.sip"])),
        admin=AdminSection(v["admin"]["socket"] or data_dir / "run" / "admin.sock"),
        log=LogSection(**v["log"]),
        database=DatabaseSection(v["database"]["path"] or data_dir / "config.db"),
        replication=_replication(v["replication"], v["link"], data_dir),
        store=StoreSection(**{**v["store"], "maildir": v["store"]["maildir"] or data_dir.parent / "store"}),
        notify=NotifySection(**v["notify"]),
        messaging=MessagingSection(**v["messaging"]),
    )


def _next_port(a: Address) -> Address:
    return Address(a.host, a.port + 1 if a.port < 65535 else a.port)


def _replication(r: dict, link: dict, data_dir: Path) -> ReplicationSection:
    return ReplicationSection(**{
        **r,
        "listen": r["listen"] or _next_port(link["listen"]),
        "peer": r["peer"] or _next_port(link["peer"]),
        "files_root": r["files_root"] or data_dir / "files",
    })


def _cross_checks(c: NodeConfig) -> list[Problem]:
    """Rules between keys.  Each problem names the key the operator should change."""
    out: list[Problem] = []
    f = c.failover
    if c.link.peer_name == c.node.name:
        out.append(Problem("link.peer_name", f"must differ from node.name ({c.node.name!r})"))
    if c.link.reconnect_min > c.link.reconnect_max:
        out.append(Problem("link.reconnect_min",
                           f"{c.link.reconnect_min:g} is above link.reconnect_max ({c.link.reconnect_max:g})"))
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
    if s.health_timeout <= s.health_interval:
        out.append(Problem("service.health_timeout", f"{s.health_timeout:g} s must be longer "
                           f"than service.health_interval ({s.health_interval:g} s)"))
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
    lb = c.ports.loopback
    if lb.enabled and lb.listen is None:
        out.append(Problem("ports.loopback.listen", 'required when ports.loopback.enabled = true: '
                           '"127.0.0.1:PORT" with an explicit port'))
    elif lb.listen is not None and lb.listen.port == 0:
        out.append(Problem("ports.loopback.listen", "port 0 (ephemeral) is not allowed: "
                           "give an explicit port from 1 to 65535"))
    sm = c.ports.smdi
    if sm.enabled:
        for key in ("device", "terminals"):
            if getattr(sm, key) is None:
                out.append(Problem(f"ports.smdi.{key}", "required when ports.smdi.enabled = true"))
        if not lb.enabled:
            out.append(Problem("ports.smdi.enabled", "the SMDI integration answers calls on the "
                               "loopback lines (the voice-board simulator): enable ports.loopback"))
        elif sm.terminals is not None and len(sm.terminals) > lb.count:
            out.append(Problem("ports.smdi.terminals", f"{len(sm.terminals)} terminals for "
                               f"{lb.count} lines (ports.loopback.count): one terminal per line"))
        if sm.device is not None and sm.terminals is not None:
            for what in ("serial_settings", "profile"):
                try:
                    getattr(sm, what)()
                except ValueError as e:
                    out.append(Problem("ports.smdi", str(e)))
    if c.ports.sip.enabled:
        try:
            c.ports.sip.profile()
        except ValueError as e:
            out.append(Problem("ports.sip", str(e)))
        if sm.enabled:
            out.append(Problem("ports.sip.enabled", "one lamp integration per node: "
                               "ports.smdi and ports.sip cannot both be enabled"))
    st = c.store
    if st.kind == "imap":
        for key in ("imap", "imap_passwords"):
            if getattr(st, key) is None:
                out.append(Problem(f"store.{key}", 'required with store.kind = "imap"'))
    m = c.messaging
    if m.min_message >= m.max_message:
        out.append(Problem("messaging.min_message", f"{m.min_message:g} s must be shorter than "
                           f"messaging.max_message ({m.max_message:g} s)"))
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

MUST_MATCH: tuple[str, ...] = (
    "failover.ping_interval", "failover.missed_pings", "failback.type", "failback.window_start",
    "failback.window_end", "licence.no_contact_limit", "licence.after_contact_limit",
    "replication.enabled", "replication.directories", "replication.handover_wait",
    "replication.max_frame", "store.kind", "store.imap",
    "messaging.default_mailbox", "messaging.mwi_resync_at", "messaging.mwi_coalesce",
    "messaging.operator", "ports.sip.enabled", "ports.smdi.enabled",
)


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
            if dial.port != lis.port or (dial.is_ip and lis.is_ip and not lis.is_wildcard
                                         and ipaddress.ip_address(dial.host) != ipaddress.ip_address(lis.host)):
                out.append(f"{key}: {x.node.name} dials {dial} but {y.node.name} listens on {lis}")
    for key in MUST_MATCH:
        va, vb = _get(a, key), _get(b, key)
        if va != vb:
            out.append(f"{key}: {an} has {va!r}, {bn} has {vb!r}")
    return out


# ============================================================================ ports that bind

#: RTP ports one SIP port takes (two RTP/RTCP pairs); telephony.sip.worker.RTP_PORTS_PER_CALL
RTP_PORTS_PER_SIP_PORT = 4


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
    workers), and the admin and control Unix sockets."""
    src = c.source
    out = [Bind(src, "link.listen", "tcp", c.link.listen.host, c.link.listen.port, c.link.listen.port)]
    r = c.replication
    if r.enabled:
        out.append(Bind(src, "replication.listen", "tcp", r.listen.host, r.listen.port, r.listen.port))
    lb = c.ports.loopback
    if lb.enabled and lb.listen is not None:
        out.append(Bind(src, "ports.loopback.listen", "tcp", lb.listen.host, lb.listen.port,
                        lb.listen.port))
    sip = c.ports.sip
    if sip.enabled:  # integrations.cucm_sip.SipProfile: worker i on sip_port + i, RTP from rtp_port + 1000 i
        workers = -(-sip.count // sip.per_worker)
        out.append(Bind(src, "ports.sip.sip_port", "udp", sip.bind, sip.sip_port,
                        sip.sip_port + workers - 1))
        for i in range(workers):
            n = min(sip.per_worker, sip.count - i * sip.per_worker)
            lo = sip.rtp_port + 1000 * i
            out.append(Bind(src, "ports.sip.rtp_port", "udp", sip.bind, lo,
                            lo + RTP_PORTS_PER_SIP_PORT * n - 1))
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
