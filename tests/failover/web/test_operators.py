"""The operators file (failover/web/operators.py): format, atomic 0600 writes, the refusal of
a file others can read, lookups, and the bounded parser under fuzzing."""
from __future__ import annotations

import hashlib
import os
import stat
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from failover.web.operators import (
    MAX_FILE,
    OperatorEntry,
    add_operator,
    load_operators,
    lookup,
    new_token,
    parse_operators,
    remove_operator,
)
from telephony.core.settings import ConfigError

H = "ab" * 32


def test_new_tokens_are_long_random_and_distinct():
    tokens = {new_token() for _ in range(200)}
    assert len(tokens) == 200
    for t in tokens:
        assert t.startswith("vmha_") and len(t) == 5 + 43
        assert all(c.isalnum() or c in "-_" for c in t[5:])


def test_add_writes_a_0600_file_with_only_the_hash(tmp_path):
    path = tmp_path / "sub" / "operators.toml"
    token = add_operator(path, "alice", "admin")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = path.read_text()
    assert token not in text
    assert hashlib.sha256(token.encode()).hexdigest() in text
    entries = load_operators(path)
    assert set(entries) == {"alice"}
    assert entries["alice"].role == "admin" and entries["alice"].created.endswith("Z")
    assert lookup(entries, token) == entries["alice"]
    assert lookup(entries, token + "x") is None and lookup(entries, "") is None
    # no temporary file left behind
    assert sorted(p.name for p in path.parent.iterdir()) == ["operators.toml"]


def test_given_token_same_on_two_files_and_refusals(tmp_path):
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    token = add_operator(a, "alice", "read")
    assert add_operator(b, "alice", "read", token) == token
    assert lookup(load_operators(a), token).name == lookup(load_operators(b), token).name == "alice"
    before = a.read_bytes()
    with pytest.raises(ConfigError, match="exists already"):
        add_operator(a, "alice", "admin")
    with pytest.raises(ConfigError, match="has this token already"):
        add_operator(a, "bob", "read", token)
    with pytest.raises(ValueError, match="operator name"):
        add_operator(a, "bad name", "read")
    with pytest.raises(ValueError, match="role"):
        add_operator(a, "carol", "root")
    with pytest.raises(ValueError, match="printable ASCII"):
        add_operator(a, "carol", "read", "short")
    assert a.read_bytes() == before  # nothing changed by any refusal
    new = add_operator(a, "alice", "admin", replace=True)
    entries = load_operators(a)
    assert entries["alice"].role == "admin" and lookup(entries, new) and lookup(entries, token) is None


def test_remove(tmp_path):
    path = tmp_path / "operators.toml"
    t1, t2 = add_operator(path, "alice", "admin"), add_operator(path, "bob", "read")
    remove_operator(path, "alice")
    entries = load_operators(path)
    assert set(entries) == {"bob"} and lookup(entries, t1) is None and lookup(entries, t2).name == "bob"
    with pytest.raises(ConfigError, match="no operator 'alice'"):
        remove_operator(path, "alice")


def test_a_missing_file_is_no_operators(tmp_path):
    assert load_operators(tmp_path / "none.toml") == {}


def test_a_file_others_can_read_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "operators.toml"
    add_operator(path, "alice", "admin")
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError) as ei:
        load_operators(path)
    assert str(path) in str(ei.value) and "chmod 600" in str(ei.value) and "0644" in str(ei.value)
    with pytest.raises(ConfigError):  # and nothing is written over it either
        add_operator(path, "bob", "read")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644 and "bob" not in path.read_text()


def test_a_directory_or_symlink_is_refused(tmp_path):
    (tmp_path / "dir.toml").mkdir()
    with pytest.raises(ConfigError, match="regular file"):
        load_operators(tmp_path / "dir.toml")
    real = tmp_path / "real.toml"
    add_operator(real, "alice", "admin")
    (tmp_path / "link.toml").symlink_to(real)
    with pytest.raises(ConfigError, match="cannot read"):
        load_operators(tmp_path / "link.toml")


@pytest.mark.parametrize("text, fragment", [
    ('[operators.a]\nrole = "root"\ntoken_sha256 = "' + H + '"\n', "role must be"),
    ('[operators.a]\nrole = "read"\ntoken_sha256 = "' + H[:-1] + '"\n', "64 lowercase hex"),
    ('[operators.a]\nrole = "read"\ntoken_sha256 = "' + H.upper() + '"\n', "64 lowercase hex"),
    ('[operators.a]\nrole = "read"\n', "token_sha256"),
    ('[operators.a]\nrole = "read"\ntoken_sha256 = "' + H + '"\nextra = 1\n', "unknown key 'extra'"),
    ('[operators."b a d"]\nrole = "read"\ntoken_sha256 = "' + H + '"\n', "operator name"),
    ('[operators.a]\nrole = "read"\ntoken_sha256 = "' + H + '"\n'
     '[operators.b]\nrole = "admin"\ntoken_sha256 = "' + H + '"\n', "same token"),
    ('operators = 3\n', "must be a table"),
    ('[operators]\na = 3\n', "must be a table"),
    ('[other]\n', "unknown table"),
    ('[operators.a\n', "not valid TOML"),
    ('[operators.a]\nrole = "read"\ntoken_sha256 = "' + H + '"\ncreated = 5\n', "created"),
])
def test_bad_files_name_the_problem(tmp_path, text, fragment):
    path = tmp_path / "operators.toml"
    path.write_text(text)
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError) as ei:
        load_operators(path)
    assert fragment in str(ei.value) and str(path) in str(ei.value)
    assert H not in str(ei.value)  # a hash is never quoted back


def test_oversized_and_non_utf8_files(tmp_path):
    with pytest.raises(ConfigError, match="longer than"):
        parse_operators(b"#" * (MAX_FILE + 1))
    with pytest.raises(ConfigError, match="not UTF-8"):
        parse_operators(b"\xff\xfe")


def test_concurrent_adds_lose_nothing(tmp_path):
    """Each add locks the directory: eight writers at once all end up in the file."""
    path = tmp_path / "operators.toml"
    errors = []

    def add(i: int) -> None:
        try:
            add_operator(path, f"op{i}", "read")
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert set(load_operators(path)) == {f"op{i}" for i in range(8)}


def test_lookup_refuses_odd_tokens_without_raising():
    entries = {"a": OperatorEntry("a", "read", hashlib.sha256(b"x" * 20).hexdigest())}
    assert lookup(entries, "x" * 20).name == "a"
    for odd in ["", "x" * 5, "x" * 10000, "x" * 19 + " ", "\udcff" * 20, "é" * 20]:
        assert lookup(entries, odd) is None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_fuzz_parser_bytes(data):
    """Any bytes: a dict of entries or a ConfigError, nothing else."""
    try:
        out = parse_operators(data, "fuzz")
    except ConfigError as e:
        assert str(e).startswith("fuzz")
        return
    assert all(isinstance(v, OperatorEntry) and v.role in ("read", "admin") for v in out.values())


_names = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF), min_size=0, max_size=70)
_values = st.one_of(st.text(max_size=80), st.integers(), st.booleans(), st.sampled_from(["read", "admin", H]),
                    st.lists(st.integers(), max_size=3))


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(_names, st.one_of(_values, st.dictionaries(
    st.sampled_from(["role", "token_sha256", "created", "x"]), _values, max_size=4)), max_size=5))
def test_fuzz_parser_structured(table):
    """Well-formed TOML with odd operator tables: parsed consistently or refused cleanly."""
    import tomli_w

    data = tomli_w.dumps({"operators": table}).encode()
    try:
        out = parse_operators(data, "fuzz")
    except ConfigError as e:
        assert str(e).startswith("fuzz")
        return
    for name, entry in out.items():
        assert table[name]["role"] == entry.role and table[name]["token_sha256"] == entry.token_sha256
