"""The named integration profiles an ``[integration]`` section may pick (``profile = NAME``).
Data only."""
from __future__ import annotations

from integrations.analog import ANALOG_DTMF, ANALOG_SMDI
from integrations.base import IntegrationProfile
from integrations.cucm_sccp import CUCM_SCCP
from integrations.cucm_sip import CUCM_SIP
from integrations.loopback import LOOPBACK
from integrations.smdi import GATEWAY_SMDI, SERIAL_SMDI

#: name -> profile, in the order the docs list them
PROFILES: dict[str, IntegrationProfile] = {
    p.name: p for p in (CUCM_SIP, CUCM_SCCP, SERIAL_SMDI, GATEWAY_SMDI, ANALOG_DTMF, ANALOG_SMDI,
                        LOOPBACK)}


def smdi_integration(profile: str | None, voice_ports: tuple[str, ...]) -> IntegrationProfile:
    """The integration an SMDI-matched call belongs to (its arrivals' ``integration``): the
    named profile, else the gateway one when the voice ports are SIP lines, else the analog
    one when they are a voice board's lines, else the serial one (the loopback stand-in)."""
    if profile is not None:
        return PROFILES[profile]
    if "sip" in voice_ports:
        return GATEWAY_SMDI
    return ANALOG_SMDI if "analog" in voice_ports else SERIAL_SMDI


def analog_integration(profile: str | None, call_info: str) -> IntegrationProfile:
    """The integration the analog lines' calls belong to: the named profile, else the SMDI
    one when SMDI gives the calls' information, else the DTMF one."""
    if profile is not None:
        return PROFILES[profile]
    return ANALOG_SMDI if call_info == "smdi" else ANALOG_DTMF


def sccp_integration(profile: str | None) -> IntegrationProfile:
    """The integration the SCCP ports' calls belong to: the named profile, else
    ``cucm-sccp``."""
    return PROFILES[profile] if profile is not None else CUCM_SCCP
