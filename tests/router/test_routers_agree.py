"""Every router sends a model version to the same worker: its primary, a fixed function of the
cluster's salt, the pool snapshot and the model version.

Against fixed expectations, not the code under test run twice: shards come from the committed
vectors (``tests/vectors/shard.json``, produced by the Python reference), the primary's index
from the documented hash (unkeyed BLAKE2b-64 of ``tenant/name:version``, little-endian, mod k),
recomputed here with ``hashlib`` and checked against the vectors' own ``primary_index`` cases.
End to end: native gateways driven by ``RouterApp`` on an in-memory store, in front of echo
workers (``tests/router/test_forwarding.py``) that say which of them answered.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.app import RouterApp
from router.settings import RouterSettings
from shoal.pb import shoal_inference_pb2 as pb
from shoal.records import (
    CLUSTER,
    ClusterConfig,
    Member,
    ModelRecord,
    PoolSnapshot,
    WorkerInfo,
    model_key,
    placement_key,
    worker_key,
)
from shoal.state import MemoryStore
from tests.conftest import run
from tests.router.test_forwarding import EchoWorker, _request, _until, _version

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "shard.json"
IDENT = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
#: Vector pools whose worker ids are ``w0..wN`` (an echo worker answers with its number):
#: 12 workers in one zone with k=4, and 24 workers in two zones with k=3.
POOLS = (12, 16)


@cache
def vectors() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(VECTORS.read_text(encoding="utf-8"))
    return data


def primary_index(key: str, k: int) -> int:
    """DESIGN's primary member of a model version, from its definition."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % k


def test_the_primary_index_recomputed_here_matches_the_vectors() -> None:
    cases = vectors()["primary_index"]
    assert len(cases) >= 40
    for case in cases:
        assert primary_index(case["key"], case["k"]) == case["index"], case


class Routers:
    """Echo workers, a store describing them, and routers following that store."""

    def __init__(self, store: MemoryStore, workers: list[EchoWorker], apps: list[RouterApp]):
        self.store = store
        self.workers = workers
        self.apps = apps
        self.channels = [grpc.aio.insecure_channel(a.address) for a in apps]

    async def put_model(self, record: ModelRecord) -> None:
        await self.store.put(model_key(record.tenant, record.name), record.encode())

    async def answer(self, router: int, raw: bytes) -> tuple[str, str]:
        """(the version that answered, the worker that answered) through router ``router``."""
        call = self.channels[router].unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=None,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        resp = await call(raw, timeout=5.0)
        worker = int(np.frombuffer(resp.raw_output_contents[0], np.float32)[0])
        return resp.model_version, f"w{worker}"

    async def worker_for(self, router: int, raw: bytes, version: int) -> str:
        """The worker that answers ``raw`` through router ``router`` once that router has the
        model record that makes ``version`` answer it (records reach gateways asynchronously)."""
        answered: list[tuple[str, str]] = []

        async def routed() -> bool:
            try:
                answered.append(await self.answer(router, raw))
            except grpc.aio.AioRpcError:
                return False  # the model has not reached this gateway yet
            return answered[-1][0] == str(version)  # nor its latest change

        await _until(routed)
        return answered[-1][1]


@asynccontextmanager
async def routers(
    tmp_path: Path,
    worker_ids: list[str],
    zones: list[str],
    salt_hex: str,
    shard_size: int,
    n_routers: int = 1,
) -> AsyncIterator[Routers]:
    store = MemoryStore()
    workers = [EchoWorker(w) for w in worker_ids]
    apps: list[RouterApp] = []
    try:
        for w in workers:
            await w.start()
            info = WorkerInfo(w.worker_id, "cpu", w.address, ready=True)
            await store.put(worker_key("cpu", w.worker_id), info.encode())
        await store.put(CLUSTER, ClusterConfig(salt_hex, shard_size).encode())
        members = tuple(
            Member(w.worker_id, w.address, z) for w, z in zip(workers, zones, strict=True)
        )
        snapshot = PoolSnapshot("cpu", 1, members, shard_size)
        await store.put(placement_key("cpu"), snapshot.encode())
        for i in range(n_routers):
            # Different seeds: nothing random may decide where a model version goes.
            settings = RouterSettings(
                port=0, rest_port=0, metrics_port=-1, data_dir=tmp_path / f"router{i}", seed=i + 1
            )
            app = RouterApp(settings, store=store)
            await app.start()
            apps.append(app)
        r = Routers(store, workers, apps)
        try:
            yield r
        finally:
            for ch in r.channels:
                await ch.close()
    finally:
        for app in apps:
            await app.stop(0.0)
        for w in workers:
            await w.stop()


def _shards(pool: int) -> dict[str, list[str]]:
    """tenant -> its shard (worker ids, in selection order) in vector pool ``pool``, for the
    tenants whose ids are valid model tenants."""
    v = vectors()
    spec = v["pools"][pool]
    ids = spec["worker_ids"]
    out = {}
    for case in v["ranked"]:
        default = case["pool"] == pool and not case["members"] and case["shard_size"] == 0
        if default and IDENT.fullmatch(case["tenant"]):
            out[case["tenant"]] = [ids[i] for i in case["order"][: case["k"]]]
    for case in v["shard_matrix"]:
        if case["pool"] == pool and case["k"] == spec["shard_size"]:
            for tenant, row in zip(case["tenants"], case["rows"], strict=True):
                if IDENT.fullmatch(tenant):
                    out[tenant] = [ids[i] for i in row]
    return out


async def test_each_model_version_goes_to_its_primary_in_the_vector_shard(
    tmp_path: Path,
) -> None:
    for pool in POOLS:
        spec = vectors()["pools"][pool]
        ids, k = spec["worker_ids"], spec["shard_size"]
        assert ids == [f"w{i}" for i in range(len(ids))]
        shards = _shards(pool)
        assert len(shards) >= 8, shards
        tenants = sorted(shards)[:12]
        async with routers(tmp_path / str(pool), ids, spec["zones"], spec["salt"], k) as r:
            for tenant in tenants:
                await r.put_model(ModelRecord(tenant, "m", {v: _version(v) for v in (1, 2, 3)}))
            for tenant in tenants:
                shard = shards[tenant]
                assert len(shard) == k
                for version in (1, 2, 3):
                    raw = _request(str(version), f"{tenant}/m")
                    primary = shard[primary_index(f"{tenant}/m:{version}", k)]
                    got = await r.worker_for(0, raw, version)
                    assert got == primary, (tenant, version, shard)


names = st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,11}", fullmatch=True)


def test_two_routers_send_a_model_version_to_the_same_worker(tmp_path: Path) -> None:
    """Two independent routers on one store: whatever the model and version, and whether the
    version is pinned or reached through the stable alias, both send it to one worker."""
    ids = [f"w{i}" for i in range(6)]
    cm = routers(tmp_path, ids, [""] * len(ids), "5a" * 16, 3, n_routers=2)
    r = run(cm.__aenter__())
    try:

        @settings(
            max_examples=15,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture],
        )
        @given(tenant=names, name=names, version=st.integers(1, 4), pinned=st.booleans())
        def same_worker(tenant: str, name: str, version: int, pinned: bool) -> None:
            record = ModelRecord(
                tenant, name, {v: _version(v) for v in range(1, 5)}, aliases={"stable": version}
            )
            raw = _request(str(version) if pinned else "", f"{tenant}/{name}")

            async def both() -> list[str]:
                await r.put_model(record)
                return [await r.worker_for(router, raw, version) for router in (0, 1)]

            first, second = run(both())
            assert first == second, (tenant, name, version, pinned)

        same_worker()
    finally:
        run(cm.__aexit__(None, None, None))
