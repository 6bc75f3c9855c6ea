"""The [integration] section in the node's file (telephony/settings.py, composed by
failover/config.py): defaults derived from the enabled [ports.*] exactly as before, named
profiles, the rules between the parts and the drivers, the keys that must match on both
nodes, and docs/configuration.md checked against the whole file's schema."""
from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

from failover.config import (
    FILE_SCHEMA,
    MUST_MATCH,
    SCHEMA,
    ConfigError,
    parse_config,
    settings_that_must_match,
    shared_settings_digest,
)
from integrations.base import node_mwi_drivers
from telephony.core.settings import NO_CTX, REQUIRED, Bad, doc_cells

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"

SIP = {"enabled": True}
SMDI = {"enabled": True, "device": "/dev/ttyS0", "terminals": [1, 2]}


def doc(ports: dict | None = None, integration: dict | None = None, **more) -> dict:
    d = {
        "node": {"name": "ums-a", "role": "primary", "data_dir": "/var/lib/vmha"},
        "link": {"peer": "10.0.0.2:3653", "peer_name": "ums-b"},
        "ports": {"loopback": {"listen": "127.0.0.1:3671"}, **(ports or {})},
        **more,
    }
    if integration is not None:
        d["integration"] = integration
    return d


def load(d: dict):
    return parse_config(d, "node.toml", base_dir="/")


def errors(d: dict) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as e:
        load(d)
    return [(p.key, p.message) for p in e.value.problems]


# ============================================================================ today's files


@pytest.mark.parametrize("ports, voice, call_info, mwi, served", [
    ({}, ("loopback",), "signalling", "loopback", {"sip": "loopback"}),
    ({"sip": SIP}, ("loopback", "sip"), "signalling", "sip_notify", {"sip": "sip"}),
    ({"loopback": {"enabled": False}, "sip": SIP}, ("sip",), "signalling", "sip_notify",
     {"sip": "sip"}),
    ({"smdi": SMDI}, ("loopback",), "smdi", "smdi", {"smdi": "smdi"}),
    ({"loopback": {"enabled": False}}, (), "signalling", "none", {}),
])
def test_a_file_without_the_section_keeps_its_wiring(ports, voice, call_info, mwi, served):
    c = load(doc(ports))
    i = c.integration
    assert (i.profile, i.voice_ports, i.call_info, i.mwi) == (None, voice, call_info, mwi)
    assert i.derived == {"voice_ports", "call_info", "mwi"}
    assert node_mwi_drivers(c) == served


def test_without_the_section_the_old_rules_hold():
    both = errors(doc({"sip": SIP, "smdi": SMDI}))
    assert [k for k, _ in both] == ["ports.sip.enabled"]
    assert "one lamp integration per node" in both[0][1]
    no_lines = errors(doc({"loopback": {"enabled": False}, "smdi": SMDI}))
    assert [k for k, _ in no_lines] == ["ports.smdi.enabled"] and "loopback" in no_lines[0][1]
    many = errors(doc({"smdi": {**SMDI, "terminals": [1, 2, 3, 4, 5]}}))
    assert many == [("ports.smdi.terminals", "5 terminals for 4 lines (ports.loopback.count): "
                                             "one terminal per line")]


# ============================================================================ chosen wiring


def test_a_profile_gives_the_three_parts_and_keys_override_them():
    c = load(doc({"loopback": {"enabled": False}, "sip": SIP}, {"profile": "cucm-sip"}))
    i = c.integration
    assert (i.profile, i.voice_ports, i.call_info, i.mwi, i.derived) == \
        ("cucm-sip", ("sip",), "signalling", "sip_notify", frozenset())
    c = load(doc({"loopback": {"enabled": False}, "sip": SIP, "smdi": SMDI},
                 {"profile": "gateway-smdi", "call_info": "signalling"}))
    i = c.integration
    assert (i.voice_ports, i.call_info, i.mwi, i.written) == (("sip",), "signalling", "smdi",
                                                              {"call_info"})
    assert node_mwi_drivers(c) == {"smdi": "smdi"}


@pytest.mark.parametrize("ports, integration", [
    # a media gateway's SIP lines, SMDI records and lamps (with the loopback lines beside them)
    ({"sip": SIP, "smdi": SMDI}, {"voice_ports": ["loopback", "sip"], "call_info": "smdi",
                                  "mwi": "smdi"}),
    ({"loopback": {"enabled": False}, "sip": SIP, "smdi": SMDI}, {"profile": "gateway-smdi"}),
    # SIP calls with their own headers, lamps on the SMDI link
    ({"loopback": {"enabled": False}, "sip": SIP, "smdi": SMDI},
     {"voice_ports": ["sip"], "call_info": "signalling", "mwi": "smdi"}),
    # SMDI records, SIP NOTIFY lamps
    ({"sip": SIP, "smdi": SMDI}, {"mwi": "sip_notify"}),
    # voice-board lines + SMDI, named
    ({"smdi": SMDI}, {"profile": "serial-smdi"}),
    # the loopback lines without lamps
    ({}, {"profile": "loopback"}),
    ({}, {"mwi": "none"}),
])
def test_valid_combinations(ports, integration):
    load(doc(ports, integration))


@pytest.mark.parametrize("ports, integration, key, fragment", [
    ({}, {"mwi": "sip_notify"}, "integration.mwi", "need ports.sip.enabled"),
    ({}, {"mwi": "smdi"}, "integration.mwi", "need ports.smdi.enabled"),
    ({"loopback": {"enabled": False}, "sip": SIP}, {"mwi": "loopback"}, "integration.mwi",
     "need ports.loopback.enabled"),
    ({}, {"mwi": "sccp"}, "integration.mwi", '"sccp" lamps need ports.sccp.enabled = true'),
    ({}, {"mwi": "dtmf"}, "integration.mwi", '"dtmf" lamps need ports.analog.enabled = true'),
    ({}, {"call_info": "smdi"}, "integration.call_info", "enable ports.smdi"),
    ({}, {"voice_ports": ["sip"]}, "integration.voice_ports", "need ports.sip.enabled"),
    ({"sip": SIP}, {"voice_ports": ["sip"]}, "ports.loopback.enabled", "does not name them"),
    ({"sip": SIP}, {"profile": "cucm-sip"}, "ports.loopback.enabled", "integration.profile"),
    ({"sip": SIP}, {"profile": "gateway-smdi"}, "integration.profile", "enable ports.smdi"),
    ({"loopback": {"enabled": False}, "sip": {**SIP, "count": 1}, "smdi": SMDI},
     {"profile": "gateway-smdi"}, "ports.smdi.terminals", "2 terminals for 1 lines (ports.sip.count)"),
    ({"smdi": SMDI}, {"call_info": "signalling", "mwi": "loopback"}, "ports.smdi.enabled",
     "neither for call information"),
    ({"loopback": {"enabled": False}, "smdi": SMDI}, {"voice_ports": []},
     "integration.call_info", "there are none"),
    ({}, {"voice_ports": ["loopback", "loopback"]}, "integration.voice_ports", "listed twice"),
    ({}, {"voice_ports": ["skinny"]}, "integration.voice_ports", "is not one of"),
    ({}, {"voice_ports": ["sccp"]}, "integration.voice_ports", "need ports.sccp.enabled"),
    ({}, {"voice_ports": "loopback"}, "integration.voice_ports", "an array"),
    ({}, {"call_info": "pager"}, "integration.call_info", '"signalling", "smdi", "dtmf"'),
    ({}, {"profile": "avaya"}, "integration.profile", '"cucm-sip"'),
    ({}, {"lamps": "sip"}, "integration.lamps", "unknown key"),
])
def test_combinations_that_cannot_work_name_the_key(ports, integration, key, fragment):
    found = errors(doc(ports, integration))
    assert any(k == key and fragment in m for k, m in found), found


def test_a_bad_integration_stops_the_node_with_one_line_naming_key_and_file(tmp_path):
    import tomli_w

    from failover.config import load_config

    p = tmp_path / "node.toml"
    p.write_text(tomli_w.dumps(doc({}, {"mwi": "sip_notify"})))
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value) == (f'{p}: integration.mwi: "sip_notify" lamps need '
                            "ports.sip.enabled = true")


# ============================================================================ both nodes


def pair(a_more: dict, b_more: dict):
    a = doc(**a_more)
    b = doc(**b_more)
    b["node"] = {"name": "ums-b", "role": "secondary", "data_dir": "/var/lib/vmha"}
    b["link"] = {"listen": "10.0.0.2:3653", "peer": "10.0.0.1:3653", "peer_name": "ums-a"}
    a["link"]["listen"] = "10.0.0.1:3653"
    return load(a), load(b)


def test_the_resolved_parts_must_match_on_both_nodes():
    assert {"integration.voice_ports", "integration.call_info", "integration.mwi",
            "ports.sip.enabled", "ports.smdi.enabled"} <= set(MUST_MATCH)
    assert "integration.profile" not in MUST_MATCH
    a, b = pair({}, {"integration": {"mwi": "none"}})
    out = settings_that_must_match(a, b)
    assert out == ["integration.mwi: ums-a has 'loopback', ums-b has 'none'"], out
    assert shared_settings_digest(a) != shared_settings_digest(b)
    # the same parts, once derived and once named: the same pair
    a, b = pair({}, {"integration": {"voice_ports": ["loopback"], "call_info": "signalling",
                                     "mwi": "loopback"}})
    assert settings_that_must_match(a, b) == []
    assert shared_settings_digest(a) == shared_settings_digest(b)


# ============================================================================ docs


def _tables(text: str) -> dict[str, list[list[str]]]:
    out = {}
    for m in re.finditer(r"^### `\[([a-z.]+)\]`.*?\n(.*?)(?=^#)", text, re.S | re.M):
        rows = [line for line in m.group(2).splitlines() if line.startswith("| `")]
        out[m.group(1)] = [[c.strip() for c in row.strip()[1:-1].split("|")] for row in rows]
    return out


def _literal(cell: str):
    m = re.search(r"`([^`]*)`", cell)
    if m is None:
        return None
    try:
        return tomllib.loads("x = " + m.group(1))["x"]
    except tomllib.TOMLDecodeError:
        return ast.literal_eval(m.group(1))  # "!\x04": an escape TOML does not have


def test_the_docs_tables_are_the_schema():
    """Every section's table lists its keys in schema order, with the check's type, the
    default, and the allowed values (a number's range, every option of a choice)."""
    tables = _tables(DOCS.read_text())
    assert set(FILE_SCHEMA) <= set(tables), set(FILE_SCHEMA) - set(tables)
    assert set(SCHEMA) | {"integration"} == set(FILE_SCHEMA)
    for section, keys in FILE_SCHEMA.items():
        rows = tables[section]
        assert [r[0].strip("`") for r in rows] == list(keys), section
        for row in rows:
            assert len(row) == 5, row
            key, kind, default, allowed = row[0].strip("`"), row[1], row[2], row[3]
            spec = keys[key]
            where = f"{section}.{key}"
            want_kind, fragments = doc_cells(spec)
            assert kind == want_kind, (where, kind, want_kind)
            if spec.default is REQUIRED:
                assert "**required**" in default, where
            elif spec.default is not None:
                try:
                    same = spec.check(_literal(default), NO_CTX) == spec.check(spec.default, NO_CTX)
                except Bad:
                    same = False
                assert same, (where, default, spec.default)
            cell = re.sub(r"(?<=\d),(?=\d{3})", "", allowed.replace('"', ""))
            for f in fragments:
                assert f in cell, (where, allowed, f)
            assert row[4].strip(), f"{where}: no meaning"


def test_the_docs_list_the_settings_that_must_match():
    text = DOCS.read_text()
    part = text[text.index("## Settings that must match"):text.index("## Ports that cannot collide")]
    for key in MUST_MATCH:
        assert f"`{key}`" in part, key
