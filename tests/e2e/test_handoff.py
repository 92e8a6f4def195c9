"""Warm hand-off and pinning with real processes (etcd, placement, workers, router): the
models a leaving worker was serving are already resident on their new primaries when the
snapshot drops it, a joining worker preloads what it becomes primary for before it enters,
and a pinned model is held on every member of its shard through any pressure.

"Resident" is read from the workers' own counters: after each change every model is asked
for through the router, and the workers' cache misses do not move. Without the hand-off the
new primaries would load those models on the first request (a miss each).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as triton
from prometheus_client.parser import text_string_to_metric_families

from shoal import modelgen
from shoal.cluster import LocalCluster, etcd_get
from shoal.records import WorkerInfo, worker_key
from shoal.warmth import HotList, hot_key
from tests.e2e.conftest import FAST, Control, router_url

TENANTS = [f"hand-{i:02d}" for i in range(16)]
WORKER_ENV = {
    "SHOAL_HOST_BUDGET": "64MiB",
    "SHOAL_DRAIN_GRACE_S": "5",
    "SHOAL_HOT_LIST_S": "0.3",
    "SHOAL_HANDOFF_WAIT_S": "20",
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(
        tmp_path_factory.mktemp("handoff"),
        workers=3,
        shard_size=2,
        env={**FAST, "SHOAL_HANDOFF_WAIT_S": "20"},
        worker_env=WORKER_ENV,
    )
    c.start()
    yield c
    c.stop()


def _metrics(c: LocalCluster, worker_id: str) -> dict[str, float]:
    """name{label=value,...} -> value, of one worker's /metrics."""
    raw = etcd_get(c.etcd_url, worker_key("cpu", worker_id))
    assert raw is not None, f"{worker_id} is not registered"
    addr = WorkerInfo.decode(raw).metrics_address
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def _misses(c: LocalCluster, ids: set[str]) -> dict[str, float]:
    return {w: _metrics(c, w).get("shoal_worker_cache_misses_total{tier=memory}", 0.0) for w in ids}


def _live(c: LocalCluster) -> set[str]:
    return {w.extra["worker_id"] for w in c.workers if w.proc.alive()}


def _ask_all(c: LocalCluster, x: np.ndarray, rounds: int = 2) -> None:
    client = triton.InferenceServerClient(router_url(c))
    inp = triton.InferInput("input__0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    for _ in range(rounds):
        for t in TENANTS:
            client.infer(f"{t}/m", [inp])
    client.close()


def _shoal(c: LocalCluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SHOAL_ETCD": c.etcd_url}
    return subprocess.run(
        [sys.executable, "-m", "shoal.cli", *args], capture_output=True, text=True, env=env,
        timeout=120, check=check,
    )  # fmt: skip


def _wait(pred: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _hot(c: LocalCluster, worker_id: str) -> HotList | None:
    raw = etcd_get(c.etcd_url, hot_key("cpu", worker_id))
    return HotList.decode(raw) if raw else None


@pytest.fixture(scope="module")
def rows(cluster: LocalCluster, data30: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    assert cluster.placement is not None
    x, y = data30
    control = Control(cluster.placement.address)
    for i, t in enumerate(TENANTS):
        control.register(t, "m", modelgen.train_xgboost(x, y, n_trees=3 + i % 3), alias="stable")
    control.close()
    return x[:2].astype(np.float32)


def test_a_drained_workers_models_are_warm_on_their_new_primaries(
    cluster: LocalCluster, rows: np.ndarray
) -> None:
    _ask_all(cluster, rows, rounds=3)
    ids = _live(cluster)
    # Each worker publishes the models it holds; the one holding most is drained.
    _wait(lambda: all((_hot(cluster, w) or HotList(w, ())).models for w in ids), 30, "hot lists")
    victim = max(ids, key=lambda w: len(_hot(cluster, w).models))  # type: ignore[union-attr]
    rest = ids - {victim}
    before = _misses(cluster, rest)
    preloads_before = sum(
        v for w in rest for k, v in _metrics(cluster, w).items()
        if k.startswith("shoal_worker_preloads_total{outcome=loaded")
    )  # fmt: skip

    out = _shoal(cluster, "workers", "drain", victim, "--wait", "40", "--json")
    assert json.loads(out.stdout) == {
        "worker_id": victim, "pool": "cpu", "drained": True, "left_pool": True,
    }  # fmt: skip
    cluster.wait_snapshot(rest, 10)
    preloaded = sum(
        v for w in rest for k, v in _metrics(cluster, w).items()
        if k.startswith("shoal_worker_preloads_total{outcome=loaded")
    )  # fmt: skip
    assert preloaded > preloads_before, "nothing was preloaded for the hand-off"

    _ask_all(cluster, rows)
    after = _misses(cluster, rest)
    assert after == before, f"requests missed after the hand-off: {before} -> {after}"
    # The drained worker is still running, out of the pool, and says so.
    info = WorkerInfo.decode(etcd_get(cluster.etcd_url, worker_key("cpu", victim)) or b"{}")
    assert info.leaving and victim in _live(cluster)

    # Undrained, it joins again (warm: it still holds its models) and serves.
    _shoal(cluster, "workers", "undrain", victim)
    cluster.wait_snapshot(ids, 40)
    _ask_all(cluster, rows)


def test_a_joining_worker_preloads_what_it_becomes_primary_for(
    cluster: LocalCluster, rows: np.ndarray
) -> None:
    _ask_all(cluster, rows, rounds=2)
    time.sleep(1.0)  # the hot lists catch up (published every 0.3 s)
    ids = _live(cluster)
    before = _misses(cluster, ids)
    role = cluster.add_worker(60, wait_in_snapshot=True)
    new = role.extra["worker_id"]
    joined = _metrics(cluster, new)
    loaded = joined.get("shoal_worker_preloads_total{outcome=loaded}", 0.0)
    assert loaded > 0, "the joiner entered the pool cold"
    _ask_all(cluster, rows)
    assert _metrics(cluster, new).get("shoal_worker_cache_misses_total{tier=memory}", 0.0) == 0
    assert _misses(cluster, ids) == before


def test_a_pinned_model_is_held_by_its_shard_and_pins_past_the_budget_are_refused(
    cluster: LocalCluster, rows: np.ndarray
) -> None:
    out = _shoal(cluster, "models", "pin", f"{TENANTS[0]}/m", "--json")
    pinned = json.loads(out.stdout)
    shard = set(pinned["members"])
    assert pinned["model"] == f"{TENANTS[0]}/m" and len(shard) == 2

    def held() -> bool:
        return all(_metrics(cluster, w).get("shoal_worker_pinned_models{}", 0) >= 1 for w in shard)

    _wait(held, 30, "the pin on both shard members")
    assert json.loads(_shoal(cluster, "models", "pins", "--json").stdout) == [
        {"model": f"{TENANTS[0]}/m", "pool": "cpu", "bytes": pinned["bytes"]}
    ]
    # Past the bound: refused with the figures, nothing written.
    refused = _shoal(cluster, "models", "pin", f"{TENANTS[1]}/m", "--max-fraction", "0.000001",
                     check=False)  # fmt: skip
    assert refused.returncode != 0
    assert "over 0% of its host budget" in refused.stderr or "host budget" in refused.stderr
    assert len(json.loads(_shoal(cluster, "models", "pins", "--json").stdout)) == 1

    _shoal(cluster, "models", "unpin", f"{TENANTS[0]}/m")
    _wait(lambda: not any(
        _metrics(cluster, w).get("shoal_worker_pinned_models{}", 0) for w in shard
    ), 30, "the pin released")  # fmt: skip


def test_a_worker_restarted_under_its_id_comes_back_with_its_hot_models(
    cluster: LocalCluster, rows: np.ndarray
) -> None:
    _ask_all(cluster, rows, rounds=2)
    role = next(w for w in cluster.workers if w.proc.alive())
    wid = role.extra["worker_id"]
    assert role.proc.stop(30) == 0  # SIGTERM: hand-off, then exit
    kept = cluster.data_dir / "workers" / wid / "hot.json"
    hot = HotList.decode(kept.read_bytes())
    assert hot.models, "the worker kept no hot list when it left"
    back = cluster.add_worker(60, worker_id=wid)  # back in the snapshot: warm by then
    assert not kept.exists()
    client = triton.InferenceServerClient(back.address)
    try:
        held = [client.is_model_ready(f"{m.tenant}/{m.name}", str(m.version)) for m in hot.models]
    finally:
        client.close()
    assert all(held), (
        f"not resident again: {[m.ref for m, h in zip(hot.models, held, strict=True) if not h]}"
    )
