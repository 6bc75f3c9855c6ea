"""``[ports.sccp]`` (telephony/sccp/settings.py) and how the SCCP integration is wired and
checked (telephony/settings.py): each bad value or combination names its key."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from failover.config import parse_config
from integrations.cucm_sccp import MWI_OFF_NUMBER, MWI_ON_NUMBER
from telephony.core.events import Reason
from telephony.core.settings import Address, ConfigError
from telephony.sccp import settings as sccp
from telephony.sccp.core.callinfo import REDIRECT_REASONS
from telephony.sccp.settings import SccpSettings, binds, parse_range

ON = {"enabled": True, "servers": ["10.0.0.5:2000", "10.0.0.6:2000"]}
NO_LOOPBACK = {"loopback": {"enabled": False}}


def doc(ports: dict | None = None, integration: dict | None = None) -> dict:
    d = {
        "node": {"name": "ums-a", "role": "primary", "data_dir": "/var/lib/vmha"},
        "link": {"peer": "10.0.0.2:3653", "peer_name": "ums-b"},
        "ports": {"loopback": {"listen": "127.0.0.1:3671"}, **(ports or {})},
    }
    if integration is not None:
        d["integration"] = integration
    return d


def load(d: dict):
    return parse_config(d, "node.toml", base_dir="/etc/vmha")


def errors(d: dict) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as e:
        load(d)
    return [(p.key, p.message) for p in e.value.problems]


def test_defaults_come_from_the_keys():
    s = SccpSettings()
    assert not s.enabled and s.count == 4 and s.servers is None
    assert s.port_names() == ["sccp-1", "sccp-2", "sccp-3", "sccp-4"]
    assert [s.device_name(i) for i in (1, 4)] == ["CiscoUM1-VI1", "CiscoUM1-VI4"]
    assert s.codecs == ("pcmu", "pcma") and s.packet_ms == 20 and s.dtmf == "both"
    assert s.rtp_ports == (20000, 20999) and s.rtp_pairs() == 500
    assert (s.mwi_style, s.mwi_on, s.mwi_off) == ("callmanager", MWI_ON_NUMBER, MWI_OFF_NUMBER)
    assert s.reasons == dict(REDIRECT_REASONS)  # the station core's table is the default
    assert s.protocol_version == 11 and s.keepalive_max is None and s.rehome_probe == 30.0
    assert sccp.problems(s) == []  # disabled: nothing is required


def test_the_profile_wires_a_pair_file():
    c = load(doc({**NO_LOOPBACK, "sccp": {**ON, "count": 2, "device_prefix": "UM2-VI",
                                          "station_ip": "10.0.0.1", "rtp_ports": "30000-30099",
                                          "mwi_style": "cme", "codecs": ["pcma"],
                                          "redirect_reasons": {"1": "busy", "42": "all"}}},
                 {"profile": "cucm-sccp"}))
    s = c.ports.sccp
    assert s.enabled and s.count == 2 and s.port_names() == ["sccp-1", "sccp-2"]
    assert s.servers == (Address("10.0.0.5", 2000), Address("10.0.0.6", 2000))
    assert s.device_name(2) == "UM2-VI2" and s.station_ip == "10.0.0.1"
    assert s.rtp_ports == (30000, 30099) and s.codecs == ("pcma",) and s.mwi_style == "cme"
    # a table written replaces the default one: code 2 is not in it any more
    assert s.reasons == {1: Reason.BUSY, 42: Reason.ALL}
    i = c.integration
    assert (i.voice_ports, i.call_info, i.mwi) == (("sccp",), "signalling", "sccp")


def test_without_an_integration_section_sccp_ports_alone_are_the_cucm_wiring():
    c = load(doc({**NO_LOOPBACK, "sccp": ON}))
    assert (c.integration.voice_ports, c.integration.call_info, c.integration.mwi) == \
        (("sccp",), "signalling", "sccp")
    # with the loopback trunk too (the lab): both voice ports, lamps by SCCP
    c = load(doc({"sccp": ON}))
    assert (c.integration.voice_ports, c.integration.mwi) == (("loopback", "sccp"), "sccp")


def test_sccp_ports_with_smdi_records():
    smdi = {"enabled": True, "device": "/dev/ttyS0", "terminals": [1, 2, 3, 4]}
    c = load(doc({**NO_LOOPBACK, "sccp": ON, "smdi": smdi},
                 {"voice_ports": ["sccp"], "call_info": "smdi", "mwi": "sccp"}))
    assert c.integration.call_info == "smdi"
    assert errors(doc({**NO_LOOPBACK, "sccp": {**ON, "count": 2}, "smdi": smdi},
                      {"voice_ports": ["sccp"], "call_info": "smdi", "mwi": "sccp"})) == [
        ("ports.smdi.terminals", "4 terminals for 2 lines (ports.sccp.count): one terminal per line")]


def test_the_rtp_ports_bind_the_range():
    assert binds(SccpSettings()) == []
    s = SccpSettings(enabled=True, servers=(Address("10.0.0.5", 2000),), rtp_host="10.0.0.1",
                     rtp_ports=(21000, 21099))
    assert binds(s) == [("ports.sccp.rtp_ports", "udp", "10.0.0.1", 21000, 21099)]


@pytest.mark.parametrize("section, key, fragment", [
    ({"enabled": True}, "ports.sccp.servers", "required with ports.sccp.enabled = true"),
    ({**ON, "servers": []}, "ports.sccp.servers", "1 to 5"),
    ({**ON, "servers": ["a:1", "b:1", "c:1", "d:1", "e:1", "f:1"]}, "ports.sccp.servers", "1 to 5"),
    ({**ON, "servers": ["10.0.0.5"]}, "ports.sccp.servers", "host:port"),
    ({**ON, "servers": ["0.0.0.0:2000"]}, "ports.sccp.servers", "wildcard"),
    ({**ON, "servers": ["cm:2000", "cm:2000"]}, "ports.sccp.servers", "listed twice"),
    ({**ON, "servers": "cm:2000"}, "ports.sccp.servers", "an array"),
    ({**ON, "count": 0}, "ports.sccp.count", "an integer from 1 to 256"),
    ({**ON, "count": 257}, "ports.sccp.count", "an integer from 1 to 256"),
    ({**ON, "device_prefix": "Cisco UM"}, "ports.sccp.device_prefix", "A-Z a-z 0-9"),
    ({**ON, "device_prefix": "CiscoUnityVM-V", "count": 10}, "ports.sccp.device_prefix",
     "at most 15"),
    ({**ON, "device_prefix": "CiscoUnityVM-", "count": 100}, "ports.sccp.device_prefix",
     "'CiscoUnityVM-100' is 16 characters"),
    ({**ON, "station_ip": "::1"}, "ports.sccp.station_ip", "an IPv4 address"),
    ({**ON, "station_ip": "0.0.0.0"}, "ports.sccp.station_ip", "not 0.0.0.0"),
    ({**ON, "rtp_host": "host.example"}, "ports.sccp.rtp_host", "an IPv4 address"),
    ({**ON, "rtp_ports": "20000"}, "ports.sccp.rtp_ports", "a port range"),
    ({**ON, "rtp_ports": "20999-20000"}, "ports.sccp.rtp_ports", "goes upwards"),
    ({**ON, "rtp_ports": "80-200"}, "ports.sccp.rtp_ports", "1024 to 65535"),
    ({**ON, "rtp_ports": "20000-20005"}, "ports.sccp.rtp_ports", "3 RTP/RTCP pairs"),
    ({**ON, "codecs": []}, "ports.sccp.codecs", "at least one"),
    ({**ON, "codecs": ["g729"]}, "ports.sccp.codecs", "is not one of"),
    ({**ON, "codecs": ["pcmu", "pcmu"]}, "ports.sccp.codecs", "listed twice"),
    ({**ON, "packet_ms": 25}, "ports.sccp.packet_ms", "10, 20 or 30"),
    ({**ON, "jitter_ms": -1}, "ports.sccp.jitter_ms", "from 0 to 1000"),
    ({**ON, "dtmf": "sip-info"}, "ports.sccp.dtmf", '"both", "inband", "rfc2833"'),
    ({**ON, "protocol_version": 17}, "ports.sccp.protocol_version", "from 1 to 16"),
    ({**ON, "keepalive_max": 0}, "ports.sccp.keepalive_max", "from 1 to 600"),
    ({**ON, "rehome_probe": 0.5}, "ports.sccp.rehome_probe", "from 1 to 3600"),
    ({**ON, "mwi_style": "unity"}, "ports.sccp.mwi_style", '"callmanager", "cme"'),
    ({**ON, "mwi_on": "22x2"}, "ports.sccp.mwi_on", "digits 0-9"),
    ({**ON, "mwi_off": ""}, "ports.sccp.mwi_off", "1 to 24"),
    ({**ON, "mwi_off": "2222"}, "ports.sccp.mwi_off", "the lamp would never go out"),
    ({**ON, "mwi_timeout": 0}, "ports.sccp.mwi_timeout", "from 1 to 60"),
    ({**ON, "mwi_retries": 11}, "ports.sccp.mwi_retries", "from 0 to 10"),
    ({**ON, "redirect_reasons": {"1": "direct"}}, "ports.sccp.redirect_reasons", "maps to 'direct'"),
    ({**ON, "redirect_reasons": {"one": "busy"}}, "ports.sccp.redirect_reasons", "not an integer"),
    ({**ON, "redirect_reasons": ["busy"]}, "ports.sccp.redirect_reasons", "a table"),
    ({**ON, "colour": "red"}, "ports.sccp.colour", "unknown key"),
])
def test_bad_values_name_their_key(section, key, fragment):
    found = errors(doc({**NO_LOOPBACK, "sccp": section}, {"profile": "cucm-sccp"}))
    assert any(k == key and fragment in m for k, m in found), found


@pytest.mark.parametrize("ports, integration, key, fragment", [
    ({**NO_LOOPBACK}, {"profile": "cucm-sccp"}, "integration.profile",
     'voice ports "sccp" need ports.sccp.enabled = true'),
    ({"sccp": ON}, {"profile": "cucm-sccp"}, "ports.loopback.enabled", "does not name them"),
    ({}, {"mwi": "sccp"}, "integration.mwi", '"sccp" lamps need ports.sccp.enabled = true'),
    ({**NO_LOOPBACK, "sccp": ON}, {"call_info": "dtmf"}, "integration.call_info",
     "only \"analog\""),
])
def test_combinations_that_cannot_work_name_the_key(ports, integration, key, fragment):
    found = errors(doc(ports, integration))
    assert any(k == key and fragment in m for k, m in found), found


def test_a_settings_object_built_in_code_is_checked_by_the_same_keys():
    with pytest.raises(ValueError, match="packet_ms"):
        SccpSettings(packet_ms=25)
    with pytest.raises(ValueError, match="codecs"):
        SccpSettings(codecs=())
    with pytest.raises(ValueError, match="servers"):
        SccpSettings(servers=(Address("0.0.0.0", 2000),))
    with pytest.raises(ValueError, match="redirect_reasons"):
        SccpSettings(redirect_reasons=((1, Reason.DIRECT),))
    with pytest.raises(ValueError, match="rtp_ports"):
        SccpSettings(rtp_ports=(3000, 2000))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=20), st.integers(), st.none(), st.lists(st.integers())))
def test_a_range_parses_or_says_why(v):
    try:
        lo, hi = parse_range(v)
    except ValueError as e:
        assert str(e)
    else:
        assert 1024 <= lo < hi <= 65535


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.one_of(st.text(max_size=6), st.integers()),
                       st.one_of(st.sampled_from([r.value for r in Reason]), st.text(max_size=8)),
                       max_size=6))
def test_a_reason_table_is_taken_whole_or_refused_with_its_key(table):
    d = doc({**NO_LOOPBACK, "sccp": {**ON, "redirect_reasons": {str(k): v for k, v in table.items()}}},
            {"profile": "cucm-sccp"})
    try:
        c = load(d)
    except ConfigError as e:
        assert e.key == "ports.sccp.redirect_reasons", str(e)
    else:
        got = c.ports.sccp.reasons
        assert len(got) <= len(table)
        assert all(r is not Reason.DIRECT for r in got.values())
