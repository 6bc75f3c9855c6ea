"""``[ports.analog]`` (telephony/analog/settings.py) and how the analog integrations are wired
and checked (telephony/settings.py): each bad value or combination names its key."""
from __future__ import annotations

from pathlib import Path

import pytest
import tomli_w
from hypothesis import given, settings
from hypothesis import strategies as st

from failover.config import parse_config
from integrations.analog import DTMF_PATTERNS, MWI_OFF_CODE, MWI_ON_CODE
from telephony.analog import settings as analog
from telephony.analog.settings import AnalogSettings, dial_string, parse_channels
from telephony.core.events import Reason
from telephony.core.settings import ConfigError
from telephony.settings import load_service_settings

SIM = {"enabled": True, "socket": "board_a.sock"}
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
    s = AnalogSettings()
    assert not s.enabled and s.backend == "sim" and s.lines == 4
    assert s.rings == 2 and s.cpc_min_ms == 100 and s.tone_profile == "na"
    assert [str(p) for p in s.digit_patterns] == list(DTMF_PATTERNS)
    assert (s.mwi_on, s.mwi_off) == (MWI_ON_CODE, MWI_OFF_CODE)
    assert s.port_names() == ["analog-1", "analog-2", "analog-3", "analog-4"]
    t = s.timing()
    assert (t.rings, t.ring_timeout, t.cpc_min_ms, t.silence_limit, t.guard) == \
        (2, 6.0, 100, 30.0, 0.5)
    assert dial_string(s.mwi_on, "1002") == "*911002#"


def test_the_profile_wires_a_pair_file():
    c = load(doc({**NO_LOOPBACK, "analog": {**SIM, "count": 2, "rings": 3,
                                           "digit_patterns": ["busy: #{ext}#"]}},
                 {"profile": "analog-dtmf"}))
    a = c.ports.analog
    assert a.enabled and a.socket == Path("/etc/vmha/board_a.sock") and a.lines == 2
    assert a.rings == 3 and a.digit_patterns[0].reason is Reason.BUSY
    i = c.integration
    assert (i.voice_ports, i.call_info, i.mwi) == (("analog",), "dtmf", "dtmf")


def test_without_an_integration_section_analog_lines_alone_are_dtmf():
    c = load(doc({**NO_LOOPBACK, "analog": SIM}))
    assert (c.integration.voice_ports, c.integration.call_info, c.integration.mwi) == \
        (("analog",), "dtmf", "dtmf")


def test_analog_lines_with_smdi():
    smdi = {"enabled": True, "device": "/dev/ttyS0", "terminals": [1, 2, 3, 4]}
    c = load(doc({**NO_LOOPBACK, "analog": SIM, "smdi": smdi}, {"profile": "analog-smdi"}))
    assert (c.integration.call_info, c.integration.mwi) == ("smdi", "smdi")
    assert errors(doc({**NO_LOOPBACK, "analog": {**SIM, "count": 2}, "smdi": smdi},
                      {"profile": "analog-smdi"})) == [
        ("ports.smdi.terminals", "4 terminals for 2 lines (ports.analog.count): one terminal "
                                 "per line")]


def test_the_dahdi_backend():
    c = load(doc({**NO_LOOPBACK, "analog": {"enabled": True, "backend": "dahdi",
                                            "channels": "1-3,7", "law": "alaw"}},
                 {"profile": "analog-dtmf"}))
    assert c.ports.analog.channels == (1, 2, 3, 7) and c.ports.analog.lines == 4
    assert c.ports.analog.law == "alaw"


@pytest.mark.parametrize("section, key, fragment", [
    ({"enabled": True}, "ports.analog.socket", 'required with ports.analog.backend = "sim"'),
    ({"enabled": True, "backend": "dahdi"}, "ports.analog.channels", "required with"),
    ({"enabled": True, "backend": "dahdi", "channels": "1-4", "count": 3}, "ports.analog.count",
     "3 lines but 4 channels"),
    ({**SIM, "count": 2, "mwi_lines": 3}, "ports.analog.mwi_lines", "only 2 lines"),
    ({**SIM, "backend": "usb"}, "ports.analog.backend", 'expected one of "sim", "dahdi"'),
    ({**SIM, "channels": "4-1"}, "ports.analog.channels", "a range goes upwards"),
    ({**SIM, "channels": "1,1"}, "ports.analog.channels", "listed twice"),
    ({**SIM, "channels": "one"}, "ports.analog.channels", "is not a channel number"),
    ({**SIM, "count": 0}, "ports.analog.count", "an integer from 1 to 256"),
    ({**SIM, "rings": 21}, "ports.analog.rings", "an integer from 1 to 20"),
    ({**SIM, "cpc_min_ms": 1.5}, "ports.analog.cpc_min_ms", "an integer"),
    ({**SIM, "tone_profile": "uk"}, "ports.analog.tone_profile", '"na", "etsi"'),
    ({**SIM, "law": "slin"}, "ports.analog.law", '"ulaw", "alaw"'),
    ({**SIM, "silence_limit": 0}, "ports.analog.silence_limit", "from 1 to 3600"),
    ({**SIM, "digit_patterns": ["later:#{ext}"]}, "ports.analog.digit_patterns",
     "is not one of"),
    ({**SIM, "digit_patterns": []}, "ports.analog.digit_patterns", "1 to 32 digit patterns"),
    ({**SIM, "mwi_on": "*91"}, "ports.analog.mwi_on", "with {ext} once"),
    ({**SIM, "mwi_off": "*92{ext}x"}, "ports.analog.mwi_off", "DTMF symbols"),
    ({**SIM, "mwi_retries": -1}, "ports.analog.mwi_retries", "from 0 to 10"),
    ({**SIM, "colour": "red"}, "ports.analog.colour", "unknown key"),
])
def test_bad_values_name_their_key(section, key, fragment):
    found = errors(doc({**NO_LOOPBACK, "analog": section}, {"profile": "analog-dtmf"}))
    assert any(k == key and fragment in m for k, m in found), found


@pytest.mark.parametrize("ports, integration, key, fragment", [
    ({}, {"mwi": "dtmf"}, "integration.mwi", '"dtmf" lamps need ports.analog.enabled = true'),
    ({}, {"voice_ports": ["analog"]}, "integration.voice_ports",
     'voice ports "analog" need ports.analog.enabled = true'),
    ({}, {"call_info": "dtmf"}, "integration.call_info", 'only "analog"'),
    ({"analog": SIM}, {"profile": "analog-dtmf"}, "ports.loopback.enabled", "does not name them"),
    ({**NO_LOOPBACK, "analog": SIM}, {"call_info": "signalling"}, "integration.call_info",
     "analog lines carry no call information"),
    ({"analog": SIM}, None, "integration.call_info", "analog lines carry no call information"),
    ({}, {"mwi": "sccp"}, "integration.mwi", '"sccp" lamps need ports.sccp.enabled = true'),
])
def test_combinations_that_cannot_work_name_the_key(ports, integration, key, fragment):
    found = errors(doc(ports, integration))
    assert any(k == key and fragment in m for k, m in found), found


def test_the_service_reads_the_same_section(tmp_path):
    p = tmp_path / "a.toml"
    d = doc({**NO_LOOPBACK, "analog": {**SIM, "rings": 1}}, {"profile": "analog-dtmf"})
    d["node"]["data_dir"] = str(tmp_path / "data")
    p.write_text(tomli_w.dumps(d))
    s = load_service_settings(p)
    assert s.ports.analog.rings == 1 and s.ports.analog.socket == tmp_path / "board_a.sock"
    assert s.integration.call_info == "dtmf"


def test_settings_built_in_code_are_checked_by_the_same_keys():
    with pytest.raises(ValueError, match="rings"):
        AnalogSettings(rings=0)
    with pytest.raises(ValueError, match="mwi_on"):
        AnalogSettings(mwi_on="*91")
    with pytest.raises(ValueError, match="channels"):
        AnalogSettings(channels=(0,))
    assert analog.problems(AnalogSettings(enabled=True, socket="x")) == []


def test_channel_lists():
    assert parse_channels("1-4") == (1, 2, 3, 4)
    assert parse_channels(" 5, 1-2 ") == (5, 1, 2)
    for bad in ("", "0", "1-", "1024", "1-300", 7):
        with pytest.raises(ValueError):
            parse_channels(bad)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=60), st.text("0123456789-, ", max_size=30), st.integers()))
def test_any_channel_text_is_parsed_or_refused_with_a_value_error(text):
    try:
        chans = parse_channels(text)
    except ValueError:
        return
    assert chans and len(set(chans)) == len(chans) and all(1 <= c <= 1023 for c in chans)
