"""The Cisco CallManager SCCP integration: voice-mail ports that register with CallManager as
SCCP ("Skinny") stations, one device and one TCP connection per port, learn why a call came
from CallManager's CallInfo message, exchange the audio over RTP, and switch lamps by calling
CallManager's MWI on/off numbers (docs/sccp.md).  Data only (the ports' settings,
``[ports.sccp]``: ``telephony/sccp/settings.py``; the driver: ``telephony/sccp/driver.py``)."""
from __future__ import annotations

from integrations.base import SEPARATORS, CallInfo, IntegrationProfile, MwiMethod, NumberRule, VoicePort

#: CallManager's MWI numbers (its "Message Waiting" directory numbers): a call from the
#: subscriber's extension to the on number lights its lamp, to the off number puts it out
MWI_ON_NUMBER = "2222"
MWI_OFF_NUMBER = "2221"

#: SCCP stations + CallInfo (the ports' own signalling) + calls to the MWI numbers
CUCM_SCCP = IntegrationProfile(
    name="cucm-sccp",
    port_kind=VoicePort.SCCP.value,
    ports=4,
    mwi_method=MwiMethod.SCCP,
    number_rules=(NumberRule(r"^\+", "", note="E.164 plus sign"), SEPARATORS),
    description="Cisco CallManager voice-mail ports registered as SCCP stations: CallInfo "
                "says who called and why, lamps by calling the MWI on/off numbers",
    voice_ports=(VoicePort.SCCP.value,),
    call_info=CallInfo.SIGNALLING,
)
