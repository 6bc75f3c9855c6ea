"""The settings toolkit (telephony/core/settings.py), the drivers' settings modules and the
service's view of the node's file (telephony/settings.py): one definition per key, the same
values whichever process reads the file."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import tomli_w

from failover.config import load_config
from telephony.core.settings import (
    NO_CTX,
    Address,
    Bad,
    Choice,
    ConfigError,
    Ctx,
    Key,
    Num,
    Pattern,
    Problem,
    Strings,
    check_values,
    default_of,
    must_match,
    path,
)
from telephony.loopback import settings as loopback
from telephony.sccp import settings as sccp
from telephony.settings import SECTIONS, SERVICE_KEYS, load_service_settings, read_keys
from telephony.sip import settings as sip
from telephony.smdi import settings as smdi

# ============================================================================ the toolkit


def test_checks_take_toml_values_and_typed_ones():
    n = Num(1, 10, integer=True)
    assert n(3, NO_CTX) == 3 and n.allowed == "1 – 10"
    for bad in (0, 11, 2.0, True, "3"):
        with pytest.raises(Bad, match="an integer from 1 to 10"):
            n(bad, NO_CTX)
    c = Choice({"1": 1, "2": 2})
    assert c("2", NO_CTX) == 2
    c.typed(1)
    with pytest.raises(Bad):
        c.typed(True)  # not the option 1
    s = Strings(("a", "b"))
    assert s(["b", "a"], NO_CTX) == ("b", "a")
    for bad, msg in ((["a", "a"], "twice"), (["c"], "is not one of"), ("a", "an array")):
        with pytest.raises(Bad, match=msg):
            s(bad, NO_CTX)
    p = Pattern(r"[0-9]{1,3}", "up to 3 digits", kind="digits")
    assert p("12", NO_CTX) == "12"
    with pytest.raises(Bad, match="expected up to 3 digits, got '1234' .string."):
        p("1234", NO_CTX)


def test_paths_are_taken_from_the_files_directory():
    assert path("x/../y", Ctx(Path("/etc/vmha"))) == Path("/etc/vmha/y")
    assert path("/abs", Ctx(Path("/etc/vmha"))) == Path("/abs")
    for bad in ("", "~/x", 3):
        with pytest.raises(Bad):
            path(bad, Ctx(Path("/")))


def test_check_values_defaults_required_and_partial_views():
    schema = {"s": {"a": Key(Num(0, 5)), "b": Key(Num(0, 5), 2), "c": Key(Num(0, 5), None,
                                                                          shared=True)}}
    found: list[Problem] = []
    assert check_values({"s": {"b": 4}}, schema, NO_CTX, found) == {"s": {"b": 4.0, "c": None}}
    assert found == [Problem("s.a", "required key is missing")]
    found = []
    check_values({"s": {"a": 9}}, schema, NO_CTX, found, required=False)
    assert [p.key for p in found] == ["s.a"]
    assert must_match(schema) == ("s.c",)
    assert default_of(schema["s"], "b") == 2.0 and default_of(schema["s"], "a") is None


def test_config_error_is_one_line_per_problem():
    e = ConfigError("f.toml", [Problem("a.b", "bad"), Problem("", "unreadable")])
    assert str(e) == "f.toml: a.b: bad\nf.toml: unreadable" and e.key == "a.b"


# ============================================================================ the drivers' settings


def test_the_drivers_settings_take_their_defaults_from_their_keys():
    p = sip.SipProfile()
    for name in ("bind", "sip_port", "rtp_port", "count", "per_worker", "mode", "select",
                 "mwi_target", "notify_retries", "notify_timeout", "transfer_timeout"):
        assert getattr(p, name) == default_of(sip.KEYS, name), name
    s = smdi.SerialSettings("/dev/ttyS0")
    assert (s.baudrate, s.bytesize, s.parity, s.stopbits) == tuple(
        default_of(smdi.KEYS, k) for k in ("baudrate", "bytesize", "parity", "stopbits"))
    prof = smdi.SmdiProfile(terminals=(1,))
    assert (prof.mwi.on_prefix, prof.mwi.off_prefix, prof.mwi.suffix, prof.mwi.pad_to) == tuple(
        default_of(smdi.KEYS, k) for k in ("mwi_on", "mwi_off", "mwi_suffix", "mwi_pad"))
    # the section objects hold every key of their tables
    for cls, keys in ((loopback.LoopbackSettings, loopback.KEYS), (smdi.SmdiSection, smdi.KEYS),
                      (sip.SipSection, sip.KEYS), (sccp.SccpSettings, sccp.KEYS)):
        assert set(keys) <= {f.name for f in dataclasses.fields(cls)}, cls


def test_settings_built_in_code_are_checked_by_the_same_keys():
    with pytest.raises(ValueError, match="per_worker: expected an integer from 1 to 4"):
        sip.SipProfile(per_worker=5)
    with pytest.raises(ValueError, match="transfer_timeout"):
        sip.SipProfile(transfer_timeout=0.5)
    with pytest.raises(ValueError, match="register mode needs a registrar"):
        sip.SipProfile(mode="register")
    with pytest.raises(ValueError, match="ring_wait"):
        smdi.SmdiProfile(terminals=(1,), ring_wait=61)
    with pytest.raises(ValueError, match="parity: expected one of"):
        smdi.SerialSettings("/x", parity="sometimes")


def test_smdi_terminals_name_the_voice_ports_lines():
    prof = smdi.SmdiProfile(terminals=(5, 6))
    assert prof.port_of(6) == "loopback-2" and prof.port_of(7) is None  # the default lines
    prof = smdi.SmdiProfile(terminals=(5, 6, 7), lines=("loopback-1", "sip-1", "sip-2"))
    assert [prof.port_of(t) for t in (5, 6, 7)] == ["loopback-1", "sip-1", "sip-2"]
    with pytest.raises(ValueError, match="3 terminals for 2 lines"):
        smdi.SmdiProfile(terminals=(5, 6, 7), lines=("sip-1", "sip-2"))


def test_the_drivers_binds():
    s = sip.section({**{k: default_of(sip.KEYS, k) for k in sip.KEYS}, "enabled": True,
                     "count": 6, "per_worker": 4, "password_file": None})
    assert sip.binds(s) == [("ports.sip.sip_port", "udp", "127.0.0.1", 5070, 5071),
                            ("ports.sip.rtp_port", "udp", "127.0.0.1", 20000, 20015),
                            ("ports.sip.rtp_port", "udp", "127.0.0.1", 20016, 20023)]
    assert s.port_names() == [f"sip-{i}" for i in range(1, 7)]
    c = sccp.SccpSettings(enabled=True, servers=(Address("10.0.0.5", 2000),), count=6)
    assert sccp.binds(c) == [("ports.sccp.rtp_ports", "udp", "0.0.0.0", 20000, 20999)]
    assert c.port_names() == [f"sccp-{i}" for i in range(1, 7)]
    assert loopback.toml_table(None) == {"enabled": False}
    assert loopback.toml_table(3671) == {"enabled": True, "listen": "127.0.0.1:3671"}


# ============================================================================ the service's view


def node_file(tmp_path: Path, **sections) -> Path:
    d = {
        "node": {"name": "vm-a", "role": "secondary", "data_dir": "data/vm-a"},
        "link": {"peer": "127.0.0.1:3653", "peer_name": "vm-b", "listen": "127.0.0.1:3654"},
        "ports": {"loopback": {"listen": "127.0.0.1:3671", "count": 6}},
        **sections,
    }
    p = tmp_path / "node.toml"
    p.write_text(tomli_w.dumps(d))
    return p


@pytest.mark.parametrize("sections", [
    {},
    {"ports": {"loopback": {"listen": "127.0.0.1:3671"},
               "smdi": {"enabled": True, "device": "tty", "terminals": [3, 4], "keep_last": 4}},
     "messaging": {"operator": "0", "mwi_coalesce": 0, "realtime_audio": False},
     "store": {"kind": "imap", "imap": "127.0.0.1:143", "imap_passwords": "pw"},
     "replication": {"files_root": "shared", "log_keep": 5},
     "database": {"path": "db/config.db"}, "service": {"offer_hold": 0.5}},
    {"ports": {"loopback": {"enabled": False}, "sip": {"enabled": True, "count": 2},
               "smdi": {"enabled": True, "device": "socket://127.0.0.1:7001", "terminals": [1]}},
     "integration": {"profile": "gateway-smdi"}, "notify": {"smtp": "127.0.0.1:25"}},
    {"ports": {"loopback": {"enabled": False},
               "sccp": {"enabled": True, "servers": ["127.0.0.1:2000", "127.0.0.2:2000"],
                        "count": 3, "mwi_style": "cme", "redirect_reasons": {"7": "busy"}}},
     "integration": {"profile": "cucm-sccp"}},
])
def test_the_service_reads_what_the_node_manager_checked(tmp_path, sections):
    p = node_file(tmp_path, **sections)
    c = load_config(p)
    s = load_service_settings(p)
    for part in ("ports", "database", "store", "notify", "messaging", "integration"):
        assert getattr(s, part) == getattr(c, part), part
    assert (s.node.name, s.node.role, s.node.data_dir) == (c.node.name, c.node.role,
                                                           c.node.data_dir)
    assert (s.replication.files_root, s.replication.log_keep, s.replication.log_max) == \
        (c.replication.files_root, c.replication.log_keep, c.replication.log_max)
    assert (s.service.health_interval, s.service.offer_hold) == \
        (c.service.health_interval, c.service.offer_hold)
    assert s.log_level == c.log.level


def test_the_service_refuses_a_file_that_breaks_its_rules(tmp_path):
    p = node_file(tmp_path, integration={"mwi": "smdi"})
    with pytest.raises(ConfigError) as e:
        load_service_settings(p)
    assert str(e.value) == f'{p}: integration.mwi: "smdi" lamps need ports.smdi.enabled = true'
    p = node_file(tmp_path, integration={"mwi": "sccp"})
    with pytest.raises(ConfigError) as e:
        load_service_settings(p)
    assert str(e.value) == f'{p}: integration.mwi: "sccp" lamps need ports.sccp.enabled = true'
    p = node_file(tmp_path, ports={"loopback": {"enabled": False}, "sccp": {"enabled": True}})
    with pytest.raises(ConfigError) as e:
        load_service_settings(p)
    assert e.value.key == "ports.sccp.servers"


def test_read_keys_reads_a_partial_file(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text('[node]\nname = "a"\n[ports.loopback]\nlisten = "[::1]:7"\n')
    got = read_keys(p, ("node.name", "ports.loopback.listen", "ports.loopback.count", "log.level"))
    assert got == {"node.name": "a", "ports.loopback.listen": Address("::1", 7)}
    p.write_text('[service]\noffer_hold = "long"\n')
    with pytest.raises(ConfigError, match="service.offer_hold: expected a number of seconds"):
        read_keys(p, ("service.offer_hold",))
    p.write_text("[node\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        read_keys(p, ("node.name",))


def test_each_key_has_one_definition():
    """The keys the service reads in the node manager's sections are the same objects there."""
    from failover.config import SCHEMA

    for section, keys in {**SERVICE_KEYS, **SECTIONS}.items():
        for key, spec in keys.items():
            assert SCHEMA[section][key] is spec, f"{section}.{key}"
