"""The Cisco CallManager SIP integration: voice-mail ports that answer SIP calls, learn why the
call came from Diversion / History-Info, and light lamps with unsolicited MWI NOTIFY.  Data only
(the SIP ports' settings, ``[ports.sip]``: ``telephony/sip/settings.py``, whose ``SipProfile``
takes this profile as its base).  How many ports a node may have is bounded by the RTP
layout, not by a count of workers: each SIP port takes 4 RTP ports, contiguous from
``rtp_port`` (``telephony.sip.settings.rtp_span``), so ``count`` ports need ``rtp_port +
4 count - 1 <= 65535`` (from the default 20000 that is every ``count`` the key allows, 1024);
the workers (``per_worker`` ports each) no longer take 1000 RTP ports apiece."""
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
