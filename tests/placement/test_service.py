"""The placement service as real processes against a real etcd, with real worker processes
(``fakeworker.py``: a lease, a WorkerInfo and a WorkerAdmin server each)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shoal.etcd import EtcdStore
from shoal.records import ELECTION, PoolSnapshot, placement_key, worker_key
from shoal.state import StateStore
from tests.placement.procs import Procs, await_banner, metric


@pytest.fixture
def procs(tmp_path: Path, etcd_url: str, file_store_url: str) -> Iterator[Procs]:
    p = Procs(tmp_path, etcd_url, file_store_url)
    yield p
    p.stop_all()


async def snapshots_until(
    store: StateStore,
    pool: str,
    done: Callable[[PoolSnapshot], bool],
    timeout: float = 30.0,
) -> list[PoolSnapshot]:
    """Every snapshot of ``pool`` published from now until one satisfies ``done``.

    Starts with the current one (if any). Driven by a watch: no polling, no sleeps.
    """
    key = placement_key(pool)
    seen: list[PoolSnapshot] = []
    page = await store.range(key, limit=1)
    for kv in page.kvs:
        if kv.key == key:
            seen.append(PoolSnapshot.decode(kv.value))
            if done(seen[-1]):
                return seen

    async def follow() -> None:
        async with await store.watch(key, page.revision + 1) as watch:
            async for ev in watch:
                if ev.kind == "put" and ev.key == key:
                    seen.append(PoolSnapshot.decode(ev.value))
                    if done(seen[-1]):
                        return

    await asyncio.wait_for(follow(), timeout)
    return seen


def ids(snap: PoolSnapshot) -> list[str]:
    return [m.worker_id for m in snap.members]


async def test_killed_worker_leaves_the_snapshot_with_one_new_epoch(
    procs: Procs, etcd_url: str
) -> None:
    async with EtcdStore(etcd_url) as store:
        workers = {w: procs.worker(w) for w in ("w1", "w2", "w3")}
        for proc in workers.values():
            await await_banner(proc, "ready ")
        placement = procs.placement("p1")
        await await_banner(placement, "control: ")
        seen = await snapshots_until(store, "cpu", lambda s: ids(s) == ["w1", "w2", "w3"])
        epoch = seen[-1].epoch

        # w3 flaps (record deleted and re-created three times), then dies without a goodbye.
        key = worker_key("cpu", "w3")
        page = await store.range(key, limit=1)
        async with await store.watch(key, page.revision + 1) as watch:
            workers["w3"].signal(signal.SIGUSR1)
            puts = 0
            async for ev in watch:
                puts += ev.kind == "put"
                if puts == 3:
                    break
        workers["w3"].kill()

        after = await snapshots_until(store, "cpu", lambda s: "w3" not in ids(s))
        assert ids(after[-1]) == ["w1", "w2"]
        # One new epoch for the flaps and the death together: none was published between.
        assert [s.epoch for s in after] == [epoch, epoch + 1]


async def test_two_services_one_publishes_and_killing_it_hands_over(
    procs: Procs, etcd_url: str
) -> None:
    async with EtcdStore(etcd_url) as store:
        await await_banner(procs.worker("w1"), "ready ")
        services = {name: procs.placement(name) for name in ("pa", "pb")}
        metrics = {name: await await_banner(p, "metrics: ") for name, p in services.items()}
        for p in services.values():
            await await_banner(p, "control: ")
        first = await snapshots_until(store, "cpu", lambda s: ids(s) == ["w1"])
        kv = await store.get(ELECTION)
        assert kv is not None
        leader = kv.value.decode()
        standby = "pb" if leader == "pa" else "pa"
        assert metric(metrics[leader], "shoal_placement_leader") == 1.0
        assert metric(metrics[standby], "shoal_placement_leader") == 0.0
        assert metric(metrics[standby], "shoal_placement_snapshots_published_total") == 0.0

        services[leader].kill()
        # The standby campaigns once the dead leader's lease expires ...
        page = await store.range(ELECTION, limit=1)
        if not page.kvs or page.kvs[0].value.decode() != standby:
            async with await store.watch(ELECTION, page.revision + 1) as watch:
                async for ev in watch:
                    if ev.kind == "put" and ev.value.decode() == standby:
                        break
        # ... and publishes from then on, continuing the epochs.
        await await_banner(procs.worker("w2"), "ready ")
        after = await snapshots_until(store, "cpu", lambda s: ids(s) == ["w1", "w2"])
        assert after[-1].epoch > first[-1].epoch
        assert metric(metrics[standby], "shoal_placement_leader") == 1.0
        assert metric(metrics[standby], "shoal_placement_snapshots_published_total") >= 1.0


async def test_draining_worker_leaves_before_it_goes(procs: Procs, etcd_url: str) -> None:
    async with EtcdStore(etcd_url) as store:
        w1, w2 = procs.worker("w1"), procs.worker("w2")
        for p in (w1, w2):
            await await_banner(p, "ready ")
        placement = procs.placement("p1")
        await await_banner(placement, "control: ")
        seen = await snapshots_until(store, "cpu", lambda s: ids(s) == ["w1", "w2"])
        w2.stop()  # SIGTERM: the fake worker marks itself draining, then revokes its lease
        after = await snapshots_until(store, "cpu", lambda s: ids(s) == ["w1"])
        assert after[-1].epoch == seen[-1].epoch + 1
        # SIGTERM on the service: a clean exit that resigns (the election key goes at once).
        assert await store.get(ELECTION) is not None
        assert placement.stop(grace=10) == 0
        assert await store.get(ELECTION) is None


async def test_health_is_served_without_a_key_and_follows_the_stop(procs: Procs) -> None:
    """grpc.health.v1 on the control port (Kubernetes' gRPC probes): open to callers without
    a key while every control-plane call needs one; NOT_SERVING once it stops."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from shoal.pb import shoal_control_pb2 as cpb
    from shoal.pb import shoal_control_pb2_grpc as cpb_grpc

    p = procs.placement("p-health", auth="true")
    address = await await_banner(p, "control:")
    serving = health_pb2.HealthCheckResponse.SERVING
    async with grpc.aio.insecure_channel(address) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "shoal.v1.Control"):
            resp = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert resp.status == serving
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await cpb_grpc.ControlStub(ch).ListWorkers(cpb.ListWorkersRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
        assert (await asyncio.wait_for(watch.read(), 10)).status == serving
        p.signal(signal.SIGTERM)
        last = await asyncio.wait_for(watch.read(), 10)
        assert last.status == health_pb2.HealthCheckResponse.NOT_SERVING
