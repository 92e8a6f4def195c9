"""The native shard function and version resolution reproduce the committed vectors.

``tests/vectors/*.json`` were produced by the Python reference (see
``tests/vectors/generate.py``). The tie cases of ``shard.json`` (equal worker hashes, only
reachable by construction) have no Python entry point and are checked by ``cargo test``.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shoal import _native

VECTORS = Path(__file__).resolve().parents[1] / "vectors"


@cache
def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    return data


@cache
def pools() -> list[_native.NativePool]:
    out = []
    for spec in load("shard.json")["pools"]:
        pool = _native.NativePool(
            spec["worker_ids"], spec["zones"], bytes.fromhex(spec["salt"]), spec["shard_size"]
        )
        assert pool.worker_hashes().tolist() == spec["worker_hashes"]
        assert pool.n_zones == spec["n_zones"]
        assert len(pool) == len(spec["worker_ids"])
        out.append(pool)
    return out


def test_h64_and_primary_index() -> None:
    v = load("shard.json")
    assert v["fallback_zoned"] == _native.FALLBACK_ZONED
    for case in v["h64"]:
        got = _native.tenant_hashes([case["data"]], bytes.fromhex(case["salt"]))
        assert got.dtype == np.uint64
        assert got.tolist() == [case["h"]], case
    for case in v["primary_index"]:
        assert _native.primary_index(case["key"], case["k"]) == case["index"], case


def test_selection_order() -> None:
    for case in load("shard.json")["selection_order"]:
        pool = pools()[case["pool"]]
        assert pool.selection_order(case["tenant"], case["length"]) == case["order"], case


def test_shard_matrix() -> None:
    v = load("shard.json")
    for case in v["shard_matrix"]:
        pool = pools()[case["pool"]]
        salt = bytes.fromhex(v["pools"][case["pool"]]["salt"])
        hashes = _native.tenant_hashes(case["tenants"], salt)
        assert hashes.tolist() == [pool.tenant_hash(t) for t in case["tenants"]]
        matrix = pool.shard_matrix(hashes, case["k"])
        assert matrix.dtype == np.int64
        assert matrix.shape == (len(case["tenants"]), min(case["k"], len(pool)))
        assert matrix.tolist() == case["rows"], case


def test_ranked() -> None:
    for case in load("shard.json")["ranked"]:
        pool = pools()[case["pool"]]
        got = pool.ranked(case["tenant"], case["shard_size"], case["members"])
        assert got == (case["order"], case["k"]), case


def test_resolve() -> None:
    v = load("resolve.json")
    records = v["records"]
    assert len(v["cases"]) > 500
    for case in v["cases"]:
        rec = records[case["record"]]
        args = (
            f"{rec['tenant']}/{rec['name']}",
            rec["versions"],
            rec["aliases"],
            dict((ver, w) for ver, w in rec["traffic"]),
            case["requested"],
            case["u"],
        )
        if "ok" in case:
            assert _native.resolve_version(*args) == (case["ok"]["version"], case["ok"]["via"])
            continue
        error = LookupError if case["error"]["type"] == "NotFound" else ValueError
        with pytest.raises(error) as info:
            _native.resolve_version(*args)
        assert type(info.value) is error
        assert str(info.value) == case["error"]["message"], case
