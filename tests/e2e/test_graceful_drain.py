"""Graceful drain through the router, with real processes (etcd, placement, 3 workers, router).

Under steady load from a few client threads (every answer checked against the model's own
prediction), the busiest worker gets SIGTERM: no request fails, the worker exits 0, and before
its lease goes it publishes ``draining: true`` in its etcd record (seen by an etcd watch
started before the signal), so routers stop choosing it while its in-flight calls finish.

Two protections keep requests from failing here, each enough alone: the worker deregisters
before it stops accepting calls, and the router retries another shard member when a worker
refuses or breaks a call. This test fails when both are gone (and when the draining record is).
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
import urllib.request
from collections.abc import Callable

import numpy as np
import tritonclient.grpc as triton
import xgboost as xgb
from prometheus_client.parser import text_string_to_metric_families

from shoal import modelgen
from shoal.cluster import LocalCluster, etcd_get
from shoal.etcd import EtcdStore
from shoal.records import WorkerInfo, worker_key
from shoal.state import WatchEvent
from tests.e2e.conftest import Control, router_url

TENANTS = [f"drain-{i}" for i in range(6)]


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` without blocking the event loop (the etcd watch runs on it)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        await asyncio.sleep(0.05)


def _infer_count(c: LocalCluster, worker_id: str) -> float:
    raw = etcd_get(c.etcd_url, worker_key("cpu", worker_id))
    assert raw is not None
    addr = WorkerInfo.decode(raw).metrics_address
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "shoal_worker_requests_total" and s.labels.get("method") == "ModelInfer"
    )


class Load:
    """Client threads through the router; each answer is checked, failures are kept."""

    def __init__(self, router: str, x: np.ndarray, want: np.ndarray, threads: int = 3) -> None:
        self.router = router
        self.x = x
        self.want = want
        self.done = 0
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, offset: int) -> None:
        client = triton.InferenceServerClient(self.router)
        inp = triton.InferInput("input__0", list(self.x.shape), "FP32")
        inp.set_data_from_numpy(self.x)
        i = offset
        while not self._stop.is_set():
            try:
                result = client.infer(f"{TENANTS[i % len(TENANTS)]}/m", [inp])
                assert result.get_response().model_version == "1"
                got = np.asarray(result.as_numpy("output__0")).reshape(-1)
                np.testing.assert_allclose(got, self.want, rtol=1e-6)
                with self._lock:
                    self.done += 1
            except BaseException as exc:  # every failure is a finding
                self.errors.append(exc)
            i += 1

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


async def test_sigterm_under_load_drains_without_a_failed_request(
    cluster: LocalCluster, control: Control, data30: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = data30
    model = modelgen.train_xgboost(x, y, n_trees=5)
    for t in TENANTS:
        control.register(t, "m", model, alias="stable")
    rows = x[:2].astype(np.float32)
    booster = xgb.Booster()
    booster.load_model(bytearray(model))
    load = Load(router_url(cluster), rows, np.asarray(booster.inplace_predict(rows)).reshape(-1))
    load.start()
    try:
        await until(lambda: load.done >= 300, 60, "steady traffic")
        # The worker answering the most requests is the one to drain.
        counts = {
            w.extra["worker_id"]: _infer_count(cluster, w.extra["worker_id"])
            for w in cluster.workers
        }
        victim_id = max(counts, key=lambda w: counts[w])
        assert counts[victim_id] > 0
        victim = next(w for w in cluster.workers if w.extra["worker_id"] == victim_id)
        key = worker_key("cpu", victim_id)

        events: list[WatchEvent] = []
        async with EtcdStore(cluster.etcd_url) as store:
            kv = await store.get(key)
            assert kv is not None and not WorkerInfo.decode(kv.value).draining
            watch = await store.watch(key, kv.mod_revision + 1)

            async def follow() -> None:
                async with watch:
                    async for ev in watch:
                        if ev.key == key:
                            events.append(ev)
                            if ev.kind == "delete":
                                return

            follower = asyncio.get_running_loop().create_task(follow())
            at_signal = load.done
            victim.proc.signal(signal.SIGTERM)
            await asyncio.wait_for(follower, 30)
            code = await asyncio.to_thread(victim.proc.stop, 30)
        assert code == 0, victim.proc.log_tail()
        survivors = {w.extra["worker_id"] for w in cluster.workers if w.proc.alive()}
        await asyncio.to_thread(cluster.wait_snapshot, survivors, 30)
        await until(lambda: load.done >= at_signal + 300, 60, "traffic after the drain")
    finally:
        load.stop()
    assert load.errors == []

    # The record said draining before the key went, and never took it back.
    assert [e.kind for e in events][-1] == "delete"
    puts = [WorkerInfo.decode(e.value) for e in events[:-1]]
    assert puts, "the worker's key went without a draining record first"
    first = next(i for i, info in enumerate(puts) if info.draining)
    assert all(info.draining and not info.ready for info in puts[first:])
