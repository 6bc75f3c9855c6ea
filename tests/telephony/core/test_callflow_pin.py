"""The PIN step of mailbox access in the call flow, on the in-memory port of test_callflow:
ask / skip / no PIN / locked, wrong PINs and the lockout, the PIN typed ahead of the prompt,
changing the PIN from the phone, and a hang-up at every step."""
from __future__ import annotations

import pytest
import trio

from telephony.core import media
from telephony.core.callflow import PIN_CHANGE_KEY, PIN_TRIES, Outcome, PinCheck, PinVerdict, pin_prompts
from telephony.core.pin import UNLOCKED, PinPolicy, after_failure, remaining
from tests.telephony.core.test_callflow import AnnouncingPort, box, make_flow

DIRECT = dict(calling="4000", forwarding="", reason="direct")
PROMPTS = {**media.default_prompts(), **pin_prompts()}
POLICY3 = PinPolicy(max_failures=3)


def pcm(name: str) -> bytes:
    return media.pcm_of(PROMPTS[name])


def arrival(**kw):
    from tests.telephony.core.test_callflow import arrival as make

    return make(**{**DIRECT, **kw})


class Pins:
    """A PIN gate over one subscriber's PIN (plain text here: the hashing is the gate's,
    tested in tests/telephony/test_messaging_pins.py) with the real lockout rule."""

    def __init__(self, pin: str | None = "2468", *, skip: bool = False,
                 policy: PinPolicy = POLICY3, now: float = 1000.0) -> None:
        self.pin, self.skip, self.policy, self.now = pin, skip, policy, now
        self.lock = UNLOCKED
        self.events: list[tuple[str, str]] = []  # (event, calling)
        self.tried: list[str] = []

    async def check(self, sub: dict, calling: str) -> PinCheck:
        await trio.lowlevel.checkpoint()
        if remaining(self.lock, self.now) > 0:
            self.events.append(("access_refused", calling))
            return PinCheck("locked", remaining(self.lock, self.now))
        if self.skip and calling == sub["extension"]:
            return PinCheck("skip")
        if self.pin is None:
            self.events.append(("access_refused", calling))
            return PinCheck("no_pin")
        return PinCheck("ask")

    async def verify(self, sub: dict, pin: str, calling: str) -> PinVerdict:
        await trio.lowlevel.checkpoint()
        self.tried.append(pin)
        if pin == self.pin:
            self.lock = UNLOCKED
            return PinVerdict(True)
        self.lock = after_failure(self.lock, self.now, self.policy)
        left = remaining(self.lock, self.now)
        self.events.append(("mailbox_locked" if left else "pin_failed", calling))
        return PinVerdict(False, left)

    async def opened(self, sub: dict, calling: str, how: str) -> None:
        await trio.lowlevel.checkpoint()
        self.events.append((f"mailbox_access:{how}", calling))

    async def change(self, sub: dict, pin: str, calling: str) -> bool:
        await trio.lowlevel.checkpoint()
        self.pin = pin
        self.events.append(("pin_changed", calling))
        return True


class TypingPort(AnnouncingPort):
    """``entries``: what each collect_digits returns, in turn."""

    def __init__(self, entries: list[str], **kw) -> None:
        super().__init__(**kw)
        self.entries = list(entries)

    async def collect_digits(self, *, max_digits: int, timeout: float, terminator: str = "#") -> str:
        self.typed = self.entries.pop(0) if self.entries else ""
        return await super().collect_digits(max_digits=max_digits, timeout=timeout,
                                            terminator=terminator)


async def test_the_right_pin_opens_the_mailbox():
    pins, store = Pins(), box(2)
    flow, sink = make_flow(mailboxes=store, pins=pins)
    port = TypingPort(["2468"])
    out = await flow.handle(arrival(), port, 3)
    assert out.kind == "mailbox_access" and out.heard == ["u0", "u1"]
    assert port.played()[0] == pcm("enter_pin")
    assert [k for k, _ in port.steps][:2] == ["play", "collect"]
    assert port.steps[1][1]["max_digits"] == 13  # 12 digits and the terminating '#'
    assert pins.events == [("mailbox_access:pin", "4000")] and pins.tried == ["2468"]


async def test_the_first_digit_may_interrupt_the_prompt():
    pins = Pins()
    flow, _ = make_flow(mailboxes=box(0), pins=pins)
    out = await flow.handle(arrival(), TypingPort(["468"], play_digits={0: "2"}), 3)
    assert out.kind == "mailbox_access" and pins.tried == ["2468"]


async def test_a_wrong_pin_then_the_right_one():
    pins = Pins()
    flow, _ = make_flow(mailboxes=box(1), pins=pins)
    port = TypingPort(["1111", "2468"])
    out = await flow.handle(arrival(), port, 3)
    assert out.kind == "mailbox_access" and out.heard == ["u0"]
    assert port.played()[:3] == [pcm("enter_pin"), pcm("pin_wrong"), pcm("enter_pin")]
    assert pins.events == [("pin_failed", "4000"), ("mailbox_access:pin", "4000")]
    assert pins.lock == UNLOCKED  # a success resets the count


async def test_three_wrong_pins_end_the_call_without_access():
    pins = Pins(policy=PinPolicy(max_failures=5))
    store = box(2)
    flow, sink = make_flow(mailboxes=store, pins=pins)
    port = TypingPort(["1", "12345", "9999"])
    out = await flow.handle(arrival(), port, 3)
    assert out == Outcome("access_refused", mailbox="mb-4000", refused="wrong_pin")
    assert len(pins.tried) == PIN_TRIES == 3 and pins.lock.failures == 3
    assert port.played()[-2:] == [pcm("pin_wrong"), pcm("goodbye")]
    assert store.heard == [] and sink.lamps == [] and port.ended_by == "service"
    assert "messages" not in [e for e, _ in port.announced]  # not even the count


async def test_the_failure_that_locks_says_so_and_a_locked_mailbox_refuses_at_once():
    pins = Pins(policy=PinPolicy(max_failures=2, lockout_s=60))
    flow, _ = make_flow(mailboxes=box(1), pins=pins)
    port = TypingPort(["1111", "2222", "2468"])
    out = await flow.handle(arrival(), port, 3)
    assert out.refused == "locked" and pins.tried == ["1111", "2222"]
    assert port.played()[-2:] == [pcm("mailbox_locked"), pcm("goodbye")]
    # the right PIN later, while locked: not even asked
    port = TypingPort(["2468"])
    out = await flow.handle(arrival(), port, 3)
    assert out.refused == "locked" and pins.tried == ["1111", "2222"]
    assert port.played() == [pcm("mailbox_locked"), pcm("goodbye")]
    pins.now += 60  # the lock ran out
    out = await flow.handle(arrival(), TypingPort(["2468"]), 3)
    assert out.kind == "mailbox_access"


async def test_no_pin_set_refuses_access():
    pins = Pins(pin=None)
    flow, _ = make_flow(mailboxes=box(1), pins=pins)
    port = TypingPort([])
    out = await flow.handle(arrival(), port, 3)
    assert out.refused == "no_pin" and port.played() == [pcm("no_pin"), pcm("goodbye")]


async def test_without_a_gate_every_access_is_refused():
    flow, _ = make_flow(mailboxes=box(1), pins=None)
    out = await flow.handle(arrival(), TypingPort([]), 3)
    assert out.refused == "no_gate"


async def test_skip_from_own_phone_opens_without_a_pin():
    pins = Pins(pin=None, skip=True)
    flow, _ = make_flow(mailboxes=box(1), pins=pins)
    port = TypingPort([])
    out = await flow.handle(arrival(), port, 3)
    assert out.kind == "mailbox_access" and pcm("enter_pin") not in port.played()
    assert pins.events == [("mailbox_access:own_phone", "4000")]


async def test_an_empty_entry_uses_a_try_but_is_no_wrong_pin():
    pins = Pins()
    flow, _ = make_flow(mailboxes=box(0), pins=pins)
    out = await flow.handle(arrival(), TypingPort(["", "2468"]), 3)
    assert out.kind == "mailbox_access" and pins.tried == ["2468"] and pins.lock == UNLOCKED
    pins = Pins()
    flow, _ = make_flow(mailboxes=box(0), pins=pins)
    out = await flow.handle(arrival(), TypingPort([], play_digits={0: "#"}), 3)
    assert out.refused == "wrong_pin" and pins.tried == []


def _end_prompt_step(n_messages: int) -> int:
    # enter_pin, collect, messages prompt, each message, end_of_messages
    return 3 + n_messages


@pytest.mark.parametrize("second, changed", [("1357", True), ("1358", False)])
async def test_the_pin_is_changed_from_the_phone_entered_twice(second, changed):
    pins = Pins()
    flow, _ = make_flow(mailboxes=box(1), pins=pins)
    port = TypingPort(["2468", "1357", second],
                      play_digits={_end_prompt_step(1): PIN_CHANGE_KEY})
    out = await flow.handle(arrival(), port, 3)
    assert out.kind == "mailbox_access" and out.pin_changed is changed
    tail = [pcm("new_pin"), pcm("repeat_pin"), pcm("pin_changed" if changed else "pin_not_changed"),
            pcm("goodbye")]
    assert port.played()[-4:] == tail
    assert pins.pin == ("1357" if changed else "2468")
    assert (("pin_changed", "4000") in pins.events) is changed


async def test_a_new_pin_must_be_4_to_12_digits():
    pins = Pins()
    flow, _ = make_flow(mailboxes=box(0), pins=pins)
    port = TypingPort(["2468", "135", "135"], play_digits={_end_prompt_step(0): PIN_CHANGE_KEY})
    out = await flow.handle(arrival(), port, 3)
    assert not out.pin_changed and pins.pin == "2468"


async def test_no_pin_change_without_a_pin_entered():
    pins = Pins(skip=True)
    flow, _ = make_flow(mailboxes=box(0), pins=pins)
    port = TypingPort(["1357", "1357"], play_digits={1: PIN_CHANGE_KEY})  # steps: count, end
    out = await flow.handle(arrival(), port, 3)
    assert out.kind == "mailbox_access" and not out.pin_changed and pins.pin == "2468"
    assert pcm("new_pin") not in port.played()


@pytest.mark.parametrize("entries, digits", [
    (["1111", "2468"], {}),                                   # a wrong try, then in
    (["2468", "1357", "1357"], {_end_prompt_step(1): PIN_CHANGE_KEY}),  # in, then a change
])
async def test_hang_up_at_every_step_of_the_pin_paths(entries, digits):
    async def run(k):
        pins = Pins()
        flow, sink = make_flow(mailboxes=box(1), pins=pins)
        port = TypingPort(entries, hang_up_at=k, play_digits=dict(digits))
        return await flow.handle(arrival(), port, 3), port, pins

    _, full, _ = await run(None)
    assert full.steps[-1][0] == "hangup"
    for k in range(len(full.steps) - 1):
        out, port, pins = await run(k)
        assert port.ended_by == "caller" and port.after_hangup == [], (k, port.after_hangup)
        assert len(port.steps) == k + 1, k
        assert out.kind in ("mailbox_access", "access_refused"), (k, out)
        if out.kind == "access_refused":
            assert out.refused == "hangup"

