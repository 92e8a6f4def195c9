"""Fleet statistics for ``shoal simulate``: spreads, blast radius and their closed forms.

Closed forms hold for a pool of N workers without zones where every tenant has a shard of k
distinct workers chosen uniformly at random (what rendezvous hashing approximates): the overlap
of two shards is hypergeometric, ``P(j) = C(k,j) C(N-k,k-j) / C(N,k)``; two shards are equal
with probability ``1/C(N,k)``; removing one tenant's shard touches another tenant with
probability ``1 - C(N-k,k)/C(N,k)``. With zones the simulated figures are exact for the zoned
placement, and the closed forms remain the unzoned reference beside them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Spread:
    """min / mean / p99 / max of a per-worker figure, and max/mean (1.0 = perfectly even)."""

    min: float
    mean: float
    p99: float
    max: float
    max_over_mean: float

    @classmethod
    def of(cls, values: np.ndarray) -> Spread:
        v = np.asarray(values, dtype=np.float64)
        v = v[~np.isnan(v)]
        if len(v) == 0:
            return cls(math.nan, math.nan, math.nan, math.nan, math.nan)
        mean = float(v.mean())
        return cls(
            float(v.min()),
            mean,
            float(np.percentile(v, 99)),
            float(v.max()),
            float(v.max() / mean) if mean > 0 else math.nan,
        )


@dataclass(frozen=True)
class Versus:
    """A simulated figure beside its closed form (``stderr``: the sampling error of the
    simulated figure, 0 when it is exact over the whole population)."""

    simulated: float
    closed_form: float
    stderr: float = 0.0


def hypergeometric(n: int, k: int) -> list[float]:
    """``P(j)``, j = 0..k: workers shared by two random k-subsets of n workers."""
    total = math.comb(n, k)
    return [math.comb(k, j) * math.comb(n - k, k - j) / total for j in range(k + 1)]


def full_overlap_probability(n: int, k: int) -> float:
    return 1.0 / math.comb(n, k)


def touch_probability(n: int, k: int) -> float:
    """Probability that a random k-shard shares at least one worker with a given one."""
    return 1.0 - math.comb(n - k, k) / math.comb(n, k)


@dataclass(frozen=True)
class OverlapBin:
    shared_workers: int
    simulated: float
    closed_form: float
    stderr: float


@dataclass(frozen=True)
class BlastRadius:
    """How much tenants share, over the ``tenants`` tenants with the pool's default shard size
    (hot and pinned tenants excluded: the closed forms are for one k).

    * ``overlap``: distribution of workers shared by two distinct tenants, from ``pairs``
      random pairs;
    * ``full_overlap_probability``: that another tenant has the very same shard (exact count of
      equal shards over all pairs; its ``stderr`` is the spread expected under random shards);
    * ``expected_full_overlap_tenants``: how many other tenants share a tenant's whole shard, on
      average (closed form ``(T-1)/C(N,k)``);
    * ``tenants_with_full_overlap``: share of tenants whose shard at least one other tenant has
      in full (closed form ``1 - (1 - 1/C(N,k))**(T-1)``);
    * ``losing_a_worker``: share of the other tenants that lose at least one worker when one
      tenant's whole shard is taken out, averaged over ``victims`` random tenants (exact over
      all tenants for each); ``losing_a_worker_max``: the worst victim.
    """

    tenants: int
    workers: int
    shard_size: int
    pairs: int
    overlap: list[OverlapBin]
    full_overlap_probability: Versus
    expected_full_overlap_tenants: Versus
    tenants_with_full_overlap: Versus
    victims: int
    losing_a_worker: Versus
    losing_a_worker_max: float
    zoned: bool


def blast_radius(
    rows: np.ndarray,
    n_workers: int,
    rng: np.random.Generator,
    pairs: int = 1_000_000,
    victims: int = 32,
    zoned: bool = False,
) -> BlastRadius | None:
    """Blast-radius figures for tenants whose shards are ``rows`` (``[T, k]`` member indices).

    Pair sampling draws ``pairs`` ordered pairs of distinct tenants (with replacement), so the
    overlap bins carry a binomial standard error ``sqrt(p(1-p)/pairs)``. Equal shards are
    counted exactly over all tenants (sorting their member rows, packed), and each victim's
    reach exactly over all tenants, 8 victims per pass. Returns None with fewer than two
    tenants. Cost: O(pairs k^2 + victims T k / 8 + T log T).
    """
    t, k = rows.shape
    if t < 2 or k == 0:
        return None
    # Shards as sorted member rows: set operations on k small ints per tenant (no bitsets of
    # N bits per tenant, which at 10M tenants x 1,000 workers are over a GB).
    srt = _sorted_columns(rows)  # column j: each tenant's j-th smallest member
    a = rng.integers(0, t, pairs)
    b = rng.integers(0, t - 1, pairs)
    b += b >= a  # a uniform tenant other than a
    sa, sb = [c[a] for c in srt], [c[b] for c in srt]
    shared = np.zeros(pairs, dtype=np.int64)
    for x in sa:
        for y in sb:
            shared += x == y
    freq = np.bincount(shared, minlength=k + 1)[: k + 1] / pairs
    closed = hypergeometric(n_workers, k)
    overlap = [
        OverlapBin(j, float(freq[j]), closed[j], math.sqrt(freq[j] * (1 - freq[j]) / pairs))
        for j in range(k + 1)
    ]

    bits = max(1, int(n_workers - 1).bit_length())
    if k * bits <= 63:  # each shard packed into one int: a 1-D unique
        packed = np.zeros(t, dtype=np.int64)
        for j in range(k):
            packed = (packed << bits) | srt[j].astype(np.int64)
        _, counts = np.unique(packed, return_counts=True)
    else:
        _, counts = np.unique(np.stack(srt, axis=1), axis=0, return_counts=True)
    same_pairs = float((counts * (counts - 1)).sum())  # ordered pairs with equal shards
    p_full = full_overlap_probability(n_workers, k)
    # Under uniformly random shards, "a and b have equal shards" is pairwise independent over
    # unordered pairs (given a's shard, b and c match it independently), so the share of the
    # T(T-1)/2 pairs that match has a binomial spread.
    sd_full = math.sqrt(p_full * (1 - p_full) / (t * (t - 1) / 2))

    victims = min(victims, t)
    chosen = rng.choice(t, victims, replace=False)
    losing = np.empty(victims)
    # Victims 8 at a time: worker w carries bit j when victim j holds it, and a tenant's
    # reach (one byte) is the OR over its members; one histogram of the bytes counts, for
    # every victim of the 8, the tenants it touches.
    bit_set = (np.arange(256)[:, None] >> np.arange(8)[None, :]) & 1  # [byte, bit]
    for lo in range(0, victims, 8):
        group = chosen[lo : lo + 8].tolist()
        mask = np.zeros(n_workers, dtype=np.uint8)
        for j, v in enumerate(group):
            mask[rows[v]] |= np.uint8(1 << j)
        reach = mask[srt[0]]
        for col in srt[1:]:
            reach |= mask[col]
        touched = np.bincount(reach, minlength=256) @ bit_set
        for j in range(len(group)):
            losing[lo + j] = (int(touched[j]) - 1) / (t - 1)  # the victim itself does not count
    p_touch = touch_probability(n_workers, k)
    return BlastRadius(
        tenants=t,
        workers=n_workers,
        shard_size=k,
        pairs=pairs,
        overlap=overlap,
        full_overlap_probability=Versus(same_pairs / (t * (t - 1)), p_full, sd_full),
        expected_full_overlap_tenants=Versus(same_pairs / t, (t - 1) * p_full, (t - 1) * sd_full),
        tenants_with_full_overlap=Versus(
            float(counts[counts >= 2].sum()) / t, 1.0 - (1.0 - p_full) ** (t - 1)
        ),
        victims=victims,
        losing_a_worker=Versus(
            float(losing.mean()),
            p_touch,
            float(losing.std(ddof=1) / math.sqrt(victims)) if victims > 1 else 0.0,
        ),
        losing_a_worker_max=float(losing.max()),
        zoned=zoned,
    )


def _sorted_columns(rows: np.ndarray) -> list[np.ndarray]:
    """The columns of ``np.sort(rows, axis=1)``; for narrow rows by a compare-exchange network
    over whole columns (odd-even transposition), several times faster on millions of rows."""
    k = rows.shape[1]
    if k > 8:
        srt = np.sort(rows, axis=1)
        return [np.ascontiguousarray(srt[:, j]) for j in range(k)]
    cols = [rows[:, j].copy() for j in range(k)]
    for r in range(k):
        for j in range(r % 2, k - 1, 2):
            lo = np.minimum(cols[j], cols[j + 1])
            np.maximum(cols[j], cols[j + 1], out=cols[j + 1])
            cols[j] = lo
    return cols


def new_members(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Per row, how many entries of ``after`` are not in ``before`` (``-1`` pads ignored)."""
    fresh = np.zeros(len(after), dtype=np.int64)
    for j in range(after.shape[1]):
        col = after[:, j]
        seen = np.zeros(len(after), dtype=bool)
        for i in range(before.shape[1]):
            seen |= before[:, i] == col
        fresh += (~seen) & (col >= 0)
    return fresh
