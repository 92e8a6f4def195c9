"""Shard-function cases of ``tests/vectors/shard.json`` (run through ``generate.py``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from shoal.records import Member, TenantConfig
from shoal.shard import (
    FALLBACK_ZONED,
    Placement,
    Pool,
    _h64,
    _scores,
    _selection_order,
    primary_index,
    selection_order,
    shard_matrix,
    tenant_hashes,
)
from tests.vectors.common import RNG

SALTS: list[bytes] = [
    b"",  # unkeyed (hashlib treats an empty key as no key)
    b"k",  # short
    b"movement-salt",
    RNG.randbytes(32),
    RNG.randbytes(32),
    RNG.randbytes(32),
    bytes(range(64)),  # exactly the BLAKE2b key limit
    RNG.randbytes(65),  # truncated to 64
    RNG.randbytes(100),  # truncated to 64
]

DATA: list[str] = [
    "",
    "a",
    "acme",
    "tenant-0",
    "w0",
    "10.0.0.1:9000",
    "ünïcødé",
    "日本語のテナント",
    "😀",
    "tab\tnew\nline",
    "\x00nul",
    "with space",
    "a" * 127,
    "b" * 128,
    "c" * 129,
    "é" * 64,  # 128 bytes of UTF-8
    "x" * 300,
]

TENANTS: list[str] = [
    "acme",
    "",
    "tenant-42",
    "ünïcødé-gmbh",
    "日本",
    "😀😀",
    "t/with/slash",
    " padded ",
    "a" * 200,
    "UPPER.case_mixed-09",
]


def worker_ids(style: int, n: int) -> list[str]:
    if style == 0:
        return [f"w{i}" for i in range(n)]
    if style == 1:
        return [f"10.0.{i // 250}.{i % 250}:9000" for i in range(n)]
    if style == 2:
        return [f"wörker-{i}-ß" for i in range(n)]
    return [RNG.randbytes(8).hex() for _ in range(n)]


def zone_names(mode: str, n: int) -> list[str]:
    if mode == "none":
        return [""] * n
    if mode == "one":
        return ["eu-west-1a"] * n  # one distinct zone: unzoned
    if mode == "two":
        return [f"z{i % 2}" for i in range(n)]
    if mode == "three":
        return [f"zone-{i % 3}" for i in range(n)]
    if mode == "four-unbalanced":
        # Zone sizes roughly 60 % / 25 % / 10 % / 5 % (at least one member each when n >= 4).
        out = []
        for i in range(n):
            r = (i * 37 % 100) if n >= 4 else i
            out.append("a" if r < 60 else "b" if r < 85 else "c" if r < 95 else "d")
        return out
    if mode == "empty-and-named":
        return ["" if i % 3 else "east" for i in range(n)]  # "" is a zone like any other
    if mode == "random":
        z = RNG.randint(2, 4)
        return [f"r{RNG.randrange(z)}" for _ in range(n)]
    if mode == "lonely":
        return ["big"] * (n - 1) + ["small"]  # one zone of one member
    raise ValueError(mode)


POOL_SPECS: list[tuple[int, str, int]] = [
    # (size, zone mode, shard size)
    (0, "none", 2),
    (1, "none", 2),
    (1, "two", 1),
    (2, "none", 2),
    (2, "two", 2),
    (3, "three", 2),
    (4, "four-unbalanced", 3),
    (5, "none", 3),
    (6, "lonely", 4),
    (7, "empty-and-named", 3),
    (8, "two", 4),
    (9, "random", 5),
    (12, "one", 4),
    (13, "three", 4),
    (16, "none", 4),
    (20, "four-unbalanced", 6),
    (24, "random", 3),
    (32, "two", 5),
    (33, "lonely", 7),
    (40, "none", 2),
    (50, "three", 8),
    (64, "none", 4),
    (64, "three", 4),
    (70, "four-unbalanced", 9),
    (70, "random", 10),
]


def pool_case(i: int, size: int, mode: str, shard_size: int) -> tuple[dict[str, Any], Pool]:
    ids = worker_ids(i % 4, size)
    zones = zone_names(mode, size)
    salt = SALTS[i % len(SALTS)]
    members = tuple(Member(w, f"addr-{w}", z) for w, z in zip(ids, zones, strict=True))
    pool = Pool(members, salt, shard_size)
    spec = {
        "worker_ids": ids,
        "zones": zones,
        "salt": salt.hex(),
        "shard_size": shard_size,
        "n_zones": pool.n_zones,
        "worker_hashes": [int(h) for h in pool.worker_hashes],
    }
    return spec, pool


def shard_vectors() -> dict[str, Any]:
    h64 = [
        {"salt": salt.hex(), "data": d, "h": _h64(d, salt)}
        for salt in SALTS
        for d in DATA
        if salt or d  # every salt x data, plus the unkeyed ones
    ]
    primary = []
    for key in ["acme/churn:3", "", "ünï/modèle:12", "t/m:1" * 40, "😀/x:9"]:
        for k in [1, 2, 3, 4, 7, 8, 64, 1000, 2**63 + 1, 2**64 - 1]:
            primary.append({"key": key, "k": k, "index": primary_index(key, k)})

    pools, orders, matrices, ranked = [], [], [], []
    for i, (size, mode, shard_size) in enumerate(POOL_SPECS):
        spec, pool = pool_case(i, size, mode, shard_size)
        pools.append(spec)
        tenants = TENANTS[i % 3 :: 2] + [f"tenant-{i}-{j}" for j in range(3)]
        for j, t in enumerate(tenants):
            lengths: list[int | None] = [None]
            if size > 1:
                lengths.append(RNG.randrange(0, size))  # length < N: the tail is rank order
            if j == 0:
                lengths += [size + 5, 0]
            for length in lengths:
                orders.append(
                    {
                        "pool": i,
                        "tenant": t,
                        "length": length,
                        "order": selection_order(pool, t, length),
                    }
                )
        batch = [f"batch-{i}-{j}" for j in range(12)] + TENANTS[:4]
        ks = sorted({1, shard_size, size, size + 3, RNG.randint(1, max(1, size))})
        for k in ks:
            matrix = shard_matrix(pool, tenant_hashes(batch, pool.salt), k)
            matrices.append({"pool": i, "tenants": batch, "k": k, "rows": matrix.tolist()})
        ids = spec["worker_ids"]
        overrides: list[tuple[int, list[str]]] = [
            (0, []),
            (1, []),
            (size + 2, []),
            (max(1, size // 2), []),
        ]
        if size:
            picks = RNG.sample(ids, min(3, size))
            overrides += [
                (0, picks),
                (5, [*picks, "w-unknown"]),
                (0, ["gone-1", "gone-2"]),  # nothing known: an empty shard
                (0, [ids[-1], ids[0], ids[-1]]),  # a duplicate is kept (as the reference does)
            ]
        else:
            overrides += [(0, ["gone"])]
        for t in tenants[:3]:
            for shard_override, members in overrides:
                cfg = TenantConfig(t, shard_size=shard_override, members=tuple(members))
                members_out, k = Placement(pool, {t: cfg}).ranked(t)
                index = {m.worker_id: n for n, m in enumerate(pool.members)}
                ranked.append(
                    {
                        "pool": i,
                        "tenant": t,
                        "shard_size": shard_override,
                        "members": members,
                        "order": [index[m.worker_id] for m in members_out],
                        "k": k,
                    }
                )

    # Ties: two workers with one hash (a 64-bit collision of their ids, only reachable by
    # construction). Rank order puts the higher index first; the zone walk keeps that.
    raw = []
    for n, zones_n, dup in [(4, 1, [(0, 3)]), (6, 2, [(1, 4), (0, 5)]), (9, 3, [(2, 3), (3, 8)])]:
        for trial in range(4):
            hashes = [RNG.getrandbits(64) for _ in range(n)]
            for a, b in dup:
                hashes[b] = hashes[a]
            drawn = [RNG.randrange(zones_n) for _ in range(n)]
            zone_ids = [sorted(set(drawn)).index(z) for z in drawn]  # dense, as Pool numbers them
            h_t = RNG.getrandbits(64)
            scores = _scores(np.array([h_t], dtype=np.uint64), np.array(hashes, dtype=np.uint64))
            for length in [n, 2 + trial]:
                raw.append(
                    {
                        "worker_hashes": hashes,
                        "zone_ids": zone_ids,
                        "n_zones": max(1, len(set(zone_ids))),
                        "tenant_hash": h_t,
                        "length": length,
                        "order": _selection_order(
                            scores[0], zone_ids, max(1, len(set(zone_ids))), length
                        ),
                    }
                )
    return {
        "fallback_zoned": FALLBACK_ZONED,
        "h64": h64,
        "primary_index": primary,
        "pools": pools,
        "selection_order": orders,
        "shard_matrix": matrices,
        "ranked": ranked,
        "ties": raw,
    }
