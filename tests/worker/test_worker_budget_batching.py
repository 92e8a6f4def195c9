"""Real workers under a small host budget (LRU, demotion to disk) and with batching on."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from conftest import WorkerFactory
from worker_harness import Client, WorkerProc, put_model

from shoal import modelgen
from shoal.frameworks import estimate_bytes

N_MODELS = 30


@pytest.fixture(scope="module")
def models() -> list[bytes]:
    """30 distinct XGBoost models of about the same size (each trained on its own data)."""
    out = []
    for i in range(N_MODELS):
        x, y = modelgen.dataset(n_rows=200, n_features=12, seed=100 + i)
        out.append(modelgen.train_xgboost(x, y, n_trees=8, depth=3))
    assert len(set(out)) == N_MODELS
    return out


async def test_host_budget_holds_and_lru_goes_first(
    worker_factory: WorkerFactory,
    batching_worker: WorkerProc,
    models: list[bytes],
    model_bytes: dict[str, Any],
) -> None:
    # Sizes are measured by the worker (heap growth across each load), so "a budget that fits
    # about 10 models" is taken from a roomy worker that loads them all first.
    probe = batching_worker
    x = model_bytes["x"][:64]  # a full batch: the batching probe sends it at once
    names = [f"lru/m{i}" for i in range(N_MODELS)]
    for i, m in enumerate(models):
        await put_model(probe.etcd, probe.store_url, "lru", f"m{i}", m)
    async with Client(probe.address) as c:
        before = probe.scrape().get("shoal_worker_resident_bytes", tier="host")
        for name in names:
            await c.infer(name, x, "1")
        grown = probe.scrape().get("shoal_worker_resident_bytes", tier="host") - before
    budget = int(10 * grown / N_MODELS)
    one = max(int(3 * grown / N_MODELS), *(estimate_bytes("xgboost", len(m)) for m in models))

    # LRU by name: the order asserted below is its order (W-TinyLFU, the default, keeps an
    # incumbent over a newcomer asked for as rarely: tests/worker/test_policy.py).
    w = worker_factory(
        {"SHOAL_HOST_BUDGET": str(budget), "SHOAL_BATCHING": "off", "SHOAL_CACHE_POLICY": "lru"}
    )
    async with Client(w.address) as c:
        for i, name in enumerate(names):
            await c.infer(name, x, "1")
            resident = w.scrape().get("shoal_worker_resident_bytes", tier="host")
            assert 0 < resident <= budget + one, f"after {i + 1} models: {resident} > {budget}"
        ready = [await c.ready(n, "1") for n in names]
        # The resident models are the most recently used ones: a suffix of the sequence.
        k = ready.index(True)
        assert all(ready[k:]) and not any(ready[:k]), ready
        assert 6 <= N_MODELS - k <= 12, f"{N_MODELS - k} models resident for a 10-model budget"
        # Touch the oldest resident model, then reload evicted ones until something goes: the
        # first to go is the next-oldest, not the one just touched.
        await c.infer(names[k], x, "1")
        for j in range(k):
            await c.infer(names[j], x, "1")
            if not await c.ready(names[k + 1], "1"):
                break
        else:
            pytest.fail("reloading evicted models displaced nothing")
        assert await c.ready(names[k], "1")
    m = w.scrape()
    assert m.get("shoal_worker_resident_bytes", tier="host") <= budget + one
    # Host evictions keep the artifact on the disk tier: they count as demotions to disk, and
    # reloading an evicted model reads the disk instead of the store.
    assert m.get("shoal_worker_cache_demotions_total", tier="host", to="disk") >= N_MODELS - 12
    assert m.get("shoal_worker_cache_hits_total", tier="disk") >= 1
    assert m.get("shoal_worker_cache_misses_total", tier="disk") == N_MODELS


@pytest.fixture(scope="module")
def batching_worker(worker_factory: WorkerFactory) -> WorkerProc:
    # Batches go out only when full (64 rows) or after 60 s: 64 concurrent single-row
    # requests must become exactly one runtime call, whatever the timing.
    return worker_factory(
        {
            "SHOAL_BATCHING": "on",
            "SHOAL_MAX_BATCH_ROWS": "64",
            "SHOAL_MAX_DELAY_US": "60000000",
            "SHOAL_BATCH_WHEN_IDLE": "false",
        }
    )


@pytest.mark.parametrize("fmt", ["xgboost-ubj", "lightgbm-text", "onnx"])
async def test_batched_answers_equal_unbatched(
    batching_worker: WorkerProc, model_bytes: dict[str, Any], fmt: str
) -> None:
    w = batching_worker
    name = f"batch/{fmt.replace('-', '')}"
    await put_model(w.etcd, w.store_url, *name.split("/"), model_bytes[fmt])
    x = np.ascontiguousarray(model_bytes["x"][:64])
    input_name = "input" if fmt == "onnx" else "input__0"
    async with Client(w.address) as c:
        whole = await c.infer(name, x, "1", name=input_name)  # a full batch, sent at once
        before = w.scrape()
        rows = await asyncio.gather(
            *(c.infer(name, x[i : i + 1], "1", name=input_name) for i in range(64))
        )
    after = w.scrape()
    np.testing.assert_allclose(np.concatenate(rows), whole, rtol=1e-6)
    for i, r in enumerate(rows):
        assert r.shape == (1, *whole.shape[1:])
        np.testing.assert_allclose(r, whole[i : i + 1], rtol=1e-6)
    calls = after.get("shoal_worker_batch_rows_count") - before.get("shoal_worker_batch_rows_count")
    merged = after.get("shoal_worker_batch_rows_sum") - before.get("shoal_worker_batch_rows_sum")
    assert (calls, merged) == (1, 64)
