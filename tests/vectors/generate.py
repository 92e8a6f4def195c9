"""Generate the committed test vectors of the shard function and version resolution.

Run once, from the repository root, with the project's interpreter::

    .venv/bin/python tests/vectors/generate.py

It writes ``tests/vectors/shard.json`` and ``tests/vectors/resolve.json`` from TODAY's Python
reference (``placement.shard``, ``router.choose._stable_index``, ``router.resolve``), and the
character tables of ``native/src/resolve/unicode_tables.rs`` from CPython's own ``str``
methods. The Rust implementation (``shoal._native``) must reproduce the vectors bit for bit;
``cargo test`` and ``tests/native`` check it.

The output is deterministic (fixed seeds; no clock, no ``secrets``): running it again on the
same Python and NumPy gives the same files.

No test imports this script. It stops working once the Python reference is removed (the Rust
implementation is then the reference, and the committed vectors pin it); that is expected.
"""

from __future__ import annotations

import json
import math
import random
import sys
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np

from placement.shard import (
    FALLBACK_ZONED,
    Placement,
    Pool,
    _h64,
    _scores,
    _selection_order,
    selection_order,
    shard_matrix,
    tenant_hashes,
)
from router.choose import _stable_index
from router.resolve import NotFound, resolve
from shoal.artifacts import Signature
from shoal.records import Member, ModelRecord, ModelVersion, TenantConfig

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent
TABLES = ROOT / "native" / "src" / "resolve" / "unicode_tables.rs"

RNG = random.Random(20261201)

# ---------------------------------------------------------------------------------------------
# Shard function
# ---------------------------------------------------------------------------------------------

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
            primary.append({"key": key, "k": k, "index": _stable_index(key, k)})

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
            matrix = shard_matrix(pool, tenant_hashes(batch, pool.salt), k, chunk=5)
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


# ---------------------------------------------------------------------------------------------
# Version resolution
# ---------------------------------------------------------------------------------------------

SIG = Signature((), ())


class FixedRandom(random.Random):
    """``random()`` returns ``u`` (and counts the draws)."""

    def __init__(self, u: float) -> None:
        super().__init__(0)
        self.u = u
        self.draws = 0

    def random(self) -> float:
        self.draws += 1
        return self.u


RECORDS: list[dict[str, Any]] = [
    {
        "tenant": "acme",
        "name": "churn",
        "versions": [1, 2, 3],
        "aliases": {
            "stable": 2,
            "canary": 3,
            "it's": 1,
            'say "hi"': 1,
            "both'\"": 2,
            "broken": 9,
            "a\\b": 3,
            "tab\there": 1,
            "é": 2,
            "\u200bzw": 1,
        },
        "traffic": [],
    },
    {
        "tenant": "acme",
        "name": "fraud",
        "versions": [1, 2, 3, 10],
        "aliases": {"stable": 1},
        "traffic": [[3, 10], [2, 90]],
    },
    {"tenant": "empty", "name": "none", "versions": [], "aliases": {}, "traffic": []},
    {"tenant": "t", "name": "dangling-stable", "versions": [5], "aliases": {"stable": 7}},
    {
        "tenant": "t",
        "name": "dangling-split",
        "versions": [1, 2],
        "aliases": {},
        "traffic": [[1, 50], [4, 50]],
    },
    {
        "tenant": "t",
        "name": "big",
        "versions": [0, 1, 7, 123456789, 2**63, 2**64 - 1],
        "aliases": {"max": 2**64 - 1},
        "traffic": [],
    },
    {"tenant": "t", "name": "zero", "versions": [1, 2], "traffic": [[1, 0], [2, 0]]},
    {
        "tenant": "t",
        "name": "gaps",
        "versions": [1, 2, 3],
        "aliases": {"stable": 3},
        "traffic": [[1, 30], [2, 0], [3, 70]],
    },
    {
        "tenant": "t",
        "name": "many",
        "versions": list(range(1, 14)),
        "aliases": {"canary": 13},
        "traffic": [[v, v * 7 % 11 + (2**31 if v == 5 else 0)] for v in range(1, 14)],
    },
    {"tenant": "t", "name": "single-split", "versions": [4], "traffic": [[4, 100]]},
    {"tenant": "t", "name": "latest", "versions": [3, 1, 2], "aliases": {"canary": 1}},
    {"tenant": "t", "name": "digits", "versions": [0, 1, 2, 3, 7, 32, 123456789]},
]

REQUESTS: list[str] = [
    "",
    " ",
    " \t\n\r\x0b\x0c",
    "1",
    " 2 ",
    "\t3\n",
    "007",
    "0",
    "00",
    "9",
    "10",
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775808",
    "99999999999999999999999",
    "٣",
    "٣٢",
    "\uff13",  # fullwidth three
    "²",
    "1²",
    "①",
    "stable",
    " stable ",
    "canary",
    "max",
    "beta",
    "Stable",
    "it's",
    'say "hi"',
    "both'\"",
    "broken",
    "a\\b",
    "tab\there",
    "é",
    "\u200bzw",
    "\x00",
    "\x7f",
    "\x1c1\x1f",
    "\x85\xa01\u3000",
    "\u180e1",  # not whitespace since Unicode 6.3
    "\u20281\u2029",
    "\u200b",
    "日本",
    "😀",
    "\U000e0001",
    "\ue000",
    "\u0378",
    "\U0010ffff",
    "\udb80",  # never sent (not valid UTF-8): skipped below
    "e\u0301",
    "+1",
    "-1",
    "1.0",
    "1_000",
    "0x10",
    "1 2",
    "١٢٣٤٥٦٧٨٩",
]


# Long digit strings (CPython's 4,300-digit limit, the repr cut at 200 characters): asked of two
# records only, to keep the file small.
LONG_REQUESTS: list[str] = [
    "1" * 4300,
    "0" * 4299 + "7",
    "1" * 4301,
    "1" * 4301 + "²",
    "²" + "1" * 4301,
    "1" * 2000 + "²",
    "\x00" * 60 + "²",  # a repr longer than 200 characters, cut inside an escape
    "٣" * 4301,
]


def _record(spec: dict[str, Any]) -> ModelRecord:
    versions = {
        v: ModelVersion(v, f"artifacts/{v}", "xgboost", "xgboost-json", "cpu", "0" * 64, 1, SIG)
        for v in spec.get("versions", [])
    }
    return ModelRecord(
        spec["tenant"],
        spec["name"],
        versions,
        dict(spec.get("aliases", {})),
        {v: w for v, w in spec.get("traffic", [])},
    )


def _bits(u: float) -> int:
    return int.from_bytes(np.float64(u).tobytes(), "little")


def _outcome(record: ModelRecord, requested: str, u: float) -> dict[str, Any]:
    rng = FixedRandom(u)
    case: dict[str, Any] = {"requested": requested, "u": u, "u_bits": _bits(u)}
    try:
        res = resolve(record, requested, rng)
    except NotFound as exc:
        case["error"] = {"type": "NotFound", "message": str(exc)}
    except ValueError as exc:
        case["error"] = {"type": "ValueError", "message": str(exc)}
    else:
        case["ok"] = {"version": res.version.version, "via": res.via}
    case["draws"] = rng.draws
    return case


def _split_draws(traffic: list[list[int]]) -> list[float]:
    """u values at the edges of a split: 0, the smallest positive, each cumulative edge
    exactly and one step either side, the middle, and the largest u below 1 (and 1.0, which
    random() never returns: random.choices still stays within the split)."""
    weights = [w for _, w in sorted(traffic)]
    cum = list(np.cumsum(weights, dtype=object))
    total = float(cum[-1]) if cum else 0.0
    us = {0.0, 5e-324, 0.5, 1 - 2**-53, 1.0}
    if total > 0:
        for c in cum:
            edge = c / total
            us |= {edge, math.nextafter(edge, 0.0), math.nextafter(edge, 1.0)}
    return sorted(u for u in us if 0.0 <= u <= 1.0)


def resolve_vectors() -> dict[str, Any]:
    cases = []
    for i, spec in enumerate(RECORDS):
        defaults: list[tuple[str, Any]] = [("versions", []), ("aliases", {}), ("traffic", [])]
        for key, default in defaults:
            spec.setdefault(key, default)
        record = _record(spec)
        long = LONG_REQUESTS if spec["name"] in ("churn", "digits") else []
        for requested in REQUESTS + long:
            if any(0xD800 <= ord(c) < 0xE000 for c in requested):
                continue
            us = _split_draws(spec.get("traffic", [])) if requested.strip() == "" else [0.5]
            for u in us:
                cases.append({"record": i, **_outcome(record, requested, u)})

    # Every Python whitespace character strips; every decimal run reads as int() reads it;
    # every non-decimal digit fails as int() fails; non-printable range edges repr-escape.
    digits = RECORDS.index(next(r for r in RECORDS if r["name"] == "digits"))
    record = _record(RECORDS[digits])
    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    for c in (c for c in chars if c.isspace()):
        cases.append({"record": digits, **_outcome(record, f"{c}{c}2{c}", 0.5)})
    for c in (c for c in chars if c.isdecimal() and int(c) == 0):
        run = "".join(chr(ord(c) + d) for d in range(10))
        cases.append({"record": digits, **_outcome(record, run, 0.5)})
        cases.append({"record": digits, **_outcome(record, run[3] + run[2], 0.5)})
    for c in (c for c in chars if c.isdigit() and not c.isdecimal()):
        cases.append({"record": digits, **_outcome(record, c, 0.5)})
    edges = sorted(
        {
            e
            for lo, hi in _not_printable_ranges()
            for e in (lo - 1, lo, hi, hi + 1)
            if 0 <= e < 0x110000 and not 0xD800 <= e < 0xE000
        }
    )
    names = ["x" + "".join(chr(e) for e in edges[j : j + 48]) for j in range(0, len(edges), 48)]
    for name in names:
        cases.append({"record": digits, **_outcome(record, name, 0.5)})
    return {"records": RECORDS, "cases": cases}


# ---------------------------------------------------------------------------------------------
# Character tables of native/src/resolve/unicode_tables.rs
# ---------------------------------------------------------------------------------------------


def _not_printable_ranges() -> list[tuple[int, int]]:
    ranges: list[list[int]] = []
    for c in range(0x110000):
        if not chr(c).isprintable():
            if ranges and ranges[-1][1] == c - 1:
                ranges[-1][1] = c
            else:
                ranges.append([c, c])
    return [(lo, hi) for lo, hi in ranges]


def _rows(items: list[str], per_line: int) -> str:
    return "".join(
        "    " + " ".join(items[i : i + per_line]) + "\n" for i in range(0, len(items), per_line)
    )


def unicode_tables() -> str:
    chars = range(0x110000)
    zeros = [c for c in chars if chr(c).isdecimal() and int(chr(c)) == 0]
    decimal = [c for c in chars if chr(c).isdecimal()]
    # Decimal digits come in runs of ten valued 0..9 (pystr.rs reads them so): check it.
    assert len(decimal) == 10 * len(zeros)
    assert all(int(chr(z + d)) == d for z in zeros for d in range(10))
    assert all(chr(c).isdigit() for c in decimal)
    digit_only = [c for c in chars if chr(c).isdigit() and not chr(c).isdecimal()]
    spaces = [c for c in chars if chr(c).isspace()]
    not_printable = _not_printable_ranges()
    return (
        "//! Character classes of CPython's `str`, generated by `tests/vectors/generate.py` from\n"
        f"//! CPython {sys.version.split()[0]}'s own `str` methods (Unicode "
        f"{unicodedata.unidata_version}). Do not edit.\n\n"
        "/// The `0` of each run of ten decimal digits (`str.isdecimal()`, values 0 to 9).\n"
        f"pub(super) const DECIMAL_ZEROS: [u32; {len(zeros)}] = [\n"
        + _rows([f"0x{c:05x}," for c in zeros], 10)
        + "];\n\n"
        "/// `str.isdigit()` but not `str.isdecimal()` (`int()` refuses them), ascending.\n"
        f"pub(super) const DIGITS_NOT_DECIMAL: [u32; {len(digit_only)}] = [\n"
        + _rows([f"0x{c:05x}," for c in digit_only], 10)
        + "];\n\n"
        "/// `str.isspace()`, ascending.\n"
        f"pub(super) const SPACES: [u32; {len(spaces)}] = [\n"
        + _rows([f"0x{c:05x}," for c in spaces], 10)
        + "];\n\n"
        "/// Inclusive ranges of `not str.isprintable()`, ascending and disjoint.\n"
        f"pub(super) const NOT_PRINTABLE: [(u32, u32); {len(not_printable)}] = [\n"
        + _rows([f"(0x{lo:05x}, 0x{hi:05x})," for lo, hi in not_printable], 1)
        + "];\n"
    )


def _dump(path: Path, data: dict[str, Any]) -> None:
    meta = {
        "generator": "tests/vectors/generate.py",
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "unicode": unicodedata.unidata_version,
    }
    # One list item per line: readable diffs, a small file.
    lines = []
    for key, value in {"meta": meta, **data}.items():
        head = json.dumps(key, ensure_ascii=False)
        if isinstance(value, list):
            items = [json.dumps(v, ensure_ascii=False, separators=(",", ":")) for v in value]
            lines.append(f"{head}: [\n" + ",\n".join(items) + "\n]")
        else:
            lines.append(f"{head}: " + json.dumps(value, ensure_ascii=False, separators=(",", ":")))
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")
    print(f"{path.relative_to(ROOT)}: {path.stat().st_size:,} bytes")


def main() -> None:
    _dump(OUT / "shard.json", shard_vectors())
    _dump(OUT / "resolve.json", resolve_vectors())
    TABLES.write_text(unicode_tables(), encoding="utf-8")
    print(f"{TABLES.relative_to(ROOT)}: {TABLES.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
