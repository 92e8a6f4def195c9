"""The long-run view of the workers' caches: steady-state LRU hit rates under independent
requests by Che's approximation (``CheTable``), beside the exact replays of ``capacity.cache``
and ``capacity.replay``, which a finite trace cannot bring to the steady state when most
models are requested only a few times in it.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from capacity.inputs import Traffic
from capacity.model import BudgetFor, CurvePoint, SimConfig, SteadyState
from capacity.stats import Spread


class CheTable:
    """Steady-state LRU hit rates per worker under independent requests, by Che's approximation.

    Each worker's cache sees its models' requests as independent Poisson streams of rates
    ``rate[m]``; an LRU cache of ``B`` bytes then behaves as if every model stayed for a
    characteristic time ``T`` after its last request, with ``sum_m size[m] (1 - exp(-rate[m] T))
    = B`` and hit rate ``sum_m rate[m] (1 - exp(-rate[m] T)) / sum_m rate[m]``. Both sides are
    increasing in ``T``, so one sweep of ``points`` log-spaced ``T`` values per worker tabulates
    (bytes, hit rate) pairs, and any budget is answered by interpolation. Che's approximation is
    known to be accurate for LRU under independent requests (within a percent or two for
    Zipf-like popularity; tests/placement/test_simulate.py checks it against the exact replay);
    it ignores temporal locality, which a replayed trace may have. Cost: O(points x models)
    exponentials; memory O(points x chunk).
    """

    def __init__(
        self,
        worker: np.ndarray,
        rate: np.ndarray,
        sizes: np.ndarray,
        n_workers: int,
        points: int = 48,
        chunk: int = 32768,
    ) -> None:
        lam = np.asarray(rate, dtype=np.float64)
        pos = lam > 0
        w = np.asarray(worker)
        # Per-worker extreme rates by sorting (ufunc.at is slow on millions of models).
        hi_rate = np.zeros(n_workers)
        lo_rate = np.full(n_workers, np.inf)
        wp = w[pos]
        # One stable sort by worker for both passes (small ints sort by radix).
        by_worker = np.argsort(wp.astype(np.int16) if n_workers < 2**15 else wp, kind="stable")
        idx = np.flatnonzero(pos)[by_worker]
        wp, lp = wp[by_worker], lam[idx]
        if len(wp):
            starts = np.flatnonzero(np.r_[True, wp[1:] != wp[:-1]])
            hi_rate[wp[starts]] = np.maximum.reduceat(lp, starts)
            lo_rate[wp[starts]] = np.minimum.reduceat(lp, starts)
        busy = hi_rate > 0
        # From "the hottest model is rarely resident" to "every model is almost always resident".
        t_lo = np.where(busy, 1e-3 / np.where(busy, hi_rate, 1.0), 1.0)
        t_hi = np.where(busy, 50.0 / np.where(busy, lo_rate, 1.0), 1.0)
        steps = np.linspace(0.0, 1.0, points)[None, :]
        self.times = np.exp(np.log(t_lo)[:, None] + np.log(t_hi / t_lo)[:, None] * steps)
        self.bytes = np.zeros((n_workers, points))
        hits = np.zeros((n_workers, points))
        s = np.asarray(sizes, dtype=np.float64)
        # Per worker, a (models x points) matrix of residency probabilities reduced by two
        # matrix-vector products; models in chunks to bound memory.
        bounds = np.searchsorted(wp, np.arange(n_workers + 1))

        def fill(i: int) -> None:
            for lo in range(bounds[i], bounds[i + 1], chunk):
                sel = idx[lo : min(lo + chunk, bounds[i + 1])]
                # float32: residency needs no more digits, and halves the exponential's cost.
                x = np.multiply.outer(lam[sel], self.times[i]).astype(np.float32)
                resident = -np.expm1(-x)
                # einsum, not BLAS: a threaded BLAS spins both cores for these small products.
                self.bytes[i] += np.einsum("m,mp->p", s[sel].astype(np.float32), resident)
                hits[i] += np.einsum("m,mp->p", lam[sel].astype(np.float32), resident)

        # Workers on every core: numpy releases the GIL inside these operations, and each
        # worker's row is its own (the same figures as one thread).
        with ThreadPoolExecutor(_cores()) as threads:
            list(threads.map(fill, np.flatnonzero(busy).tolist()))
        self.load = np.bincount(w, weights=lam, minlength=n_workers)
        self.full = np.bincount(w[pos], weights=s[pos], minlength=n_workers)
        with np.errstate(invalid="ignore", divide="ignore"):
            self.hit_rate = np.where(self.load[:, None] > 0, hits / self.load[:, None], np.nan)

    def worker_hit_rates(self, budget: float) -> np.ndarray:
        """Hit rate of each worker with ``budget`` bytes (NaN for a worker with no requests)."""
        out = np.full(len(self.load), np.nan)
        for i in np.flatnonzero(self.load > 0).tolist():
            if budget >= self.full[i]:
                out[i] = 1.0  # everything it is asked for fits: only first requests miss
            else:
                out[i] = np.interp(budget, self.bytes[i], self.hit_rate[i], left=0.0)
        return out

    def hit_rate_at(self, budget: float) -> float:
        """Pool-wide hit rate (each worker weighted by its request rate)."""
        h = self.worker_hit_rates(budget)
        busy = self.load > 0
        return float((h[busy] * self.load[busy]).sum() / self.load[busy].sum())

    def budget_for(self, target: float) -> tuple[float, float]:
        """(pool-wide, every-worker) budgets reaching ``target`` (inf when target > 1)."""
        if target > 1:
            return math.inf, math.inf
        busy = np.flatnonzero(self.load > 0)
        every = 0.0
        for i in busy.tolist():
            h = self.hit_rate[i]
            need = self.full[i] if target >= h[-1] else np.interp(target, h, self.bytes[i])
            every = max(every, float(need))
        lo, hi = 0.0, float(self.full.max())
        for _ in range(60):  # bisection: the pool-wide rate is increasing in the budget
            mid = (lo + hi) / 2
            if self.hit_rate_at(mid) >= target:
                hi = mid
            else:
                lo = mid
        return hi, every


def _cores() -> int:
    """Cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def steady_state(
    primary: np.ndarray, traffic: Traffic, sizes: np.ndarray, n: int, config: SimConfig,
    curve: list[CurvePoint],
) -> SteadyState:  # fmt: skip
    """The long-run LRU view (Che's approximation) at the curve's budgets."""
    che = CheTable(primary, traffic.popularity, sizes, n)
    steady_targets = []
    for target in config.targets:
        overall_b, every_b = che.budget_for(target)
        steady_targets.append(BudgetFor(target, _ceil_or_none(overall_b), _ceil_or_none(every_b)))
    return SteadyState(
        hit_rate=che.hit_rate_at(config.budget_bytes),
        worker_hit_rate=Spread.of(che.worker_hit_rates(config.budget_bytes)),
        curve=[CurvePoint(p.budget_bytes, che.hit_rate_at(p.budget_bytes)) for p in curve],
        budget_for=steady_targets,
    )


def _ceil_or_none(x: float) -> int | None:
    return None if math.isinf(x) or math.isnan(x) else math.ceil(x)
