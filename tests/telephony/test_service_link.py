"""The ``link`` control op (the node manager's view of its peer) reaches the drivers that have
a ``peer_link`` (the SMDI link on a shared line); a bad one is refused and changes nothing.
In-memory control channel, virtual time."""
from __future__ import annotations

import trio

from tests.telephony.helpers import DirectTrunk, running_service


class SharedLineTrunk(DirectTrunk):
    kind = "shared"

    def __init__(self) -> None:
        super().__init__(count=1)
        self.views: list[bool] = []

    def register(self, registry) -> None:
        self.registry = registry
        registry.register("shared-1", self.kind)

    async def peer_link(self, reachable: bool) -> None:
        self.views.append(reachable)


async def test_the_link_op_reaches_the_drivers_that_care(autojump_clock):
    shared, plain = SharedLineTrunk(), DirectTrunk()
    with trio.fail_after(5):
        async with running_service(drivers=[plain, shared]) as (svc, mgr, _):
            await mgr.send("link", peer_reachable=False)
            await mgr.send("link", peer_reachable=True)
            await mgr.send("link", peer_reachable="yes")
            err = await mgr.expect("error")
            assert err["ref"] == "link" and "peer_reachable must be true or false" in err["message"]
            await mgr.send("link")
            err = await mgr.expect("error")
            assert err["ref"] == "link" and "peer_reachable is missing" in err["message"]
            assert shared.views == [False, True]  # the bad ones changed nothing
            # the service still works as before
            await mgr.send("activate", term=2, lease=10.0)
            await mgr.expect("activated", term=2)
