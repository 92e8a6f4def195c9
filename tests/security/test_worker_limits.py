"""Worker limits seen through the router (real processes: etcd, placement, 2 workers, router).

* the caller's deadline reaches the worker (the router forwards it as the call's timeout): a
  request still waiting in a worker's batcher when its deadline passes is never run;
* a worker's row limit comes back to the client as RESOURCE_EXHAUSTED naming the limit;
* a prediction that hangs is abandoned by its worker (DEADLINE_EXCEEDED), is not retried on
  the other shard member (the poison does not spread), and every other tenant is served.

Misbehaving runtimes come from the worker's test-only fault injection (worker/faults.py).
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shoal import modelgen
from shoal.cluster import LocalCluster, etcd_get
from shoal.oip import path
from shoal.pb import shoal_inference_pb2 as pb
from shoal.procs import wait_until
from shoal.records import WorkerInfo, worker_key
from tests.e2e.conftest import FAST, Control

FEATURES = 12


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(
        tmp_path_factory.mktemp("limits"),
        workers=2,
        shard_size=2,
        env=FAST,
        worker_env={
            # A lone request waits 2 s in the batcher (batches go when full or after 2 s).
            "SHOAL_BATCHING": "on",
            "SHOAL_MAX_BATCH_ROWS": "64",
            "SHOAL_MAX_DELAY_US": "2000000",
            "SHOAL_BATCH_WHEN_IDLE": "false",
            "SHOAL_MAX_REQUEST_ROWS": "64",
            "SHOAL_PREDICT_TIMEOUT_S": "2",
            "SHOAL_FAULT_INJECT": "hang-predict:poison/hang",
        },
    )
    c.start()
    assert c.placement is not None
    x, y = modelgen.dataset(n_rows=200, n_features=FEATURES)
    ctl = Control(c.placement.address)
    for tenant, name in [("late", "m"), ("poison", "hang"), ("calm", "a"), ("calm", "b")]:
        ctl.register(tenant, name, modelgen.train_xgboost(x, y, n_trees=3), alias="stable")
    ctl.close()
    yield c
    c.stop()


def _request(model: str, rows: int) -> bytes:
    req = pb.ModelInferRequest(model_name=model)
    req.inputs.add(name="input__0", datatype="FP32", shape=[rows, FEATURES])
    req.raw_input_contents.append(np.ones((rows, FEATURES), np.float32).tobytes())
    return bytes(req.SerializeToString())


def _call(channel: grpc.Channel, payload: bytes, timeout: float = 30) -> tuple[str, str]:
    try:
        channel.unary_unary(path("ModelInfer"))(payload, timeout=timeout)
    except grpc.RpcError as exc:
        return exc.code().name, str(exc.details())  # type: ignore[attr-defined]
    return "OK", ""


def _metric(c: LocalCluster, name: str, **labels: str) -> float:
    """Sum of ``name`` over every worker of the cluster."""
    total = 0.0
    for w in c.workers:
        raw = etcd_get(c.etcd_url, worker_key("cpu", w.extra["worker_id"]))
        assert raw is not None
        addr = WorkerInfo.decode(raw).metrics_address
        with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as r:
            text = r.read().decode()
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == name and set(labels.items()) <= set(s.labels.items()):
                    total += s.value
    return total


@pytest.fixture
def channel(limited: LocalCluster) -> Iterator[grpc.Channel]:
    assert limited.router is not None
    ch = grpc.insecure_channel(limited.router.address)
    yield ch
    ch.close()


def test_the_callers_deadline_reaches_the_worker(
    limited: LocalCluster, channel: grpc.Channel
) -> None:
    assert _call(channel, _request("late/m", 64)) == ("OK", "")  # loaded (a full batch)
    runs = _metric(limited, "shoal_worker_batch_rows_count")
    assert _call(channel, _request("late/m", 1), timeout=0.5)[0] == "DEADLINE_EXCEEDED"

    def dropped() -> bool:
        return _metric(limited, "shoal_worker_expired_total", stage="batch") >= 1

    wait_until(dropped, 30, 0.05, "the expired request to be dropped by the worker")
    assert _metric(limited, "shoal_worker_batch_rows_count") == runs  # nothing ran


def test_the_row_limit_comes_back_through_the_router(channel: grpc.Channel) -> None:
    code, details = _call(channel, _request("calm/a", 65))
    assert code == "RESOURCE_EXHAUSTED" and "at most 64 rows" in details, details
    assert _call(channel, _request("calm/a", 64)) == ("OK", "")


def test_a_hang_is_contained_on_one_worker(limited: LocalCluster, channel: grpc.Channel) -> None:
    for model in ("calm/a", "calm/b"):
        assert _call(channel, _request(model, 64)) == ("OK", "")
    code, details = _call(channel, _request("poison/hang", 64), timeout=30)
    assert code == "DEADLINE_EXCEEDED" and "abandoned" in details, details
    code, details = _call(channel, _request("poison/hang", 64))
    assert code == "FAILED_PRECONDITION" and "quarantined" in details, details
    # Not retried on the other member: one stuck thread in the whole shard.
    assert _metric(limited, "shoal_worker_stuck_calls", kind="predict") == 1
    for _ in range(5):
        for model in ("calm/a", "calm/b"):
            assert _call(channel, _request(model, 64)) == ("OK", "")
    assert all(w.proc.alive() for w in limited.workers)
