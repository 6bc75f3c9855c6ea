"""The key ring (failover/keys.py): the key file's parser, load/save, rotation, and
``vmha configure --rotate-key`` / ``--check`` on rotated files."""
from __future__ import annotations

import os
import stat
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from failover.config import ConfigError
from failover.configure import configure_main, write_pair
from failover.core.fields import key_id
from failover.keys import (
    MAX_KEY_FILE,
    KeyRing,
    describe,
    format_key_file,
    load_key,
    load_keys,
    parse_duration,
    parse_key_file,
    rotate,
    save_keys,
)

A = bytes([0xAB]) * 32
B = bytes(range(32))
T = datetime(2026, 12, 8, 17, 0, 0, tzinfo=UTC).timestamp()
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_one_line_file_of_the_version_before_still_loads():
    assert parse_key_file(A.hex().encode() + b"\n") == KeyRing(A)
    assert parse_key_file(b"  " + A.hex().upper().encode() + b"\r\n\n") == KeyRing(A)


def test_two_line_file():
    data = f"{A.hex()}\nprevious {B.hex()} until 2026-12-08T17:00:00Z\n".encode()
    ring = parse_key_file(data)
    assert ring == KeyRing(A, B, T)
    assert format_key_file(ring) == data
    assert parse_key_file(data.replace(b"Z\n", b"+00:00\n")) == ring


def test_accepted_keys_follow_the_window():
    ring = KeyRing(A, B, T)
    assert ring.accepted(T - 1) == (A, B) and not ring.expired(T - 1)
    assert ring.accepted(T) == (A,) and ring.expired(T)
    assert KeyRing(A).accepted(T) == (A,) and not KeyRing(A).expired(T)


def test_describe_shows_ids_never_keys():
    d = describe(KeyRing(A, B, T))
    assert d == {"current_id": key_id(A).hex(), "previous_id": key_id(B).hex(),
                 "previous_until": "2026-12-08T17:00:00Z"}
    assert A.hex() not in str(d) and B.hex() not in str(d)
    assert describe(KeyRing(A)) == {"current_id": key_id(A).hex(), "previous_id": None,
                                    "previous_until": None}


@pytest.mark.parametrize("data, match", [
    (b"", "32 bytes"),
    (b"ab" * 31, "32 bytes"),
    (b"ab" * 33, "32 bytes"),
    (b"zz" * 32, "32 bytes"),
    (b"\xff" * 64, "ASCII"),
    (b"x" * (MAX_KEY_FILE + 1), "longer than"),
    (A.hex().encode() + b"\nprevious\n", "line 2"),
    (A.hex().encode() + b"\nnext " + B.hex().encode() + b" until 2026-12-08T17:00:00Z", "line 2"),
    (A.hex().encode() + b"\nprevious " + B.hex().encode() + b" till 2026-12-08T17:00:00Z", "line 2"),
    (A.hex().encode() + b"\nprevious " + B.hex().encode()[:-2] + b" until 2026-12-08T17:00:00Z",
     "previous key must be"),
    (A.hex().encode() + b"\nprevious " + A.hex().encode() + b" until 2026-12-08T17:00:00Z",
     "is the current key"),
    (A.hex().encode() + b"\nprevious " + B.hex().encode() + b" until tomorrow", "ISO 8601"),
    (A.hex().encode() + b"\nprevious " + B.hex().encode() + b" until 2026-12-08T17:00:00", "UTC"),
    (A.hex().encode() + b"\nprevious " + B.hex().encode() + b" until 2026-12-08T17:00:00+01:00",
     "UTC"),
    (A.hex().encode() + b"\n" + A.hex().encode() + b"\n" + A.hex().encode(), "1 or 2 lines"),
])
def test_bad_files_are_clear_errors_that_never_quote_the_keys(data, match):
    with pytest.raises(ConfigError, match=match) as ei:
        parse_key_file(data, "/etc/vmha/link.key")
    text = str(ei.value)
    assert "/etc/vmha/link.key" in text and "node.key_file" in text
    assert A.hex() not in text and B.hex() not in text and B.hex()[:-2] not in text


rings = st.builds(
    lambda cur, prev, until: KeyRing(cur, prev, float(until) if prev is not None else None),
    st.binary(min_size=32, max_size=32),
    st.one_of(st.none(), st.binary(min_size=32, max_size=32)),
    st.integers(min_value=0, max_value=253402300799),  # up to 9999-12-31T23:59:59Z
).filter(lambda r: r.previous != r.current)


@FUZZ
@given(rings)
def test_format_then_parse_is_the_identity(ring):
    assert parse_key_file(format_key_file(ring)) == ring


@FUZZ
@given(st.binary(max_size=MAX_KEY_FILE + 40))
def test_arbitrary_bytes_parse_or_raise_config_error(data):
    try:
        ring = parse_key_file(data)
    except ConfigError:
        return
    assert len(ring.current) == 32 and ring.previous != ring.current
    assert parse_key_file(format_key_file(ring)) == ring


@FUZZ
@given(ring=rings, cut=st.integers(min_value=0, max_value=200), junk=st.binary(max_size=20))
def test_damaged_files_parse_or_raise_config_error(ring, cut, junk):
    data = format_key_file(ring)
    damaged = data[:cut] + junk + data[cut + len(junk):]
    try:
        parse_key_file(damaged)
    except ConfigError:
        pass


def test_load_keys_enforces_the_mode_and_save_keys_writes_0600_atomically(tmp_path):
    p = tmp_path / "link.key"
    save_keys(p, KeyRing(A, B, T))
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    assert load_keys(p) == KeyRing(A, B, T) and load_key(p) == A
    assert [x.name for x in tmp_path.iterdir()] == ["link.key"]  # no temporary file left
    for mode in (0o640, 0o604, 0o644):
        os.chmod(p, mode)
        with pytest.raises(ConfigError, match="lets group or others read a secret: chmod 600"):
            load_keys(p)
    os.chmod(p, 0o600)
    os.symlink(p, tmp_path / "link.lnk")
    with pytest.raises(ConfigError, match="cannot read"):
        load_keys(tmp_path / "link.lnk")  # O_NOFOLLOW: a link is not the key file
    with pytest.raises(ConfigError, match="not a regular file"):
        load_keys(tmp_path)


def test_save_keys_into_a_missing_directory_changes_nothing(tmp_path):
    with pytest.raises(OSError):
        save_keys(tmp_path / "no" / "link.key", KeyRing(A))
    assert list(tmp_path.iterdir()) == []


def test_rotate():
    ring = rotate(KeyRing(A), now=T, window=3600)
    assert ring.previous == A and ring.previous_until == T + 3600
    assert len(ring.current) == 32 and ring.current not in (A, B)
    assert rotate(ring, now=T, window=60, new_key=B) == KeyRing(B, ring.current, T + 60)
    with pytest.raises(ValueError):
        rotate(KeyRing(A), now=T, new_key=A)


@pytest.mark.parametrize("text, seconds", [("24h", 86400), ("90m", 5400), ("3600s", 3600),
                                           ("7d", 604800), ("120", 120), (" 1.5h ", 5400)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "0", "-1h", "soon", "400d", "nan", "inf", "1e999"])
def test_parse_duration_refuses(text):
    with pytest.raises(ValueError):
        parse_duration(text)


# ---- vmha configure --rotate-key ------------------------------------------------------------

@pytest.fixture
def pair_dir(tmp_path):
    write_pair(tmp_path, "alpha", "beta", "127.0.0.1:3653", "127.0.0.2:3653")
    return tmp_path


def test_rotate_key_command(pair_dir, capsys):
    key_file = pair_dir / "link.key"
    old = load_key(key_file)
    assert configure_main(["--rotate-key", "--config", str(pair_dir / "primary.toml"),
                           "--window", "2h"]) == 0
    out = capsys.readouterr().out
    ring = load_keys(key_file)
    assert ring.previous == old and ring.current != old
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert key_id(ring.current).hex() in out and key_id(old).hex() in out
    assert ring.current.hex() not in out and old.hex() not in out  # ids only
    assert "copy" in out.lower() and "beta" in out
    # a second rotation inside the window would drop the key the peer may still use
    assert configure_main(["--rotate-key", "--config", str(pair_dir / "primary.toml")]) == 2
    assert "still accepted" in capsys.readouterr().err
    assert load_keys(key_file) == ring  # unchanged
    assert configure_main(["--rotate-key", "--config", str(pair_dir / "primary.toml"),
                           "--force"]) == 0
    assert load_keys(key_file).previous == ring.current


@pytest.mark.parametrize("argv", [
    ["--rotate-key"],
    ["--config", "x.toml"],
    ["--rotate-key", "--config", "PRIMARY", "--window", "soon"],
    ["--rotate-key", "--config", "PRIMARY", "--check", "a", "b"],
])
def test_rotate_key_usage_errors_change_nothing(pair_dir, argv, capsys):
    before = (pair_dir / "link.key").read_bytes()
    argv = [str(pair_dir / "primary.toml") if a == "PRIMARY" else a for a in argv]
    assert configure_main(argv) == 2
    assert "error" in capsys.readouterr().err
    assert (pair_dir / "link.key").read_bytes() == before


def test_rotate_key_with_a_bad_key_file_changes_nothing(pair_dir, capsys):
    key_file = pair_dir / "link.key"
    key_file.write_bytes(b"not a key\n")
    assert configure_main(["--rotate-key", "--config", str(pair_dir / "primary.toml")]) == 2
    assert "32 bytes" in capsys.readouterr().err
    assert key_file.read_bytes() == b"not a key\n"


def test_failback_window_still_works(tmp_path):
    assert configure_main(["--out", str(tmp_path), "--primary", "a@127.0.0.1", "--secondary",
                           "b@127.0.0.2", "--failback", "scheduled", "--window", "02:00-04:00"]) == 0
    assert configure_main(["--out", str(tmp_path / "x"), "--primary", "a@127.0.0.1", "--secondary",
                           "b@127.0.0.2", "--failback", "scheduled", "--window", "24h"]) == 2


def test_check_accepts_a_rotation_in_progress_and_names_the_copy(pair_dir, capsys):
    """Both TOML files point at the same key file here, so give the secondary its own copy."""
    sec = pair_dir / "secondary.toml"
    sec.write_text(sec.read_text().replace('key_file = "link.key"', 'key_file = "peer.key"'))
    save_keys(pair_dir / "peer.key", load_keys(pair_dir / "link.key"))
    prim = str(pair_dir / "primary.toml")
    assert configure_main(["--check", prim, str(sec)]) == 0
    capsys.readouterr()
    assert configure_main(["--rotate-key", "--config", prim]) == 0
    capsys.readouterr()
    assert configure_main(["--check", prim, str(sec)]) == 0
    err = capsys.readouterr().err
    assert "rotation is in progress" in err and "link.key" in err and "peer.key" in err
    save_keys(pair_dir / "peer.key", KeyRing(B))
    assert configure_main(["--check", prim, str(sec)]) == 1
    assert "different keys" in capsys.readouterr().out
