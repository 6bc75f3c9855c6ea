"""PBX integration profiles: which voice ports, where a call's information comes from, which
MWI method, how numbers are rewritten (docs/integrations.md).

An integration is three independent choices, and the messaging service wires any valid
combination of them:

* **voice ports** (:class:`VoicePort`): the lines that carry the calls;
* **call information** (:class:`CallInfo`): why a call came and for whom, in the voice port's
  own signalling or out of band on the SMDI link;
* **MWI method** (:class:`MwiMethod`): how lamps are switched.

Profiles are data, not ``if vendor == ...`` branches: a driver reads its profile and applies
it the same way for every PBX.  Pure: no I/O, nothing of the project imported.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

#: The call-arrival fields that carry telephone numbers.
NUMBER_FIELDS = ("calling", "called", "forwarding")


class VoicePort(StrEnum):
    """A kind of voice port (one driver each)."""

    SIP = "sip"  # SIP lines: a trunk or registered lines, also a media gateway's SIP lines
    #              (analog/digital PBX lines turned into SIP, as Cisco's PIMG/TIMG units did)
    LOOPBACK = "loopback"  # the loopback simulator (the voice-board stand-in of the lab)
    ANALOG = "analog"  # analog (FXO) lines of a voice board: port analog-N is board line N
    SCCP = "sccp"  # SCCP ("Skinny") stations registered with Cisco CallManager: port sccp-N
    #                is device prefix + N


#: voice ports that number their lines (the driver's port *i* is line *i*), so information
#: that names a line (an SMDI record's terminal) finds the port that rings
NUMBERED_PORTS = frozenset({VoicePort.SIP, VoicePort.LOOPBACK, VoicePort.ANALOG, VoicePort.SCCP})

#: voice ports that hear the caller's line after answering, so integration digits sent in
#: band (DTMF) can be read: only analog lines
IN_BAND_PORTS = frozenset({VoicePort.ANALOG})


class CallInfo(StrEnum):
    """Where a call's information (numbers, reason) comes from."""

    SIGNALLING = "signalling"  # the voice port's own: SIP Diversion / History-Info headers,
    #                            SCCP CallInfo, the loopback offer's fields
    SMDI = "smdi"  # the serial SMDI link's record for the line's terminal number
    DTMF = "dtmf"  # digits the PBX sends in band right after the port answers (a DTMF
    #                integration: "#1234" = busy for 1234), matched against digit patterns


class MwiMethod(StrEnum):
    """How message-waiting lamps are switched on this integration."""

    NONE = "none"  # no lamps
    SIP_NOTIFY = "sip_notify"  # unsolicited SIP NOTIFY (message-summary)
    SCCP = "sccp"  # an SCCP port calls CallManager's MWI on/off number for the extension
    SMDI = "smdi"  # OP:MWI over the serial data link
    DTMF = "dtmf"  # feature-code digits dialled on an analog line (*91 + extension)
    LOOPBACK = "loopback"  # the loopback trunk's monitor: the simulated PBX's MWI side


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
    """One PBX integration: its three parts (``voice_ports``, ``call_info``, ``mwi_method``)
    and the number rules of its calls.  ``port_kind`` is the kind of port whose driver applies
    the rules, ``ports`` its default number of ports; ``voice_ports`` defaults to
    ``(port_kind,)``."""

    name: str
    port_kind: str
    ports: int
    mwi_method: MwiMethod
    number_rules: tuple[NumberRule, ...] = ()
    max_number: int = 32  # longest number kept after the rules ran
    description: str = ""
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    voice_ports: tuple[str, ...] = ()
    call_info: CallInfo = CallInfo.SIGNALLING

    def __post_init__(self) -> None:
        if not self.name or not self.port_kind:
            raise ValueError("an integration profile needs a name and a port kind")
        if not 0 < self.ports <= 1024:
            raise ValueError(f"profile {self.name}: ports must be 1..1024, got {self.ports}")
        if not self.voice_ports:
            object.__setattr__(self, "voice_ports", (self.port_kind,))
        bad = [v for v in self.voice_ports if v not in set(VoicePort)]
        if bad:
            raise ValueError(f"profile {self.name}: unknown voice ports {bad}")
        if self.call_info is CallInfo.SMDI and not set(self.voice_ports) <= NUMBERED_PORTS:
            raise ValueError(f"profile {self.name}: SMDI call information needs voice ports "
                             "that number their lines")
        if self.call_info is CallInfo.DTMF and not set(self.voice_ports) <= IN_BAND_PORTS:
            raise ValueError(f"profile {self.name}: DTMF call information needs voice ports "
                             "that hear the line in band (analog)")

    def normalise(self, field_name: str, number: str) -> str:
        """Apply the profile's number rules to one number field."""
        for rule in self.number_rules:
            if field_name in rule.fields:
                number = re.sub(rule.pattern, rule.replace, number)
        if len(number) > self.max_number:
            raise ValueError(f"{field_name} {number!r:.50} is longer than {self.max_number} "
                             f"characters after the {self.name} number rules")
        return number


#: the rule most integrations start with: drop what people write between digits
SEPARATORS = NumberRule(r"[\s\-.()/]", "", note="visual separators: '+1 (555) 010-0199'")

#: a subscriber's ``mwi_method`` (configuration database) that never needs a driver
NO_LAMP = "none"

#: THE table of lamps: a node's MWI method -> ``{subscriber mwi_method: the driver kind that
#: sends those lamps}``.  The messaging service sends each lamp through the driver named here;
#: the node manager refuses a subscriber whose method is not in its node's row
#: (telephony.configdb).  ``none`` is never in a row: it means no lamp and needs no driver.
#: The loopback monitor shows the lamps of ``sip`` subscribers (the lab's stand-in for a SIP
#: PBX).  The analog lines dial the lamps of ``dtmf`` subscribers (a feature code per lamp);
#: the SCCP ports call CallManager's MWI numbers for ``sccp`` subscribers.
MWI_DRIVERS: dict[MwiMethod, dict[str, str]] = {
    MwiMethod.SIP_NOTIFY: {"sip": VoicePort.SIP.value},
    MwiMethod.SMDI: {"smdi": "smdi"},
    MwiMethod.DTMF: {"dtmf": VoicePort.ANALOG.value},
    MwiMethod.SCCP: {"sccp": VoicePort.SCCP.value},
    MwiMethod.LOOPBACK: {"sip": VoicePort.LOOPBACK.value},
    MwiMethod.NONE: {},
}


def default_integration(*, sip: bool, smdi: bool, loopback: bool, analog: bool = False,
                        sccp: bool = False) -> tuple[tuple[str, ...], CallInfo, MwiMethod]:
    """The integration of a node whose file has no ``[integration]`` choices, derived from the
    enabled port drivers: ``(voice_ports, call_info, mwi)``.

    * voice ports: the enabled ones, the loopback trunk's lines first, then SIP, then analog,
      then SCCP;
    * call information: the SMDI link's when ``ports.smdi`` is enabled, else in-band DTMF
      when the analog lines are the only voice ports, else the ports' own;
    * MWI: SIP NOTIFY when ``ports.sip`` is enabled, else the SMDI link when enabled, else
      feature codes dialled on the analog lines when enabled, else CallManager's MWI numbers
      called by the SCCP ports when enabled, else the loopback trunk's monitor (the lab and
      the demo), else none.  (SIP and SMDI both enabled is no default:
      the file must choose.)"""
    voice = tuple(v.value for v, on in ((VoicePort.LOOPBACK, loopback), (VoicePort.SIP, sip),
                                        (VoicePort.ANALOG, analog), (VoicePort.SCCP, sccp)) if on)
    call_info = (CallInfo.SMDI if smdi
                 else CallInfo.DTMF if voice == (VoicePort.ANALOG.value,) else CallInfo.SIGNALLING)
    mwi = (MwiMethod.SIP_NOTIFY if sip else MwiMethod.SMDI if smdi
           else MwiMethod.DTMF if analog else MwiMethod.SCCP if sccp
           else MwiMethod.LOOPBACK if loopback else MwiMethod.NONE)
    return voice, call_info, mwi


def mwi_drivers(*, sip: bool, smdi: bool, loopback: bool, analog: bool = False,
                sccp: bool = False) -> dict[str, str]:
    """:data:`MWI_DRIVERS`' row for the default integration of a node whose port drivers are
    enabled as given (:func:`default_integration`)."""
    return dict(MWI_DRIVERS[default_integration(sip=sip, smdi=smdi, loopback=loopback,
                                                analog=analog, sccp=sccp)[2]])


def node_mwi_drivers(cfg) -> dict[str, str]:
    """:data:`MWI_DRIVERS`' row for a node's settings (anything with ``integration.mwi``: the
    node manager's ``NodeConfig``, the service's ``ServiceSettings``)."""
    return dict(MWI_DRIVERS.get(MwiMethod(cfg.integration.mwi), {}))
