"""The ``[http]`` section: the node manager's admin HTTP API and Failover Monitor page.

The API is off unless ``http.listen`` is set (``vmha configure`` writes it for a new pair).
Plain HTTP is allowed only on a loopback address (127.0.0.0/8 or ::1); anywhere else the
operator supplies a certificate and its key (``tls_cert``, ``tls_key``).  The operators and
their hashed bearer tokens are in ``operators_file`` (mode 0600, ``vmha configure
--add-operator``).  ``peer_url`` is where the peer's API answers: an inactive node redirects
configuration writes there and its page links to it.  ``public_url`` is how operators reach
this node (default: from ``listen``).
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from telephony.core.settings import Addr, Address, Key, Num, Pattern, Problem, path

_URL = re.compile(r"https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?/?")

#: the ``[http]`` section's keys (failover.config takes them as they are)
HTTP_KEYS: dict[str, Key] = {
    "listen": Key(Addr(), None),  # absent: no HTTP API on this node
    "tls_cert": Key(path, None),
    "tls_key": Key(path, None),
    "operators_file": Key(path, None),  # <data_dir>/operators.toml
    "peer_url": Key(Pattern(_URL, 'a URL such as "https://host:8443"', kind="URL"), None),
    "public_url": Key(Pattern(_URL, 'a URL such as "https://host:8443"', kind="URL"), None),
    "session_timeout": Key(Num(60, 7 * 86400), 12 * 3600.0),
}


@dataclass(frozen=True)
class HttpSettings:
    listen: Address | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    operators_file: Path = Path("operators.toml")
    peer_url: str | None = None
    public_url: str | None = None
    session_timeout: float = 12 * 3600.0

    @property
    def enabled(self) -> bool:
        return self.listen is not None

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def url(self) -> str | None:
        """How operators reach this node's API: ``public_url``, else from ``listen`` (a
        wildcard listen address is shown as 127.0.0.1)."""
        if self.public_url:
            return self.public_url.rstrip("/")
        if self.listen is None:
            return None
        host = self.listen.host
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        shown = f"[{host}]" if ":" in host else host
        return f"{self.scheme}://{shown}:{self.listen.port}"

    @property
    def peer(self) -> str | None:
        return self.peer_url.rstrip("/") if self.peer_url else None


def build(values: dict[str, Any], data_dir: Path) -> HttpSettings:
    operators = values["operators_file"] or data_dir / "operators.toml"
    return HttpSettings(**{**values, "operators_file": operators})


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower().rstrip(".") == "localhost"


def problems(h: HttpSettings) -> list[Problem]:
    """Rules between the section's keys: plain HTTP only on loopback, a certificate with its
    key."""
    out: list[Problem] = []
    if (h.tls_cert is None) != (h.tls_key is None):
        have, need = ("tls_cert", "tls_key") if h.tls_cert is not None else ("tls_key", "tls_cert")
        out.append(Problem(f"http.{need}", f"required with http.{have} (the certificate and its key)"))
    if h.listen is None:
        return out
    if not h.tls and not is_loopback(h.listen.host):
        out.append(Problem("http.listen", f"{h.listen} without TLS: plain HTTP is allowed only on a "
                                          "loopback address (127.0.0.1, ::1); set http.tls_cert and "
                                          "http.tls_key"))
    return out
