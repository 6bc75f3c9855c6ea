"""The loopback test trunk: a simulated PBX trunk of N ports (``loopback-1..N``) on TCP.

The driver package: :mod:`~telephony.loopback.trunk` (the port driver),
:mod:`~telephony.loopback.port` (the media side of a call), :mod:`~telephony.loopback.wire`
(the JSON lines and their checks), :mod:`~telephony.loopback.settings` (``[ports.loopback]``).

A client (the simulated PBX, see :mod:`lab.loopback_client`) connects to the listener
(127.0.0.1 by default) and places **one call per connection** with JSON lines::

    -> {"op": "offer", "call_id": "c1", "calling": "4021", "called": "5000",
        "forwarding": "4000", "reason": "busy"}
    <- {"ev": "answered", "node": "a", "port": "loopback-1", "term": 8}
       or {"ev": "rejected", "reason": "busy" | "refused" | "timeout" | "duplicate" | "shutdown"}
    -> {"op": "hangup"}
    <- {"ev": "ended"}

After ``answered`` the call is in progress until the client sends ``hangup`` or closes the
connection.  When the service hangs the call up itself (deactivate without drain, shutdown,
node manager gone) the client gets ``{"ev": "dropped"}`` and the connection closes.
``calling``, ``called`` and ``forwarding`` default to "" and ``reason`` to "direct".

**Lines.**  ``"line": N`` rings port ``loopback-N`` itself (``rejected`` ``busy`` if that port
is not idle), as a PBX rings one line of a voice board.  With ``line_info`` set (the serial
SMDI integration), such a call carries no numbers of its own: its information comes from the
PBX's data link (the SMDI record for that line's terminal), and the offer's numbers are
ignored.

**Call flow and media.**  With a ``flow`` (``LoopbackTrunk(flow=...)``, usually
``CallFlow.handle``), the trunk runs ``await flow(call, port, term)`` once the call is
answered; ``port`` is a :class:`LoopbackPort` (a ``telephony.core.callflow.CallPort``).  Audio is
8 kHz 16-bit signed little-endian mono PCM, base64 in JSON, at most ``MAX_AUDIO_CHUNK`` (2560)
bytes of PCM (160 ms) per line::

    <- {"ev": "play", "audio": "<b64 pcm>"}        the service plays audio (repeated)
    <- {"ev": "play_end"}                           ... to the end, or
    <- {"ev": "play_end", "digit": "5"}             ... cut short by a DTMF digit
    <- {"ev": "beep"}                               the next play is the record beep
    <- {"ev": "messages", "new": 3, "saved": 1}     mailbox access: the count being played
    <- {"ev": "record_start"}                       what the client says is recorded now
    <- {"ev": "record_end", "reason": "silence" | "max" | "dtmf"}
    <- {"ev": "hangup"} then {"ev": "ended"}        the service hangs up
    <- {"ev": "transfer", "to": "0"}                the service asks for a blind transfer
    -> {"op": "transfer", "ok": true}               the PBX takes the call:
    <- {"ev": "ended", "transferred": "0"}          ... the call is over for the service
    -> {"op": "transfer", "ok": false}              the PBX refuses: the call goes on
    -> {"op": "audio", "audio": "<b64 pcm>"}        what the caller says (any time;
                                                    kept only while recording)
    -> {"op": "dtmf", "digit": "1"}                 one of 0-9 * #
    -> {"op": "hangup"}                             as before: <- {"ev": "ended"}

Play is paced in real time (one 20 ms chunk per 20 ms) unless ``realtime=False``, which sends
as fast as the client reads (in chunks of ``play_chunk`` bytes).  A recording's length is
counted in audio received, so a client may send faster than real time; missing audio counts as
silence (the time since the last audio, on the Trio clock), and a recording never lasts longer
than its maximum on the Trio clock either.  Digits wait in a queue of ``MAX_PENDING_DIGITS``
(an interruptible play takes a typed-ahead digit at once; a recording starts with the queue
cleared).  A transfer the client does not answer within ``transfer_timeout`` seconds (a
trunk setting, default 10) has failed and the call goes on; a ``transfer`` answer with no
transfer asked for gets an ``error``.  A bad ``audio`` or ``dtmf`` line gets an ``error`` and
changes nothing.  After the service hung up, input is read and ignored for up to
``cleanup_timeout`` seconds.  The flow may go on after the caller hung up (to store the
message) for up to ``flow_grace`` seconds; the call counts as in progress
(``service.end_call``) until the flow is done.  Without a ``flow`` the trunk behaves as
before: the call is held until a side hangs up, and ``audio`` and ``dtmf`` lines get
"unknown op" errors.

Lines are bounded (``max_line``, 4 KiB).  A bad line gets ``{"ev": "error", "message": ...}``
and changes nothing; an over-long line gets the error and the connection is closed (the
stream cannot be resynchronised).  Offers are not read while a call is held waiting for the
node manager: a ``hangup`` sent then is handled once the offer is decided.
"""
from __future__ import annotations

from telephony.loopback.port import LoopbackPort
from telephony.loopback.trunk import Flow, LoopbackTrunk
from telephony.loopback.wire import (
    ANNOUNCEMENTS,
    DTMF_DIGITS,
    MAX_AUDIO_CHUNK,
    MAX_LINE,
    MAX_PENDING_DIGITS,
    parse_call_op,
)

__all__ = ["LoopbackTrunk", "LoopbackPort", "Flow", "parse_call_op", "MAX_LINE",
           "MAX_AUDIO_CHUNK", "MAX_PENDING_DIGITS", "DTMF_DIGITS", "ANNOUNCEMENTS"]
