"""telephony/configdb/core/schema.py and checksum.py on plain values: the DDL the tables are
made of, and the row hash arithmetic the triggers rely on."""
from __future__ import annotations

import random

from telephony.configdb.core.checksum import U64, row_hash, signed, sql_ck_add, sql_ck_sub
from telephony.configdb.core.schema import (
    ADDED_IN,
    INTERNAL_DDL,
    META_DEFAULTS,
    SCHEMA_VERSION,
    TABLES,
    table_ddl,
    trigger_ddl,
)


def test_every_table_has_its_key_and_strict_text_columns():
    for name, t in TABLES.items():
        assert t.name == name and t.column(t.pk) is not None and t.column("nope") is None
        ddl = table_ddl(t)
        assert ddl.startswith(f"CREATE TABLE {name} (") and ddl.endswith(") STRICT")
        assert f"{t.pk} TEXT NOT NULL PRIMARY KEY" in ddl
        for c in t.columns:
            assert f"{c.name} TEXT" in ddl
            assert c.nullable is (not c.required)
        assert all(f"CHECK ({chk})" in ddl for chk in t.ddl_checks)


def test_three_checksum_triggers_per_table():
    for name, t in TABLES.items():
        ddl = trigger_ddl(t)
        assert [d.split()[2] for d in ddl] == [f"_vmha_ck_{name}_{op}" for op in ("ins", "del", "upd")]
        assert all(f"vmha_row_hash('{name}', " in d for d in ddl)


def test_schema_versions_and_internal_tables():
    assert META_DEFAULTS["schema_version"] == SCHEMA_VERSION
    assert all(v <= SCHEMA_VERSION and set(names) <= set(TABLES) for v, names in ADDED_IN.items())
    assert [d.split()[2] for d in INTERNAL_DDL] == ["_vmha_meta", "_vmha_log", "_vmha_conflicts"]


def test_row_hash_is_type_tagged_and_ordered():
    assert row_hash("t", ["1"]) != row_hash("t", [1])
    assert row_hash("t", ["a", "b"]) != row_hash("t", ["b", "a"])
    assert row_hash("t", ["a"]) != row_hash("u", ["a"])
    assert row_hash("t", [None]) != row_hash("t", [""])
    assert 0 <= row_hash("t", [b"x", 1.5, None]) <= U64


def test_checksum_arithmetic_is_order_independent_and_reversible():
    rng = random.Random(7)
    hashes = [row_hash("t", [str(rng.random())]) for _ in range(50)]
    acc = 0
    for h in hashes:
        acc = sql_ck_add(acc, signed(h))
    total = acc
    rng.shuffle(hashes)
    acc = 0
    for h in hashes:
        acc = sql_ck_add(acc, signed(h))
    assert acc == total and (total & U64) == sum(hashes) & U64
    for h in hashes:
        acc = sql_ck_sub(acc, signed(h))
    assert acc == 0
    assert -(1 << 63) <= total < (1 << 63)
