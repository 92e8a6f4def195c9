"""Cache figures under W-TinyLFU, the workers' default policy, by exact replay.

W-TinyLFU has no stack property (``capacity.cache``'s one-pass shortcut is LRU's): each budget
is a replay of every worker's stream through the worker's policy, natively
(``shoal._native.tinylfu_hit_counts``: the same steps as ``worker.policy.TinyLfu``, tested hit
for hit against it through ``tinylfu_replay``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from capacity.cache import streams
from capacity.inputs import Traffic
from capacity.model import BudgetFor, CacheFigures, CurvePoint, SimConfig
from capacity.steady import steady_state
from shoal._native import tinylfu_hit_counts


def tinylfu_figures(
    traffic: Traffic, primary: np.ndarray, sizes: np.ndarray, n: int, config: SimConfig,
    progress: Callable[[float], None],
) -> tuple[CacheFigures, np.ndarray, np.ndarray]:  # fmt: skip
    """W-TinyLFU has no stack property: each budget is a replay of every stream (the worker's
    policy, natively; ``shoal._native.tinylfu_hit_counts``). The curve is replayed at
    ``tinylfu_curve_points`` budgets; a budget for a target is the smallest curve budget that
    reaches it (an upper bound at the curve's resolution)."""
    st = streams(traffic, primary, sizes, n, config)
    seg, measured, lo, routed = st.seg, st.measured, st.lo, st.routed
    progress(0.1)
    m_total = int(measured.sum())
    hi = max(lo, int(routed.max()))
    budgets = np.unique(
        np.append(
            np.geomspace(lo, hi, max(2, config.tinylfu_curve_points)).astype(np.int64),
            config.budget_bytes,
        )
    )
    # Every budget's replay of every stream at once, on all cores; per stream only the hit
    # counts come back (the figures need no more), and the repeats: an unbounded cache's hits.
    counts, repeats = tinylfu_hit_counts(
        st.items.astype(np.uint64),
        sizes[st.items].astype(np.uint64),
        st.bounds.astype(np.int64),
        measured,
        budgets.astype(np.uint64),
    )
    progress(0.9)
    max_hit = float(repeats.sum() / m_total) if m_total else math.nan
    per_budget = dict(zip(budgets.tolist(), counts, strict=True))
    w_hit = per_budget[config.budget_bytes].astype(np.float64)
    w_measured = np.bincount(seg[measured], minlength=n).astype(np.float64)
    hit_rate = float(w_hit.sum() / m_total) if m_total else math.nan
    curve = [
        CurvePoint(int(b), float(h.sum() / m_total) if m_total else math.nan)
        for b, h in per_budget.items()
    ]
    budget_for = []
    for target in config.targets:
        overall = next((p.budget_bytes for p in curve if p.hit_rate >= target), None)
        every: int | None = None
        for b, h in per_budget.items():
            rates = h / np.maximum(w_measured, 1)
            if np.all((rates >= target) | (w_measured == 0)):
                every = int(b)
                break
        budget_for.append(BudgetFor(target, overall, every))
    figures = CacheFigures(
        budget_bytes=config.budget_bytes,
        requests=len(st.items),
        measured=m_total,
        warmup=config.warmup,
        hit_rate=hit_rate,
        max_hit_rate=max_hit,
        curve=curve,
        budget_for=budget_for,
        steady_state=steady_state(primary, traffic, sizes, n, config, curve),
        method="exact W-TinyLFU replay per worker (the worker's policy, native)",
    )
    progress(1.0)
    return figures, w_hit, w_measured
