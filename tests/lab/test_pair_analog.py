"""The pair harness's analog lines: ``Pair(..., analog=sim)`` writes node files that the node
manager and the messaging service accept as they are, each node on its own board's socket
of the voice-board simulator, and other ``[ports.*]`` tables can be added beside them."""
from __future__ import annotations

import tomllib

import pytest

from failover.config import ConfigError, load_config
from lab.pair import Pair, analog_sections, merge_sections
from lab.voiceboard import VoiceBoardSim
from telephony.settings import load_service_settings


def node_files(pair: Pair) -> dict[str, dict]:
    return {n: tomllib.loads(pair.node(n).config.read_text()) for n in "ab"}


def test_each_node_gets_its_own_boards_lines_and_the_files_load(tmp_path):
    sim = VoiceBoardSim(tmp_path, {"a": 3, "b": 3})
    pair = Pair(tmp_path / "pair", relay=False, analog=sim, analog_keys={"count": 3, "rings": 1})
    files = node_files(pair)
    for n in "ab":
        analog = files[n]["ports"]["analog"]
        assert (analog["enabled"], analog["backend"], analog["socket"]) == (True, "sim", sim.socket_path(n))
        assert (analog["count"], analog["rings"]) == (3, 1)
        assert files[n]["ports"]["loopback"] == {"enabled": False}
        assert files[n]["integration"] == {"profile": "analog-dtmf"}
        # what the node manager checks at start, and the service's own view of the file
        cfg = load_config(pair.node(n).config)
        assert cfg.integration.voice_ports == ("analog",)
        svc = load_service_settings(pair.node(n).config)
        assert (svc.integration.call_info, svc.integration.mwi) == ("dtmf", "dtmf")
        assert svc.ports.analog.port_names() == ["analog-1", "analog-2", "analog-3"]
        assert str(svc.ports.analog.socket) == sim.socket_path(n)
    assert files["a"]["node"]["name"] == "a" and files["b"]["node"]["name"] == "b"


def test_the_smdi_profile_takes_the_link_from_the_per_node_extras(tmp_path):
    sim = VoiceBoardSim(tmp_path, {"a": 2, "b": 2})
    smdi = {n: {"ports": {"smdi": {"enabled": True, "device": f"/dev/tty-{n}",
                                   "terminals": [1, 2] if n == "a" else [3, 4]}}} for n in "ab"}
    pair = Pair(tmp_path / "pair", relay=False, analog=sim,
                analog_keys={"count": 2, "profile": "analog-smdi"},
                extra_a=smdi["a"], extra_b=smdi["b"])
    files = node_files(pair)
    for n, terminals in (("a", [1, 2]), ("b", [3, 4])):
        assert files[n]["ports"]["smdi"]["terminals"] == terminals
        assert files[n]["ports"]["analog"]["socket"] == sim.socket_path(n)  # kept beside it
        svc = load_service_settings(pair.node(n).config)
        assert (svc.integration.call_info, svc.integration.mwi) == ("smdi", "smdi")


def test_a_bad_analog_key_is_refused_by_the_node_manager(tmp_path):
    sim = VoiceBoardSim(tmp_path, {"a": 2, "b": 2})
    pair = Pair(tmp_path / "pair", relay=False, analog=sim, analog_keys={"rings": 0})
    with pytest.raises(ConfigError, match="ports.analog.rings"):
        load_config(pair.a.config)


def test_merge_sections_merges_one_level_down_later_parts_winning():
    a = analog_sections("/x/board_a.sock", count=2)
    merged = merge_sections(a, {"ports": {"smdi": {"enabled": True}}, "messaging": {"silence": 1.0}},
                            None, {"ports": {"loopback": {"enabled": True}}})
    assert set(merged["ports"]) == {"analog", "smdi", "loopback"}
    assert merged["ports"]["loopback"] == {"enabled": True}
    assert merged["ports"]["analog"]["socket"] == "/x/board_a.sock"
    assert merged["messaging"] == {"silence": 1.0}
    assert a["ports"]["loopback"] == {"enabled": False}  # the parts are not changed
