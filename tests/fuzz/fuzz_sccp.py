"""SCCP (telephony.sccp.core): the stream codec (``Framer``, ``decode``) and the station
machine that consumes it (``Station``).

The first byte picks a mode:

* 0 (stream): the bytes, cut into reads, go to a ``Framer``; the messages go to a registered
  station.
* 1 (station): the input is a script of CallManager messages (any id the station handles,
  fields from the input), timer ticks and the driver's calls (answer, hang up, media open or
  failed, dial, unregister, loss and reconnection of the connection).

Invariants: ``Framer.feed`` never raises, holds at most ``MAX_FRAME`` bytes and gives the same
events however the stream is cut; a decoded message encoded again decodes to the same fields
(or ``encode`` refuses it with ``ValueError``: text that was not ASCII); the station raises
nothing for any message or script, and keeps its contract (docs/sccp.md): every ``Offer`` is
followed by exactly one ``CallEnded``, at most one call at a time, every ``OpenMedia`` /
``StartMedia`` is closed by a ``StopMedia`` before the call's ``CallEnded``, every ``dial``
gives exactly one ``DialResult``, and nothing but RegisterReq and KeepAliveReq is sent before
RegisterAck.
"""
from __future__ import annotations

import struct

from telephony.sccp.core.messages import (
    MAX_FRAME,
    Framer,
    Layout,
    Message,
    MsgId,
    ProtocolError,
    decode,
    encode,
    layout_for,
)
from telephony.sccp.core.station import (
    CallEnded,
    DialResult,
    Disconnect,
    Offer,
    OpenMedia,
    Registered,
    Send,
    StartMedia,
    Station,
    StationConfig,
    StopMedia,
    Unregistered,
)
from tests.fuzz.common import Input, check, chunks

CONFIG = StationConfig(device_name="CiscoUM1-VI1", station_ip="10.0.0.5")
TO_STATION = (MsgId.REGISTER_ACK, MsgId.REGISTER_REJECT, MsgId.CAPABILITIES_REQ,
              MsgId.KEEPALIVE_ACK, MsgId.RESET, MsgId.UNREGISTER_ACK, MsgId.LINE_STAT_RES,
              MsgId.CALL_INFO, MsgId.CALL_STATE, MsgId.START_TONE, MsgId.OPEN_RECEIVE_CHANNEL,
              MsgId.START_MEDIA_TRANSMISSION, MsgId.STOP_MEDIA_TRANSMISSION,
              MsgId.CLOSE_RECEIVE_CHANNEL, MsgId.SET_RINGER, MsgId.DISPLAY_TEXT)
BEFORE_ACK = frozenset({MsgId.REGISTER_REQ, MsgId.KEEPALIVE_REQ})


class Contract:
    """Follows a station's actions and checks docs/sccp.md's contract."""

    def __init__(self) -> None:
        self.offered = False
        self.media = False
        self.dials = 0
        self.registered = False

    def actions(self, acts: list) -> None:
        for a in acts:
            if isinstance(a, Send):
                mid = struct.unpack_from("<III", a.data)[2]
                check(self.registered or mid in BEFORE_ACK,
                      f"sent {MsgId(mid).name} before RegisterAck")
                decode(a.data)  # what we send decodes
            elif isinstance(a, Registered):
                self.registered = True
            elif isinstance(a, (Unregistered, Disconnect)):
                self.registered = False
            elif isinstance(a, Offer):
                check(not self.offered, "a second Offer while a call is offered")
                self.offered = True
            elif isinstance(a, CallEnded):
                check(self.offered, "CallEnded without an Offer")
                check(not self.media, "CallEnded before StopMedia")
                self.offered = False
            elif isinstance(a, (OpenMedia, StartMedia)):
                self.media = True
            elif isinstance(a, StopMedia):
                self.media = False
            elif isinstance(a, DialResult):
                check(self.dials > 0, "DialResult without a dial")
                self.dials -= 1

    def ended(self) -> None:
        check(not self.offered and not self.media and self.dials == 0,
              f"owed at the end: offered={self.offered} media={self.media} dials={self.dials}")


def fields_for(inp: Input, layout: Layout) -> dict:
    if type(layout) is not Layout:
        return {}
    out = {}
    for f in layout.named:
        if f.kind in ("u8", "u16", "u32"):
            out[f.name] = inp.u8() if inp.flag() else inp.uint(f.size)
        elif f.kind == "text":
            out[f.name] = inp.sized(f.size).decode("ascii", "replace").replace("\ufffd", "?") \
                .replace("\0", "")
        else:
            out[f.name] = ".".join(str(b) for b in inp.take(4).ljust(4, b"\0"))
    return out


def check_round_trip(msg: Message) -> None:
    try:
        frame = msg.encode()
    except ValueError:
        check(any("\ufffd" in v for v in msg.fields.values() if isinstance(v, str)),
              f"{msg.name} decoded but cannot be encoded")
        return
    check(decode(frame) == msg, f"{msg.name} changed in a round trip")


def stream(inp: Input) -> None:
    pattern = inp.u8()
    data = inp.rest()
    framer = Framer()
    events = []
    for piece in chunks(data, pattern):
        events += framer.feed(piece)
        check(framer.buffered <= MAX_FRAME, f"{framer.buffered} bytes held")
    check(events == Framer().feed(data), "events depend on how the stream was cut")
    station, contract, now = Station(CONFIG), Contract(), 1000.0
    contract.actions(station.connected(now))
    contract.actions(station.received(decode(encode(MsgId.REGISTER_ACK, keepalive_interval=30)),
                                      now))
    for ev in events:
        check(isinstance(ev, (Message, ProtocolError)), f"{ev!r:.80}")
        if isinstance(ev, Message):
            check_round_trip(ev)
        now += 0.01
        contract.actions(station.received(ev, now))
        contract.actions(station.tick(now))
    contract.actions(station.lost(now + 1, "closed"))
    contract.ended()


def script(inp: Input) -> None:
    station, contract, now = Station(CONFIG), Contract(), 1000.0
    contract.actions(station.connected(now))
    while inp.left:
        op = inp.u8() % 13
        if op <= 3:
            mid = TO_STATION[inp.u8() % len(TO_STATION)]
            try:
                frame = encode(mid, **fields_for(inp, layout_for(mid)))
            except ValueError:
                continue
            contract.actions(station.received(decode(frame), now))
        elif op == 4:
            now += inp.u8() / 8
            contract.actions(station.tick(now))
        elif op == 5:
            contract.actions(station.answer(now))
        elif op == 6:
            contract.actions(station.hang_up(now))
        elif op == 7:
            contract.actions(station.decline(now))
        elif op == 8:
            contract.actions(station.media_open("10.0.0.5", 16384 + inp.u8(), now))
        elif op == 9:
            contract.actions(station.media_failed(now))
        elif op == 10:
            contract.dials += 1
            contract.actions(station.dial("*55" + str(inp.u8()), now,
                                          calling_party="1002" if inp.flag() else None))
        elif op == 11:
            contract.actions(station.unregister(now))
        else:
            contract.actions(station.lost(now, "reset"))
            contract.actions(station.connected(now))
    contract.actions(station.lost(now, "closed"))
    contract.ended()


def test_one_input(data: bytes) -> None:
    inp = Input(data)
    if inp.u8() & 1:
        script(inp)
    else:
        stream(inp)


def seeds() -> list[bytes]:
    """A registration and an answered call as CallManager sends them, and a station script."""
    cm = [encode(MsgId.REGISTER_ACK, keepalive_interval=30), encode(MsgId.CAPABILITIES_REQ),
          encode(MsgId.LINE_STAT_RES, line_number=1, dir_number="2000"),
          encode(MsgId.CALL_INFO, calling_party="5551001", called_party="2000",
                 original_called_party="1002", call_reference=77, call_type=1,
                 original_cdpn_redirect_reason=2, line_instance=1),
          encode(MsgId.CALL_STATE, call_state=4, line_instance=1, call_reference=77),
          encode(MsgId.OPEN_RECEIVE_CHANNEL, conference_id=1, pass_through_party_id=9,
                 packet_ms=20, compression_type=4, call_reference=77),
          encode(MsgId.START_MEDIA_TRANSMISSION, remote_ip="10.0.0.9", remote_port=20000,
                 compression_type=4, packet_ms=20, call_reference=77, pass_through_party_id=9),
          encode(MsgId.CALL_STATE, call_state=2, line_instance=1, call_reference=77),
          encode(MsgId.KEEPALIVE_ACK)]
    out = [b"\0\0" + b"".join(cm), b"\0\1" + b"".join(cm[:4]) + b"\xff" * 12]
    ring = bytes([0, TO_STATION.index(MsgId.CALL_STATE)])
    ack = bytes([0, 0, 1, 30])
    out.append(b"\1" + ack + ring + b"\1\4" + b"\1\1\1\77" + b"\5" + b"\4\40" + b"\6" + b"\12\7")
    return out
