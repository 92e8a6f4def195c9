"""Version-resolution cases of ``tests/vectors/resolve.json`` (run through ``generate.py``)."""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np

from shoal.artifacts import Signature
from shoal.records import ModelRecord, ModelVersion, UnknownVersion, resolve

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
    except UnknownVersion as exc:
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
            for lo, hi in not_printable_ranges()
            for e in (lo - 1, lo, hi, hi + 1)
            if 0 <= e < 0x110000 and not 0xD800 <= e < 0xE000
        }
    )
    names = ["x" + "".join(chr(e) for e in edges[j : j + 48]) for j in range(0, len(edges), 48)]
    for name in names:
        cases.append({"record": digits, **_outcome(record, name, 0.5)})
    return {"records": RECORDS, "cases": cases}


def not_printable_ranges() -> list[tuple[int, int]]:
    ranges: list[list[int]] = []
    for c in range(0x110000):
        if not chr(c).isprintable():
            if ranges and ranges[-1][1] == c - 1:
                ranges[-1][1] = c
            else:
                ranges.append([c, c])
    return [(lo, hi) for lo, hi in ranges]
