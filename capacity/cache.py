"""Exact LRU with byte sizes for many caches at once, by byte stack distances.

The cache model (one memory tier per worker, the budget in bytes): a request for an item that is
resident is a *hit* and makes the item most recently used; a *miss* inserts the item as most
recently used, then evicts least-recently-used items until the resident bytes fit the budget.
An item larger than the whole budget therefore evicts everything, itself last: it never stays.
No pinning and no concurrent loads (``worker.cache`` can briefly exceed its budget under pins;
the simulator does not model that).

Under this policy the resident set is always a prefix of the recency stack, and a request for
``x`` hits under budget ``B`` exactly when its *byte stack distance*

    d = size(x) + sum of sizes of the distinct items requested since the previous request for x

is at most ``B`` (the items above ``x`` in the stack only grow until ``x`` is requested again,
so once evicted it cannot be resident again before its next miss). One pass over a stream gives
every request's ``d``; the hit rate for *every* budget follows (``hits(B) = #{d <= B}``), so the
hit-rate-vs-budget curve is exact, not an approximation.

Algorithm, for streams concatenated into one array (one contiguous *segment* per cache, time
order inside each), with ``prev``/``next`` the positions of the same item's neighbouring
requests in its segment (``next`` = the segment's end when there is none):

    d(t) = live(t) - G(prev(t)),
    live(t) = bytes of the distinct items requested in the segment before t,
    G(p)    = sum of size(j) over j < p in the segment with next(j) > next(p)

``G`` is a weighted inversion count, computed for all positions at once, level by level over the
bits of ``next`` (a wavelet-tree sweep: each level is a stable partition, ~20 numpy passes over
the array). Cost: O(R log L) time for R requests and segments of at most L requests, plus one
O(R log R) sort to find ``prev``/``next``; memory O(R) (about 100 bytes per request).

``cache_figures`` takes the same numbers from ``shoal._native.lru_stack_distances`` (a Fenwick
tree over each stream, O(R log L), on every core; tested equal to ``stack_distances``), which
at 30M requests is tens of times faster and needs no GBs of temporaries.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from capacity.inputs import Traffic
from capacity.model import BudgetFor, CacheFigures, CurvePoint, SimConfig
from capacity.steady import steady_state
from shoal._native import lru_stack_distances

#: Stack distance of a request with no earlier request for its item in its stream (cold miss).
COLD = -1


def stack_distances(items: np.ndarray, segments: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Byte stack distance of every request (``COLD`` for first requests), int64 ``[R]``.

    ``items``: item id of each request (non-negative ints); ``segments``: the cache (stream) of
    each request, non-decreasing (streams concatenated, each in time order); ``sizes``: bytes of
    the requested item at each request (an item must keep one size within a stream; sizes are
    non-negative). Raises ``ValueError`` on mismatched lengths or unsorted ``segments``.
    """
    r = len(items)
    if len(segments) != r or len(sizes) != r:
        raise ValueError("items, segments and sizes must have the same length")
    if r == 0:
        return np.empty(0, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    segments = np.asarray(segments, dtype=np.int64)
    sizes = np.asarray(sizes, dtype=np.int64)
    if np.any(segments[1:] < segments[:-1]):
        raise ValueError("segments must be non-decreasing (streams concatenated)")
    # Segment bounds per request: seg_start[t] <= t < seg_end[t].
    brk = np.empty(r, dtype=bool)
    brk[0] = True
    np.not_equal(segments[1:], segments[:-1], out=brk[1:])
    starts = np.flatnonzero(brk)
    seg_idx = np.cumsum(brk) - 1
    seg_start = starts[seg_idx]
    seg_end = np.append(starts[1:], r)[seg_idx]

    # prev / next occurrence of the same item in the same segment: group by (segment, item)
    # with a stable sort so each group stays in time order.
    span = int(items.max()) + 1
    groups = seg_idx * span + items
    if (int(seg_idx[-1]) + 1) * span < (2**62) // r:
        # Unique keys (position appended) sort with the faster unstable sort, same result.
        order = np.argsort(groups * r + np.arange(r, dtype=np.int64))
    else:
        order = np.argsort(groups, kind="stable")
    key_sorted = groups[order]
    same = key_sorted[1:] == key_sorted[:-1]
    prev = np.full(r, -1, dtype=np.int64)
    nxt = seg_end.copy()
    prev[order[1:][same]] = order[:-1][same]
    nxt[order[:-1][same]] = order[1:][same]

    first = prev < 0
    new_bytes = np.where(first, sizes, 0)
    cum = np.cumsum(new_bytes) - new_bytes  # exclusive: bytes first requested before t
    live = cum - cum[seg_start]

    # G(p) for every p that has a next request. Points without one (last requests, next =
    # segment end) outrank every real next, so their share is a plain prefix sum; only points
    # with a real next go through the inversion count (usually well under R).
    has_next = nxt < seg_end
    last_bytes = np.where(has_next, 0, sizes)
    cl = np.cumsum(last_bytes) - last_bytes
    sel = np.flatnonzero(has_next)
    # Real next positions are distinct non-first positions: rank them within the segment so
    # the inversion count runs over as few value bits as possible.
    nonfirst = np.cumsum(~first) - 1
    values = nonfirst[nxt[sel]] - nonfirst[seg_start[sel]]  # a segment starts with a first
    g = np.zeros(r, dtype=np.int64)
    if len(sel):
        g[sel] = _weighted_inversions(seg_idx[sel], values, sizes[sel])
    g[sel] += cl[sel] - cl[seg_start[sel]]

    out = np.full(r, COLD, dtype=np.int64)
    hit = ~first
    out[hit] = live[hit] - g[prev[hit]]
    return out


def _weighted_inversions(groups: np.ndarray, values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``out[p] = sum(weights[j] for j < p if groups[j] == groups[p] and values[j] > values[p])``.

    ``groups`` non-decreasing, ``values`` non-negative. Top-down over the bits of ``values``:
    elements are kept arranged by (group, high bits of value) and by position inside each run;
    at bit b an element whose bit is 0 gains the weight of the earlier elements of its run whose
    bit is 1 (same higher bits, larger value), then each run is stably split into its 0s and 1s.
    The sums stay arranged (``acc``) and are put back in position order once, at the end. With
    equal weights (a fixed model size) it counts in 32 bits and multiplies once.
    """
    n = len(values)
    nbits = max(1, int(values.max()).bit_length())
    gbits = max(1, int(groups.max()).bit_length())
    # 32-bit keys, indices and counts halve the memory traffic when they fit.
    kt = np.int32 if nbits + gbits < 31 else np.int64
    it = np.int32 if n < 2**31 - 1 else np.int64
    uniform = bool(np.all(weights == weights[0]))
    wt = it if uniform else np.int64
    key: np.ndarray = ((groups.astype(np.int64) << nbits) | values.astype(np.int64)).astype(kt)
    idx: np.ndarray = np.arange(n, dtype=it)
    w: np.ndarray | None = None if uniform else weights.astype(np.int64)
    acc: np.ndarray = np.zeros(n, dtype=wt)
    ar: np.ndarray = np.arange(n, dtype=it)
    brk = np.empty(n + 1, dtype=bool)
    brk[0] = brk[n] = True
    c1: np.ndarray = np.zeros(n + 1, dtype=wt)  # c1[i]: weight of the 1-bits among the first i
    c0: np.ndarray = np.zeros(n + 1, dtype=it)  # c0[i]: number of 0-bits among the first i
    scratch = {np.dtype(t): np.empty(n, t) for t in (kt, it, wt, np.int64)}
    for b in range(nbits - 1, -1, -1):
        hi = key >> (b + 1)
        np.not_equal(hi[1:], hi[:-1], out=brk[1:n])
        bounds = np.flatnonzero(brk)
        starts, lengths = bounds[:-1], np.diff(bounds)
        one = ((key >> b) & 1).astype(bool)
        if w is None:
            np.cumsum(one, out=c1[1:])
        else:
            np.cumsum(np.where(one, w, 0), out=c1[1:])
        acc += np.where(one, 0, c1[:-1] - np.repeat(c1[starts], lengths))
        np.cumsum(~one, out=c0[1:])
        zeros_before = c0[:-1] - np.repeat(c0[starts], lengths)
        # 0s go to run start + zeros before; 1s to their position + zeros after them in the run.
        dest = np.where(
            one,
            ar + np.repeat(c0[bounds[1:]] - c0[starts], lengths) - zeros_before,
            np.repeat(starts.astype(it), lengths) + zeros_before,
        )
        arrays = [key, idx, acc] if w is None else [key, idx, acc, w]
        for a in arrays:
            t = scratch[a.dtype]
            t[dest] = a
            a[...] = t
    out = np.empty(n, dtype=np.int64)
    out[idx] = acc
    if w is None:
        out *= int(weights[0])
    return out


def hits_at(distances: np.ndarray, budget: int) -> np.ndarray:
    """Boolean ``[R]``: which requests hit an LRU cache of ``budget`` bytes."""
    return (distances >= 0) & (distances <= budget)


# --- the figures of a simulation --------------------------------------------------------


@dataclass(frozen=True)
class Streams:
    """Every worker's request stream, concatenated in worker order (time order inside)."""

    items: np.ndarray  # model of each request
    seg: np.ndarray  # worker of each request, non-decreasing
    measured: np.ndarray  # bool: past the warm-up
    bounds: np.ndarray  # stream w is [bounds[w], bounds[w + 1])
    lo: int  # the smallest model's bytes (where curves start)
    routed: np.ndarray  # bytes of the models each worker is primary for (with traffic)


def streams(
    traffic: Traffic, primary: np.ndarray, sizes: np.ndarray, n: int, config: SimConfig
) -> Streams:
    requests = traffic.requests
    worker = primary[requests]
    # A stable sort by worker keeps each stream in time order; small ints sort by radix.
    order = np.argsort(worker.astype(np.int16) if n < 2**15 else worker, kind="stable")
    seg = worker[order]
    asked = traffic.popularity > 0
    return Streams(
        items=requests[order],
        seg=seg,
        measured=order >= math.ceil(config.warmup * len(requests)),
        bounds=np.searchsorted(seg, np.arange(n + 1)),
        lo=max(1, int(sizes.min())),
        routed=np.bincount(primary[asked], weights=sizes[asked], minlength=n),
    )


def cache_figures(
    traffic: Traffic, primary: np.ndarray, sizes: np.ndarray, n: int, config: SimConfig,
    progress: Callable[[float], None],
) -> tuple[CacheFigures, np.ndarray, np.ndarray]:  # fmt: skip
    """Per-worker streams (time order kept), their stack distances, and the exact LRU figures;
    then the steady state from the popularity."""
    st = streams(traffic, primary, sizes, n, config)
    items, seg, measured, bounds, lo, routed = (
        st.items, st.seg, st.measured, st.bounds, st.lo, st.routed
    )  # fmt: skip
    r = len(items)
    progress(0.1)
    w_measured = np.bincount(seg[measured], minlength=n).astype(np.float64)
    m_total = int(measured.sum())
    # stack_distances' numbers, natively: one Fenwick-tree pass per stream, on every core.
    dist = lru_stack_distances(
        items.astype(np.uint64), sizes[items].astype(np.uint64), bounds.astype(np.int64)
    )
    progress(0.8)
    hit = measured & (dist != COLD) & (dist <= config.budget_bytes)
    w_hit = np.bincount(seg[hit], minlength=n).astype(np.float64)
    finite = np.sort(dist[measured & (dist != COLD)])
    hit_rate = float(hit.sum() / m_total) if m_total else math.nan
    max_hit = len(finite) / m_total if m_total else math.nan

    # The curve spans one model to the budget where only first requests miss; the configured
    # budget is added as a point of its own.
    hi = max(int(finite[-1]) if len(finite) else lo, lo)
    hi = max(hi, int(routed.max()))  # where the steady state holds everything it is asked for
    budgets = np.unique(
        np.append(np.geomspace(lo, hi, config.curve_points).astype(np.int64), config.budget_bytes)
    )
    curve_hits = np.searchsorted(finite, budgets, side="right")
    curve = [
        CurvePoint(int(b), float(h / m_total) if m_total else math.nan)
        for b, h in zip(budgets.tolist(), curve_hits.tolist(), strict=True)
    ]

    worst: list[int | None] = [0] * len(config.targets)
    for w in range(n):
        s, e = bounds[w], bounds[w + 1]
        mw = measured[s:e]
        if not mw.any():
            continue
        dw = dist[s:e][mw]
        needs = _quantile_budgets(dw[dw != COLD], len(dw), config.targets)
        worst = [
            None if a is None or b is None else max(a, b) for a, b in zip(worst, needs, strict=True)
        ]
    budget_for = [
        BudgetFor(target, _quantile_budget(finite, m_total, target), every)
        for target, every in zip(config.targets, worst, strict=True)
    ]
    progress(0.95)
    figures = CacheFigures(
        budget_bytes=config.budget_bytes,
        requests=r,
        measured=m_total,
        warmup=config.warmup,
        hit_rate=hit_rate,
        max_hit_rate=max_hit,
        curve=curve,
        budget_for=budget_for,
        steady_state=steady_state(primary, traffic, sizes, n, config, curve),
    )
    progress(1.0)
    return figures, w_hit, w_measured


def _quantile_budget(finite: np.ndarray, total: int, target: float) -> int | None:
    """Smallest budget under which at least ``target`` of ``total`` requests hit, given the
    finite stack distances, sorted; None when even an unbounded cache falls short."""
    need = math.ceil(target * total - 1e-9)
    if total == 0 or need > len(finite):
        return None
    if need <= 0:
        return 0
    return int(finite[need - 1])


def _quantile_budgets(
    finite: np.ndarray, total: int, targets: tuple[float, ...]
) -> list[int | None]:
    """``_quantile_budget`` for every target, ``finite`` unsorted: one partition at all the
    ranks the targets need."""
    needs = [math.ceil(t * total - 1e-9) for t in targets]
    ranks = sorted({k - 1 for k in needs if 0 < k <= len(finite)})
    part = np.partition(finite, ranks) if ranks else finite
    return [
        None if total == 0 or k > len(finite) else 0 if k <= 0 else int(part[k - 1]) for k in needs
    ]
