"""Movement: what changes when one worker joins the pool, or the most loaded one leaves.

Each event re-places only the tenants it can affect (a property of the shard function: a join
or a leave changes a shard by at most the member that enters or leaves it), then counts the
tenants whose shard changed, the bytes their new members must load, and the traffic whose
primary changed, beside the closed forms ``k/(N+1)`` (join) and ``k/N`` (leave).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np

from capacity.inputs import Fleet, Traffic
from capacity.model import Movement, Shards
from capacity.shards import tenant_shards
from capacity.stats import Versus, new_members
from shoal.records import Member, TenantConfig
from shoal.shard import Pool, shard_matrix


def _moved(
    before: np.ndarray, after: np.ndarray, changed: np.ndarray | None, t_bytes: np.ndarray,
    traffic: Traffic, p_before: np.ndarray, p_after: np.ndarray,
) -> tuple[np.ndarray, int, float]:  # fmt: skip
    """(moved tenants mask, bytes to load on new members, traffic share rerouted). Only rows
    ``changed`` (all when None) can differ between ``before`` and ``after``."""
    sel = slice(None) if changed is None else changed
    fresh = new_members(before[sel], after[sel])
    moved = np.zeros(len(before), dtype=bool)
    moved[sel] = fresh > 0
    moved_bytes = int((t_bytes[sel] * fresh).sum())
    rerouted = float(traffic.popularity[p_before != p_after].sum())
    return moved, moved_bytes, rerouted


def join(
    pool: Pool, fleet: Fleet, traffic: Traffic, shards: Shards, hashes: np.ndarray,
    overrides: Mapping[str, TenantConfig], primary: np.ndarray, pidx: np.ndarray,
    progress: Callable[[float], None],
) -> Movement:  # fmt: skip
    """A new worker joins (next zone in round-robin order), appended so the other members keep
    their indices. Only shards the newcomer enters change; without zones a shard is the top k
    by score, so it enters exactly when it outscores the tenant's weakest member (its last):
    a two-member ``shard_matrix`` duel per weakest member decides, and only the entered tenants
    are re-placed. With zones every tenant is re-placed."""
    n = len(pool)
    zones = sorted({m.zone for m in pool.members})
    zone = zones[n % len(zones)]
    ids = {m.worker_id for m in pool.members}
    new_id = next(f"joining-{i}" for i in range(n + 1) if f"joining-{i}" not in ids)
    newcomer = Member(new_id, "", zone)
    joined = Pool((*pool.members, newcomer), pool.salt, pool.shard_size)
    hit: np.ndarray | None = None
    if pool.n_zones > 1:
        after_rows = tenant_shards(joined, fleet.tenants, hashes, overrides, progress).rows
    else:
        free = np.flatnonzero(~shards.pinned)  # pinned shards ignore newcomers
        weakest = shards.rows[free, shards.k[free] - 1]
        # A stable sort by member (small ints sort by radix).
        by_weakest = np.argsort(weakest.astype(np.int16) if n < 2**15 else weakest, kind="stable")
        bounds = np.searchsorted(weakest[by_weakest], np.arange(n + 1))
        entered: list[np.ndarray] = []
        for w in range(n):
            sel = free[by_weakest[bounds[w] : bounds[w + 1]]]
            if len(sel):
                duel = Pool((pool.members[w], newcomer), pool.salt, 1)
                entered.append(sel[shard_matrix(duel, hashes[sel], 1)[:, 0] == 1])
            progress((w + 1) / (n + 1))
        hit = np.sort(np.concatenate(entered)) if entered else np.empty(0, dtype=np.int64)
        after_rows = shards.rows.copy()
        names = [fleet.tenants[i] for i in hit.tolist()]
        sub = {t: overrides[t] for t in names if t in overrides}
        part = tenant_shards(joined, names, hashes[hit], sub)
        after_rows[hit, : part.rows.shape[1]] = part.rows
    p_after = after_rows[fleet.model_tenant, pidx]
    t_bytes = fleet.tenant_bytes()
    moved, moved_bytes, rerouted = _moved(
        shards.rows, after_rows, hit, t_bytes, traffic, primary, p_after
    )
    expect = float((shards.k / (n + 1)).mean())
    return _movement("join", new_id, moved, moved_bytes, rerouted, expect, 1 / (n + 1), t_bytes,
                     shards)  # fmt: skip


def leave(
    pool: Pool, fleet: Fleet, traffic: Traffic, shards: Shards, hashes: np.ndarray,
    overrides: Mapping[str, TenantConfig], primary: np.ndarray, pidx: np.ndarray, leaver: int,
) -> Movement:  # fmt: skip
    """Worker ``leaver`` leaves. Only shards holding it change (a property of the shard
    function, tested in tests/shoal/test_shard.py), so only those tenants are re-placed —
    unless its zone empties, which changes every zone cap: then all are."""
    n = len(pool)
    rest = tuple(m for i, m in enumerate(pool.members) if i != leaver)
    left = Pool(rest, pool.salt, pool.shard_size)

    def renumber(idx: np.ndarray) -> np.ndarray:
        """Member indices after the leave: those above the leaver shift down, the leaver
        becomes -2 (matches nothing after the leave), -1 pads stay."""
        out = idx - (idx > leaver)
        out[idx == leaver] = -2
        return out

    before = renumber(shards.rows)
    hit: np.ndarray | None = None
    if left.n_zones == pool.n_zones:
        after_rows = before.copy()
        holds = np.zeros(len(shards.rows), dtype=bool)
        for col in shards.rows.T:
            holds |= col == leaver
        hit = np.flatnonzero(holds)
        names = [fleet.tenants[i] for i in hit.tolist()]
        sub = {t: overrides[t] for t in names if t in overrides}
        part = tenant_shards(left, names, hashes[hit], sub)
        after_rows[hit] = -1
        after_rows[hit, : part.rows.shape[1]] = part.rows
    else:
        after_rows = tenant_shards(left, fleet.tenants, hashes, overrides).rows
    p_before = renumber(primary)
    p_after = after_rows[fleet.model_tenant, pidx]
    t_bytes = fleet.tenant_bytes()
    moved, moved_bytes, rerouted = _moved(
        before, after_rows, hit, t_bytes, traffic, p_before, p_after
    )
    expect = float((shards.k / n).mean())
    return _movement("leave", pool.members[leaver].worker_id, moved, moved_bytes, rerouted,
                     expect, 1 / n, t_bytes, shards)  # fmt: skip


def _movement(
    event: str, worker_id: str, moved: np.ndarray, moved_bytes: int, rerouted: float,
    expect_tenants: float, expect_bytes: float, t_bytes: np.ndarray, shards: Shards,
) -> Movement:  # fmt: skip
    t = len(moved)
    share = float(moved.mean())
    placed = int((t_bytes * shards.k).sum())
    return Movement(
        event=event,
        worker_id=worker_id,
        tenants=Versus(share, expect_tenants, math.sqrt(share * (1 - share) / t)),
        bytes_moved=moved_bytes,
        bytes_share=Versus(moved_bytes / max(1, placed), expect_bytes),
        traffic=rerouted,
    )
