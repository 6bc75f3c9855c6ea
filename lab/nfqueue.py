"""A small nfnetlink_queue consumer (lab only): the fault campaign's link delay and reordering,
built without netem (this kernel has no sch_netem).

An iptables rule sends the packets of a flow to a queue (``-j NFQUEUE --queue-num N
--queue-bypass``); this process binds that queue over a raw ``NETLINK_NETFILTER`` socket and
gives every packet its verdict (ACCEPT) only after a delay: ``delay_ms`` plus a uniform
``jitter_ms``, and with probability ``reorder`` an extra ``reorder_ms`` so that later packets
overtake it (the kernel takes verdicts in any order, by packet id).  Nothing is dropped or
changed here: loss is an iptables ``statistic`` rule, duplication the ``TEE`` target.

Bounded: at most ``max_held`` packets are held (a packet beyond that is accepted at once and
counted), the kernel queue is limited to the same length and fails open (a full queue
accepts), and ``--queue-bypass`` on the rule lets packets through when no consumer is bound.
On SIGTERM/SIGINT every held packet is accepted, the queue is unbound and the counters are
written (``--stats FILE``, JSON).  ``ready`` on stdout once the queue is bound.

The message codec (:func:`parse_messages`, :func:`config_msg`, :func:`verdict_msg`) is pure
and fuzzed; :func:`main` is ``python -m lab.nfqueue``.

    python -m lab.nfqueue --queue 7 --delay-ms 150 --jitter-ms 20 --reorder 0.3 --reorder-ms 40
"""
from __future__ import annotations

import argparse
import heapq
import json
import random
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["NfqError", "Packet", "parse_messages", "config_msg", "verdict_msg", "Delayer", "main"]

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = (NFNL_SUBSYS_QUEUE << 8) | 0
NFQNL_MSG_VERDICT = (NFNL_SUBSYS_QUEUE << 8) | 1
NFQNL_MSG_CONFIG = (NFNL_SUBSYS_QUEUE << 8) | 2
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 1
NLM_F_ACK = 4
# NFQA_CFG_* attributes
CFG_CMD, CFG_PARAMS, CFG_QUEUE_MAXLEN, CFG_MASK, CFG_FLAGS = 1, 2, 3, 4, 5
CMD_BIND, CMD_UNBIND = 1, 2
COPY_META = 1
CFG_F_FAIL_OPEN = 1
# NFQA_* attributes of a packet / verdict
NFQA_PACKET_HDR, NFQA_VERDICT_HDR, NFQA_PAYLOAD = 1, 2, 10
NF_DROP, NF_ACCEPT = 0, 1

MAX_BATCH = 1 << 20  # one recv: a bounded buffer
NLHDR = struct.Struct("=IHHII")
NFGEN = struct.Struct("=BBH")  # family, version, res_id (big-endian, packed by hand)
NLA = struct.Struct("=HH")


class NfqError(ValueError):
    """Bytes from the netlink socket that are not a well-formed message."""


@dataclass(frozen=True)
class Packet:
    """A queued packet: its id (for the verdict), the hook and the payload's length."""
    packet_id: int
    hook: int
    payload_len: int


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attrs(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    pos = 0
    while pos + NLA.size <= len(data):
        length, kind = NLA.unpack_from(data, pos)
        if length < NLA.size or pos + length > len(data):
            raise NfqError(f"attribute length {length} at {pos} does not fit in {len(data)} bytes")
        out[kind & 0x3FFF] = data[pos + NLA.size:pos + length]
        pos += _align(length)
    return out


def parse_messages(data: bytes) -> tuple[list[Packet], list[int]]:
    """The packets and the netlink error codes (0: an ACK) in one datagram from the socket.
    Raises :class:`NfqError` for a malformed datagram (a length that does not fit, a packet
    without its header attribute); other message types are skipped."""
    if len(data) > MAX_BATCH:
        raise NfqError(f"datagram of {len(data)} bytes is over {MAX_BATCH}")
    packets: list[Packet] = []
    errors: list[int] = []
    pos = 0
    while pos + NLHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = NLHDR.unpack_from(data, pos)
        if length < NLHDR.size or pos + length > len(data):
            raise NfqError(f"message length {length} at {pos} does not fit in {len(data)} bytes")
        body = data[pos + NLHDR.size:pos + length]
        if kind == NLMSG_ERROR:
            if len(body) < 4:
                raise NfqError("short netlink error message")
            errors.append(struct.unpack_from("=i", body)[0])
        elif kind == NFQNL_MSG_PACKET:
            if len(body) < NFGEN.size:
                raise NfqError("packet message without its nfgenmsg header")
            attrs = _attrs(body[NFGEN.size:])
            hdr = attrs.get(NFQA_PACKET_HDR)
            if hdr is None or len(hdr) < 7:
                raise NfqError("packet message without its packet header")
            packet_id = struct.unpack_from(">I", hdr)[0]
            packets.append(Packet(packet_id, hdr[6], len(attrs.get(NFQA_PAYLOAD, b""))))
        elif kind == NLMSG_DONE:
            break
        pos += _align(length)
    return packets, errors


def _msg(kind: int, queue: int, attrs: list[tuple[int, bytes]], *, seq: int = 0, ack: bool = False) -> bytes:
    if not 0 <= queue <= 0xFFFF:
        raise ValueError(f"queue number {queue} is not 0..65535")
    body = NFGEN.pack(socket.AF_UNSPEC, 0, socket.htons(queue))
    for kind_a, value in attrs:
        a = NLA.pack(NLA.size + len(value), kind_a) + value
        body += a + b"\0" * (_align(len(a)) - len(a))
    flags = NLM_F_REQUEST | (NLM_F_ACK if ack else 0)
    return NLHDR.pack(NLHDR.size + len(body), kind, flags, seq, 0) + body


def config_msg(queue: int, *, bind: bool = True, maxlen: int = 4096, seq: int = 0) -> bytes:
    """Bind (or unbind) ``queue`` with metadata copy mode, ``maxlen`` and fail-open."""
    cmd = struct.pack(">BBH", CMD_BIND if bind else CMD_UNBIND, 0, socket.AF_INET)
    attrs = [(CFG_CMD, cmd)]
    if bind:
        attrs += [(CFG_PARAMS, struct.pack(">IB", 0, COPY_META)),
                  (CFG_QUEUE_MAXLEN, struct.pack(">I", maxlen)),
                  (CFG_MASK, struct.pack(">I", CFG_F_FAIL_OPEN)),
                  (CFG_FLAGS, struct.pack(">I", CFG_F_FAIL_OPEN))]
    return _msg(NFQNL_MSG_CONFIG, queue, attrs, seq=seq, ack=True)


def verdict_msg(queue: int, packet_id: int, verdict: int = NF_ACCEPT) -> bytes:
    return _msg(NFQNL_MSG_VERDICT, queue, [(NFQA_VERDICT_HDR, struct.pack(">II", verdict, packet_id))])


@dataclass
class Delayer:
    """When each packet is released (pure: time comes in as ``now``)."""
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    reorder: float = 0.0
    reorder_ms: float = 0.0
    max_held: int = 4096
    seed: int = 0
    held: list[tuple[float, int, int]] = field(default_factory=list)  # (due, order, id)
    counters: dict[str, int] = field(default_factory=lambda: {"received": 0, "released": 0,
                                                               "reordered": 0, "overflow": 0,
                                                               "held_max": 0})

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._order = 0

    def add(self, packet_id: int, now: float) -> bool:
        """Hold the packet; False when it must be accepted at once (the hold is full)."""
        self.counters["received"] += 1
        if len(self.held) >= self.max_held:
            self.counters["overflow"] += 1
            return False
        due = now + (self.delay_ms + self._rng.uniform(0.0, self.jitter_ms)) / 1000.0
        if self.reorder and self._rng.random() < self.reorder:
            due += self.reorder_ms / 1000.0
            self.counters["reordered"] += 1
        self._order += 1
        heapq.heappush(self.held, (due, self._order, packet_id))
        self.counters["held_max"] = max(self.counters["held_max"], len(self.held))
        return True

    def due(self, now: float) -> list[int]:
        out = []
        while self.held and self.held[0][0] <= now:
            out.append(heapq.heappop(self.held)[2])
        self.counters["released"] += len(out)
        return out

    def next_due(self) -> float | None:
        return self.held[0][0] if self.held else None

    def drain(self) -> list[int]:
        out = [p for _, _, p in self.held]
        self.held.clear()
        self.counters["released"] += len(out)
        return out


def _bind(sock: socket.socket, queue: int, maxlen: int) -> None:
    sock.send(config_msg(queue, bind=True, maxlen=maxlen, seq=1))
    sock.settimeout(2.0)
    while True:
        _, errors = parse_messages(sock.recv(65536))
        if errors:
            if errors[0] != 0:
                raise OSError(-errors[0], f"binding nfqueue {queue} refused")
            return


def run(queue: int, delayer: Delayer, stats: Path | None) -> int:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((0, 0))
    stop = False

    def on_signal(signum, frame) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    _bind(sock, queue, delayer.max_held)
    print("ready", flush=True)
    errors = {"nobufs": 0, "malformed": 0}
    try:
        while not stop:
            now = time.monotonic()
            for pid in delayer.due(now):
                sock.send(verdict_msg(queue, pid))
            nxt = delayer.next_due()
            sock.settimeout(0.2 if nxt is None else max(0.0005, min(0.2, nxt - now)))
            try:
                data = sock.recv(MAX_BATCH)
            except socket.timeout:
                continue
            except OSError as e:  # ENOBUFS: the kernel dropped messages (fail-open queue)
                errors["nobufs"] += 1 if e.errno == 105 else 0
                if e.errno != 105 and not stop:
                    raise
                continue
            try:
                packets, _ = parse_messages(data)
            except NfqError:
                errors["malformed"] += 1
                continue
            now = time.monotonic()
            for p in packets:
                if not delayer.add(p.packet_id, now):
                    sock.send(verdict_msg(queue, p.packet_id))
    finally:
        for pid in delayer.drain():
            try:
                sock.send(verdict_msg(queue, pid))
            except OSError:
                pass
        try:
            sock.send(config_msg(queue, bind=False))
        except OSError:
            pass
        sock.close()
        if stats is not None:
            stats.write_text(json.dumps({**delayer.counters, **errors}))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.nfqueue", description=__doc__.split("\n")[0])
    ap.add_argument("--queue", type=int, required=True)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--jitter-ms", type=float, default=0.0)
    ap.add_argument("--reorder", type=float, default=0.0, help="probability of an extra hold")
    ap.add_argument("--reorder-ms", type=float, default=0.0)
    ap.add_argument("--max-held", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stats", type=Path)
    a = ap.parse_args(argv)
    if not 0 <= a.reorder <= 1 or min(a.delay_ms, a.jitter_ms, a.reorder_ms) < 0 or a.max_held < 1:
        ap.error("delays must be >= 0, --reorder 0..1, --max-held >= 1")
    return run(a.queue, Delayer(a.delay_ms, a.jitter_ms, a.reorder, a.reorder_ms, a.max_held, a.seed),
               a.stats)


if __name__ == "__main__":
    sys.exit(main())
