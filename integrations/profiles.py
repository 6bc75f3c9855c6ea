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
