"""Every tenant's shard in a simulated pool, on the production shard function.

``tenant_shards`` gives, for millions of tenants at once, exactly what
``shoal.shard.Placement(pool, overrides).shard(tenant)`` gives one by one (``shard_matrix``,
tested equal to it); ``hot_overrides`` adds the simulation's hot-tenant rules to the fleet's
own overrides.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

import numpy as np

from capacity.inputs import Fleet, InputError
from capacity.model import HotRule, Shards
from shoal.records import TenantConfig
from shoal.shard import Placement, Pool, shard_matrix, tenant_hashes


def tenant_shards(
    pool: Pool,
    tenants: list[str],
    hashes: np.ndarray,
    overrides: Mapping[str, TenantConfig],
    progress: Callable[[float], None] | None = None,
    chunk: int = 131072,
) -> Shards:
    """Shards as ``Placement(pool, overrides).shard(tenant)`` gives them, for all tenants.

    Tenants with an explicit member list go through ``Placement`` itself (they are few); the
    others through ``shard_matrix`` grouped by shard size. Raises ``InputError`` when a pinned
    tenant names no member of the pool.
    """
    n_t = len(tenants)
    n = len(pool)
    k = np.full(n_t, min(pool.shard_size, n), dtype=np.int64)
    pinned = np.zeros(n_t, dtype=bool)
    placement = Placement(pool, overrides, cache_size=1) if overrides else None
    explicit: dict[int, list[int]] = {}
    if overrides:
        where = {name: i for i, name in enumerate(tenants)}
        index = {m.worker_id: i for i, m in enumerate(pool.members)}
        for name, cfg in overrides.items():
            i = where.get(name)
            if i is None:
                continue
            if cfg.members:
                assert placement is not None
                k[i] = placement.shard_size(name)
                if k[i] == 0:
                    raise InputError(f"tenant {name!r} is pinned to no worker of the pool")
                members, _ = placement.ranked(name)
                explicit[i] = [index[m.worker_id] for m in members[: k[i]]]
                pinned[i] = True
            elif cfg.shard_size > 0:
                k[i] = min(cfg.shard_size, n)
    rows = np.full((n_t, int(k.max()) if n_t else 0), -1, dtype=np.int64)
    for i, members_idx in explicit.items():
        rows[i, : len(members_idx)] = members_idx
    todo = [(kv, np.flatnonzero((k == kv) & ~pinned)) for kv in np.unique(k[~pinned]).tolist()]
    total = max(1, sum(len(sel) for _, sel in todo))
    done = 0
    for kv, sel in todo:
        for lo in range(0, len(sel), chunk):
            part = sel[lo : lo + chunk]
            rows[part, :kv] = shard_matrix(pool, hashes[part], kv)
            done += len(part)
            if progress is not None:
                progress(done / total)
    return Shards(rows, k, pinned)


def hot_overrides(
    fleet: Fleet, tenant_popularity: np.ndarray, rules: tuple[HotRule, ...]
) -> dict[str, TenantConfig]:
    """The fleet's overrides plus one ``TenantConfig(shard_size=K)`` per hot tenant.

    A tenant in several rules gets the largest K; a rule overrides a registry shard size but
    never an explicit member list.
    """
    out = dict(fleet.overrides)
    if not rules:
        return out
    rank = np.argsort(-tenant_popularity, kind="stable")
    size: dict[int, int] = {}
    for rule in rules:
        if rule.top < 0 or rule.shard_size <= 0:
            raise InputError("hot rules need top >= 0 and a positive shard size")
        for t in rank[: rule.top].tolist():
            size[t] = max(size.get(t, 0), rule.shard_size)
    for t, kv in size.items():
        name = fleet.tenants[t]
        cur = out.get(name)
        if cur is not None and cur.members:
            continue
        out[name] = (
            TenantConfig(name, shard_size=kv) if cur is None else replace(cur, shard_size=kv)
        )
    return out


def hash_tenants(
    tenants: list[str], salt: bytes, progress: Callable[[float], None], chunk: int = 131072
) -> np.ndarray:
    out = np.empty(len(tenants), dtype=np.uint64)
    for lo in range(0, len(tenants), chunk):
        out[lo : lo + chunk] = tenant_hashes(tenants[lo : lo + chunk], salt)
        progress(min(1.0, (lo + chunk) / max(1, len(tenants))))
    return out
