"""Per-tenant quotas at the router, against real processes (etcd, placement, a worker, router).

Quotas are set per tenant with the ``shoal tenants set`` CLI (a real process writing the
tenant record in etcd); the router picks them up from its watch. The router runs with a 2 s
admission queue and a waiting line of one request per tenant.

* rate: once a tenant's burst is spent, a request whose deadline is shorter than its wait is
  refused at once with RESOURCE_EXHAUSTED naming the limit, while another tenant is served;
  requests that may wait are queued and all answered, paced at the rate: no window of their
  answers holds more than the burst plus the rate times the window's length (with slack);
* in flight: with its cap reached and its line full, the tenant's next request is refused
  with RESOURCE_EXHAUSTED naming the cap; the ones in flight and queued all finish, and
  another tenant is served meanwhile.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shoal import modelgen
from shoal.cluster import LocalCluster
from shoal.oip import path
from shoal.pb import shoal_inference_pb2 as pb
from shoal.procs import wait_until
from tests.e2e.conftest import FAST, Control

FEATURES = 6
SLOW_S = 1.5


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(
        tmp_path_factory.mktemp("quotas"),
        workers=1,
        shard_size=1,
        env={**FAST, "SHOAL_TENANT_QUEUE_S": "2", "SHOAL_TENANT_MAX_QUEUED": "1"},
        worker_env={
            "SHOAL_PREDICT_THREADS": "4",
            "SHOAL_MODEL_MAX_CONCURRENCY": "4",
            "SHOAL_FAULT_INJECT": f"slow-predict:slow/m:{SLOW_S}",
        },
    )
    c.start()
    assert c.placement is not None
    x, y = modelgen.dataset(n_rows=100, n_features=FEATURES)
    ctl = Control(c.placement.address)
    for tenant in ("paced", "patient", "calm", "slow"):
        ctl.register(tenant, "m", modelgen.train_xgboost(x, y, n_trees=2), alias="stable")
    ctl.close()
    yield c
    c.stop()


def _shoal(c: LocalCluster, *args: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-m", "shoal", *args, "--json"],
        env={"SHOAL_ETCD": c.etcd_url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    doc: dict[str, object] = json.loads(out.stdout)
    return doc


def _router_sample(c: LocalCluster, name: str) -> float:
    """One sample of the router's Prometheus metrics (0 when absent)."""
    assert c.router is not None
    with urllib.request.urlopen(f"http://{c.router.extra['metrics']}/metrics", timeout=5) as r:
        text = r.read().decode()
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            if smp.name == name:
                return float(smp.value)
    return 0.0


def _router_in_flight(c: LocalCluster) -> float:
    return _router_sample(c, "shoal_router_in_flight")


def _request(model: str) -> bytes:
    req = pb.ModelInferRequest(model_name=model)
    req.inputs.add(name="input__0", datatype="FP32", shape=[1, FEATURES])
    req.raw_input_contents.append(np.ones((1, FEATURES), np.float32).tobytes())
    return bytes(req.SerializeToString())


def _call(address: str, model: str, timeout: float = 30) -> tuple[str, str]:
    with grpc.insecure_channel(address) as channel:
        try:
            channel.unary_unary(path("ModelInfer"))(_request(model), timeout=timeout)
        except grpc.RpcError as exc:
            return exc.code().name, str(exc.details())  # type: ignore[attr-defined]
    return "OK", ""


def test_tenants_cli_sets_and_shows_only_the_fields_given(cluster: LocalCluster) -> None:
    set_doc = _shoal(cluster, "tenants", "set", "calm", "--shard-size", "1")
    assert set_doc["shard_size"] == 1 and set_doc["rate_limit"] == 0
    _shoal(cluster, "tenants", "set", "calm", "--max-in-flight", "50")
    shown = _shoal(cluster, "tenants", "show", "calm")
    assert shown["shard_size"] == 1 and shown["max_in_flight"] == 50  # the first change kept
    bad = subprocess.run(
        [sys.executable, "-m", "shoal", "tenants", "set", "calm", "--rate-limit", "-1"],
        env={"SHOAL_ETCD": cluster.etcd_url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "--rate-limit must be >= 0" in bad.stderr


def test_rate_limit_refuses_the_impatient_paces_the_patient_and_spares_others(
    cluster: LocalCluster,
) -> None:
    assert cluster.router is not None
    router = cluster.router.address
    assert _shoal(cluster, "tenants", "set", "paced", "--rate-limit", "4")["rate_limit"] == 4
    # Until the router has seen the record, nothing is refused; then requests with a 50 ms
    # deadline are refused at once (the next token is 250 ms away) - not DEADLINE_EXCEEDED.
    refusals: list[str] = []

    def refused() -> bool:
        code, details = _call(router, "paced/m", timeout=0.05)
        if code == "RESOURCE_EXHAUSTED":
            refusals.append(details)
        return bool(refusals)

    wait_until(refused, timeout=20, what="the router to apply the new rate limit")
    assert "over its rate limit of 4 requests/s" in refusals[0], refusals[0]
    assert [_call(router, "calm/m")[0] for _ in range(20)] == ["OK"] * 20


def test_patient_requests_are_queued_and_paced_at_the_rate(cluster: LocalCluster) -> None:
    """Eight patient requests at once, from a tenant with a rate of 4/s (burst 4) that has
    sent nothing yet: about four go at once, the others wait for tokens due every 250 ms (the
    2 s queue holds them all) and all are answered. Paced, not let through together: between
    any two answers there are at most burst + rate x (time between them) + slack answers."""
    assert cluster.router is not None
    router = cluster.router.address
    rate, burst, n = 4, 4, 8
    # 'patient' first, then 'paced' at 3/s: the router applies tenant records in etcd's order,
    # so once a short-deadline request to paced is refused naming 3/s, patient's limit is in
    # force too, and patient's bucket has not been touched.
    assert _shoal(cluster, "tenants", "set", "patient", "--rate-limit", str(rate))["rate_limit"]
    _shoal(cluster, "tenants", "set", "paced", "--rate-limit", "3")
    wait_until(
        lambda: "rate limit of 3 requests/s" in _call(router, "paced/m", timeout=0.05)[1],
        timeout=20,
        what="the router to apply the new rate limits",
    )
    queued = _router_sample(cluster, "shoal_router_quota_queued_total")
    refused = _router_sample(cluster, "shoal_router_quota_refused_total")
    channels = [grpc.insecure_channel(router) for _ in range(n)]
    for ch in channels:  # connected before the start, so the requests leave together
        grpc.channel_ready_future(ch).result(timeout=10)
    start = threading.Barrier(n)

    def patient(channel: grpc.Channel) -> tuple[str, float]:
        start.wait(timeout=10)
        try:
            channel.unary_unary(path("ModelInfer"))(_request("patient/m"), timeout=30)
        except grpc.RpcError as exc:
            return exc.code().name, time.monotonic()  # type: ignore[attr-defined]
        return "OK", time.monotonic()

    try:
        with ThreadPoolExecutor(n) as pool:
            results = list(pool.map(patient, channels))
    finally:
        for ch in channels:
            ch.close()
    assert [code for code, _ in results] == ["OK"] * n
    assert _router_sample(cluster, "shoal_router_quota_refused_total") == refused
    # At least n - burst waited for a token (one less if the start spread over a refill).
    assert _router_sample(cluster, "shoal_router_quota_queued_total") - queued >= n - burst - 1
    done = sorted(t for _, t in results)
    slack = 3  # answers delayed on their way back can bunch up; ~0.5 s of that is allowed
    for i in range(n):
        for j in range(i + 1, n):
            window = done[j] - done[i]
            assert j - i + 1 <= burst + rate * window + slack, (j - i + 1, window, done)


def test_in_flight_cap_refuses_past_the_line_and_spares_others(cluster: LocalCluster) -> None:
    assert cluster.router is not None
    router = cluster.router.address
    _shoal(cluster, "tenants", "set", "slow", "--max-in-flight", "2")

    def full() -> bool:  # the record reached the router: a 4th concurrent call is refused
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: _call(router, "slow/m"), range(4)))
        return any(code == "RESOURCE_EXHAUSTED" for code, _ in results)

    wait_until(full, timeout=30, what="the router to apply the in-flight cap")
    with ThreadPoolExecutor(5) as pool:
        slow = [pool.submit(_call, router, "slow/m") for _ in range(3)]  # 2 run, 1 waits
        # The three are at the router (each predicts for 1.5 s): two running, one queued.
        wait_until(lambda: _router_in_flight(cluster) >= 3, timeout=10, what="3 in flight")
        over = _call(router, "slow/m")
        calm = [_call(router, "calm/m") for _ in range(5)]
        results = [f.result() for f in slow]
    assert over[0] == "RESOURCE_EXHAUSTED", over
    assert "has 2 requests in flight (its limit); its admission queue is full" in over[1]
    assert calm == [("OK", "")] * 5
    assert [code for code, _ in results] == ["OK"] * 3
