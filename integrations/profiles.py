"""The named integration profiles an ``[integration]`` section may pick (``profile = NAME``).
Data only."""
from __future__ import annotations

from integrations.base import IntegrationProfile
from integrations.cucm_sip import CUCM_SIP
from integrations.loopback import LOOPBACK
from integrations.smdi import GATEWAY_SMDI, SERIAL_SMDI

#: name -> profile, in the order the docs list them
PROFILES: dict[str, IntegrationProfile] = {
    p.name: p for p in (CUCM_SIP, SERIAL_SMDI, GATEWAY_SMDI, LOOPBACK)}


def smdi_integration(profile: str | None, voice_ports: tuple[str, ...]) -> IntegrationProfile:
    """The integration an SMDI-matched call belongs to (its arrivals' ``integration``): the
    named profile, else the gateway one when the voice ports are SIP lines, else the serial
    one (voice-board lines)."""
    if profile is not None:
        return PROFILES[profile]
    return GATEWAY_SMDI if "sip" in voice_ports else SERIAL_SMDI
