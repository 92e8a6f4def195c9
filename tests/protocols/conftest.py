"""A real cluster with API keys on (etcd, placement, 2 workers, the native gateway), an
XGBoost, a LightGBM and an ONNX model for tenant ``acme`` and one model for tenant ``other``,
and what each model predicts natively, for the protocol surface's tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import lightgbm as lgb
import numpy as np
import onnxruntime as ort
import pytest
import xgboost as xgb

from shoal import modelgen
from shoal.cluster import LocalCluster, add_key
from shoal.pb import shoal_control_pb2 as cpb
from shoal.pb import shoal_control_pb2_grpc as cgrpc

MODELS = ("acme/xgb", "acme/lgbm", "acme/onnx")


@dataclass
class Served:
    cluster: LocalCluster
    router: str
    keys: dict[str, str]
    rows: np.ndarray
    expected: dict[str, np.ndarray] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)

    def auth(self, tenant: str = "acme") -> dict[str, str]:
        return {"authorization": f"Bearer {self.keys[tenant]}"}


def register(address: str, admin: str, model: str, data: bytes) -> int:
    tenant, name = model.split("/")
    with grpc.insecure_channel(address) as channel:
        stub = cgrpc.ControlStub(channel)
        chunks = [
            cpb.RegisterChunk(header=cpb.RegisterHeader(tenant=tenant, name=name)),
            cpb.RegisterChunk(data=data),
        ]
        reply = stub.Register(
            iter(chunks), timeout=60, metadata=[("authorization", f"Bearer {admin}")]
        )
        return int(reply.version)


@pytest.fixture(scope="package")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    x, y = modelgen.dataset(n_rows=300, n_features=6, seed=11)
    artifacts = {
        "acme/xgb": modelgen.train_xgboost(x, y, n_trees=12),
        "acme/lgbm": modelgen.train_lightgbm(x, y, n_trees=12),
        "acme/onnx": modelgen.train_onnx_mlp(x, y, epochs=20),
        "other/xgb": modelgen.train_xgboost(x, y, n_trees=4),
    }
    c = LocalCluster(
        tmp_path_factory.mktemp("protocols"),
        workers=2,
        auth=True,
        env={"SHOAL_LEASE_TTL": "2", "SHOAL_DEBOUNCE_S": "0.3"},
        worker_env={"SHOAL_HOST_BUDGET": "256MiB"},
    )
    c.start()
    try:
        assert c.placement is not None and c.router is not None
        keys = {t: add_key(c.etcd_url, t) for t in ("acme", "other")}
        for model, data in artifacts.items():
            assert register(c.placement.address, c.admin_key, model, data) == 1
        rows = x[:64].astype(np.float32)
        booster = xgb.Booster()
        booster.load_model(bytearray(artifacts["acme/xgb"]))
        lgbm = lgb.Booster(model_str=artifacts["acme/lgbm"].decode())
        sess = ort.InferenceSession(artifacts["acme/onnx"], providers=["CPUExecutionProvider"])
        s = Served(c, c.router.address, keys, rows)
        s.expected = {
            "acme/xgb": np.asarray(booster.inplace_predict(rows)).reshape(len(rows), -1),
            "acme/lgbm": np.asarray(lgbm.predict(rows)).reshape(len(rows), -1),
            "acme/onnx": np.asarray(sess.run(None, {"input": rows})[0]).reshape(len(rows), -1),
        }
        s.inputs = {"acme/xgb": "input__0", "acme/lgbm": "input__0", "acme/onnx": "input"}
        yield s
    finally:
        c.stop()
