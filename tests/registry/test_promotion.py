"""Promotion without cold starts, on a real cluster (etcd, placement, 2 workers, router) with
API keys on and artifacts in the S3 fixture: ``alias set --wait-loaded`` loads the version on
the tenant's shard members before the alias moves, so the first requests are cache hits (read
from the workers' Prometheus metrics); a failed warm-up leaves the alias where it was."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shoal import oip
from shoal.cli import main
from shoal.cluster import LocalCluster, add_key, etcd_get
from shoal.devservers import LocalSeaweedS3
from shoal.objstore import ObjectStore
from shoal.pb import shoal_control_pb2 as cpb
from shoal.pb import shoal_inference_pb2 as ipb
from shoal.pb.shoal_control_pb2_grpc import ControlStub
from shoal.records import WorkerInfo, worker_key
from shoal.settings import CommonSettings
from tests.registry.helpers import model_variant

FAST = {"SHOAL_LEASE_TTL": "2", "SHOAL_DEBOUNCE_S": "0.3"}


@pytest.fixture
def cluster(
    tmp_path: Path, etcd_url: str, s3_store_url: str, s3_server: LocalSeaweedS3
) -> Iterator[LocalCluster]:
    env = {**FAST, "SHOAL_S3_ENDPOINT": s3_server.endpoint}
    c = LocalCluster(
        tmp_path / "cluster",
        workers=2,
        shard_size=2,
        env=env,
        worker_env={"SHOAL_DEVICE": "cpu", "SHOAL_METRICS_PORT": "0"},
        etcd_url=etcd_url,
        store=s3_store_url,
        auth=True,
    )
    try:
        yield c.start()
    finally:
        c.stop()


def _metrics(address: str) -> dict[tuple[str, str], float]:
    """(sample name, tier label) -> value, summed over other labels."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[tuple[str, str], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = (s.name, s.labels.get("tier", ""))
            out[key] = out.get(key, 0.0) + s.value
    return out


def _scrape(cluster: LocalCluster) -> dict[str, dict[tuple[str, str], float]]:
    out = {}
    for w in cluster.workers:
        raw = etcd_get(cluster.etcd_url, worker_key("cpu", w.extra["worker_id"]))
        assert raw is not None
        out[w.name] = _metrics(WorkerInfo.decode(raw).metrics_address)
    return out


def _delta(
    before: dict[str, dict[tuple[str, str], float]],
    after: dict[str, dict[tuple[str, str], float]],
    name: str,
    tier: str,
) -> dict[str, float]:
    return {w: after[w].get((name, tier), 0.0) - before[w].get((name, tier), 0.0) for w in after}


def _infer(channel: grpc.Channel, key: str, version: str = "") -> str:
    """One request through the router; the version that answered."""
    call = channel.unary_unary(
        oip.path("ModelInfer"),
        request_serializer=ipb.ModelInferRequest.SerializeToString,
        response_deserializer=ipb.ModelInferResponse.FromString,
    )
    x = np.random.default_rng(0).normal(size=(1, 8)).astype(np.float32)
    req = ipb.ModelInferRequest(model_name="acme/churn", model_version=version)
    req.inputs.add(name="input__0", datatype="FP32", shape=[1, 8])
    req.raw_input_contents.append(x.tobytes())
    resp = call(req, timeout=30, metadata=(("authorization", f"Bearer {key}"),))
    return str(resp.model_version)


def _list_models(address: str, key: str) -> tuple[str, str]:
    """ListModels on the control plane with ``key`` (none when empty): (code name, details)."""
    metadata = (("authorization", f"Bearer {key}"),) if key else None
    with grpc.insecure_channel(address) as channel:
        try:
            ControlStub(channel).ListModels(cpb.ListModelsRequest(), timeout=30, metadata=metadata)
        except grpc.RpcError as exc:
            return exc.code().name, str(exc.details())  # type: ignore[attr-defined]
    return "OK", ""


def test_wait_loaded_promotes_warm_and_a_failed_warm_up_changes_nothing(
    cluster: LocalCluster,
    tmp_path: Path,
    s3_settings: CommonSettings,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert cluster.placement is not None and cluster.router is not None
    monkeypatch.setenv("SHOAL_CONTROL", cluster.placement.address)
    monkeypatch.delenv("SHOAL_KEY", raising=False)

    def shoal(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out = capsys.readouterr()
        return code, out.out, out.err

    tenant_key = add_key(cluster.etcd_url, "acme")
    files = []
    for i in range(3):
        _, data = model_variant(2 * i)  # XGBoost, 8 features
        files.append(tmp_path / f"v{i + 1}.json")
        files[-1].write_bytes(data)

    # The control plane wants the admin key: without one the call is UNAUTHENTICATED, with a
    # tenant's key PERMISSION_DENIED; the CLI says the same in one line.
    missing = "missing API key: send 'authorization: Bearer <key>'"
    assert _list_models(cluster.placement.address, "") == ("UNAUTHENTICATED", missing)
    assert shoal("models") == (1, "", f"shoal: {missing}\n")
    denied = ("PERMISSION_DENIED", "this call needs an admin key")
    assert _list_models(cluster.placement.address, tenant_key) == denied
    monkeypatch.setenv("SHOAL_KEY", tenant_key)
    assert shoal("models") == (1, "", "shoal: this call needs an admin key\n")
    forged = cluster.admin_key[:-4] + ("aaaa" if not cluster.admin_key.endswith("aaaa") else "bbbb")
    invalid = ("UNAUTHENTICATED", "invalid or revoked API key")
    assert _list_models(cluster.placement.address, forged) == invalid
    assert _list_models(cluster.placement.address, cluster.admin_key)[0] == "OK"
    monkeypatch.setenv("SHOAL_KEY", cluster.admin_key)
    for expected, f in enumerate(files, start=1):
        code, out, err = shoal("register", "--tenant", "acme", "--name", "churn", str(f))
        assert (code, out.strip()) == (0, str(expected)), err
    code, _, err = shoal("alias", "set", "acme/churn", "stable", "1", "--wait-loaded")
    assert code == 0, err

    before = _scrape(cluster)
    code, _, err = shoal("alias", "set", "acme/churn", "stable", "2", "--wait-loaded")
    assert code == 0, err
    warmed = _scrape(cluster)
    # Both shard members (k=2) loaded version 2 before the alias moved.
    assert _delta(before, warmed, "shoal_worker_cache_misses_total", "memory") == {
        w.name: 1.0 for w in cluster.workers
    }

    with grpc.insecure_channel(cluster.router.address) as channel:
        answered = [_infer(channel, tenant_key, "2") for _ in range(4)]
        answered += [_infer(channel, tenant_key) for _ in range(4)]  # via the alias
    after = _scrape(cluster)
    assert answered[:4] == ["2"] * 4 and set(answered[4:]) <= {"1", "2"}
    # Every request was served from memory: no miss, no load on any worker.
    misses = _delta(warmed, after, "shoal_worker_cache_misses_total", "memory")
    assert misses == {w.name: 0.0 for w in cluster.workers}
    hits = _delta(warmed, after, "shoal_worker_cache_hits_total", "host")
    assert sum(hits.values()) >= 8

    # Version 3's artifact vanishes from the store: its warm-up fails, the alias stays on 2.
    models = json.loads(shoal("models", "--tenant", "acme", "--json")[1])
    v3 = next(v for v in models[0]["versions"] if v["version"] == 3)
    asyncio.run(ObjectStore(cluster.store, s3_settings).delete(v3["uri"]))
    code, _, err = shoal("alias", "set", "acme/churn", "stable", "3", "--wait-loaded")
    (line,) = err.strip().splitlines()
    assert code == 1 and line.startswith("shoal: warm-up of acme/churn version 3 failed on 2")
    assert "alias unchanged" in line and "NOT_FOUND" in line, line
    models = json.loads(shoal("models", "--tenant", "acme", "--json")[1])
    assert models[0]["aliases"] == {"stable": 2}

    # A canary split, then rollback: the alias set back to the previous version.
    assert shoal("traffic", "set", "acme/churn", "1=90", "2=10")[0] == 0
    models = json.loads(shoal("models", "--tenant", "acme", "--json")[1])
    assert models[0]["traffic"] == {"1": 90, "2": 10}
    assert shoal("traffic", "clear", "acme/churn")[0] == 0
    assert shoal("alias", "set", "acme/churn", "stable", "1")[0] == 0
    models = json.loads(shoal("models", "--tenant", "acme", "--json")[1])
    assert models[0]["aliases"] == {"stable": 1} and models[0]["traffic"] == {}
