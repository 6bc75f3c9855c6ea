"""The port-independent call flow, on an in-memory CallPort with fake directory and store.

``FakePort`` numbers every port call (play, record, collect_digits, hangup) as a step;
``hang_up_at=k`` makes the caller hang up during step k, which is how "hang-up at every step"
is tested: run the path once to count its steps, then hang up in each of them.
"""
from __future__ import annotations

import pytest
import trio

from telephony.core import media
from telephony.core.callflow import (
    Announcer,
    CallFlow,
    CallPort,
    Outcome,
    PinCheck,
    PinVerdict,
    check_destination,
    check_digit_request,
)
from telephony.core.events import CallArrival, Reason
from telephony.core.message import VoiceMessage, message_id_for

SPEECH = media.tone(440, 1.5)  # what callers say in these tests
GREETING_4000 = media.wav_bytes(media.tone(300, 0.7))


def sub(ext: str, greeting: str | None = None) -> dict:
    return {"extension": ext, "name": f"Subscriber {ext}", "mailbox": f"mb-{ext}",
            "mwi_method": "none", "notify": [], "greeting": greeting}


SUBSCRIBERS = {"4000": sub("4000", "g4000.wav"), "4001": sub("4001"),
               "4002": sub("4002", "broken.wav"), "4003": sub("4003", "missing.wav")}
OPERATOR = {"extension": "0", "name": "Operator", "mailbox": "mb-operator",
            "mwi_method": "none", "notify": [], "greeting": None}


class FakeDirectory:
    def __init__(self, subscribers=None, default=OPERATOR, greetings=None) -> None:
        self.subscribers = dict(SUBSCRIBERS if subscribers is None else subscribers)
        self.default = default
        self.greetings = {"g4000.wav": GREETING_4000, "broken.wav": b"RIFF junk"}
        self.greetings.update(greetings or {})

    def by_extension(self, ext: str) -> dict | None:
        return self.subscribers.get(ext)

    def default_mailbox(self) -> dict | None:
        return self.default

    def greeting(self, subscriber: dict) -> bytes | None:
        name = subscriber.get("greeting")
        if name is None:
            return None
        if name not in self.greetings:
            raise FileNotFoundError(name)
        return self.greetings[name]


class FakeMailboxes:
    """Messages per mailbox: uid -> WAV, oldest first; ``saved`` counts old ones."""

    def __init__(self, boxes: dict[str, list[tuple[str, bytes]]] | None = None,
                 saved: int = 2) -> None:
        self.boxes = {k: list(v) for k, v in (boxes or {}).items()}
        self.saved = saved
        self.heard: list[tuple[str, str]] = []

    def _new(self, mailbox: str) -> list[tuple[str, bytes]]:
        done = {uid for mb, uid in self.heard if mb == mailbox}
        return [(u, w) for u, w in self.boxes.get(mailbox, []) if u not in done]

    async def counts(self, mailbox: str) -> tuple[int, int]:
        await trio.lowlevel.checkpoint()
        return len(self._new(mailbox)), self.saved + sum(mb == mailbox for mb, _ in self.heard)

    async def list_new(self, mailbox: str) -> list[tuple[str, bytes]]:
        await trio.lowlevel.checkpoint()
        return self._new(mailbox)

    async def mark_heard(self, mailbox: str, uid: str) -> None:
        await trio.lowlevel.checkpoint()
        self.heard.append((mailbox, uid))


class Sink:
    """deliver() and lamp() of the flow."""

    def __init__(self) -> None:
        self.delivered: list[VoiceMessage] = []
        self.lamps: list[tuple[str, str]] = []
        self.order: list[str] = []

    async def deliver(self, msg: VoiceMessage) -> None:
        await trio.lowlevel.checkpoint()
        self.delivered.append(msg)
        self.order.append("deliver")

    async def lamp(self, mailbox: str, extension: str) -> None:
        await trio.lowlevel.checkpoint()
        self.lamps.append((mailbox, extension))
        self.order.append("lamp")


class FakePort:
    """An in-memory CallPort.  ``play_digits[k]``: the digit that interrupts the play of step
    k (if interruptible).  ``recording``: (PCM, reason) that record() returns.  ``typed``: what
    collect_digits() returns.  ``hang_up_at``: the step during which the caller hangs up (a
    recording cut so keeps its audio).  ``transfer_ok``: whether the PBX takes a transfer."""

    def __init__(self, *, recording: tuple[bytes, str] = (SPEECH, "silence"),
                 play_digits: dict[int, str] | None = None, typed: str = "",
                 hang_up_at: int | None = None, transfer_ok: bool = True) -> None:
        self.transfer_ok = transfer_ok
        self.recording = recording
        self.play_digits = play_digits or {}
        self.typed = typed
        self.hang_up_at = hang_up_at
        self.steps: list[tuple[str, dict]] = []
        self.after_hangup: list[str] = []  # port calls made once the call was over
        self.ended_by: str | None = None

    @property
    def hung_up(self) -> bool:
        return self.ended_by is not None

    def _step(self, kind: str, **info) -> tuple[int, bool]:
        """Log a step; returns (its number, True if the caller hangs up during it)."""
        if self.hung_up:
            self.after_hangup.append(kind)
        n = len(self.steps)
        self.steps.append((kind, info))
        if n == self.hang_up_at and not self.hung_up:
            self.ended_by = "caller"
            return n, True
        return n, False

    def played(self) -> list[bytes]:
        return [info["pcm"] for kind, info in self.steps if kind == "play"]

    async def play(self, wav: bytes, *, interruptible: bool = True) -> str | None:
        await trio.lowlevel.checkpoint()
        pcm = media.pcm_of(wav)
        was_up = not self.hung_up
        n, _ = self._step("play", pcm=pcm, interruptible=interruptible)
        if not was_up or self.hung_up:
            return None
        return self.play_digits.get(n) if interruptible else None

    async def record(self, *, max_seconds: float, silence_seconds: float) -> tuple[bytes, str]:
        await trio.lowlevel.checkpoint()
        was_up = not self.hung_up
        _, cut = self._step("record", max_seconds=max_seconds, silence_seconds=silence_seconds)
        pcm, reason = self.recording
        if not was_up:
            return media.wav_bytes(b""), "hangup"
        return media.wav_bytes(pcm), "hangup" if cut else reason

    async def collect_digits(self, *, max_digits: int, timeout: float,
                             terminator: str = "#") -> str:
        await trio.lowlevel.checkpoint()
        was_up = not self.hung_up
        _, cut = self._step("collect", max_digits=max_digits, timeout=timeout)
        return "" if cut or not was_up else self.typed[:max_digits]

    async def transfer(self, destination: str) -> bool:
        check_destination(destination)
        await trio.lowlevel.checkpoint()
        was_up = not self.hung_up
        _, cut = self._step("transfer", to=destination)
        if not was_up or cut:
            return False
        if self.transfer_ok:
            self.ended_by = "transferred"
        return self.transfer_ok

    async def hangup(self) -> None:
        await trio.lowlevel.checkpoint()
        if not self.hung_up:
            self._step("hangup")
            if not self.hung_up:
                self.ended_by = "service"


class AnnouncingPort(FakePort):
    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.announced: list[tuple[str, dict]] = []

    async def announce(self, event: str, **fields) -> None:
        await trio.lowlevel.checkpoint()
        if self.hung_up:
            self.after_hangup.append("announce")
        self.announced.append((event, fields))


def arrival(*, call_id: str = "c1", calling: str = "5551234", forwarding: str = "4000",
            reason: str = "busy", called: str = "7000") -> CallArrival:
    return CallArrival(node="a", port="loopback-1", call_id=call_id, calling=calling,
                       called=called, forwarding=forwarding, reason=reason,
                       integration="loopback")


class SkipPins:
    """A PIN gate whose subscribers all opted into ``skip_pin_from_own_phone``: the tests of
    the playback itself (the PIN step: tests/telephony/core/test_callflow_pin.py)."""

    def __init__(self) -> None:
        self.opens: list[tuple[str, str, str]] = []

    async def check(self, subscriber: dict, calling: str) -> PinCheck:
        await trio.lowlevel.checkpoint()
        return PinCheck("skip" if calling == subscriber["extension"] else "ask")

    async def verify(self, subscriber: dict, pin: str, calling: str) -> PinVerdict:
        raise AssertionError("no PIN is asked with the opt-in")

    async def opened(self, subscriber: dict, calling: str, how: str) -> None:
        await trio.lowlevel.checkpoint()
        self.opens.append((subscriber["mailbox"], calling, how))

    async def change(self, subscriber: dict, pin: str, calling: str) -> bool:
        raise AssertionError("no PIN change without a PIN")


def make_flow(directory=None, mailboxes=None, sink=None, **kw) -> tuple[CallFlow, Sink]:
    sink = sink or Sink()
    kw.setdefault("pins", SkipPins())
    flow = CallFlow(node="a", directory=directory or FakeDirectory(),
                    mailboxes=mailboxes or FakeMailboxes(), deliver=sink.deliver,
                    lamp=sink.lamp, clock=lambda: "2026-01-02T03:04:05Z", **kw)
    return flow, sink


PROMPTS = media.default_prompts()


def pcm(name: str) -> bytes:
    return media.pcm_of(PROMPTS[name])


def kinds(port: FakePort) -> list[str]:
    return [k for k, _ in port.steps]


# ============================================================================ leaving a message


@pytest.mark.parametrize("reason", ["busy", "no_answer", "all", "unknown"])
async def test_forwarded_call_leaves_a_message_with_every_field_right(reason):
    flow, sink = make_flow()
    port = AnnouncingPort()
    out = await flow.handle(arrival(reason=reason), port, 7)
    assert kinds(port) == ["play", "play", "record", "play", "hangup"]
    greeting, beep, goodbye = port.played()
    assert greeting == media.pcm_of(GREETING_4000)  # the subscriber's own greeting
    assert beep == pcm("beep") and goodbye == pcm("goodbye")
    assert port.steps[0][1]["interruptible"] and not port.steps[1][1]["interruptible"]
    assert port.steps[2][1] == {"max_seconds": 120.0, "silence_seconds": 3.0}
    assert port.announced == [("beep", {})]
    assert port.ended_by == "service"
    [msg] = sink.delivered
    assert msg == VoiceMessage(
        message_id=message_id_for("c1", "a", 7), mailbox="mb-4000", extension="4000",
        caller="5551234", forwarding="4000", reason=Reason(reason), duration_s=1.5,
        node="a", call_id="c1", term=7, recorded_at="2026-01-02T03:04:05Z", audio=msg.audio)
    assert media.pcm_of(msg.audio) == SPEECH
    assert sink.lamps == [("mb-4000", "4000")]
    assert sink.order == ["deliver", "lamp"]
    assert out == Outcome("message", msg, [], "mb-4000", end_reason="silence")


@pytest.mark.parametrize("ext", ["4001", "4002", "4003"])
async def test_subscriber_without_a_usable_greeting_gets_the_standard_greeting(ext):
    """No greeting, a greeting that is not a WAV, a greeting file that is missing."""
    flow, sink = make_flow()
    port = FakePort()
    out = await flow.handle(arrival(forwarding=ext), port, 3)
    assert port.played()[0] == pcm("standard_greeting")
    assert out.kind == "message" and out.message.mailbox == f"mb-{ext}"
    assert sink.lamps == [(f"mb-{ext}", ext)]


async def test_a_digit_during_the_greeting_skips_to_the_beep():
    flow, sink = make_flow()
    port = FakePort(play_digits={0: "#"})
    out = await flow.handle(arrival(), port, 3)
    assert kinds(port) == ["play", "play", "record", "play", "hangup"]
    assert port.played()[1] == pcm("beep")
    assert out.kind == "message"


@pytest.mark.parametrize("end", ["silence", "max", "dtmf", "hangup"])
async def test_every_end_of_recording_keeps_a_long_enough_message(end):
    flow, sink = make_flow()
    port = FakePort(recording=(SPEECH, end))
    if end == "hangup":
        port.hang_up_at = 2
    out = await flow.handle(arrival(), port, 3)
    assert out.kind == "message" and out.end_reason == end
    assert len(sink.delivered) == 1 and media.pcm_of(sink.delivered[0].audio) == SPEECH
    assert sink.lamps == [("mb-4000", "4000")]
    if end == "hangup":
        assert kinds(port) == ["play", "play", "record"] and not port.after_hangup
    else:
        assert kinds(port)[-2:] == ["play", "hangup"]


@pytest.mark.parametrize("seconds", [0.0, 0.1, 0.49])
async def test_a_too_short_message_is_not_delivered(seconds):
    flow, sink = make_flow()
    port = FakePort(recording=(media.tone(440, seconds), "silence"))
    out = await flow.handle(arrival(), port, 3)
    assert out.kind == "no_message" and out.message is None and out.mailbox == "mb-4000"
    assert sink.delivered == [] and sink.lamps == []
    assert kinds(port) == ["play", "play", "record", "play", "hangup"]  # goodbye, hang up


async def test_min_message_length_is_configurable():
    flow, sink = make_flow(min_message_s=0.05, max_message_s=30, silence_s=1.5)
    port = FakePort(recording=(media.tone(440, 0.1), "silence"))
    out = await flow.handle(arrival(), port, 3)
    assert out.kind == "message" and out.message.duration_s == 0.1
    assert port.steps[2][1] == {"max_seconds": 30.0, "silence_seconds": 1.5}


async def test_forwarding_number_that_is_no_subscriber_goes_to_the_default_mailbox():
    flow, sink = make_flow()
    port = AnnouncingPort()
    out = await flow.handle(arrival(forwarding="4999"), port, 3)
    assert port.played()[:2] == [pcm("opening_greeting"), pcm("beep")]
    assert out.kind == "message" and out.message.mailbox == "mb-operator"
    assert out.message.extension == "0" and sink.lamps == [("mb-operator", "0")]


@pytest.mark.parametrize("calling", ["", "5550000"])
async def test_direct_call_from_an_unknown_number_leaves_a_message_in_the_default_mailbox(
        calling):
    flow, sink = make_flow()
    port = FakePort()
    out = await flow.handle(arrival(calling=calling, forwarding="", reason="direct"), port, 3)
    assert port.played()[:2] == [pcm("opening_greeting"), pcm("beep")]
    assert out.kind == "message" and out.message.mailbox == "mb-operator"
    assert out.message.caller == calling and out.message.forwarding == ""
    assert out.message.reason is Reason.DIRECT


async def test_default_mailbox_row_without_an_extension():
    flow, sink = make_flow(directory=FakeDirectory(default={"mailbox": "general"}))
    out = await flow.handle(arrival(forwarding="", reason="direct"), FakePort(), 3)
    assert out.message.mailbox == "general" and out.message.extension == ""
    assert sink.lamps == [("general", "")]


@pytest.mark.parametrize("default", [None, {"mailbox": ""}, {"name": "no mailbox"}, "junk"])
async def test_no_default_mailbox_means_goodbye_and_no_message(default):
    flow, sink = make_flow(directory=FakeDirectory(default=default))
    port = FakePort()
    out = await flow.handle(arrival(forwarding="", reason="direct"), port, 3)
    assert out.kind == "no_message" and sink.delivered == []
    assert kinds(port) == ["play", "play", "hangup"]
    assert port.played() == [pcm("opening_greeting"), pcm("goodbye")]


async def test_unknown_caller_can_type_an_extension_during_the_opening_greeting():
    flow, sink = make_flow()
    port = FakePort(play_digits={0: "4"}, typed="001")
    out = await flow.handle(arrival(forwarding="", reason="direct"), port, 3)
    assert kinds(port) == ["play", "collect", "play", "play", "record", "play", "hangup"]
    assert port.steps[1] == ("collect", {"max_digits": 31, "timeout": 3.0})
    assert port.played()[1] == pcm("standard_greeting")  # 4001's: it has none
    assert out.kind == "message" and out.message.mailbox == "mb-4001"


@pytest.mark.parametrize("first,typed", [("9", "99"), ("#", ""), ("*", "")])
async def test_an_unknown_or_no_extension_typed_falls_back_to_the_default_mailbox(first, typed):
    flow, sink = make_flow()
    port = FakePort(play_digits={0: first}, typed=typed)
    out = await flow.handle(arrival(forwarding="", reason="direct"), port, 3)
    assert out.kind == "message" and out.message.mailbox == "mb-operator"
    assert ("collect" in kinds(port)) == (first not in "#*")


# ============================================================================ operator transfer


async def test_zero_during_a_subscribers_greeting_transfers_to_the_operator():
    flow, sink = make_flow(operator="5000")
    port = FakePort(play_digits={0: "0"})
    out = await flow.handle(arrival(), port, 3)
    assert kinds(port) == ["play", "play", "transfer"]
    assert port.played()[1] == pcm("transfer") and not port.steps[1][1]["interruptible"]
    assert port.steps[2][1] == {"to": "5000"}
    assert out == Outcome("transferred", mailbox="mb-4000", transferred_to="5000")
    assert port.ended_by == "transferred" and not port.after_hangup
    assert sink.delivered == [] and sink.lamps == []


async def test_a_refused_transfer_goes_on_to_the_beep_and_the_message():
    flow, sink = make_flow(operator="5000")
    port = FakePort(play_digits={0: "0"}, transfer_ok=False)
    out = await flow.handle(arrival(), port, 3)
    assert kinds(port) == ["play", "play", "transfer", "play", "record", "play", "hangup"]
    assert port.played()[2] == pcm("beep")
    assert out.kind == "message" and out.message.mailbox == "mb-4000"
    assert sink.lamps == [("mb-4000", "4000")]


async def test_without_an_operator_zero_is_any_digit():
    flow, sink = make_flow()
    port = FakePort(play_digits={0: "0"})
    out = await flow.handle(arrival(), port, 3)
    assert "transfer" not in kinds(port) and out.kind == "message"


async def test_zero_alone_in_the_opening_greeting_is_the_operator():
    flow, sink = make_flow(operator="0")
    port = FakePort(play_digits={0: "0"}, typed="")
    out = await flow.handle(arrival(forwarding="", reason="direct"), port, 3)
    assert kinds(port) == ["play", "collect", "play", "transfer"]
    assert out == Outcome("transferred", transferred_to="0") and sink.delivered == []


@pytest.mark.parametrize("typed,mailbox", [("1", "mb-operator"), ("001", "mb-4001")])
async def test_zero_followed_by_more_digits_is_an_extension(typed, mailbox):
    flow, sink = make_flow(operator="0", directory=FakeDirectory(
        subscribers={**SUBSCRIBERS, "0001": sub("0001") | {"mailbox": "mb-4001"}}))
    port = FakePort(play_digits={0: "0"}, typed=typed)
    out = await flow.handle(arrival(forwarding="", reason="direct"), port, 3)
    assert "transfer" not in kinds(port)
    assert out.kind == "message" and out.message.mailbox == mailbox


async def test_a_refused_transfer_from_the_opening_greeting_leaves_a_message():
    """The operator's own subscriber row (extension 0 here) then takes the message."""
    flow, sink = make_flow(operator="0")
    port = FakePort(play_digits={0: "0"}, transfer_ok=False)
    out = await flow.handle(arrival(forwarding="", reason="direct"), port, 3)
    assert kinds(port)[:4] == ["play", "collect", "play", "transfer"]
    assert out.kind == "message" and out.message.mailbox == "mb-operator"


@pytest.mark.parametrize("k", range(3))
async def test_hang_up_during_the_transfer_steps(k):
    flow, sink = make_flow(operator="5000")
    port = FakePort(play_digits={0: "0"}, hang_up_at=k)
    out = await flow.handle(arrival(), port, 3)
    assert out.kind == "hung_up_early" and port.ended_by == "caller"
    assert len(port.steps) == k + 1 and not port.after_hangup
    assert sink.delivered == [] and sink.lamps == []


@pytest.mark.parametrize("bad", ["", "12a", "1" * 32, 5, None, "0 "])
def test_a_bad_transfer_destination_is_refused(bad):
    with pytest.raises(ValueError, match="transfer destination"):
        check_destination(bad)


# ============================================================================ mailbox access


def box(n: int, mailbox: str = "mb-4000") -> FakeMailboxes:
    msgs = [(f"u{i}", media.wav_bytes(media.tone(500 + 100 * i, 0.2))) for i in range(n)]
    return FakeMailboxes({mailbox: msgs})


@pytest.mark.parametrize("n", [0, 1, 3])
async def test_mailbox_access_plays_and_marks_every_new_message(n):
    store = box(n)
    flow, sink = make_flow(mailboxes=store)
    port = AnnouncingPort()
    out = await flow.handle(arrival(calling="4000", forwarding="", reason="direct"), port, 3)
    assert port.announced == [("messages", {"new": n, "saved": 2})]
    played = port.played()
    assert played[0] == media.pcm_of(media.messages_prompt(n))
    assert played[1:1 + n] == [media.pcm_of(w) for _, w in store.boxes["mb-4000"]]
    assert played[1 + n:] == [pcm("end_of_messages"), pcm("goodbye")]
    assert store.heard == [("mb-4000", f"u{i}") for i in range(n)]
    assert out == Outcome("mailbox_access", None, [f"u{i}" for i in range(n)], "mb-4000",
                          new_messages=n)
    assert sink.lamps == ([("mb-4000", "4000")] if n else [])
    assert sink.delivered == [] and port.ended_by == "service"


async def test_a_digit_skips_a_message_which_stays_new_and_star_stops():
    store = box(4)
    flow, sink = make_flow(mailboxes=store)
    port = FakePort(play_digits={2: "5", 4: "*"})  # steps: count, u0, u1 (skip), u2, u3 (stop)
    out = await flow.handle(arrival(calling="4000", forwarding="", reason="direct"), port, 3)
    assert out.heard == ["u0", "u2"] and store.heard == [("mb-4000", "u0"), ("mb-4000", "u2")]
    assert port.played()[-1] == pcm("goodbye")
    assert pcm("end_of_messages") not in port.played()  # stopped: straight to goodbye
    assert sink.lamps == [("mb-4000", "4000")]


async def test_a_message_that_cannot_be_played_is_skipped():
    store = FakeMailboxes({"mb-4000": [("bad", b"RIFF????WAVEjunk"),
                                       ("ok", media.wav_bytes(media.tone(600, 0.2)))]})
    flow, sink = make_flow(mailboxes=store)
    out = await flow.handle(arrival(calling="4000", forwarding="", reason="direct"),
                            FakePort(), 3)
    assert out.heard == ["ok"] and store.heard == [("mb-4000", "ok")]


async def test_a_forwarded_call_from_a_subscriber_still_leaves_a_message():
    """Mailbox access is only for direct calls; 4001 calling 4000 who is busy leaves one."""
    flow, sink = make_flow(mailboxes=box(2))
    out = await flow.handle(arrival(calling="4001", forwarding="4000"), FakePort(), 3)
    assert out.kind == "message" and out.message.mailbox == "mb-4000"


# ============================================================================ hang-up at every step


PATHS = {
    "message": dict(call=dict(forwarding="4000"), port=dict()),
    "greeting skipped": dict(call=dict(forwarding="4000"), port=dict(play_digits={0: "1"})),
    "short message": dict(call=dict(forwarding="4000"),
                          port=dict(recording=(media.tone(440, 0.2), "silence"))),
    "default mailbox": dict(call=dict(forwarding="", reason="direct"), port=dict()),
    "typed extension": dict(call=dict(forwarding="", reason="direct"),
                            port=dict(play_digits={0: "4"}, typed="000")),
    "nowhere": dict(call=dict(forwarding="", reason="direct"), port=dict(), default=None),
    "mailbox access": dict(call=dict(calling="4000", forwarding="", reason="direct"),
                           port=dict(), messages=3),
    "operator refused": dict(call=dict(forwarding="4000"), flow=dict(operator="0"),
                             port=dict(play_digits={0: "0"}, transfer_ok=False)),
}


async def run_path(path: str, hang_up_at: int | None):
    spec = PATHS[path]
    store = box(spec.get("messages", 0))
    flow, sink = make_flow(directory=FakeDirectory(default=spec.get("default", OPERATOR)),
                           mailboxes=store, **spec.get("flow", {}))
    port = AnnouncingPort(hang_up_at=hang_up_at, **spec["port"])
    out = await flow.handle(arrival(**spec["call"]), port, 3)
    return out, port, sink, store


@pytest.mark.parametrize("path", sorted(PATHS))
async def test_hang_up_at_every_step_ends_the_flow_cleanly(path):
    _, full, _, _ = await run_path(path, None)
    assert full.ended_by == "service" and full.steps[-1][0] == "hangup"
    record_step = next((i for i, (k, _) in enumerate(full.steps) if k == "record"), None)
    for k in range(len(full.steps) - 1):  # the last step is the flow's own hang-up
        out, port, sink, store = await run_path(path, k)
        assert port.ended_by == "caller", (path, k)
        assert port.after_hangup == [], (path, k, port.after_hangup)
        assert len(port.steps) == k + 1, (path, k)
        if path == "mailbox access":
            assert out.kind == "mailbox_access"
            # a message counts as heard only if its play ended before the hang-up
            assert len(out.heard) == max(0, min(3, k - 1))
            assert store.heard == [("mb-4000", u) for u in out.heard]
            assert sink.lamps == ([("mb-4000", "4000")] if out.heard else [])
            continue
        if record_step is None or k < record_step:
            assert out.kind in ("hung_up_early", "no_message"), (path, k)
            assert sink.delivered == [] and sink.lamps == []
        elif path == "short message":
            assert out.kind == "no_message" and sink.delivered == []
        else:  # cut during or after the recording: the message is kept
            assert out.kind == "message", (path, k)
            assert len(sink.delivered) == 1 and media.pcm_of(sink.delivered[0].audio) == SPEECH
            assert out.end_reason == ("hangup" if k == record_step else "silence")


# ============================================================================ construction


def test_ports_satisfy_the_protocols():
    assert isinstance(FakePort(), CallPort) and not isinstance(FakePort(), Announcer)
    assert isinstance(AnnouncingPort(), Announcer)


async def test_custom_prompts_replace_the_generated_ones():
    mine = media.wav_bytes(media.tone(1200, 0.1))
    flow, sink = make_flow(prompts={"beep": mine, "goodbye": mine})
    port = FakePort()
    await flow.handle(arrival(forwarding="4001"), port, 3)
    assert port.played() == [pcm("standard_greeting"), media.pcm_of(mine),
                             media.pcm_of(mine)]


@pytest.mark.parametrize("kw,fragment", [
    (dict(prompts={"welcome": PROMPTS["beep"]}), "unknown prompt"),
    (dict(prompts={"beep": b"not a wav"}), "prompt beep: not a WAV"),
    (dict(prompts={"beep": media.wav_bytes(b"\x00" * 8)[:-2]}), "prompt beep: truncated"),
    (dict(max_message_s=0), "max_message_s"),
    (dict(max_message_s=float("nan")), "max_message_s"),
    (dict(silence_s=-1), "silence_s"),
    (dict(min_message_s=200), "min_message_s"),
    (dict(digit_timeout=True), "digit_timeout"),
    (dict(operator="0x"), "transfer destination"),
    (dict(node=""), "node"),
])
def test_bad_configuration_is_refused_clearly(kw, fragment):
    args = dict(node="a", directory=FakeDirectory(), mailboxes=FakeMailboxes(),
                deliver=Sink().deliver, lamp=Sink().lamp)
    args.update(kw)
    with pytest.raises(ValueError, match=fragment):
        CallFlow(**args)


async def test_a_failing_delivery_is_not_hidden_and_lights_no_lamp():
    sink = Sink()

    async def deliver(msg):
        raise OSError("spool full")

    flow = CallFlow(node="a", directory=FakeDirectory(), mailboxes=FakeMailboxes(),
                    deliver=deliver, lamp=sink.lamp)
    with pytest.raises(OSError, match="spool full"):
        await flow.handle(arrival(), FakePort(), 3)
    assert sink.lamps == []


async def test_default_clock_is_iso_utc():
    flow = CallFlow(node="b", directory=FakeDirectory(), mailboxes=FakeMailboxes(),
                    deliver=Sink().deliver, lamp=Sink().lamp)
    out = await flow.handle(arrival(call_id="x y/1"), FakePort(), 12)
    assert out.message.message_id == "x_y_1.b.12@vmha"
    stamp = out.message.recorded_at
    assert len(stamp) == 20 and stamp[4] == "-" and stamp[10] == "T" and stamp.endswith("Z")


@pytest.mark.parametrize("max_digits, timeout, terminator, message", [
    (0, 1.0, "#", "max_digits must be an integer from 1 to 64"),
    (65, 1.0, "#", "max_digits must be an integer from 1 to 64"),
    (True, 1.0, "#", "max_digits must be an integer from 1 to 64"),
    (4, 0, "#", "timeout must be a number of seconds above 0"),
    (4, float("nan"), "#", "timeout must be a number of seconds above 0"),
    (4, "1", "#", "timeout must be a number of seconds above 0"),
    (4, 1.0, "##", "terminator must be one DTMF digit or ''"),
    (4, 1.0, "A", "terminator must be one DTMF digit or ''"),
    (4, 1.0, None, "terminator must be one DTMF digit or ''"),
])
def test_a_bad_digit_request_is_refused(max_digits, timeout, terminator, message):
    with pytest.raises(ValueError, match=message):
        check_digit_request(max_digits, timeout, terminator)


@pytest.mark.parametrize("terminator", ["", "#", "*", "0"])
def test_a_good_digit_request_passes(terminator):
    assert check_digit_request(64, 0.5, terminator) is None
