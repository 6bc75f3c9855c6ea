"""The loopback integration: a simulated trunk on 127.0.0.1 for tests, benchmarks and the demo
(driver: ``telephony.loopback``).  Data only."""
from __future__ import annotations

from integrations.base import SEPARATORS, IntegrationProfile, MwiMethod, VoicePort

#: loopback lines + the offer's fields (the ports' own signalling) + no lamps (a node without
#: an ``[integration]`` choice shows its lamps on the trunk's monitor instead:
#: ``integrations.base``)
LOOPBACK = IntegrationProfile(
    name="loopback", port_kind=VoicePort.LOOPBACK.value, ports=4, mwi_method=MwiMethod.NONE,
    number_rules=(SEPARATORS,),
    description="simulated PBX trunk: JSON lines over TCP on 127.0.0.1, one call per connection",
)
