"""The pair harness's SCCP ports: ``Pair(..., sccp=servers)`` writes node files that the node
manager and the messaging service accept as they are, each node's ports under its own device
prefix with an RTP port block of its own, and other ``[ports.*]`` tables can be added beside
them; bad addresses are refused before any file is written."""
from __future__ import annotations

import tomllib

import pytest

from failover.config import ConfigError, load_config
from lab.pair import (
    SCCP_PREFIXES,
    Pair,
    merge_sections,
    sccp_devices,
    sccp_sections,
    sccp_table,
    server_address,
)
from telephony.settings import load_service_settings


def node_files(pair: Pair) -> dict[str, dict]:
    return {n: tomllib.loads(pair.node(n).config.read_text()) for n in "ab"}


def test_each_node_registers_its_own_devices_with_the_same_callmanagers(tmp_path):
    pair = Pair(tmp_path / "pair", relay=False, sccp=[2000, ("127.0.0.1", 2001)],
                sccp_keys={"count": 3, "rehome_probe": 2.0})
    files = node_files(pair)
    ranges = []
    for n in "ab":
        sccp = files[n]["ports"]["sccp"]
        assert sccp["servers"] == ["127.0.0.1:2000", "127.0.0.1:2001"]
        assert (sccp["enabled"], sccp["count"], sccp["device_prefix"]) == (True, 3, SCCP_PREFIXES[n])
        assert sccp["rehome_probe"] == 2.0
        assert files[n]["ports"]["loopback"] == {"enabled": False}
        assert files[n]["integration"] == {"profile": "cucm-sccp"}
        # what the node manager checks at start, and the service's own view of the file
        cfg = load_config(pair.node(n).config)
        assert cfg.integration.voice_ports == ("sccp",)
        svc = load_service_settings(pair.node(n).config)
        assert (svc.integration.call_info, svc.integration.mwi) == ("signalling", "sccp")
        ports = svc.ports.sccp
        assert ports.port_names() == ["sccp-1", "sccp-2", "sccp-3"]
        assert [ports.device_name(i) for i in (1, 2, 3)] == sccp_devices(SCCP_PREFIXES[n], 3)
        assert ports.rtp_pairs() >= 3
        ranges.append(range(ports.rtp_ports[0], ports.rtp_ports[1] + 1))
    assert not set(ranges[0]) & set(ranges[1])  # two nodes on one host: RTP blocks apart
    assert sccp_devices("CiscoUM1-VI", 2) == ["CiscoUM1-VI1", "CiscoUM1-VI2"]


def test_sccp_ports_beside_sip_and_the_loopback_trunk_take_the_derived_integration(tmp_path):
    """The demo's wiring: no [integration] section, the SCCP ports added beside the loopback
    trunk: the voice ports are both, and the lamps go by the SCCP ports' MWI calls."""
    extra = {n: {"ports": {"sccp": sccp_table(["127.0.0.1:2000"], prefix=SCCP_PREFIXES[n], count=2)}}
             for n in "ab"}
    pair = Pair(tmp_path / "pair", relay=False, extra_a=extra["a"], extra_b=extra["b"])
    for n in "ab":
        cfg = load_config(pair.node(n).config)
        assert set(cfg.integration.voice_ports) == {"loopback", "sccp"}
        assert cfg.integration.mwi == "sccp"
        assert load_service_settings(pair.node(n).config).ports.sccp.count == 2


def test_a_bad_sccp_key_is_refused_by_the_node_manager(tmp_path):
    pair = Pair(tmp_path / "pair", relay=False, sccp=[2000], sccp_keys={"packet_ms": 25})
    with pytest.raises(ConfigError, match="ports.sccp.packet_ms"):
        load_config(pair.a.config)


@pytest.mark.parametrize("bad", ["2000", "host", True, 2.5, ("127.0.0.1",), None])
def test_a_server_that_is_no_address_is_refused_before_any_file(bad, tmp_path):
    with pytest.raises((TypeError, ValueError)):
        server_address(bad)
    with pytest.raises((TypeError, ValueError)):
        Pair(tmp_path / "pair", relay=False, sccp=[bad])
    assert not (tmp_path / "pair" / "primary.toml").exists()


def test_sections_and_merging():
    with pytest.raises(ValueError, match="at least one CallManager"):
        sccp_table([], prefix="X")
    a = sccp_sections(["10.0.0.5:2000"], prefix="UM-A", count=2, rtp_ports="30000-30019")
    assert a["ports"]["sccp"]["rtp_ports"] == "30000-30019"
    merged = merge_sections(a, {"ports": {"smdi": {"enabled": True}}})
    assert set(merged["ports"]) == {"loopback", "sccp", "smdi"}
    assert merged["ports"]["sccp"]["servers"] == ["10.0.0.5:2000"]
    assert server_address("cm.example:2000") == "cm.example:2000"
