"""Lamps by dialling (telephony/analog/mwi.py through the driver) on the voice-board simulator:
retries of a failure that may pass, the queue for a line while every line is busy, lamps in
parallel, a line that cannot be used."""
from __future__ import annotations

import pytest
import trio

from lab.voiceboard import open_voiceboard
from telephony.analog.driver import AnalogPorts
from telephony.analog.settings import AnalogSettings
from telephony.core import media
from telephony.core.mwi import MwiJob
from tests.telephony.helpers import running_service
from tests.util import until


def job(ext: str, on: bool = True, term: int = 2) -> MwiJob:
    return MwiJob(ext, f"mb-{ext}", on, int(on), 0, term, "deliver")


async def serve(sim, **settings):
    """The driver on board "a" of ``sim`` in a running, active service (an async context)."""
    s = AnalogSettings(enabled=True, socket=sim.socket_path("a"), **{"rings": 1, **settings})
    drv = AnalogPorts(s, node="a")
    return drv, running_service(drivers=[drv])


async def activate(svc, mgr, drv) -> None:
    drv.gate = svc.answering_term
    drv.report = svc.report
    await mgr.send("activate", term=2, lease=600.0)
    await mgr.expect("activated", term=2)
    await until(lambda: all(p["state"] == "idle" for p in svc.registry.status()))


async def test_no_dial_tone_is_retried_then_reported(tmp_path):
    # the driver listens for European tones, the simulated PBX plays North American ones:
    # no seizure ever hears dial tone
    with trio.fail_after(60):
        async with open_voiceboard(tmp_path, {"a": 2}, profile="na") as sim:
            drv, service = await serve(sim, count=2, tone_profile="etsi", mwi_retries=2,
                                       mwi_retry_delay=0.1, dial_tone_timeout=1.0)
            async with service as (svc, mgr, _):
                await activate(svc, mgr, drv)
                with pytest.raises(ConnectionError, match="no dial tone"):
                    await drv.send_mwi(job("1002"))
                assert drv.counters["mwi_attempts"] == 3 and drv.counters["mwi_failed"] == 1
                ev = await mgr.expect("event", event="analog_mwi_failed")
                assert "*911002#" in ev["message"] and "no dial tone" in ev["message"]
                assert sim.lamps == {} and sim.dialled == []  # nothing was dialled
                await until(lambda: all(p["state"] == "idle" for p in svc.registry.status()))


async def test_a_lamp_waits_for_the_only_line_while_a_call_holds_it(tmp_path):
    with trio.fail_after(60):
        async with open_voiceboard(tmp_path, {"a": 1}) as sim:
            drv, service = await serve(sim, count=1)
            async with service as (svc, mgr, _):
                await activate(svc, mgr, drv)
                handle = sim.start_call(digits="", audio=media.tone(400, 3.0), hunt=("a",))
                await until(lambda: svc.registry.status()[0]["state"] == "in_call")
                await drv.send_mwi(job("1002"))
                call = await handle.wait()
                assert call.answered and sim.lamps == {"1002": True}
                assert sim.dialled[-1]["t"] > call.ended_at  # after the call, on the same line


async def test_lamps_in_parallel_take_the_last_lines_first(tmp_path):
    with trio.fail_after(60):
        async with open_voiceboard(tmp_path, {"a": 4}) as sim:
            drv, service = await serve(sim, mwi_lines=2)
            assert drv.mwi_parallel == 2
            async with service as (svc, mgr, _):
                await activate(svc, mgr, drv)
                async with trio.open_nursery() as n:
                    for ext in ("1002", "1003"):
                        n.start_soon(drv.send_mwi, job(ext))
                assert sim.lamps == {"1002": True, "1003": True}
                assert sorted(d["line"] for d in sim.dialled) == [3, 4]


async def test_no_usable_line_fails_at_once(tmp_path):
    with trio.fail_after(30):
        async with open_voiceboard(tmp_path, {"a": 1}) as sim:
            drv, service = await serve(sim, count=1)
            async with service as (svc, mgr, _):
                await activate(svc, mgr, drv)
                sim.set_alarm("a", 1, True)
                await until(lambda: svc.registry.status()[0]["state"] == "down")
                with pytest.raises(ConnectionError, match="every line is in alarm"):
                    await drv.send_mwi(job("1002"))
                assert drv.counters["mwi_attempts"] == 3  # the default 2 retries
