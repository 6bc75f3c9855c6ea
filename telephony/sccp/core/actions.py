"""The outputs of the SCCP station machine (:mod:`telephony.sccp.core.station`, which
re-exports them; docs/sccp.md, "Contract: the station machine").  Pure: frozen dataclasses."""
from __future__ import annotations

from dataclasses import dataclass

from telephony.sccp.core.callinfo import CallDetails

__all__ = ["Action", "CallEnded", "Connected", "DialResult", "Disconnect", "OpenMedia", "Offer", "Registered",
           "Rejected", "ResetRequested", "Send", "StartMedia", "StopMedia", "Unregistered"]


class Action:
    """Base of every output of the machine."""

    __slots__ = ()


@dataclass(frozen=True)
class Send(Action):
    data: bytes  # one whole frame to write to the TCP connection


@dataclass(frozen=True)
class Disconnect(Action):
    reason: str  # close the TCP connection (the driver re-homes)


@dataclass(frozen=True)
class Registered(Action):
    keepalive: float  # seconds between our keepalives from now on


@dataclass(frozen=True)
class Rejected(Action):
    text: str  # RegisterReject's text: this device is not known on this server


@dataclass(frozen=True)
class Unregistered(Action):
    reason: str  # the port is no longer registered (reset, lost, unregistered)


@dataclass(frozen=True)
class Offer(Action):
    info: CallDetails  # a call rings: offer it to the service


@dataclass(frozen=True)
class OpenMedia(Action):
    call_reference: int
    pass_through_party_id: int
    codec: int
    packet_ms: int
    rfc2833_payload_type: int  # 0: none negotiated


@dataclass(frozen=True)
class StartMedia(Action):
    remote_ip: str
    remote_port: int
    codec: int
    packet_ms: int
    rfc2833_payload_type: int  # 0: none negotiated


@dataclass(frozen=True)
class StopMedia(Action):
    pass


@dataclass(frozen=True)
class Connected(Action):
    pass


@dataclass(frozen=True)
class CallEnded(Action):
    by: str  # "caller" | "station" | "lost"


@dataclass(frozen=True)
class DialResult(Action):
    ok: bool
    detail: str


@dataclass(frozen=True)
class ResetRequested(Action):
    reset_type: int
