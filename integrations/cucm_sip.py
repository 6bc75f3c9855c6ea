"""The Cisco CallManager SIP integration: voice-mail ports that answer SIP calls, learn why the
call came from Diversion / History-Info, and light lamps with unsolicited MWI NOTIFY.  Data only
(the SIP ports' settings, ``[ports.sip]``: ``telephony/sip/settings.py``)."""
from __future__ import annotations

from integrations.base import SEPARATORS, IntegrationProfile, MwiMethod, NumberRule, VoicePort

#: SIP lines + SIP headers (the ports' own signalling, the default) + NOTIFY
CUCM_SIP = IntegrationProfile(
    name="cucm-sip",
    port_kind=VoicePort.SIP.value,
    ports=4,
    mwi_method=MwiMethod.SIP_NOTIFY,
    number_rules=(NumberRule(r"^\+", "", note="E.164 plus sign"), SEPARATORS),
    description="SIP trunk or registered lines to Cisco Unified CM (or any SIP PBX / proxy)",
)
