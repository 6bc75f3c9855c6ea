"""The Cisco CallManager SIP integration: voice-mail ports that answer SIP calls, learn why the
call came from Diversion / History-Info, and light lamps with unsolicited MWI NOTIFY.  Data only
(``[ports.sip]`` in the node's TOML fills it in)."""
from __future__ import annotations

from dataclasses import dataclass

from integrations.base import IntegrationProfile, MwiMethod, NumberRule

CUCM_SIP = IntegrationProfile(
    name="cucm-sip",
    port_kind="sip",
    ports=4,
    mwi_method=MwiMethod.SIP_NOTIFY,
    number_rules=(
        NumberRule(r"^\+", "", note="E.164 plus sign"),
        NumberRule(r"[\s\-.()/]", "", note="visual separators"),
    ),
    max_number=32,
    description="SIP trunk or registered lines to Cisco Unified CM (or any SIP PBX / proxy)",
)

MODES = ("trunk", "register")
SELECT = ("first", "last")


@dataclass(frozen=True)
class SipProfile:
    """One node's SIP ports.

    * ``count`` ports, in workers of at most ``per_worker`` (the pjsua2 wheel holds 4 calls
      per process); worker *i* listens on ``bind:sip_port + i`` and takes RTP ports from
      ``rtp_port + 1000 i``.
    * ``mode``: ``trunk`` (the PBX or a proxy sends calls to the workers' addresses) or
      ``register`` (each port registers ``user-N`` with ``registrar``).
    * ``select``: which redirection picks the mailbox: ``last`` (the original called party,
      the bottom Diversion entry) or ``first`` (the most recent redirecting party).
    * MWI: an unsolicited NOTIFY to ``mwi_target`` (``{extension}`` is replaced), with
      ``Message-Account`` ``mwi_account``; 403 and timeouts are retried ``notify_retries``
      times with backoff from ``notify_backoff`` seconds; a NOTIFY without a final answer
      counts as a timeout after ``notify_timeout`` seconds (the SIP transaction timeout).
    * Transfer: a blind transfer (REFER) counts as failed when the PBX has not reported a 2xx
      final status within ``transfer_timeout`` seconds (the call then goes on).
    """

    bind: str = "127.0.0.1"
    sip_port: int = 5070
    rtp_port: int = 20000
    count: int = 4
    per_worker: int = 4
    mode: str = "trunk"
    registrar: str = ""
    user: str = "vm"
    password_file: str = ""
    select: str = "last"
    mwi_target: str = "sip:{extension}@127.0.0.1:5060"
    mwi_account: str = "sip:{extension}@127.0.0.1"
    notify_retries: int = 3
    notify_backoff: float = 1.0
    notify_timeout: float = 32.0
    transfer_timeout: float = 10.0
    base: IntegrationProfile = CUCM_SIP

    def __post_init__(self) -> None:
        if not (type(self.count) is int and 1 <= self.count <= 1024):
            raise ValueError(f"count must be 1..1024, not {self.count!r}")
        if not (type(self.per_worker) is int and 1 <= self.per_worker <= 4):
            raise ValueError(f"per_worker must be 1..4 (the pjsua2 wheel's limit), not {self.per_worker!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be trunk or register, not {self.mode!r}")
        if self.mode == "register" and not self.registrar.startswith(("sip:", "sips:")):
            raise ValueError("register mode needs a registrar sip: URI")
        if self.select not in SELECT:
            raise ValueError(f"select must be first or last, not {self.select!r}")
        for name in ("mwi_target", "mwi_account"):
            v = getattr(self, name)
            if not (v.startswith(("sip:", "sips:")) and "{extension}" in v
                    and not any(c in v for c in " \r\n<>\"")):
                raise ValueError(f"{name} must be a sip: URI containing {{extension}}, not {v!r}")
        if not (isinstance(self.notify_timeout, (int, float)) and 1 <= self.notify_timeout <= 64):
            raise ValueError(f"notify_timeout must be 1..64 seconds, not {self.notify_timeout!r}")
        if not (isinstance(self.transfer_timeout, (int, float))
                and not isinstance(self.transfer_timeout, bool)
                and 1 <= self.transfer_timeout <= 120):
            raise ValueError(f"transfer_timeout must be 1..120 seconds, not {self.transfer_timeout!r}")
        last = self.sip_port + self.workers - 1
        if not (1 <= self.sip_port and last <= 65535):
            raise ValueError(f"SIP ports {self.sip_port}..{last} do not fit 1..65535")
        if not (1024 <= self.rtp_port and self.rtp_port + 1000 * self.workers <= 65536):
            raise ValueError(f"RTP ports from {self.rtp_port} for {self.workers} workers do not fit")

    @property
    def workers(self) -> int:
        return -(-self.count // self.per_worker)

    def worker_ports(self, i: int) -> list[str]:
        """The port names of worker ``i`` (0-based): sip-1.. in order."""
        lo = i * self.per_worker
        return [f"sip-{n + 1}" for n in range(lo, min(lo + self.per_worker, self.count))]

    def target(self, extension: str) -> str:
        return self.mwi_target.replace("{extension}", extension)

    def account(self, extension: str) -> str:
        return self.mwi_account.replace("{extension}", extension)
