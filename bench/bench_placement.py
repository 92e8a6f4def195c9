"""Shard lookup per request (issue 8 item 5): the router's placement path, timed in-process.

What is measured: ``Placement.ranked(tenant)`` (every member in selection order plus k, what
the router asks per request) for a 64-worker pool with shard size 4, without zones and with 3
zones. *Cold*: the first lookup of each of 20,000 distinct tenants in a fresh ``Placement``
(hash, score every worker, order, zone walk); *warm*: lookups of tenants already memoised for
this snapshot epoch (the steady state). Also the vectorised path: ``shard_matrix`` for 1M
tenants (µs per tenant). Target: "per-request lookup cost is microseconds" (issue 4); we hold
the warm lookup to <= 10 µs. Run alone: ``.venv/bin/python -m bench.bench_placement``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: python bench/bench_placement.py
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.common import figure, write_results
from shoal.records import Member
from shoal.shard import Placement, Pool, shard_matrix, tenant_hashes

WORKERS, K, TENANTS = 64, 4, 20_000
WARM_TARGET_US = 10.0


def _pool(zones: int) -> Pool:
    members = tuple(
        Member(f"w{i}", f"127.0.0.1:{9000 + i}", f"z{i % zones}" if zones > 1 else "")
        for i in range(WORKERS)
    )
    return Pool(members, b"bench-salt-0123456789", K)


def _per_call_us(fn: object, args: list[str]) -> float:
    call = fn  # a bound method; looked up once
    t0 = time.perf_counter()
    for a in args:
        call(a)  # type: ignore[operator]
    return (time.perf_counter() - t0) / len(args) * 1e6


def main() -> int:
    tenants = [f"tenant-{i:06d}" for i in range(TENANTS)]
    figs = []
    for zones in (1, 3):
        placement = Placement(_pool(zones), cache_size=TENANTS * 2)
        cold = _per_call_us(placement.ranked, tenants)
        warm = min(_per_call_us(placement.ranked, tenants) for _ in range(3))
        label = "no zones" if zones == 1 else f"{zones} zones"
        figs.append(figure(f"shard lookup, cold (first of a tenant), {label}", cold, "µs"))
        figs.append(
            figure(
                f"shard lookup, warm (memoised per epoch), {label}",
                warm,
                "µs",
                f"<= {WARM_TARGET_US:.0f} µs",
                warm <= WARM_TARGET_US,
            )
        )
    million = [f"tenant-{i:07d}" for i in range(1_000_000)]
    pool = _pool(1)
    t0 = time.perf_counter()
    hashes = tenant_hashes(million, pool.salt)
    t1 = time.perf_counter()
    shard_matrix(pool, hashes, K)
    t2 = time.perf_counter()
    figs.append(figure("tenant hashing, 1M tenants", (t1 - t0), "s"))
    figs.append(figure("vectorised shards, 1M tenants x 64 workers, k=4", (t2 - t1), "s"))
    path = write_results("placement", figs)
    for f in figs:
        print(f"{f['name']}: {f['value']:.3g} {f['unit']}")
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
