"""Faults with real processes under load: etcd down and back, object store down and back,
the placement leader killed."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton

from shoal import modelgen
from shoal.cluster import LocalCluster, etcd_get
from shoal.devservers import LocalSeaweedS3
from shoal.procs import wait_until
from shoal.records import ELECTION
from tests.e2e.conftest import FAST, Control


class Steady:
    """Background traffic to known models; counts answers and collects any failure."""

    def __init__(self, router: str, models: list[str], x: np.ndarray) -> None:
        self.client = triton.InferenceServerClient(router)
        self.models = models
        self.inp = triton.InferInput("input__0", [1, x.shape[1]], "FP32")
        self.inp.set_data_from_numpy(x[:1].astype(np.float32))
        self.done = 0
        self.errors: list[Exception] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            try:
                self.client.infer(self.models[i % len(self.models)], [self.inp])
                self.done += 1
            except Exception as exc:
                self.errors.append(exc)
            i += 1

    def __enter__(self) -> Steady:
        self._thread.start()
        return self

    def wait_more(self, n: int, timeout: float = 60) -> None:
        target = self.done + n
        wait_until(lambda: self.done >= target, timeout, what=f"{n} more answers")

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def failures(self) -> list[str]:
        """The errors as their status and message (what an assertion should show)."""
        out = []
        for e in self.errors:
            if isinstance(e, triton.InferenceServerException):
                out.append(f"{e.status()}: {e.message()}")
            else:
                out.append(repr(e))
        return out


@pytest.fixture
def small_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path / "c", workers=2, shard_size=2, env=FAST)
    c.start()
    yield c
    c.stop()


def test_etcd_down_serving_continues_and_registration_fails_then_recovers(
    small_cluster: LocalCluster, data30: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = data30
    assert small_cluster.placement is not None and small_cluster.router is not None
    control = Control(small_cluster.placement.address)
    model = modelgen.train_xgboost(x, y, n_trees=5)
    control.register("known", "m", model, alias="stable")
    with Steady(small_cluster.router.address, ["known/m"], x) as load:
        load.wait_more(50)
        assert small_cluster.etcd is not None
        small_cluster.etcd.stop()
        try:
            load.wait_more(200)  # known models keep answering
            with pytest.raises(grpc.RpcError) as err:
                control.register("late", "m", modelgen.train_xgboost(x, y, n_trees=4))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            small_cluster.etcd.start()
        versions: list[int] = []

        def registered() -> bool:
            try:
                versions.append(
                    control.register(
                        "late", "m", modelgen.train_xgboost(x, y, n_trees=4), alias="stable"
                    )
                )
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                return False
            return True

        wait_until(registered, 60, 0.5, "registration after etcd returns")
        load.wait_more(50)
    assert load.errors == [], load.failures()
    client = triton.InferenceServerClient(small_cluster.router.address)
    inp = triton.InferInput("input__0", [1, 30], "FP32")
    inp.set_data_from_numpy(x[:1].astype(np.float32))
    wait_until(lambda: _answers(client, "late/m", inp), 30, 0.2, "the new model through the router")
    control.close()


def _answers(client: triton.InferenceServerClient, model: str, inp: triton.InferInput) -> bool:
    try:
        client.infer(model, [inp])
    except triton.InferenceServerException:
        return False
    return True


def test_object_store_down_warm_models_answer_cold_loads_unavailable(
    tmp_path: Path, data30: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = data30
    s3 = LocalSeaweedS3(tmp_path / "s3").start()
    s3.create_bucket("faults")
    env = {**FAST, "SHOAL_S3_ENDPOINT": s3.endpoint}
    cluster = LocalCluster(tmp_path / "c", workers=2, env=env, store="s3://faults/shoal")
    try:
        cluster.start()
        assert cluster.placement is not None and cluster.router is not None
        control = Control(cluster.placement.address)
        control.register("warm", "m", modelgen.train_xgboost(x, y, n_trees=5), alias="stable")
        control.register("cold", "m", modelgen.train_lightgbm(x, y, n_trees=5), alias="stable")
        client = triton.InferenceServerClient(cluster.router.address)
        inp = triton.InferInput("input__0", [1, 30], "FP32")
        inp.set_data_from_numpy(x[:1].astype(np.float32))
        client.infer("warm/m", [inp])
        with Steady(cluster.router.address, ["warm/m"], x) as load:
            load.wait_more(20)
            s3.stop()
            load.wait_more(100)  # warm models keep answering from memory
            with pytest.raises(triton.InferenceServerException) as err:
                client.infer("cold/m", [inp], client_timeout=60)
            assert err.value.status() == "StatusCode.UNAVAILABLE", err.value
            s3.start()
            wait_until(lambda: _answers(client, "cold/m", inp), 90, 0.5, "cold load after recovery")
        assert load.errors == [], load.failures()
        control.close()
    finally:
        cluster.stop()
        s3.stop()


def test_placement_leader_killed_standby_takes_over(
    small_cluster: LocalCluster, data30: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = data30
    c = small_cluster
    assert c.placement is not None and c.router is not None
    standby = c.add_placement()
    control = Control(c.placement.address)
    control.register("lead", "m", modelgen.train_xgboost(x, y, n_trees=5), alias="stable")
    control.close()
    assert etcd_get(c.etcd_url, ELECTION) == b"placement-0"
    with Steady(c.router.address, ["lead/m"], x) as load:
        load.wait_more(50)
        c.placement.proc.kill()
        wait_until(lambda: etcd_get(c.etcd_url, ELECTION) == b"placement-1", 30, 0.1, "handover")
        load.wait_more(100)
        # The new leader acts: a new worker enters the published snapshot.
        before = c.snapshot()
        assert before is not None
        c.add_worker()
        after = c.snapshot()
        assert after is not None and after.epoch > before.epoch
        load.wait_more(50)
    assert load.errors == [], load.failures()
    # The standby's control plane serves writes too.
    ctl = Control(standby.address)
    assert ctl.register("lead", "m2", modelgen.train_xgboost(x, y, n_trees=4)) == 1
    ctl.close()
