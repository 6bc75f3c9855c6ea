"""Qualification of an SMDI serial line: the voice-mail end (``SmdiLink``, as the messaging
service runs it) against the switch end (``PbxSimulator``, the simulator of the PBX's SMDI
side, speaking the real wire format).  On real ports (``--smdi-node``/``--smdi-pbx``) this
checks the cable, the adapters, their drivers and the line settings; without options it runs
on a socat pty pair.  Nothing here judges time except one lower bound (commands are never
faster than the line rate), which a slow machine can only make easier to pass; the measured
figures go to ``--hw-report``."""
from __future__ import annotations

import time

import pytest
import trio

from lab.smdi import LinkService
from lab.smdi_pbx import PbxSimulator
from telephony.core.mwi import MwiJob
from telephony.runtime.ports import PortRegistry
from telephony.smdi.driver import SmdiLink
from telephony.smdi.settings import SmdiProfile

GUARD = 60.0  # seconds: a hang guard only
CALL_TYPES = "ABDNU"


async def waiting(condition) -> None:
    """Poll ``condition`` until it holds; the run's ``fail_after`` is the hang guard (these
    runs import nothing from the test suite: hwtests/README.md)."""
    while not condition():
        await trio.sleep(0.01)


def make_link(settings) -> SmdiLink:
    link = SmdiLink(serial=settings, profile=SmdiProfile(terminals=(1, 2, 3, 4), keep_last=4),
                    node="a", reopen_min=0.05, reopen_max=0.5)
    link.register(PortRegistry())

    async def report(level, event, message):
        pass

    link.report = report
    return link


async def test_records_and_lamps_cross_the_line_intact(smdi_line, hw_report):
    """100 call records (every call type, the voice mail's and the peer's terminals, line
    noise before some) are all parsed; 40 lamp commands reach the switch byte for byte, paced
    no faster than the line rate; a lamp the switch refuses comes back as a failure record
    matched to its job."""
    settings, pbx_device, simulated = smdi_line
    link = make_link(settings)
    link.gate = lambda: 7  # active in term 7
    failures = []

    async def on_failure(job, cause):
        failures.append((job.extension, cause))

    link.on_mwi_failure = on_failure
    with trio.fail_after(GUARD * 3):
        # line_rate=False: the simulator reads as fast as the port delivers, so the pacing
        # check below measures the link (on a pty, a simulator reading at the line rate
        # would pace the link itself; on a real port the line does)
        async with PbxSimulator(pbx_device, invalid={link.profile.station("1099")},
                                baudrate=settings.baudrate, line_rate=False).running() as pbx:
            async with trio.open_nursery() as n:
                await n.start(link.run, LinkService())
                await waiting(lambda: link.is_open)  # the voice-mail end open
                ours = peers = 0
                for i in range(100):
                    if i % 10 == 3:
                        await pbx.send(b"\x7f\x00garbage\r\n")
                    terminal = 1 + i % 8  # 1-4 are this node's lines, 5-8 the peer's
                    await pbx.call_record(terminal, CALL_TYPES[i % 5], f"555{1000 + i}",
                                          f"555{2000 + i}")
                    ours, peers = ours + (terminal <= 4), peers + (terminal > 4)
                await waiting(lambda: link.counters["records"] == 100)  # 100 records parsed
                assert link.counters["peer_records"] == peers
                for line in (1, 2, 3, 4):  # a waiting record of each line, every field intact
                    rec = await link.call_info(f"loopback-{line}")
                    i = int(rec.forwarding) - 5551000
                    assert (rec.terminal, rec.call_type, rec.calling) == \
                        (line, CALL_TYPES[i % 5], f"555{2000 + i}") and 1 + i % 8 == line, rec

                jobs = [MwiJob(f"1{i:03d}", f"mb{i}", i % 3 != 0, 1, 0, 7, "deliver")
                        for i in range(40)]
                started = time.monotonic()
                for job in jobs:
                    await link.send_mwi(job)
                await pbx.wait_commands(len(jobs), timeout=GUARD)
                sent_s = time.monotonic() - started
                want = b"".join(link.profile.mwi.encode(j.on, link.profile.station(j.extension))
                                for j in jobs)
                assert bytes(pbx.received) == want
                line_s = len(want) * settings.bits_per_char / settings.baudrate
                assert sent_s >= 0.95 * line_s  # never faster than the line (pacing)

                await link.send_mwi(MwiJob("1099", "mb99", True, 1, 0, 7, "deliver"))
                await waiting(lambda: failures)  # the switch's failure record
                assert failures[0][0] == "1099" and "INV" in failures[0][1]
                assert link.counters["protocol_errors"] >= 10
                n.cancel_scope.cancel()
    hw_report["smdi_serial"] = {
        "simulated": simulated, "node": settings.device, "pbx": pbx_device,
        "line": f"{settings.baudrate},{settings.bytesize}{settings.parity[0].upper()}"
                f"{settings.stopbits:g}",
        "records": link.counters["records"], "protocol_errors": link.counters["protocol_errors"],
        "lamp_commands": len(jobs), "lamp_bytes": len(want),
        "lamp_s": round(sent_s, 3), "line_rate_s": round(line_s, 3),
        "ratio_to_line_rate": round(sent_s / line_s, 4)}


@pytest.mark.parametrize("text", ["9600", "9600,7X1", "1,7E1", "9600,9N1"])
def test_bad_line_settings_are_refused(text):
    from hwtests.conftest import _line

    with pytest.raises(pytest.UsageError, match="--smdi-line"):
        _line(text)
