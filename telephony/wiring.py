"""The service level's wiring helpers: the voice-port drivers in the integration's line order
and the SMDI link's call information given to them (docs/integrations.md, "How the service
wires it").  Used by :mod:`telephony.service`."""
from __future__ import annotations

from typing import Any

from integrations.base import CallInfo
from telephony.settings import Integration

__all__ = ["voice_ports", "line_names", "connect_call_info"]


def voice_ports(integration: Integration,
                built: dict[str, tuple[Any, list[str]]]) -> list[tuple[Any, list[str]]]:
    """The voice-port drivers built (``{kind: (driver or None, its port names)}``) in the
    integration's line order (``integration.voice_ports``)."""
    return [built[kind] for kind in integration.voice_ports
            if kind in built and built[kind][0] is not None]


def line_names(voice: list[tuple[Any, list[str]]]) -> tuple[str, ...]:
    """Every line of the voice ports, in order: line *i* is SMDI terminal ``terminals[i]``."""
    return tuple(name for _, names in voice for name in names)


def connect_call_info(integration: Integration, voice: list[tuple[Any, list[str]]],
                      link: Any) -> None:
    """With call information from SMDI, every voice-port driver asks the link for the call
    ringing on one of its lines: ``driver.line_info = link.line_arrival`` (the loopback
    trunk's contract: ``await line_info(port, call_id, node) -> CallArrival``)."""
    if integration.call_info == CallInfo.SMDI:
        for driver, _ in voice:
            driver.line_info = link.line_arrival
