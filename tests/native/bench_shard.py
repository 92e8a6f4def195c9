"""Speed of the native shard function against today's Python path (numpy + hashlib).

    .venv/bin/python tests/native/bench_shard.py [--tenants 1000000] [--workers 64] [--k 4]

Times ``tenant_hashes`` for T tenants and ``shard_matrix`` for T tenants x N workers x k, with
no zones and with 3 zones, both ways (the native runs are the best of 3, the Python ones a
single run), checks that the results are equal and prints one line per measurement plus the
context (commit, machine, versions). Not collected by pytest (no ``test_`` prefix); needs
the release-mode extension (``make .venv/.native``).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import numpy as np

from shoal import _native
from shoal.records import Member
from shoal.shard import Pool, shard_matrix, tenant_hashes

T = TypeVar("T")


def timed(fn: Callable[[], T], repeat: int) -> tuple[float, T]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    assert out is not None
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tenants", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=64)
    ap.add_argument("--k", type=int, default=4)
    ns = ap.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    print(
        f"commit {commit}, {platform.machine()} {os.cpu_count()} cpus, "
        f"python {platform.python_version()}, numpy {np.__version__}, "
        f"shoal._native {_native.__version__}, {time.strftime('%Y-%m-%d %H:%M:%S')}"
    )
    salt = bytes(range(32))
    tenants = [f"tenant-{i}" for i in range(ns.tenants)]

    t_py, h_py = timed(lambda: tenant_hashes(tenants, salt), 1)
    t_rs, h_rs = timed(lambda: _native.tenant_hashes(tenants, salt), 3)
    assert np.array_equal(h_py, h_rs)
    print(
        f"tenant_hashes  T={ns.tenants:,}: python {t_py:.3f} s, native {t_rs:.3f} s, "
        f"x{t_py / t_rs:.1f}"
    )

    for zones in (1, 3):
        ids = [f"w{i}" for i in range(ns.workers)]
        zone_of = [f"z{i % zones}" if zones > 1 else "" for i in range(ns.workers)]
        pool = Pool(tuple(Member(w, "", z) for w, z in zip(ids, zone_of, strict=True)), salt, ns.k)
        native = _native.NativePool(ids, zone_of, salt, ns.k)
        t_py, m_py = timed(partial(shard_matrix, pool, h_py, ns.k), 1)
        t_rs, m_rs = timed(partial(native.shard_matrix, h_rs, ns.k), 3)
        assert np.array_equal(m_py, m_rs)
        print(
            f"shard_matrix   T={ns.tenants:,} N={ns.workers} k={ns.k} zones={zones}: "
            f"python {t_py:.3f} s, native {t_rs:.3f} s, x{t_py / t_rs:.1f}"
        )


if __name__ == "__main__":
    main()
