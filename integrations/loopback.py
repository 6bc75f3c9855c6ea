"""The loopback integration: a simulated trunk on 127.0.0.1 for tests, benchmarks and the demo
(driver: ``telephony.loopback``).  Data only."""
from __future__ import annotations

from integrations.base import CallInfo, IntegrationProfile, MwiMethod, NumberRule, VoicePort

#: loopback lines + the offer's fields + no lamps (a node without an ``[integration]``
#: choice shows its lamps on the trunk's monitor instead: ``integrations.base``)
LOOPBACK = IntegrationProfile(
    name="loopback",
    port_kind=VoicePort.LOOPBACK.value,
    ports=4,
    mwi_method=MwiMethod.NONE,
    number_rules=(
        NumberRule(r"[\s\-.()/]", "", note="drop visual separators: '+1 (555) 010-0199'"),
    ),
    max_number=32,
    description="simulated PBX trunk: JSON lines over TCP on 127.0.0.1, one call per connection",
    voice_ports=(VoicePort.LOOPBACK.value,),
    call_info=CallInfo.SIGNALLING,
)
