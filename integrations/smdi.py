"""The serial SMDI integrations through a data splitter (docs/protocols.md section 1,
docs/smdi.md).  Data only (the link's settings, ``[ports.smdi]``: ``telephony/smdi/settings.py``).

A circuit-switched PBX hunts calls over the voice lines of *both* servers and tells the
voice-mail system about each call on one serial data link (SMDI): an ``MD`` record naming the
message-desk **terminal** (the line), the call type (why it came) and the numbers.  Both servers
hang on that link through a data splitter: both hear every record, only the active one may
transmit (``OP:MWI`` / ``RMV:MWI`` lamp commands).  The voice lines are either analog lines on
a voice board (here: the loopback trunk, its simulator) or the PBX's lines turned into SIP by a
media gateway (as Cisco's PIMG/TIMG units did for Unity).
"""
from __future__ import annotations

from dataclasses import replace

from integrations.base import CallInfo, IntegrationProfile, MwiMethod, VoicePort

#: voice-board lines (the loopback trunk, their simulator) + SMDI records + SMDI lamps;
#: terminal ``terminals[i]`` is line ``loopback-{i+1}``
SERIAL_SMDI = IntegrationProfile(
    name="serial-smdi",
    port_kind=VoicePort.LOOPBACK.value,
    ports=4,
    mwi_method=MwiMethod.SMDI,
    description="circuit-switched PBX: voice lines plus SMDI call records and MWI commands "
                "on one RS-232 link shared by both nodes through a data splitter",
    voice_ports=(VoicePort.LOOPBACK.value,),
    call_info=CallInfo.SMDI,
)

#: a media gateway's SIP lines + SMDI records + SMDI lamps: the serial integration with other
#: voice ports; terminal ``terminals[i]`` is line ``sip-{i+1}``
GATEWAY_SMDI = replace(
    SERIAL_SMDI, name="gateway-smdi", port_kind=VoicePort.SIP.value,
    voice_ports=(VoicePort.SIP.value,),
    description="circuit-switched PBX behind a media gateway: the PBX's lines reach the "
                "nodes as SIP, the call records and MWI commands on the serial SMDI link")
