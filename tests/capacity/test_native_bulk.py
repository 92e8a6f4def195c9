"""The simulator's native bulk helpers equal what they replace: ``Fleet.primary_indices`` (keys
built natively) equals ``primary_indices`` on the keys Python builds, ``searchsorted_right``
equals ``np.searchsorted(..., side="right")``, and ``lru_stack_distances`` equals
``capacity.cache.stack_distances``."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capacity.cache import stack_distances
from capacity.inputs import Fleet, SizeModel, synthetic_fleet
from shoal._native import lru_stack_distances, model_primary_indices, searchsorted_right
from shoal.shard import primary_indices


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.integers(0, 5), min_size=1, max_size=40),
    st.lists(st.integers(-3, 10**12), min_size=40, max_size=40),
    st.integers(1, 9),
)
def test_primary_indices_equal_those_of_the_python_keys(
    tenant_of: list[int], versions: list[int], kmax: int
) -> None:
    m = len(tenant_of)
    rng = np.random.default_rng(m)
    fleet = Fleet(
        tenants=[f"t{i}" for i in range(6)] + ["ünï/côdé"],
        model_tenant=np.array(tenant_of, dtype=np.int64),
        model_names=[f"m{i % 3}.x" for i in range(m)],
        versions=np.array(versions[:m], dtype=np.int64),
        sizes=np.ones(m, dtype=np.int64),
    )
    k = rng.integers(1, kmax + 1, m)
    assert fleet.primary_indices(k).tolist() == primary_indices(fleet.model_keys(), k).tolist()


def test_primary_indices_of_a_synthetic_fleet() -> None:
    rng = np.random.default_rng(0)
    fleet = synthetic_fleet(200_000, SizeModel(1), rng, models_per_tenant=3)
    k = rng.integers(1, 8, fleet.n_models)
    assert np.array_equal(fleet.primary_indices(k), primary_indices(fleet.model_keys(), k))


def test_primary_indices_reject_what_python_would() -> None:
    one = np.zeros(1, dtype=np.int64)
    with pytest.raises(ZeroDivisionError):
        model_primary_indices(["t"], one, ["m"], one + 1, one)
    with pytest.raises(ValueError):
        model_primary_indices(["t"], one + 1, ["m"], one + 1, one + 1)
    with pytest.raises(ValueError):
        model_primary_indices(["t"], one, ["m", "n"], one + 1, one + 1)


def test_searchsorted_right_equals_numpy() -> None:
    rng = np.random.default_rng(1)
    w = np.arange(1, 300_001, dtype=np.float64) ** -1.1
    cdf = np.cumsum(w / w.sum())
    cdf[-1] = 1.0
    values = np.concatenate(
        [
            rng.random(500_000),
            cdf[::101],
            np.arange(1025) / 1024,
            [-1.0, -0.0, 1.0, 3.0, np.inf, -np.inf, np.nextafter(1.0, 0.0)],
        ]
    )
    for sorted_ in (cdf, np.repeat(cdf[:1000], 3), np.array([])):
        want = np.searchsorted(sorted_, values, side="right")
        assert np.array_equal(searchsorted_right(sorted_, values), want)


def test_searchsorted_right_rejects_unsorted_and_nan() -> None:
    with pytest.raises(ValueError):
        searchsorted_right(np.array([0.5, 0.1]), np.array([0.2]))
    with pytest.raises(ValueError):
        searchsorted_right(np.array([0.1]), np.array([np.nan]))


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(0, 30), min_size=1, max_size=300),
    st.lists(st.integers(0, 300), max_size=4),
    st.dictionaries(st.integers(0, 30), st.integers(0, 50)),
)
def test_native_stack_distances_equal_the_numpy_ones(
    items: list[int], cuts: list[int], size_of: dict[int, int]
) -> None:
    r = len(items)
    segments = np.searchsorted(np.sort(np.minimum(cuts, r)), np.arange(r), side="right")
    sizes = np.array([size_of.get(i, 9) for i in items], dtype=np.int64)
    arr = np.array(items, dtype=np.int64)
    want = stack_distances(arr, segments, sizes)
    bounds = np.searchsorted(segments, np.arange(int(segments[-1]) + 2)).astype(np.int64)
    got = lru_stack_distances(arr.astype(np.uint64), sizes.astype(np.uint64), bounds)
    assert got.tolist() == want.tolist()
