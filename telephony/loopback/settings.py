"""``[ports.loopback]``: the loopback trunk's settings, declared once (docs/configuration.md).

The key table (:data:`KEYS`) is the file's schema for the section; :class:`LoopbackSettings`
is what the node's file gives the service (which builds the :class:`~telephony.loopback.trunk.LoopbackTrunk`
from it); :func:`problems` are its rules between keys; :func:`binds` the socket it binds;
:data:`DEFAULT_PORTS` and :func:`toml_table` are what ``vmha configure`` writes.  Pure.
"""
from __future__ import annotations

from dataclasses import dataclass

from telephony.core.settings import Addr, Address, Key, Num, Problem, boolean

SECTION = "ports.loopback"
#: the port driver's kind and its ports' names (``loopback-1`` ...)
KIND = "loopback"
#: ``vmha configure``'s listen ports of the primary's and the secondary's trunk (on 127.0.0.1)
DEFAULT_PORTS = (3671, 3672)

KEYS: dict[str, Key] = {
    "enabled": Key(boolean, True),
    "listen": Key(Addr(), None),  # required when enabled: no ephemeral port for a real node
    "count": Key(Num(1, 256, integer=True), 4),
}


@dataclass(frozen=True)
class LoopbackSettings:
    """``[ports.loopback]``: ``count`` simulated ports listening on ``listen`` (TCP)."""

    enabled: bool
    listen: Address | None  # None only when disabled
    count: int

    def port_names(self) -> list[str]:
        """The trunk's ports, in line order (``"line": N`` rings ``loopback-N``)."""
        return [f"{KIND}-{i}" for i in range(1, self.count + 1)]


def problems(s: LoopbackSettings) -> list[Problem]:
    """Rules between the section's keys."""
    if s.enabled and s.listen is None:
        return [Problem(f"{SECTION}.listen", f"required when {SECTION}.enabled = true: "
                                             '"127.0.0.1:PORT" with an explicit port')]
    return []


def binds(s: LoopbackSettings) -> list[tuple[str, str, str, int, int]]:
    """The socket the trunk binds: ``(setting, proto, host, lo, hi)``."""
    if not s.enabled or s.listen is None:
        return []
    return [(f"{SECTION}.listen", "tcp", s.listen.host, s.listen.port, s.listen.port)]


def toml_table(port: int | None) -> dict:
    """What ``vmha configure`` writes for a trunk on 127.0.0.1:``port`` (None: disabled)."""
    if port is None:
        return {"enabled": False}
    return {"enabled": True, "listen": f"127.0.0.1:{port}"}
