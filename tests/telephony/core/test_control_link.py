"""The ``link`` op of the control channel (node manager -> service): its one field."""
from __future__ import annotations

import pytest

from telephony.core.control import FROM_SERVICE, TO_SERVICE, ControlConnection, FieldError, make, validate


def test_link_carries_the_peers_reachability_as_a_bool():
    msg = make("link", peer_reachable=False)
    wire = ControlConnection().send(msg)
    assert wire == b'{"op":"link","peer_reachable":false}\n'
    conn = ControlConnection()
    conn.receive_data(wire)
    assert validate(conn.next_event(), TO_SERVICE) == msg
    for bad, why in (({}, "peer_reachable is missing"), ({"peer_reachable": 1}, "true or false"),
                     ({"peer_reachable": None}, "true or false"),
                     ({"peer_reachable": "true"}, "true or false")):
        with pytest.raises(FieldError, match=why):
            validate({"op": "link", **bad}, TO_SERVICE)
    with pytest.raises(FieldError, match="unknown op"):  # only the node manager sends it
        validate(msg, FROM_SERVICE)
