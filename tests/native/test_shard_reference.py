"""The native shard function agrees with the Python reference (``shoal.shard``, with
``shoal.shard.primary_index``) on random salts, pools, zones, tenants and overrides."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal import _native
from shoal.records import Member, TenantConfig
from shoal.shard import (
    Placement,
    Pool,
    primary_index,
    selection_order,
    shard_matrix,
    tenant_hashes,
)

ids = st.text(max_size=10)
tenants = st.text(max_size=24)
salts = st.one_of(st.binary(max_size=80), st.binary(min_size=32, max_size=32))


@st.composite
def pools(draw: st.DrawFn, max_size: int = 40) -> tuple[Pool, _native.NativePool]:
    workers = draw(st.lists(ids, max_size=max_size, unique=True))
    zone_names = draw(
        st.sampled_from(
            [[""], ["a", "b"], ["a", "b", "c"], ["", "x", "y", "z"], ["eu-1", "eu-2", "us-1"]]
        )
    )
    zones = [draw(st.sampled_from(zone_names)) for _ in workers]
    salt = draw(salts)
    shard_size = draw(st.integers(0, 12))
    members = tuple(
        Member(w, f"addr-{i}", z) for i, (w, z) in enumerate(zip(workers, zones, strict=True))
    )
    native = _native.NativePool(workers, zones, salt, shard_size)
    return Pool(members, salt, shard_size), native


@given(pools(), tenants, st.one_of(st.none(), st.integers(-3, 45)))
def test_selection_order(
    pools: tuple[Pool, _native.NativePool], tenant: str, length: int | None
) -> None:
    pool, native = pools
    assert native.worker_hashes().tolist() == pool.worker_hashes.tolist()
    assert native.n_zones == pool.n_zones
    assert native.tenant_hash(tenant) == int(tenant_hashes([tenant], pool.salt)[0])
    assert native.selection_order(tenant, length) == selection_order(pool, tenant, length)


@given(pools(), tenants, st.integers(-2, 50), st.data())
def test_ranked_with_overrides(
    pools: tuple[Pool, _native.NativePool], tenant: str, shard_size: int, data: st.DataObject
) -> None:
    pool, native = pools
    known = [m.worker_id for m in pool.members]
    members = data.draw(
        st.lists(st.sampled_from(known) if known else ids, max_size=5)
        | st.lists(st.sampled_from([*known, "unknown-1", "unknown-2"]), max_size=6)
    )
    cfg = TenantConfig(tenant, shard_size=shard_size, members=tuple(members))
    ranked, k = Placement(pool, {tenant: cfg}).ranked(tenant)
    index = {m.worker_id: i for i, m in enumerate(pool.members)}
    assert native.ranked(tenant, shard_size, members) == ([index[m.worker_id] for m in ranked], k)
    # No override: the pool's shard size.
    plain, k = Placement(pool).ranked(tenant)
    assert native.ranked(tenant) == ([index[m.worker_id] for m in plain], k)


@settings(max_examples=60, deadline=None)
@given(pools(max_size=70), st.lists(tenants, max_size=200), st.integers(1, 75))
def test_shard_matrix(pools: tuple[Pool, _native.NativePool], batch: list[str], k: int) -> None:
    pool, native = pools
    hashes = tenant_hashes(batch, pool.salt)
    native_hashes = _native.tenant_hashes(batch, pool.salt)
    assert native_hashes.dtype == np.uint64
    assert np.array_equal(native_hashes, hashes)
    want = shard_matrix(pool, hashes, k, chunk=64)
    got = native.shard_matrix(native_hashes, k)
    assert got.dtype == np.int64 and got.shape == want.shape
    assert np.array_equal(got, want)
    # Strided input (not contiguous) is read element by element.
    assert np.array_equal(native.shard_matrix(native_hashes[::2], k), want[::2])
    # k = 0: the reference's argpartition fails (kth out of bounds); native gives no columns.
    assert native.shard_matrix(native_hashes, 0).shape == (len(batch), 0)


@given(st.text(max_size=40), st.integers(1, 2**64 - 1))
def test_primary_index(key: str, k: int) -> None:
    assert _native.primary_index(key, k) == primary_index(key, k)


def test_invalid_inputs_fail_as_the_reference_does() -> None:
    with pytest.raises(ValueError, match=r"^duplicate worker ids in pool$"):
        Pool((Member("a", ""), Member("a", "")), b"s")
    with pytest.raises(ValueError, match=r"^duplicate worker ids in pool$"):
        _native.NativePool(["a", "a"], None, b"s")
    with pytest.raises(ValueError, match="2 worker ids but 1 zones"):
        _native.NativePool(["a", "b"], [""], b"s")
    with pytest.raises(ZeroDivisionError):
        primary_index("acme/churn:1", 0)
    with pytest.raises(ZeroDivisionError, match="integer modulo by zero"):
        _native.primary_index("acme/churn:1", 0)
    with pytest.raises(OverflowError):
        _native.NativePool(["a"], None, b"s", -1)
    pool = _native.NativePool(["a", "b"], None, b"s")
    with pytest.raises(TypeError):
        pool.shard_matrix(np.zeros(3, dtype=np.int64), 1)
    with pytest.raises(TypeError):
        _native.tenant_hashes("not-a-list", b"s")
