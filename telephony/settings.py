"""The messaging service's settings in the node's TOML file, declared once (docs/configuration.md,
docs/integrations.md).

* :data:`SECTIONS`: the sections the service owns, in file order: the port drivers' (each
  from its settings module: ``telephony/loopback/settings.py``, ``telephony/smdi/settings.py``,
  ``telephony/sip/settings.py``, ``telephony/analog/settings.py``,
  ``telephony/sccp/settings.py``), ``[database]``,
  ``[store]``, ``[notify]``, ``[messaging]``;
  :data:`INTEGRATION`: the ``[integration]`` section, which wires them (voice ports, call
  information, MWI method);
* :data:`SERVICE_KEYS`: keys of the node manager's sections that the service reads too
  (``node.name``, ``node.data_dir``, ``service.offer_hold`` …): defined here, put into those
  sections by ``failover.config``;
* :func:`build` and :func:`problems`: the typed sections from checked values, and the rules
  between keys (the node manager runs both when it loads the file, so ``vmha node`` refuses a
  bad combination at start);
* :func:`load_service_settings`: the service's view of an already-validated file;
  :func:`read_keys`: a few keys of a partial file (``python -m telephony.service --config``).
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from integrations.base import (
    IN_BAND_PORTS,
    NUMBERED_PORTS,
    CallInfo,
    MwiMethod,
    VoicePort,
    default_integration,
)
from integrations.profiles import PROFILES
from telephony.analog import settings as analog
from telephony.core.ids import MAILBOX_RE
from telephony.core.settings import (
    Addr,
    Address,
    Choice,
    ConfigError,
    Ctx,
    Key,
    Num,
    Pattern,
    Problem,
    Strings,
    boolean,
    check_values,
    clock,
    enum_choice,
    node_name,
    path,
)
from telephony.core.terms import Role
from telephony.loopback import settings as loopback
from telephony.sccp import settings as sccp
from telephony.sip import settings as sip
from telephony.smdi import settings as smdi

__all__ = [
    "SECTIONS", "INTEGRATION", "SERVICE_KEYS", "PortsSection", "DatabaseSection",
    "StoreSection", "NotifySection", "MessagingSection", "Integration", "ServiceSettings",
    "build", "problems", "integration_problems", "files_root", "load_service_settings",
    "read_keys", "health_interval",
]

email = Pattern(r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9.-]{1,253}",
                'an e-mail address like "vmha@example.com"', kind="e-mail address")
mailbox_id = Pattern(MAILBOX_RE,
                     "a mailbox id (letters, digits, _ . -, at most 64)", kind="mailbox id")
#: an extension dialled by the system (a transfer destination)
dtmf_digits = Pattern(r"[0-9*#]{1,31}", "1 to 31 of the digits 0-9, * and #",
                      kind="1–31 DTMF digits", allowed="`0`–`9`, `*`, `#`")

#: keys of the node manager's sections the messaging service reads too: one definition each,
#: ``failover.config`` puts them into its sections
SERVICE_KEYS: dict[str, dict[str, Key]] = {
    "node": {
        "name": Key(node_name),
        "role": Key(enum_choice(Role)),
        "data_dir": Key(path),
    },
    "service": {
        "health_interval": Key(Num(0.001, 10), None),  # health_interval(None, health_timeout)
        "health_timeout": Key(Num(0.01, 300), 1.0),
        "offer_hold": Key(Num(0, 60), 2.0),
    },
    "replication": {
        "files_root": Key(path, None),  # <data_dir>/files
        "log_keep": Key(Num(0, 10_000_000, integer=True), 1000),
        "log_max": Key(Num(100, 100_000_000, integer=True), 100_000),
    },
    "log": {
        "level": Key(Choice({s: s for s in ("debug", "info", "warning", "error")}), "info"),
    },
}

SECTIONS: dict[str, dict[str, Key]] = {
    loopback.SECTION: loopback.KEYS,
    smdi.SECTION: smdi.KEYS,
    sip.SECTION: sip.KEYS,
    analog.SECTION: analog.KEYS,
    sccp.SECTION: sccp.KEYS,
    "database": {
        "path": Key(path, None),  # <data_dir>/config.db
    },
    "store": {
        "kind": Key(Choice({"maildir": "maildir", "imap": "imap"}), "maildir", shared=True),
        "maildir": Key(path, None),  # <data_dir>/../store: shared by a pair made by vmha configure
        "imap": Key(Addr(wildcard=False), None, shared=True),  # required with kind = "imap"
        "imap_passwords": Key(path, None),  # required with kind = "imap"
        "timeout": Key(Num(0.1, 300), 5.0),
    },
    "notify": {
        "smtp": Key(Addr(wildcard=False), None),  # absent: no e-mail notification
        "sender": Key(email, "vmha@localhost"),
        "attach_audio": Key(boolean, False),
    },
    "messaging": {
        "default_mailbox": Key(mailbox_id, None, shared=True),
        "max_message": Key(Num(1, 3600), 120.0),
        "silence": Key(Num(0.2, 60), 3.0),
        "min_message": Key(Num(0, 60), 0.5),
        "mwi_resync_at": Key(clock, "03:00", shared=True),
        "mwi_coalesce": Key(Num(0, 60), 1.0, shared=True),
        "realtime_audio": Key(boolean, True),
        "operator": Key(dtmf_digits, None, shared=True),  # absent: 0 does not transfer
        "pin_max_failures": Key(Num(1, 100, integer=True), 5, shared=True),
        "pin_lockout": Key(Num(1, 86400), 60.0, shared=True),
        "pin_lockout_max": Key(Num(1, 7 * 86400), 3600.0, shared=True),
    },
}

#: ``[integration]``: the three parts, each absent = from the profile, or derived from the
#: enabled ``[ports.*]`` (docs/integrations.md).  The resolved parts must match on both nodes.
INTEGRATION: dict[str, Key] = {
    "profile": Key(Choice({name: name for name in PROFILES}), None),
    "voice_ports": Key(Strings(tuple(v.value for v in VoicePort), what="voice-port kinds"),
                       None, shared=True),
    "call_info": Key(Choice({c.value: c.value for c in CallInfo}), None, shared=True),
    "mwi": Key(Choice({m.value: m.value for m in MwiMethod}), None, shared=True),
}
PARTS = ("voice_ports", "call_info", "mwi")


# ============================================================================ typed sections


@dataclass(frozen=True)
class PortsSection:
    loopback: loopback.LoopbackSettings
    smdi: smdi.SmdiSection
    sip: sip.SipSection
    analog: analog.AnalogSettings = analog.AnalogSettings()
    sccp: sccp.SccpSettings = sccp.SccpSettings()


@dataclass(frozen=True)
class DatabaseSection:
    path: Path


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
    mwi_resync_at: Any  # datetime.time
    mwi_coalesce: float
    realtime_audio: bool
    operator: str | None
    pin_max_failures: int = 5
    pin_lockout: float = 60.0
    pin_lockout_max: float = 3600.0


@dataclass(frozen=True)
class Integration:
    """``[integration]`` resolved: the node's voice ports (in line order), where the calls'
    information comes from, how lamps are switched; ``profile`` is the profile named (or
    None), ``written`` the parts the file wrote itself."""

    profile: str | None
    voice_ports: tuple[str, ...]
    call_info: str
    mwi: str
    written: frozenset[str] = frozenset()

    @property
    def derived(self) -> frozenset[str]:
        """The parts neither written nor from a profile: derived from the enabled ports."""
        return frozenset() if self.profile is not None else frozenset(PARTS) - self.written

    def source(self, part: str) -> str:
        """The key that chose ``part``: ``integration.<part>``, or ``integration.profile``."""
        if part in self.written or self.profile is None:
            return f"integration.{part}"
        return "integration.profile"


def files_root(value: Path | None, data_dir: Path) -> Path:
    """``replication.files_root``, default ``<data_dir>/files`` (prompts, spool, streams)."""
    return value or data_dir / "files"


def build(v: dict[str, dict[str, Any]], data_dir: Path) -> dict[str, Any]:
    """The typed sections from checked values (:data:`SECTIONS` and :data:`INTEGRATION`):
    ``{"ports", "database", "store", "notify", "messaging", "integration"}``."""
    ports = PortsSection(loopback.LoopbackSettings(**v[loopback.SECTION]),
                         smdi.SmdiSection(**v[smdi.SECTION]), sip.section(v[sip.SECTION]),
                         analog.AnalogSettings(**v[analog.SECTION]),
                         sccp.SccpSettings(**v[sccp.SECTION]))
    return {
        "ports": ports,
        "database": DatabaseSection(v["database"]["path"] or data_dir / "config.db"),
        "store": StoreSection(**{**v["store"],
                                 "maildir": v["store"]["maildir"] or data_dir.parent / "store"}),
        "notify": NotifySection(**v["notify"]),
        "messaging": MessagingSection(**v["messaging"]),
        "integration": resolve_integration(v.get("integration") or {}, ports),
    }


def _enabled(ports: Any, driver: str) -> bool:
    """``ports.<driver>.enabled`` of a ports view that may predate the driver (False)."""
    return bool(getattr(getattr(ports, driver, None), "enabled", False))


def resolve_integration(given: dict[str, Any], ports: PortsSection) -> Integration:
    """Each part: as written, else the named profile's, else derived from the enabled ports
    (``integrations.base.default_integration``: today's wiring for a file without the section)."""
    prof = PROFILES[given["profile"]] if given.get("profile") is not None else None
    voice, call_info, mwi = default_integration(sip=ports.sip.enabled, smdi=ports.smdi.enabled,
                                                loopback=ports.loopback.enabled,
                                                analog=_enabled(ports, "analog"),
                                                sccp=_enabled(ports, "sccp"))
    if prof is not None:
        voice, call_info, mwi = prof.voice_ports, prof.call_info, prof.mwi_method
    parts = {"voice_ports": tuple(voice), "call_info": str(call_info), "mwi": str(mwi)}
    written = frozenset(k for k in PARTS if given.get(k) is not None)
    parts.update({k: given[k] for k in written})
    return Integration(profile=prof.name if prof else None, written=written, **parts)


# ============================================================================ rules between keys


def problems(s: dict[str, Any]) -> list[Problem]:
    """The rules between the keys of the service's sections (``s`` from :func:`build`).  Each
    problem names the key the operator should change."""
    ports: PortsSection = s["ports"]
    out = loopback.problems(ports.loopback) + smdi.problems(ports.smdi) + sip.problems(ports.sip)
    out += analog.problems(ports.analog) + sccp.problems(ports.sccp)
    out += integration_problems(s["integration"], ports)
    st = s["store"]
    if st.kind == "imap":
        for key in ("imap", "imap_passwords"):
            if getattr(st, key) is None:
                out.append(Problem(f"store.{key}", 'required with store.kind = "imap"'))
    m = s["messaging"]
    if m.min_message >= m.max_message:
        out.append(Problem("messaging.min_message", f"{m.min_message:g} s must be shorter than "
                           f"messaging.max_message ({m.max_message:g} s)"))
    if m.pin_lockout_max < m.pin_lockout:
        out.append(Problem("messaging.pin_lockout_max", f"{m.pin_lockout_max:g} s must be at "
                           f"least messaging.pin_lockout ({m.pin_lockout:g} s)"))
    return out


#: the port driver each MWI method needs
_MWI_DRIVER = {MwiMethod.SIP_NOTIFY: sip.SECTION, MwiMethod.SMDI: smdi.SECTION,
               MwiMethod.LOOPBACK: loopback.SECTION, MwiMethod.DTMF: analog.SECTION,
               MwiMethod.SCCP: sccp.SECTION}


def integration_problems(i: Integration, ports: PortsSection) -> list[Problem]:
    """Whether the three parts fit each other and the enabled ``[ports.*]``."""
    out: list[Problem] = []
    voice_on = {VoicePort.LOOPBACK.value: ports.loopback.enabled, VoicePort.SIP.value: ports.sip.enabled,
                VoicePort.ANALOG.value: ports.analog.enabled, VoicePort.SCCP.value: ports.sccp.enabled}
    counts = {VoicePort.LOOPBACK.value: ("ports.loopback.count", ports.loopback.count),
              VoicePort.SIP.value: ("ports.sip.count", ports.sip.count),
              VoicePort.ANALOG.value: ("ports.analog.count", ports.analog.lines),
              VoicePort.SCCP.value: ("ports.sccp.count", ports.sccp.count)}
    sm = ports.smdi
    # a file without the section: the rules of the wiring it always had
    smdi_reported = False
    if "mwi" in i.derived and ports.sip.enabled and sm.enabled:
        out.append(Problem("ports.sip.enabled", "one lamp integration per node: ports.smdi and "
                           "ports.sip cannot both be enabled unless [integration] chooses how "
                           "they work together (integration.mwi, docs/integrations.md)"))
        smdi_reported = True
    if {"voice_ports", "call_info"} <= i.derived and sm.enabled and not ports.loopback.enabled \
            and not ports.analog.enabled and not ports.sccp.enabled:
        out.append(Problem("ports.smdi.enabled", "the SMDI integration answers calls on the "
                           "loopback lines (the voice-board simulator): enable ports.loopback, "
                           "or name the voice ports in integration.voice_ports"))
        smdi_reported = True
    for v in i.voice_ports:
        if not voice_on[v]:
            out.append(Problem(i.source("voice_ports"), f'voice ports "{v}" need '
                               f"ports.{v}.enabled = true"))
    for v, on in voice_on.items():
        if on and v not in i.voice_ports:
            out.append(Problem(f"ports.{v}.enabled", f"the {v} ports are enabled but "
                               f"{i.source('voice_ports')} does not name them "
                               f"({list(i.voice_ports)}): add \"{v}\" or set "
                               f"ports.{v}.enabled = false"))
    if i.call_info == CallInfo.SMDI and not smdi_reported:
        if not sm.enabled:
            out.append(Problem(i.source("call_info"), "call information from SMDI needs the "
                               "SMDI link: enable ports.smdi"))
        unnumbered = [v for v in i.voice_ports if v not in NUMBERED_PORTS]
        if unnumbered:
            out.append(Problem(i.source("voice_ports"), f"voice ports {unnumbered} do not "
                               "number their lines: SMDI records cannot name them"))
        if not i.voice_ports:
            out.append(Problem(i.source("call_info"), "call information from SMDI needs voice "
                               "ports whose lines its terminals name: there are none"))
        elif sm.enabled and sm.terminals is not None:
            lines = sum(counts[v][1] for v in i.voice_ports)
            if len(sm.terminals) > lines:
                named = " + ".join(counts[v][0] for v in i.voice_ports)
                out.append(Problem("ports.smdi.terminals", f"{len(sm.terminals)} terminals for "
                                   f"{lines} lines ({named}): one terminal per line"))
    if i.call_info == CallInfo.DTMF:
        other = [v for v in i.voice_ports if v not in IN_BAND_PORTS]
        if other or not i.voice_ports:
            out.append(Problem(i.source("call_info"), "call information from DTMF digits needs "
                               f'voice ports that hear them in band: only "analog", not {other}'))
    elif i.call_info == CallInfo.SIGNALLING and VoicePort.ANALOG.value in i.voice_ports:
        hint = (' (without [integration] the enabled loopback or SIP ports make it "signalling": '
                'set integration.profile = "analog-dtmf" and disable the other voice ports)'
                if "call_info" in i.derived else "")
        out.append(Problem(i.source("call_info"), "analog lines carry no call information of "
                           f'their own: choose "dtmf" (digits after answer) or "smdi"{hint}'))
    mwi = MwiMethod(i.mwi)
    if mwi in _MWI_DRIVER and not smdi_reported:
        section = _MWI_DRIVER[mwi]
        on = {sip.SECTION: ports.sip.enabled, smdi.SECTION: sm.enabled,
              loopback.SECTION: ports.loopback.enabled, analog.SECTION: ports.analog.enabled,
              sccp.SECTION: ports.sccp.enabled}[section]
        if not on:
            out.append(Problem(i.source("mwi"), f'"{mwi}" lamps need {section}.enabled = true'))
    if sm.enabled and not smdi_reported and i.call_info != CallInfo.SMDI and mwi != MwiMethod.SMDI:
        out.append(Problem("ports.smdi.enabled", "the SMDI link is enabled but [integration] "
                           "uses it neither for call information (integration.call_info) nor "
                           "for lamps (integration.mwi)"))
    return out


# ============================================================================ the service's view


@dataclass(frozen=True)
class NodeView:
    name: str
    role: Role
    data_dir: Path


def health_interval(written: float | None, timeout: float) -> float:
    """``service.health_interval``: the longest the service stays silent on its control
    channel (a change is reported at once).  Left out, it is a quarter of
    ``service.health_timeout``, at most 10 s, so three keep-alives in a row may be late before
    the node manager counts the service as failed."""
    return written if written is not None else min(timeout / 4, 10.0)


@dataclass(frozen=True)
class ServiceView:
    health_interval: float
    health_timeout: float
    offer_hold: float


@dataclass(frozen=True)
class ReplicationView:
    files_root: Path
    log_keep: int
    log_max: int


@dataclass(frozen=True)
class ServiceSettings:
    """What the messaging service takes from the node's file: its own sections and the keys
    of the node manager's it reads (:data:`SERVICE_KEYS`)."""

    source: str
    node: NodeView
    service: ServiceView
    replication: ReplicationView
    log_level: str
    ports: PortsSection
    database: DatabaseSection
    store: StoreSection
    notify: NotifySection
    messaging: MessagingSection
    integration: Integration


def read_toml(path: str | Path) -> dict:
    """A node's TOML file as a dict.  Raises only :class:`ConfigError` (one line naming the
    file: not TOML, not UTF-8, cannot be read)."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as e:  # the message ends "(at line N, column M)"
        raise ConfigError(p, f"not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(p, f"not valid TOML: not UTF-8 ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ConfigError(p, f"cannot read: {e.strerror or e}") from None


def _tables(doc: dict, sections: dict, problems: list[Problem]) -> dict[str, dict]:
    """The tables of ``sections`` (dotted names) in ``doc``; other keys are not looked at."""
    raw: dict[str, dict] = {}
    for dotted in sections:
        node: Any = doc
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            continue
        if not isinstance(node, dict):
            problems.append(Problem(dotted, f"expected a table [{dotted}]"))
            continue
        raw[dotted] = node
    return raw


def load_service_settings(path: str | Path) -> ServiceSettings:
    """The service's settings from the node's file, which the node manager has validated as a
    whole: here only the service's sections and keys are read, with the same checks and rules.
    Raises :class:`~telephony.core.settings.ConfigError`."""
    p = Path(path)
    doc = read_toml(p)
    schema = {**SERVICE_KEYS, **SECTIONS, "integration": INTEGRATION}
    found: list[Problem] = []
    raw = _tables(doc, schema, found)
    v = check_values(raw, schema, Ctx(p.absolute().parent), found)
    if found:
        raise ConfigError(p, found)
    data_dir = v["node"]["data_dir"]
    parts = build(v, data_dir)
    found = problems(parts)
    if found:
        raise ConfigError(p, found)
    r = v["replication"]
    return ServiceSettings(
        source=str(p), node=NodeView(**v["node"]), service=ServiceView(**{
            **v["service"], "health_interval": health_interval(v["service"]["health_interval"],
                                                               v["service"]["health_timeout"])}),
        replication=ReplicationView(files_root(r["files_root"], data_dir), r["log_keep"], r["log_max"]),
        log_level=v["log"]["level"], **parts)


def read_keys(path: str | Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """The dotted ``keys`` (of :data:`SERVICE_KEYS` and :data:`SECTIONS`) a file writes,
    checked; a key the file leaves out is absent from the answer.  For a file that may hold
    only a few keys (``python -m telephony.service --config``).  Raises
    :class:`~telephony.core.settings.ConfigError`."""
    p = Path(path)
    doc = read_toml(p)
    everything = {**SERVICE_KEYS, **SECTIONS}
    schema: dict[str, dict[str, Key]] = {}
    for dotted in keys:
        section, _, key = dotted.rpartition(".")
        schema.setdefault(section, {})[key] = everything[section][key]._replace(default=None)
    found: list[Problem] = []
    raw = _tables(doc, schema, found)
    v = check_values(raw, schema, Ctx(p.absolute().parent), found)
    if found:
        raise ConfigError(p, found)
    return {f"{s}.{k}": val for s, table in v.items() for k, val in table.items()
            if val is not None}
