"""The disk tier re-checks sha256, with real processes (etcd, placement, a worker, router).

A worker keeps each artifact it fetched in its disk tier. One bit of one copy is flipped on
disk (a change that still parses and predicts, only differently), the worker is restarted on
the same data dir (so nothing is in memory and both artifacts are on disk), and both models
are asked for through the router: the corrupt copy is treated as a miss and the artifact
fetched again from the object store, so the answers equal the models' own predictions; the
intact copy is served from disk. The worker's metrics and log say which was which, and the
disk tier holds a good copy again afterwards.
"""

from __future__ import annotations

import hashlib
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
import xgboost as xgb
from prometheus_client.parser import text_string_to_metric_families

from shoal import modelgen
from shoal.cluster import LocalCluster, etcd_get
from shoal.procs import wait_until
from shoal.records import WorkerInfo, worker_key
from tests.e2e.conftest import FAST, Control


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path / "c", workers=1, shard_size=1, env=FAST)
    c.start()
    yield c
    c.stop()


def _predict(booster_bytes: bytes, x: np.ndarray) -> np.ndarray:
    b = xgb.Booster()
    b.load_model(bytearray(booster_bytes))
    return np.asarray(b.inplace_predict(x))


def _flip_one_bit(data: bytes) -> bytes:
    """The artifact with the low bit of base_score's first digit flipped (6 -> 7, ...)."""
    at = data.index(b'"base_score":"') + len(b'"base_score":"')
    while not data[at : at + 1].isdigit():
        at += 1
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


def _metrics(
    c: LocalCluster, worker_id: str
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    raw = etcd_get(c.etcd_url, worker_key("cpu", worker_id))
    assert raw is not None
    addr = WorkerInfo.decode(raw).metrics_address
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_a_corrupt_disk_copy_is_a_miss_and_the_artifact_is_fetched_again(
    cluster: LocalCluster, data30: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = data30
    rows = x[:8].astype(np.float32)
    bad = modelgen.train_xgboost(x, y, n_trees=5, seed=1)
    good = modelgen.train_xgboost(x, y, n_trees=6, seed=2)
    assert cluster.placement is not None and cluster.router is not None
    control = Control(cluster.placement.address)
    try:
        control.register("disk", "bad", bad, alias="stable")
        control.register("disk", "good", good, alias="stable")
    finally:
        control.close()
    want = {"disk/bad": _predict(bad, rows), "disk/good": _predict(good, rows)}
    corrupt = _flip_one_bit(bad)
    # What serving the corrupt bytes would give: a model that loads and answers differently.
    assert not np.allclose(_predict(corrupt, rows), want["disk/bad"], rtol=1e-6)

    client = triton.InferenceServerClient(cluster.router.address)
    inp = triton.InferInput("input__0", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows)

    def answer(model: str) -> np.ndarray:
        result = client.infer(model, [inp])
        assert result.get_response().model_version == "1"
        return np.asarray(result.as_numpy("output__0"))

    for model, expected in want.items():
        np.testing.assert_allclose(answer(model).reshape(-1), expected.reshape(-1), rtol=1e-6)

    worker = cluster.workers[0]
    wid = worker.extra["worker_id"]
    home = cluster.data_dir / "workers" / wid
    sha = {m: hashlib.sha256(d).hexdigest() for m, d in (("disk/bad", bad), ("disk/good", good))}

    def on_disk(model: str) -> Path | None:
        found = [p for p in home.rglob(sha[model]) if p.is_file()]
        return found[0] if found else None

    def kept(model: str) -> bool:  # the copy is written in the background after a load
        p = on_disk(model)
        return p is not None and hashlib.sha256(p.read_bytes()).hexdigest() == sha[model]

    wait_until(lambda: kept("disk/bad") and kept("disk/good"), 30, what="the disk-tier copies")
    assert worker.proc.stop() == 0
    copy = on_disk("disk/bad")
    assert copy is not None
    copy.write_bytes(corrupt)

    cluster.add_worker(worker_id=wid)  # same id, same data dir: empty memory, full disk tier

    def served(model: str) -> bool:
        try:
            client.infer(model, [inp])
        except triton.InferenceServerException:
            return False  # the router has not seen the restarted worker yet
        return True

    wait_until(lambda: served("disk/good"), 30, what="the restarted worker to answer")
    for model, expected in want.items():
        for _ in range(3):
            np.testing.assert_allclose(answer(model).reshape(-1), expected.reshape(-1), rtol=1e-6)

    m = _metrics(cluster, wid)
    disk = frozenset({("tier", "disk")})
    assert m[("shoal_worker_cache_hits_total", disk)] == 1  # disk/good, from its copy
    assert m[("shoal_worker_cache_misses_total", disk)] == 1  # disk/bad, fetched again
    assert m[("shoal_worker_loads_total", frozenset({("result", "OK")}))] == 2
    log = (cluster.data_dir / "logs" / f"{wid}.log").read_text()
    assert f"disk cache: {sha['disk/bad']} does not match its digest; fetching it again" in log
    assert log.count("does not match its digest") == 1  # the intact copy was not refused
    wait_until(lambda: kept("disk/bad"), 30, what="a good copy back on disk")
