"""The cache simulation (capacity/cache.py) against a straightforward LRU replay."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capacity.cache import COLD, _weighted_inversions, hits_at, stack_distances


def lru_replay(items: list[int], sizes: dict[int, int], budget: int) -> list[bool]:
    """The reference: insert on miss, then evict least recently used until within budget."""
    cache: OrderedDict[int, int] = OrderedDict()
    used = 0
    out = []
    for item in items:
        if item in cache:
            cache.move_to_end(item)
            out.append(True)
            continue
        out.append(False)
        cache[item] = sizes[item]
        used += sizes[item]
        while used > budget:
            _, size = cache.popitem(last=False)
            used -= size
    return out


@st.composite
def traces(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, dict[int, int]]:
    n_items = draw(st.integers(1, 25))
    uniform = draw(st.booleans())
    if uniform:
        size = draw(st.integers(1, 40))
        sizes = dict.fromkeys(range(n_items), size)
    else:
        sizes = {i: draw(st.integers(0, 60)) for i in range(n_items)}
    items = draw(st.lists(st.integers(0, n_items - 1), min_size=1, max_size=250))
    cuts = sorted(draw(st.lists(st.integers(0, len(items)), max_size=4)))
    segments = np.searchsorted(np.array(cuts), np.arange(len(items)), side="right")
    return np.array(items, dtype=np.int64), segments.astype(np.int64), sizes


@settings(max_examples=150, deadline=None)
@given(traces(), st.lists(st.integers(0, 400), min_size=1, max_size=6))
def test_stack_distances_equal_lru_replay_for_every_budget(
    trace: tuple[np.ndarray, np.ndarray, dict[int, int]], budgets: list[int]
) -> None:
    items, segments, sizes = trace
    dist = stack_distances(items, segments, np.array([sizes[i] for i in items.tolist()]))
    for budget in budgets:
        expected: list[bool] = []
        for s in np.unique(segments).tolist():
            expected += lru_replay(items[segments == s].tolist(), sizes, budget)
        assert hits_at(dist, budget).tolist() == expected


def test_distances_on_a_hand_worked_stream() -> None:
    # a b b a c a with sizes a=1, b=2, c=4: the second b sees only itself; the second a sees
    # b and itself (3); the last a sees c and itself (5).
    sizes = {0: 1, 1: 2, 2: 4}
    items = np.array([0, 1, 1, 0, 2, 0])
    dist = stack_distances(items, np.zeros(6, dtype=np.int64), np.array([sizes[i] for i in items]))
    assert dist.tolist() == [COLD, COLD, 2, 3, COLD, 5]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 50), st.integers(0, 9)), max_size=80))
def test_weighted_inversions_brute_force(rows: list[tuple[int, int, int]]) -> None:
    if not rows:
        return
    rows.sort(key=lambda r: r[0])  # groups must be non-decreasing
    g = np.array([r[0] for r in rows])
    v = np.array([r[1] for r in rows])
    w = np.array([r[2] for r in rows])
    expected = [
        sum(int(w[j]) for j in range(p) if g[j] == g[p] and v[j] > v[p]) for p in range(len(rows))
    ]
    assert _weighted_inversions(g, v, w).tolist() == expected


def test_rejects_unsorted_segments() -> None:
    with pytest.raises(ValueError, match="non-decreasing"):
        stack_distances(np.array([1, 2]), np.array([1, 0]), np.array([1, 1]))
