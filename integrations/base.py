"""PBX integration profiles: which ports, which MWI method, how numbers are rewritten.

Profiles are data, not ``if vendor == ...`` branches: a driver reads its profile and applies
it the same way for every PBX.  Pure: no I/O.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

#: The call-arrival fields that carry telephone numbers.
NUMBER_FIELDS = ("calling", "called", "forwarding")


class MwiMethod(StrEnum):
    """How message-waiting lamps are switched on this integration."""

    NONE = "none"  # no lamps (the loopback test trunk)
    SIP_NOTIFY = "sip_notify"  # unsolicited SIP NOTIFY (message-summary)
    SCCP = "sccp"  # Skinny station MWI
    SMDI = "smdi"  # OP:MWI over the serial data link
    DTMF = "dtmf"  # feature-code digits dialled on an analog port


@dataclass(frozen=True)
class NumberRule:
    """One rewrite step: ``re.sub(pattern, replace, number)`` on the listed fields.

    Rules run in order; e.g. strip separators, then drop a trunk prefix.
    """

    pattern: str
    replace: str
    fields: tuple[str, ...] = NUMBER_FIELDS
    note: str = ""

    def __post_init__(self) -> None:
        re.compile(self.pattern)  # a bad pattern fails when the profile is defined
        bad = set(self.fields) - set(NUMBER_FIELDS)
        if bad:
            raise ValueError(f"number rule names unknown fields {sorted(bad)}")


@dataclass(frozen=True)
class IntegrationProfile:
    """One PBX integration.  ``ports`` is the default number of ports of ``port_kind``."""

    name: str
    port_kind: str
    ports: int
    mwi_method: MwiMethod
    number_rules: tuple[NumberRule, ...] = ()
    max_number: int = 32  # longest number kept after the rules ran
    description: str = ""
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not self.name or not self.port_kind:
            raise ValueError("an integration profile needs a name and a port kind")
        if not 0 < self.ports <= 1024:
            raise ValueError(f"profile {self.name}: ports must be 1..1024, got {self.ports}")

    def normalise(self, field_name: str, number: str) -> str:
        """Apply the profile's number rules to one number field."""
        for rule in self.number_rules:
            if field_name in rule.fields:
                number = re.sub(rule.pattern, rule.replace, number)
        if len(number) > self.max_number:
            raise ValueError(f"{field_name} {number!r:.50} is longer than {self.max_number} "
                             f"characters after the {self.name} number rules")
        return number


#: a subscriber's ``mwi_method`` (configuration database) that never needs a driver
NO_LAMP = "none"


def mwi_drivers(*, sip: bool, smdi: bool, loopback: bool) -> dict[str, str]:
    """Which driver sends the lamps of each subscriber ``mwi_method`` on a node whose port
    drivers are enabled as given: ``{method: driver kind}``.

    * ``sip`` → the SIP ports (unsolicited NOTIFY) when ``ports.sip`` is enabled; on a node
      with only the loopback trunk (no SIP, no SMDI: the lab and the demo) → the loopback
      trunk's monitor, the simulated PBX's MWI side, which shows the same counts;
    * ``smdi`` → the SMDI link when ``ports.smdi`` is enabled;
    * ``sccp`` and ``dtmf`` have no driver in vmha: never served;
    * ``none`` is never in the answer: it means no lamp and needs no driver.

    The node manager refuses a subscriber whose method is not served (telephony.configdb), the
    messaging service sends each lamp through the driver named here."""
    out: dict[str, str] = {}
    if sip:
        out["sip"] = "sip"
    elif loopback and not smdi:
        out["sip"] = "loopback"
    if smdi:
        out["smdi"] = "smdi"
    return out


def node_mwi_drivers(cfg) -> dict[str, str]:
    """:func:`mwi_drivers` for a node's configuration (``failover.config.NodeConfig``)."""
    p = cfg.ports
    return mwi_drivers(sip=p.sip.enabled, smdi=p.smdi.enabled, loopback=p.loopback.enabled)
