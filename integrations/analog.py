"""The analog voice-board integrations: FXO lines of a voice board hunted by a
circuit-switched PBX (docs/analog.md).  Data only (the lines' settings, ``[ports.analog]``:
``telephony/analog/settings.py``; the driver: ``telephony/analog/driver.py``).

* ``analog-dtmf``: the PBX tells the voice mail why a call came **in band**: right after the
  port answers it sends a few DTMF digits (``#1234``: forwarded from 1234, busy), matched
  against the integration's digit patterns; lamps are switched by dialling a feature code on
  a line (``*91`` + extension + ``#``: on, ``*92`` + extension + ``#``: off), judged by the tone the PBX
  answers with.
* ``analog-smdi``: the same lines with the call records and lamp commands on the serial SMDI
  link (docs/smdi.md); terminal ``terminals[i]`` is line ``analog-{i+1}``.
"""
from __future__ import annotations

from dataclasses import replace

from integrations.base import SEPARATORS, CallInfo, IntegrationProfile, MwiMethod, VoicePort

#: The DTMF integration's digit patterns, tried in order: ``REASON:DIGITS``, where DIGITS are
#: DTMF symbols (``0-9 * # A-D``) and the fields ``{ext}`` (the mailbox's extension: the
#: forwarding party of a forwarded call, the called one of a direct call) and ``{caller}``
#: (the calling number), each 1 to 32 digits 0-9.  What the common PBXs' "in-band
#: integration" sends: ``#`` + extension when the extension was busy, ``*`` + extension when
#: it did not answer, ``##`` + extension when a subscriber calls the voice mail from their
#: own phone (mailbox access).  No digits within the digit timeout: a direct call with no
#: numbers (the opening greeting).
DTMF_PATTERNS: tuple[str, ...] = ("busy:#{ext}", "no_answer:*{ext}", "direct:##{caller}")

#: The lamp feature codes (``{ext}``: the subscriber's extension); the closing ``#`` says
#: the number is complete, so the PBX need not wait for its interdigit timeout.
MWI_ON_CODE = "*91{ext}#"
MWI_OFF_CODE = "*92{ext}#"

#: analog lines + in-band DTMF digits + lamps by feature code
ANALOG_DTMF = IntegrationProfile(
    name="analog-dtmf",
    port_kind=VoicePort.ANALOG.value,
    ports=4,
    mwi_method=MwiMethod.DTMF,
    number_rules=(SEPARATORS,),
    description="circuit-switched PBX on analog voice-board lines: the call's reason and "
                "extension as DTMF digits after answer, lamps by dialling feature codes",
    voice_ports=(VoicePort.ANALOG.value,),
    call_info=CallInfo.DTMF,
)

#: analog lines + SMDI records + SMDI lamps: terminal ``terminals[i]`` is line ``analog-{i+1}``
ANALOG_SMDI = replace(
    ANALOG_DTMF, name="analog-smdi", mwi_method=MwiMethod.SMDI, call_info=CallInfo.SMDI,
    description="circuit-switched PBX on analog voice-board lines, the call records and MWI "
                "commands on the serial SMDI link")
