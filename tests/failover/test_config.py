"""failover.config (node TOML schema) and failover.configure (pairing wizard)."""
from __future__ import annotations

import datetime as dt
import os
import stat
import tomllib
from pathlib import Path

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from failover.config import (
    MUST_MATCH,
    PROFILES,
    SCHEMA,
    Address,
    ConfigError,
    NodeConfig,
    guide_settings,
    load_config,
    parse_address,
    parse_config,
    settings_that_must_match,
)
from failover.configure import configure_main, load_key, make_pair, write_pair
from failover.core.state import FailbackType, Mode, Role

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def minimal(**sections) -> dict:
    doc = {
        "node": {"name": "ums-a", "role": "primary", "data_dir": "/var/lib/vmha"},
        "link": {"peer": "10.0.0.2:3653", "peer_name": "ums-b"},
        "ports": {"loopback": {"listen": "127.0.0.1:3671"}},
    }
    for name, values in sections.items():
        doc.setdefault(name, {}).update(values)
    return doc


def write(tmp_path: Path, doc: dict, name: str = "node.toml") -> Path:
    p = tmp_path / name
    p.write_text(tomli_w.dumps(doc))
    return p


def set_key(doc: dict, dotted: str, value) -> dict:
    *parents, last = dotted.split(".")
    t = doc
    for k in parents:
        t = t.setdefault(k, {})
    t[last] = value
    return doc


def del_key(doc: dict, dotted: str) -> dict:
    *parents, last = dotted.split(".")
    t = doc
    for k in parents:
        t = t[k]
    del t[last]
    return doc


def error_for(tmp_path: Path, doc: dict) -> ConfigError:
    p = write(tmp_path, doc)
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert str(p) in str(ei.value)
    return ei.value


# ============================================================================ valid files


def test_minimal_config_takes_defaults(tmp_path):
    c = load_config(write(tmp_path, minimal()))
    assert isinstance(c, NodeConfig)
    assert c.node.name == "ums-a" and c.node.role is Role.PRIMARY
    assert c.node.data_dir == Path("/var/lib/vmha")
    assert c.node.key_file == Path("/var/lib/vmha/link.key")
    assert c.admin.socket == Path("/var/lib/vmha/run/admin.sock")
    assert c.link.listen == Address("0.0.0.0", 3653) and c.link.listen.is_wildcard
    assert c.link.peer == Address("10.0.0.2", 3653) and c.link.peer_name == "ums-b"
    assert (c.link.connect_timeout, c.link.reconnect_min, c.link.reconnect_max) == (1.0, 0.05, 2.0)
    f = c.failover
    assert (f.profile, f.ping_interval, f.missed_pings, f.realtime_priority) == ("default", 0.1, 6, 0)
    assert f.lease is None and f.startup_wait is None
    assert c.peer_timeout == pytest.approx(0.6)
    assert c.lease_s == pytest.approx(0.5)
    assert c.startup_wait_s == pytest.approx(1.0)
    assert f.mode is Mode.AUTOMATIC and f.call_takeover is True
    assert (f.handover_timeout, f.drain_timeout) == (2.0, 300.0)
    assert c.failback.type is FailbackType.MANUAL and c.failback.window_seconds is None
    assert (c.licence.no_contact_limit, c.licence.after_contact_limit) == (14400, 5184000)
    s = c.service
    assert (s.health_interval, s.health_timeout, s.start_timeout, s.max_restarts,
            s.restart_window, s.offer_hold, s.command) == (0.25, 1.0, 10.0, 5, 60.0, 2.0, None)
    assert (s.restart_backoff, s.restart_backoff_max, s.restart_backoff_alone) == (0.5, 30.0, 2.0)
    lb = c.ports.loopback
    assert (lb.enabled, lb.listen, lb.count) == (True, Address("127.0.0.1", 3671), 4)
    assert (c.log.level, c.log.console) == ("info", True)
    assert c.source == str(tmp_path / "node.toml")


FULL = {
    "node": {"name": "ums-b", "role": "secondary", "data_dir": "/srv/vmha",
             "key_file": "/etc/vmha/link.key"},
    "link": {"listen": "[fd00::2]:3700", "peer": "ums-a.cluster.example:3700",
             "peer_name": "ums-a", "connect_timeout": 0.5, "reconnect_min": 0.1,
             "reconnect_max": 5},
    "failover": {"profile": "guide", "ping_interval": 0.25, "missed_pings": 8, "lease": 1.5,
                 "startup_wait": 10, "mode": "manual", "call_takeover": False,
                 "handover_timeout": 3.0, "drain_timeout": 60.0, "realtime_priority": 20},
    "failback": {"type": "scheduled", "window_start": "22:00", "window_end": "02:30"},
    "licence": {"no_contact_limit": 3600, "after_contact_limit": 86400.0},
    "service": {"health_interval": 0.05, "health_timeout": 0.5, "start_timeout": 20.0,
                "max_restarts": 3, "restart_window": 120.0, "offer_hold": 1.5,
                "restart_backoff": 1.0, "restart_backoff_max": 60.0, "restart_backoff_alone": 3.0,
                "command": ["/usr/bin/python3", "-m", "telephony.service"]},
    "health": {"enabled": False, "failover_below": 40, "grace": 10, "min_active": 60, "margin": 30,
               "store_probe": 5},
    "ports": {"loopback": {"enabled": True, "listen": "127.0.0.1:3672", "count": 8},
              "analog": {"enabled": False, "backend": "dahdi", "socket": "board.sock",
                         "channels": "1-4", "count": 4, "law": "alaw", "tone_profile": "etsi",
                         "rings": 3, "ring_timeout": 8, "cpc_min_ms": 250, "silence_limit": 20,
                         "guard": 1, "digit_patterns": ["busy:#{ext}#"], "digit_timeout": 2,
                         "digit_gap": 0.4, "mwi_on": "*81{ext}", "mwi_off": "*82{ext}",
                         "dial_tone_timeout": 2, "confirm_timeout": 4, "mwi_retries": 1,
                         "mwi_retry_delay": 1, "mwi_lines": 2},
              "sccp": {"enabled": False, "count": 8, "device_prefix": "UM2-VI",
                       "servers": ["10.0.0.5:2000", "10.0.0.6:2000"], "station_ip": "10.0.0.2",
                       "rtp_host": "10.0.0.2", "rtp_ports": "24000-24099", "codecs": ["pcma"],
                       "packet_ms": 30, "jitter_ms": 80, "dtmf": "rfc2833", "device_type": 30027,
                       "protocol_version": 15, "keepalive_max": 20, "rehome_probe": 60,
                       "mwi_style": "cme", "mwi_on": "*81", "mwi_off": "*82", "mwi_timeout": 5,
                       "mwi_retries": 1, "redirect_reasons": {"1": "busy", "2": "no_answer"}},
              "smdi": {"enabled": True, "device": "/dev/ttyS1", "baudrate": 4800, "bytesize": 8,
                       "parity": "none", "stopbits": "2", "terminals": [5, 6, 7, 8], "desk": 1,
                       "record_wait": 20, "ring_wait": 1.5, "strip": 1, "keep_last": 4,
                       "mwi_on": "OP:MWI ", "mwi_off": "RMV:MWI ", "mwi_suffix": "!\\x04",
                       "mwi_pad": 7, "mwi_prefix": "555", "mwi_gap": 0.01, "failure_window": 5,
                       "shared_line": False},
              "sip": {"enabled": False, "bind": "127.0.0.2", "sip_port": 5080, "rtp_port": 30000,
                      "count": 10, "per_worker": 3, "mode": "register", "registrar": "sip:cm.example:5060",
                      "user": "vmport", "password_file": "/etc/vmha/sip.pw", "select": "first",
                      "mwi_target": "sip:{extension}@cm.example:5060",
                      "mwi_account": "sip:{extension}@vm.example", "notify_retries": 2,
                      "notify_backoff": 0.5, "notify_timeout": 8, "transfer_timeout": 25}},
    "admin": {"socket": "/run/vmha/admin.sock"},
    "http": {"listen": "[fd00::2]:8443", "tls_cert": "/etc/vmha/tls/cert.pem",
             "tls_key": "/etc/vmha/tls/key.pem", "operators_file": "/etc/vmha/operators.toml",
             "peer_url": "https://ums-a.cluster.example:8443", "public_url": "https://ums-b.cluster.example:8443",
             "session_timeout": 3600},
    "log": {"level": "debug", "console": False},
    "database": {"path": "/srv/vmha/db/config.db"},
    "replication": {"enabled": True, "listen": "[fd00::2]:3701", "peer": "ums-a.cluster.example:3701",
                    "handover_wait": 30, "files_root": "/srv/vmha/shared",
                    "directories": ["prompts", "spool"], "batch_delay": 0.5, "sweep_interval": 300,
                    "max_frame": 1048576, "log_keep": 50, "log_max": 2000},
    "store": {"kind": "imap", "maildir": "/srv/shared/vm", "imap": "mail.example:143",
              "imap_passwords": "/etc/vmha/imap.pw", "timeout": 3},
    "notify": {"smtp": "mail.example:25", "sender": "vm@example.com", "attach_audio": True},
    "messaging": {"default_mailbox": "operator", "max_message": 300, "silence": 2.5, "min_message": 1,
                  "mwi_resync_at": "02:30", "mwi_coalesce": 2.5, "realtime_audio": False, "operator": "0",
                  "pin_max_failures": 3, "pin_lockout": 30, "pin_lockout_max": 900},
}


def test_full_example_sets_every_key():
    covered = {f"{s}.{k}" for s in SCHEMA for k in SCHEMA[s]}
    written = {f"{s}.{k}" for s in FULL if s != "ports" for k in FULL[s]}
    written |= {f"ports.{p}.{k}" for p in FULL["ports"] for k in FULL["ports"][p]}
    assert written == covered


def test_full_config(tmp_path):
    c = load_config(write(tmp_path, FULL))
    assert c.node.role is Role.SECONDARY and c.node.key_file == Path("/etc/vmha/link.key")
    assert c.link.listen == Address("fd00::2", 3700) and str(c.link.listen) == "[fd00::2]:3700"
    assert c.link.peer == Address("ums-a.cluster.example", 3700)
    assert c.link.reconnect_max == 5.0 and isinstance(c.link.reconnect_max, float)
    f = c.failover
    assert (f.ping_interval, f.missed_pings, f.lease, f.startup_wait) == (0.25, 8, 1.5, 10.0)
    assert c.lease_s == 1.5 and c.startup_wait_s == 10.0 and c.peer_timeout == 2.0
    assert f.mode is Mode.MANUAL and f.call_takeover is False and f.realtime_priority == 20
    assert c.failback.type is FailbackType.SCHEDULED
    assert (c.failback.window_start, c.failback.window_end) == (dt.time(22), dt.time(2, 30))
    assert c.failback.window_seconds == (22 * 3600.0, 2.5 * 3600.0)
    assert c.service.command == ("/usr/bin/python3", "-m", "telephony.service")
    h = c.health
    assert (h.enabled, h.failover_below, h.grace, h.min_active, h.margin, h.store_probe) == \
        (False, 40, 10.0, 60.0, 30, 5.0)
    assert c.supervisor_config().health == h
    assert c.ports.loopback.count == 8 and c.admin.socket == Path("/run/vmha/admin.sock")
    w = c.http
    assert (w.listen, w.tls_cert, w.tls_key, w.operators_file, w.session_timeout) == \
        (Address("fd00::2", 8443), Path("/etc/vmha/tls/cert.pem"), Path("/etc/vmha/tls/key.pem"),
         Path("/etc/vmha/operators.toml"), 3600.0)
    assert (w.url, w.peer, w.scheme) == ("https://ums-b.cluster.example:8443",
                                         "https://ums-a.cluster.example:8443", "https")
    assert (c.log.level, c.log.console) == ("debug", False)
    r = c.replication
    assert c.database.path == Path("/srv/vmha/db/config.db")
    assert (r.listen, r.peer) == (Address("fd00::2", 3701), Address("ums-a.cluster.example", 3701))
    assert (r.handover_wait, r.files_root, r.directories) == \
        (30.0, Path("/srv/vmha/shared"), ("prompts", "spool"))
    assert (r.batch_delay, r.sweep_interval, r.max_frame, r.log_keep, r.log_max) == \
        (0.5, 300.0, 1048576, 50, 2000)
    assert c.supervisor_config().handover_wait == 30.0
    sm = c.ports.smdi
    ser, prof = sm.serial_settings(), sm.profile()
    assert (ser.device, ser.baudrate, ser.bytesize, ser.parity, ser.stopbits) == \
        ("/dev/ttyS1", 4800, 8, "none", 2)
    assert ser.bits_per_char == 11
    assert sm.shared_line is False
    assert c.messaging.operator == "0"
    assert (c.messaging.pin_max_failures, c.messaging.pin_lockout, c.messaging.pin_lockout_max) == \
        (3, 30.0, 900.0)
    assert (prof.terminals, prof.desk, prof.record_wait, prof.ring_wait) == ((5, 6, 7, 8), 1, 20.0, 1.5)
    assert prof.port_of(6) == "loopback-2" and prof.port_of(1) is None
    assert prof.inbound("15551002") == "1002" and prof.station("1002") == "5551002"
    assert prof.mwi.encode(True, "5551") == b"OP:MWI 0005551!\x04" and prof.mwi_gap == 0.01
    sp = c.ports.sip.profile()
    assert (sp.bind, sp.sip_port, sp.rtp_port, sp.count, sp.per_worker, sp.workers) == \
        ("127.0.0.2", 5080, 30000, 10, 3, 4)
    assert sp.worker_ports(3) == ["sip-10"] and sp.worker_ports(0) == ["sip-1", "sip-2", "sip-3"]
    assert (sp.mode, sp.registrar, sp.user, sp.password_file, sp.select) == \
        ("register", "sip:cm.example:5060", "vmport", "/etc/vmha/sip.pw", "first")
    assert sp.target("1001") == "sip:1001@cm.example:5060" and sp.account("1001") == "sip:1001@vm.example"
    assert (sp.notify_retries, sp.notify_backoff, sp.notify_timeout) == (2, 0.5, 8)
    assert sp.transfer_timeout == 25.0 and isinstance(sp.transfer_timeout, float)


def test_http_section_rules(tmp_path):
    c = load_config(write(tmp_path, minimal()))
    assert c.http.enabled is False and c.http.url is None
    assert c.http.operators_file == Path("/var/lib/vmha/operators.toml")
    c = load_config(write(tmp_path, minimal(http={"listen": "127.0.0.1:8080"})))
    assert (c.http.enabled, c.http.tls, c.http.url) == (True, False, "http://127.0.0.1:8080")
    c = load_config(write(tmp_path, minimal(http={"listen": "[::1]:8080"})))
    assert c.http.url == "http://[::1]:8080"
    for bad, key, says in [({"listen": "0.0.0.0:8080"}, "http.listen", "plain HTTP is allowed only"),
                           ({"listen": "10.0.0.1:8443", "tls_cert": "/c.pem"}, "http.tls_key", "required"),
                           ({"tls_key": "/k.pem"}, "http.tls_cert", "required"),
                           ({"listen": "127.0.0.1:0"}, "http.listen", "1..65535"),
                           ({"peer_url": "ftp://x"}, "http.peer_url", "URL"),
                           ({"session_timeout": 5}, "http.session_timeout", "60")]:
        err = error_for(tmp_path, minimal(http=bad))
        assert key in str(err) and says in str(err), (bad, str(err))
    c = load_config(write(tmp_path, minimal(http={"listen": "0.0.0.0:8443", "tls_cert": "c.pem",
                                                  "tls_key": "k.pem"})))
    assert c.http.tls and c.http.url == "https://127.0.0.1:8443"
    assert c.http.tls_cert == tmp_path / "c.pem"


def test_http_listen_collides_like_any_port(tmp_path):
    doc = minimal(http={"listen": "127.0.0.1:3671"})  # the loopback trunk's port
    from failover.config import port_collisions

    lines = port_collisions(load_config(write(tmp_path, doc)))
    assert any("http.listen" in line and "ports.loopback.listen" in line for line in lines), lines


def test_sip_port_settings_are_checked_together(tmp_path):
    on = {"enabled": True}
    c = load_config(write(tmp_path, set_key(minimal(), "ports.sip", dict(on))))
    assert c.ports.sip.profile().workers == 1
    for bad, key in [({**on, "bind": "localhost"}, "ports.sip.bind"),
                     ({**on, "mode": "register"}, "ports.sip"),  # no registrar
                     ({**on, "per_worker": 5}, "ports.sip.per_worker"),
                     ({**on, "mwi_target": "sip:mwi@pbx"}, "ports.sip"),  # no {extension}
                     ({**on, "mwi_target": "http://x/{extension}"}, "ports.sip.mwi_target"),
                     ({**on, "sip_port": 65535, "count": 8}, "ports.sip"),
                     ({**on, "notify_timeout": 0.5}, "ports.sip.notify_timeout")]:
        err = error_for(tmp_path, set_key(minimal(), "ports.sip", bad))
        assert key in str(err), (bad, str(err))
    both = set_key(set_key(minimal(), "ports.sip", on), "ports.smdi",
                   {"enabled": True, "device": "x", "terminals": [1]})
    assert "ports.sip.enabled" in str(error_for(tmp_path, both))


def test_sip_transfer_timeout_default_bounds_and_bad_values(tmp_path):
    on = {"enabled": True}
    c = load_config(write(tmp_path, set_key(minimal(), "ports.sip", dict(on))))
    assert c.ports.sip.transfer_timeout == 10.0 and c.ports.sip.profile().transfer_timeout == 10.0
    for ok in (1, 120, 2.5):
        c = load_config(write(tmp_path, set_key(minimal(), "ports.sip", {**on, "transfer_timeout": ok})))
        assert c.ports.sip.profile().transfer_timeout == ok
    for bad in (0, 0.5, 121, -3, "10", True, float("inf")):
        err = str(error_for(tmp_path, set_key(minimal(), "ports.sip", {**on, "transfer_timeout": bad})))
        assert "ports.sip.transfer_timeout" in err, (bad, err)
        assert "from 1 to 120" in err, (bad, err)


def test_smdi_link_settings_are_checked_together(tmp_path):
    on = {"enabled": True, "device": "ttyS0", "terminals": [1, 2]}
    c = load_config(write(tmp_path, set_key(minimal(), "ports.smdi", dict(on))))
    assert c.ports.smdi.device == str(tmp_path / "ttyS0")  # relative to the file
    assert c.ports.smdi.shared_line is True  # a line through a data splitter, by default
    url = load_config(write(tmp_path, set_key(minimal(), "ports.smdi", {**on, "device": "rfc2217://127.0.0.1:7001"})))
    assert url.ports.smdi.device == "rfc2217://127.0.0.1:7001"
    for bad, key in [({"enabled": True, "terminals": [1]}, "ports.smdi.device"),
                     ({"enabled": True, "device": "x"}, "ports.smdi.terminals"),
                     ({**on, "terminals": [1, 2, 3, 4, 5]}, "ports.smdi.terminals"),
                     ({**on, "terminals": [1, 1]}, "ports.smdi.terminals"),
                     ({**on, "terminals": [10000]}, "ports.smdi.terminals"),
                     ({**on, "parity": "sometimes"}, "ports.smdi.parity"),
                     ({**on, "mwi_suffix": "é"}, "ports.smdi.mwi_suffix"),
                     ({**on, "mwi_prefix": "55a"}, "ports.smdi.mwi_prefix"),
                     ({**on, "stopbits": 1}, "ports.smdi.stopbits"),
                     ({**on, "shared_line": "yes"}, "ports.smdi.shared_line")]:
        err = error_for(tmp_path, set_key(minimal(), "ports.smdi", bad))
        assert key in str(err), (bad, str(err))
    err = error_for(tmp_path, set_key(set_key(minimal(), "ports.loopback.enabled", False),
                                      "ports.smdi", on))
    assert "ports.smdi.enabled" in str(err) and "loopback" in str(err)


def test_replication_defaults_follow_the_link(tmp_path):
    c = load_config(write(tmp_path, minimal()))
    r = c.replication
    assert r.enabled and r.listen.port == c.link.listen.port + 1 and r.peer.port == c.link.peer.port + 1
    assert r.listen.host == c.link.listen.host and r.peer.host == c.link.peer.host
    assert r.files_root == c.node.data_dir / "files" and c.database.path == c.node.data_dir / "config.db"
    assert r.directories == ("prompts", "streams", "support", "spool") and r.handover_wait == 10.0


@pytest.mark.parametrize("bad, key", [
    ({"directories": ["../etc"]}, "replication.directories"),
    ({"directories": ["a", "a"]}, "replication.directories"),
    ({"directories": [".vmha-tmp"]}, "replication.directories"),
    ({"directories": "prompts"}, "replication.directories"),
    ({"max_frame": 1000}, "replication.max_frame"),
    ({"handover_wait": -1}, "replication.handover_wait"),
    ({"listen": "127.0.0.1:0"}, "replication.listen"),
])
def test_bad_replication_settings_name_the_key(tmp_path, bad, key):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, minimal(replication=bad)))
    assert e.value.key == key


def test_replication_must_not_share_the_link_port(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, minimal(replication={"listen": "0.0.0.0:3653"})))
    assert e.value.key == "replication.listen"


def test_relative_paths_are_relative_to_the_toml_file(tmp_path, monkeypatch):
    conf = tmp_path / "etc"
    conf.mkdir()
    p = write(conf, minimal(node={"data_dir": "../var/ums-a"}, admin={"socket": "admin.sock"}))
    monkeypatch.chdir("/")
    c = load_config(p)
    assert c.node.data_dir == tmp_path / "var" / "ums-a"
    assert c.node.key_file == tmp_path / "var" / "ums-a" / "link.key"
    assert c.admin.socket == conf / "admin.sock"
    assert c.control_socket == tmp_path / "var" / "ums-a" / "run" / "control.sock"


def test_parse_config_base_dir():
    c = parse_config(minimal(node={"data_dir": "d"}), "<test>", base_dir="/opt/x")
    assert c.node.data_dir == Path("/opt/x/d")


@pytest.mark.parametrize("profile, ping, missed, rt", [
    ("default", 0.1, 6, 0), ("fast", 0.02, 6, 10), ("guide", 1.0, 30, 0)])
def test_profile_presets(tmp_path, profile, ping, missed, rt):
    c = load_config(write(tmp_path, minimal(failover={"profile": profile})))
    assert (c.failover.ping_interval, c.failover.missed_pings, c.failover.realtime_priority) == \
        (ping, missed, rt)
    assert c.lease_s == pytest.approx(ping * (missed - 1))
    assert c.startup_wait_s == pytest.approx(max(ping * missed, 1.0))
    assert PROFILES[profile].peer_timeout == pytest.approx(c.peer_timeout)


def test_explicit_keys_override_the_profile(tmp_path):
    c = load_config(write(tmp_path, minimal(failover={"profile": "fast", "missed_pings": 10,
                                                      "realtime_priority": 0})))
    assert (c.failover.ping_interval, c.failover.missed_pings, c.failover.realtime_priority) == (0.02, 10, 0)


def test_guide_profile_matches_the_guide_settings():
    g = {s.key: s.value for s in guide_settings()}
    assert g["failover.ping_interval"] == PROFILES["guide"].ping_interval
    assert g["failover.missed_pings"] == PROFILES["guide"].missed_pings
    assert PROFILES["guide"].peer_timeout == 30.0  # the guide: "a 30-second delay"


# ============================================================================ errors name key and file


@pytest.mark.parametrize("dotted", [
    "colour", "node.colour", "link.colour", "failover.ping_interval_ms", "failback.start",
    "licence.limit", "service.cmd", "ports.skinny", "ports.loopback.port", "admin.path", "log.file",
])
def test_unknown_keys_are_errors(tmp_path, dotted):
    e = error_for(tmp_path, set_key(minimal(), dotted, 1))
    assert e.key == dotted and f": {dotted}: unknown key" in str(e)


@pytest.mark.parametrize("dotted, value, expected", [
    ("node", "x", "a table"),
    ("ports", 3, "a table"),
    ("node.name", "ums a", "node name"),
    ("node.name", "x" * 33, "node name"),
    ("node.name", "ümlaut", "node name"),
    ("node.role", "master", '"primary", "secondary"'),
    ("node.role", 0, '"primary"'),
    ("node.data_dir", 5, "a path"),
    ("node.data_dir", "~/vmha", "'~' is not expanded"),
    ("node.key_file", "", "a path"),
    ("link.listen", "localhost", "host:port"),
    ("link.listen", "::1:3653", "host:port"),
    ("link.listen", "[::zz]:3653", "not an IPv6 address"),
    ("link.listen", "10.0.0.300:3653", "not an IPv4 address"),
    ("link.listen", "ho_st:3653", "not a valid host name"),
    ("link.listen", "10.0.0.1:70000", "port must be"),
    ("link.listen", "10.0.0.1:0", "port must be"),
    ("link.peer", "0.0.0.0:3653", "wildcard"),
    ("link.peer", "[::]:3653", "wildcard"),
    ("link.peer_name", "", "node name"),
    ("link.connect_timeout", 0, "from 0.01 to 300"),
    ("link.reconnect_min", "fast", "a number of seconds"),
    ("failover.ping_interval", 0.001, "from 0.005 to 10"),
    ("failover.ping_interval", 11, "from 0.005 to 10"),
    ("failover.ping_interval", True, "got True (boolean)"),
    ("failover.ping_interval", float("nan"), "from 0.005 to 10"),
    ("failover.ping_interval", float("inf"), "from 0.005 to 10"),
    ("failover.missed_pings", 1, "an integer from 2 to 1000"),
    ("failover.missed_pings", 1001, "an integer from 2 to 1000"),
    ("failover.missed_pings", 6.0, "an integer"),
    ("failover.lease", -1, "a number of seconds"),
    ("failover.startup_wait", -0.1, "from 0 to 86400"),
    ("failover.mode", "auto", '"automatic", "manual"'),
    ("failover.call_takeover", "yes", "true or false"),
    ("failover.call_takeover", 1, "true or false"),
    ("failover.handover_timeout", 0, "from 0.01"),
    ("failover.drain_timeout", -1, "from 0 to 86400"),
    ("failover.realtime_priority", 100, "from 0 to 99"),
    ("failover.realtime_priority", -1, "from 0 to 99"),
    ("failover.profile", "turbo", '"default", "fast", "guide"'),
    ("failback.type", "automatic", '"manual", "scheduled"'),
    ("failback.window_start", "24:00", "HH:MM"),
    ("failback.window_start", "22:60", "HH:MM"),
    ("failback.window_start", 2200, "HH:MM"),
    ("licence.no_contact_limit", 0, "a number of seconds"),
    ("licence.after_contact_limit", "60d", "a number of seconds"),
    ("service.health_interval", 0, "from 0.001"),
    ("service.health_timeout", 1000, "to 300"),
    ("service.start_timeout", 0.01, "from 0.1"),
    ("service.max_restarts", -1, "an integer from 0"),
    ("service.restart_window", 0.5, "from 1"),
    ("service.offer_hold", 61, "to 60"),
    ("service.command", "python -m x", "array of non-empty strings"),
    ("service.command", [], "array of non-empty strings"),
    ("service.command", ["python", 3], "array of non-empty strings"),
    ("ports.loopback", [], "a table"),
    ("ports.loopback.enabled", "true", "true or false"),
    ("ports.loopback.listen", "127.0.0.1", "host:port"),
    ("ports.loopback.listen", "127.0.0.1:0", "port must be 1..65535"),
    ("ports.loopback.count", 0, "an integer from 1 to 256"),
    ("ports.loopback.count", 257, "an integer from 1 to 256"),
    ("admin.socket", ["a"], "a path"),
    ("log.level", "trace", '"debug", "info", "warning", "error"'),
    ("log.console", 0, "true or false"),
    ("messaging.operator", "", "1 to 31 of the digits"),
    ("messaging.operator", 0, "1 to 31 of the digits"),
    ("messaging.operator", "0a", "1 to 31 of the digits"),
    ("messaging.operator", "1" * 32, "1 to 31 of the digits"),
])
def test_bad_values_name_key_file_and_expectation(tmp_path, dotted, value, expected):
    e = error_for(tmp_path, set_key(minimal(), dotted, value))
    assert e.key == dotted, str(e)
    assert f": {dotted}: " in str(e) and expected in str(e), str(e)


@pytest.mark.parametrize("dotted", [
    "node.name", "node.role", "node.data_dir", "link.peer", "link.peer_name",
    "ports.loopback.listen"])
def test_required_keys(tmp_path, dotted):
    e = error_for(tmp_path, del_key(minimal(), dotted))
    assert e.key == dotted and "required" in str(e)


def test_loopback_listen_not_needed_when_disabled(tmp_path):
    doc = minimal()
    doc["ports"]["loopback"] = {"enabled": False}
    c = load_config(write(tmp_path, doc))
    assert c.ports.loopback.enabled is False and c.ports.loopback.listen is None


@pytest.mark.parametrize("changes, key, fragment", [
    ({"link": {"peer_name": "ums-a"}}, "link.peer_name", "must differ from node.name"),
    ({"link": {"reconnect_min": 3.0}}, "link.reconnect_min", "above link.reconnect_max"),
    ({"service": {"restart_backoff": 60}}, "service.restart_backoff", "above service.restart_backoff_max"),
    ({"service": {"health_timeout": 0.5, "health_interval": 0.3}}, "service.health_timeout",
     "at least twice service.health_interval (0.3 s)"),
    ({"node": {"data_dir": "/" + "d" * 100}}, "admin.socket", "107 bytes"),
])
def test_cross_key_rules(tmp_path, changes, key, fragment):
    e = error_for(tmp_path, minimal(**changes))
    assert e.key == key and fragment in str(e), str(e)


def test_the_health_keepalive_follows_the_health_timeout(tmp_path):
    """Left out, service.health_interval (the keep-alive) is a quarter of health_timeout,
    at most 10 s; written, it is taken as it is (up to half of health_timeout)."""
    def service(**keys):
        return load_config(write(tmp_path, minimal(service=keys))).service
    assert service(health_timeout=2.0).health_interval == 0.5
    assert service(health_timeout=0.02).health_interval == 0.005
    assert service(health_timeout=300).health_interval == 10.0
    assert service(health_timeout=1.0, health_interval=0.5).health_interval == 0.5
    assert service(health_timeout=1.0, health_interval=0.02).health_interval == 0.02


def test_all_problems_are_reported_together(tmp_path):
    doc = minimal(failover={"ping_interval": "x", "missed_pings": 0}, log={"colour": 1})
    e = error_for(tmp_path, doc)
    assert {p.key for p in e.problems} == {"failover.ping_interval", "failover.missed_pings", "log.colour"}
    assert len(str(e).splitlines()) == 3


def test_toml_syntax_error_names_file_and_line(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('[node]\nname = "a"\nrole = primary\n')
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert str(p) in str(ei.value) and "line 3" in str(ei.value)


def test_unreadable_and_binary_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)
    p = tmp_path / "bin.toml"
    p.write_bytes(b'a = "\xff"\n')
    with pytest.raises(ConfigError, match="bin.toml"):
        load_config(p)


def test_parse_config_rejects_non_tables():
    with pytest.raises(ConfigError, match="<x>"):
        parse_config([1, 2], "<x>")  # type: ignore[arg-type]


_values = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(),
                    st.text(max_size=12), st.lists(st.integers(), max_size=2),
                    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
                    st.times())
_keys = st.sampled_from([f"{s}.{k}" for s in SCHEMA for k in SCHEMA[s]]
                        + list(SCHEMA) + ["ports", "x", "node.x"])


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_keys, _values), max_size=4))
def test_any_mutation_parses_or_raises_config_error(changes):
    doc = minimal()
    for dotted, value in changes:
        try:
            set_key(doc, dotted, value)
        except (TypeError, AttributeError):
            continue  # a parent was replaced by a non-table: the change cannot be applied
    try:
        parse_config(doc, "<fuzz>", base_dir="/")
    except ConfigError as e:
        assert e.problems and str(e).startswith("<fuzz>: ")


# ============================================================================ lease


def test_explicit_lease_within_bounds(tmp_path):
    c = load_config(write(tmp_path, minimal(failover={"lease": 0.3})))
    assert c.lease_s == 0.3


@pytest.mark.parametrize("lease", [0.6, 1.0, 0.05])
def test_lease_must_be_between_ping_interval_and_peer_timeout(tmp_path, lease):
    e = error_for(tmp_path, minimal(failover={"lease": lease}))
    assert e.key == "failover.lease" and "fences itself" in str(e)


def test_two_missed_pings_gives_a_lease_of_one_interval(tmp_path):
    c = load_config(write(tmp_path, minimal(failover={"missed_pings": 2})))
    assert c.lease_s == c.failover.ping_interval and c.peer_timeout == pytest.approx(0.2)


# ============================================================================ failback window


def test_scheduled_window_crossing_midnight(tmp_path):
    c = load_config(write(tmp_path, minimal(failback={"type": "scheduled", "window_start": "23:30",
                                                      "window_end": "1:15"})))
    fb = c.failback
    assert fb.window_seconds == (23.5 * 3600, 1.25 * 3600)
    assert fb.in_window(23.75 * 3600) and fb.in_window(0.0) and fb.in_window(3600.0)
    assert not fb.in_window(1.25 * 3600) and not fb.in_window(12 * 3600) and not fb.in_window(23 * 3600)


def test_scheduled_window_same_day(tmp_path):
    c = load_config(write(tmp_path, minimal(failback={"type": "scheduled", "window_start": "02:00",
                                                      "window_end": "04:00"})))
    assert c.failback.in_window(3 * 3600) and not c.failback.in_window(5 * 3600)
    assert not c.failback.in_window(1 * 3600)


def test_toml_local_time_values_are_accepted(tmp_path):
    p = tmp_path / "t.toml"
    p.write_text(tomli_w.dumps(minimal()) + '[failback]\ntype = "scheduled"\n'
                 "window_start = 22:00:00\nwindow_end = 23:00:00\n")
    assert load_config(p).failback.window_seconds == (22 * 3600.0, 23 * 3600.0)


@pytest.mark.parametrize("failback, key, fragment", [
    ({"type": "scheduled"}, "failback.window_start", "required"),
    ({"type": "scheduled", "window_start": "22:00"}, "failback.window_end", "required"),
    ({"type": "scheduled", "window_start": "22:00", "window_end": "22:00"}, "failback.window_end", "empty"),
    ({"window_start": "22:00", "window_end": "23:00"}, "failback.window_start", "only allowed"),
])
def test_window_rules(tmp_path, failback, key, fragment):
    e = error_for(tmp_path, minimal(failback=failback))
    assert e.key == key and fragment in str(e)


def test_manual_failback_is_never_in_window(tmp_path):
    assert not load_config(write(tmp_path, minimal())).failback.in_window(0)


# ============================================================================ addresses


@pytest.mark.parametrize("text, addr", [
    ("10.1.2.3:3653", Address("10.1.2.3", 3653)),
    ("[::1]:3653", Address("::1", 3653)),
    ("ums-a.example.com:1", Address("ums-a.example.com", 1)),
])
def test_parse_address(text, addr):
    assert parse_address(text) == addr and str(parse_address(text)) == text


# ============================================================================ the pair


def pair_docs():
    a = minimal(link={"listen": "10.0.0.1:3653", "peer": "10.0.0.2:3653"})
    b = minimal(node={"name": "ums-b", "role": "secondary"},
                link={"listen": "0.0.0.0:3653", "peer": "10.0.0.1:3653", "peer_name": "ums-a"})
    return a, b


def pair(a, b):
    return parse_config(a, "a.toml", base_dir="/"), parse_config(b, "b.toml", base_dir="/")


def test_valid_pair_has_no_differences():
    assert settings_that_must_match(*pair(*pair_docs())) == []


def test_mode_and_local_settings_may_differ():
    a, b = pair_docs()
    b["failover"] = {"mode": "manual", "drain_timeout": 10.0, "realtime_priority": 5}
    b["service"] = {"max_restarts": 1}
    assert settings_that_must_match(*pair(a, b)) == []


@pytest.mark.parametrize("section, values, key", [
    ("failover", {"ping_interval": 0.2}, "failover.ping_interval"),
    ("failover", {"profile": "guide"}, "failover.ping_interval"),
    ("failover", {"missed_pings": 7}, "failover.missed_pings"),
    ("failback", {"type": "scheduled", "window_start": "22:00", "window_end": "23:00"}, "failback.type"),
    ("licence", {"no_contact_limit": 60}, "licence.no_contact_limit"),
    ("licence", {"after_contact_limit": 60}, "licence.after_contact_limit"),
    ("messaging", {"operator": "0"}, "messaging.operator"),
])
def test_shared_settings_must_match(section, values, key):
    a, b = pair_docs()
    b[section] = values
    out = settings_that_must_match(*pair(a, b))
    assert out and out[0].startswith(key + ": "), out


def test_the_shared_settings_digest_changes_with_the_shared_settings_only():
    from failover.config import shared_settings_digest

    a, b = pair(*pair_docs())
    assert shared_settings_digest(a) == shared_settings_digest(b) != 0  # names, roles differ
    x, y = pair_docs()
    y["failover"] = {"mode": "manual", "drain_timeout": 10.0}  # local settings
    assert shared_settings_digest(pair(x, y)[1]) == shared_settings_digest(a)
    for section, values in (("messaging", {"operator": "0"}), ("failover", {"missed_pings": 7}),
                            ("store", {"timeout": 3}), ("replication", {"max_frame": 1048576})):
        x, y = pair_docs()
        y[section] = values
        changed = shared_settings_digest(pair(x, y)[1]) != shared_settings_digest(a)
        must = any(k.startswith(section + ".") and k.split(".")[1] in values for k in MUST_MATCH)
        assert changed == must, (section, values)


def test_window_must_match():
    a, b = pair_docs()
    a["failback"] = {"type": "scheduled", "window_start": "22:00", "window_end": "23:00"}
    b["failback"] = {"type": "scheduled", "window_start": "22:00", "window_end": "23:30"}
    assert settings_that_must_match(*pair(a, b)) == \
        ["failback.window_end: ums-a has '23:00', ums-b has '23:30'"]


def test_not_a_pair():
    a, b = pair_docs()
    b["node"]["role"] = "primary"
    b["node"]["name"] = "ums-c"
    b["link"]["peer"] = "10.0.0.1:3999"
    out = settings_that_must_match(*pair(a, b))
    keys = [x.split(":")[0] for x in out]
    # replication.peer follows link.peer (port + 1), so it is wrong too
    assert keys == ["node.role", "link.peer_name", "link.peer", "replication.peer"], out


def test_peer_must_dial_the_listen_address():
    a, b = pair_docs()
    b["link"]["listen"] = "10.0.0.9:3653"
    out = settings_that_must_match(*pair(a, b))
    assert out == ["link.peer: ums-a dials 10.0.0.2:3653 but ums-b listens on 10.0.0.9:3653",
                   "replication.peer: ums-a dials 10.0.0.2:3654 but ums-b listens on 10.0.0.9:3654"]


def test_replication_directories_must_match():
    a, b = pair_docs()
    b["replication"] = {"directories": ["prompts"]}
    out = settings_that_must_match(*pair(a, b))
    assert len(out) == 1 and out[0].startswith("replication.directories: ums-a has ['prompts', "), out


def test_supervisor_config():
    from failover.core import supervisor as sup
    a, _ = pair_docs()
    a["failback"] = {"type": "scheduled", "window_start": "22:00", "window_end": "01:00"}
    c = parse_config(a, "a.toml", base_dir="/")
    s = c.supervisor_config()
    assert isinstance(s, sup.SupervisorConfig)
    assert (s.node, s.peer_name, s.role) == ("ums-a", "ums-b", Role.PRIMARY)
    assert s.lease_s == c.lease_s and s.peer_timeout == c.peer_timeout
    assert s.failback_window == (22 * 3600.0, 3600.0)


# ============================================================================ make_pair / write_pair


def test_make_pair_is_a_valid_pair(tmp_path):
    p_text, s_text, key = make_pair("ums-a", "ums-b", "10.0.0.1:3653", "10.0.0.2:3653", "/var/lib/vmha",
                                    profile="guide", failback="scheduled", window=("23:00", "01:00"))
    assert len(key) == 32
    a = load_config(write(tmp_path, tomllib.loads(p_text), "primary.toml"))
    (tmp_path / "secondary.toml").write_text(s_text)
    b = load_config(tmp_path / "secondary.toml")
    assert settings_that_must_match(a, b) == []
    assert a.node.role is Role.PRIMARY and b.node.role is Role.SECONDARY
    assert a.link.listen == b.link.peer == Address("10.0.0.1", 3653)
    assert a.failover.ping_interval == 1.0 and a.failover.missed_pings == 30
    assert b.failback.window_seconds == (23 * 3600.0, 3600.0)
    assert a.node.data_dir == Path("/var/lib/vmha/ums-a") and b.node.data_dir == Path("/var/lib/vmha/ums-b")
    assert a.node.key_file == b.node.key_file == tmp_path / "link.key"
    assert a.ports.loopback.listen != b.ports.loopback.listen


def test_make_pair_is_pure_given_a_key():
    k = bytes(range(32))
    args = ("a", "b", "127.0.0.1:3653", "127.0.0.1:3654")
    assert make_pair(*args, key=k) == make_pair(*args, key=k)
    assert make_pair(*args)[2] != make_pair(*args)[2]


@pytest.mark.parametrize("kwargs, fragment", [
    ({"primary_addr": "0.0.0.0:3653"}, "wildcard"),
    ({"secondary_name": "ums a"}, "node name"),
    ({"secondary_name": "ums-a"}, "must differ"),
    ({"failback": "scheduled"}, "failback.window_start"),
    ({"window": ("22:00", "23:00")}, "failback"),
    ({"profile": "turbo"}, "failover.profile"),
    ({"key": b"short"}, "32 bytes"),
])
def test_make_pair_rejects_bad_input(kwargs, fragment):
    args = {"primary_name": "ums-a", "secondary_name": "ums-b", "primary_addr": "10.0.0.1:3653",
            "secondary_addr": "10.0.0.2:3653", **kwargs}
    with pytest.raises(ConfigError, match=fragment):
        make_pair(**args)


def test_write_pair_files_and_key_mode(tmp_path):
    out = tmp_path / "conf"
    files = write_pair(out, "ums-a", "ums-b", "127.0.0.1:3653", "127.0.0.1:3654")
    assert stat.S_IMODE(os.stat(files.key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o700
    assert sorted(p.name for p in out.iterdir()) == ["link.key", "primary.toml", "secondary.toml"]
    key = load_key(files.key)
    assert len(key) == 32 and files.key.read_text() == key.hex() + "\n"
    a, b = load_config(files.primary), load_config(files.secondary)
    assert settings_that_must_match(a, b) == []
    assert a.node.key_file == files.key and a.node.data_dir == out / "data" / "ums-a"


def test_write_pair_refuses_to_overwrite(tmp_path):
    files = write_pair(tmp_path, "ums-a", "ums-b", "127.0.0.1:3653", "127.0.0.1:3654")
    before = {p: p.read_bytes() for p in files}
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        write_pair(tmp_path, "x", "y", "127.0.0.1:4000", "127.0.0.1:4001")
    assert {p: p.read_bytes() for p in files} == before
    files.primary.unlink()  # one missing is still a refusal: never write half a pair
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        write_pair(tmp_path, "x", "y", "127.0.0.1:4000", "127.0.0.1:4001")
    assert not files.primary.exists()
    write_pair(tmp_path, "x", "y", "127.0.0.1:4000", "127.0.0.1:4001", force=True)
    assert load_config(files.primary).node.name == "x"
    assert files.key.read_bytes() != before[files.key]
    assert stat.S_IMODE(os.stat(files.key).st_mode) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_load_key_rejects_open_modes_and_bad_contents(tmp_path):
    p = tmp_path / "link.key"
    p.write_text("ab" * 32 + "\n")
    os.chmod(p, 0o600)
    assert load_key(p) == bytes([0xAB]) * 32
    for mode in (0o644, 0o640, 0o604, 0o620):
        os.chmod(p, mode)
        with pytest.raises(ConfigError, match="lets group or others read a secret: chmod 600") as ei:
            load_key(p)
        assert str(p) in str(ei.value)
    os.chmod(p, 0o400)
    assert load_key(p) == bytes([0xAB]) * 32
    os.chmod(p, 0o600)
    for bad in ("ab" * 31, "ab" * 33, "zz" * 32, ""):
        p.write_text(bad)
        with pytest.raises(ConfigError, match="32 bytes"):
            load_key(p)
    with pytest.raises(ConfigError, match="cannot read"):
        load_key(tmp_path / "none.key")


# ============================================================================ vmha configure


def test_configure_main_writes_a_pair(tmp_path, capsys):
    out = tmp_path / "c"
    rc = configure_main(["--out", str(out), "--primary", "ums-a@127.0.0.1:3653",
                         "--secondary", "ums-b@[::1]", "--profile", "fast",
                         "--failback", "scheduled", "--window", "22:00-02:00"])
    assert rc == 0, capsys.readouterr().err
    a, b = load_config(out / "primary.toml"), load_config(out / "secondary.toml")
    assert b.link.listen == Address("::1", 3653) and a.link.peer == b.link.listen
    assert a.failover.profile == "fast" and b.failback.window_seconds == (22 * 3600.0, 2 * 3600.0)
    assert configure_main(["--check", str(out / "primary.toml"), str(out / "secondary.toml")]) == 0
    assert "OK" in capsys.readouterr().out
    # a second run refuses without --force
    assert configure_main(["--out", str(out), "--primary", "a@127.0.0.1:1",
                           "--secondary", "b@127.0.0.1:2"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert configure_main(["--out", str(out), "--primary", "a@127.0.0.1:1",
                           "--secondary", "b@127.0.0.1:2", "--force"]) == 0


def test_configure_check_reports_differences(tmp_path, capsys):
    out = tmp_path / "c"
    write_pair(out, "ums-a", "ums-b", "127.0.0.1:3653", "127.0.0.1:3654")
    sec = out / "secondary.toml"
    sec.write_text(sec.read_text().replace('profile = "default"', 'profile = "guide"'))
    rc = configure_main(["--check", str(out / "primary.toml"), str(sec)])
    captured = capsys.readouterr()
    assert rc == 1
    lines = captured.out.splitlines()
    assert lines == ["failover.ping_interval: ums-a has 0.1, ums-b has 1.0",
                     "failover.missed_pings: ums-a has 6, ums-b has 30"]


def test_configure_check_compares_keys(tmp_path, capsys):
    one, two = tmp_path / "one", tmp_path / "two"
    write_pair(one, "ums-a", "ums-b", "127.0.0.1:3653", "127.0.0.1:3654")
    write_pair(two, "ums-a", "ums-b", "127.0.0.1:3653", "127.0.0.1:3654")
    rc = configure_main(["--check", str(one / "primary.toml"), str(two / "secondary.toml")])
    assert rc == 1 and "node.key_file" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    [],
    ["--out", "x", "--primary", "a@127.0.0.1:1"],
    ["--out", "x", "--primary", "a-127.0.0.1:1", "--secondary", "b@127.0.0.1:2"],
    ["--out", "x", "--primary", "a@127.0.0.1:1", "--secondary", "b@127.0.0.1:2", "--failback", "scheduled"],
    ["--out", "x", "--primary", "a@127.0.0.1:1", "--secondary", "b@127.0.0.1:2", "--window", "1:00-2:00"],
    ["--out", "x", "--primary", "a@127.0.0.1:1", "--secondary", "b@127.0.0.1:2", "--profile", "turbo"],
    ["--check", "missing-a.toml", "missing-b.toml"],
])
def test_configure_usage_errors(tmp_path, monkeypatch, capsys, argv):
    monkeypatch.chdir(tmp_path)
    assert configure_main(argv) == 2
    assert capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# ============================================================================ docs


def test_docs_document_every_key_and_profile():
    text = DOCS.read_text()
    for section, keys in SCHEMA.items():
        assert f"[{section}]" in text, section
        for key in keys:
            assert f"`{key}`" in text or f"`{section}.{key}`" in text, f"{section}.{key}"
    for name in PROFILES:
        assert f"`{name}`" in text
    for g in guide_settings():
        assert g.guide in text and g.key in text


def test_docs_example_pair_is_valid(tmp_path):
    import re

    blocks = re.findall(r"```toml\n# (primary|secondary)\.toml[^\n]*\n(.*?)```", DOCS.read_text(), re.S)
    assert [name for name, _ in blocks] == ["primary", "secondary"]
    cfgs = [parse_config(tomllib.loads(text), f"docs:{name}.toml", base_dir="/") for name, text in blocks]
    assert settings_that_must_match(*cfgs) == []
    assert cfgs[0].failback.in_window(0.0)
