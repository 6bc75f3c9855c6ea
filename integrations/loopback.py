"""The loopback integration: a simulated trunk on 127.0.0.1 for tests, benchmarks and the demo
(driver: ``telephony.loopback``).  Data only."""
from __future__ import annotations

from integrations.base import IntegrationProfile, MwiMethod, NumberRule

LOOPBACK = IntegrationProfile(
    name="loopback",
    port_kind="loopback",
    ports=4,
    mwi_method=MwiMethod.NONE,
    number_rules=(
        NumberRule(r"[\s\-.()/]", "", note="drop visual separators: '+1 (555) 010-0199'"),
    ),
    max_number=32,
    description="simulated PBX trunk: JSON lines over TCP on 127.0.0.1, one call per connection",
)
