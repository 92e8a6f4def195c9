"""The benchmark's models, trained here from fixed seeds on scikit-learn's breast cancer table.

* ``xgb``: XGBoost, 100 trees of depth 6, saved as XGBoost JSON (``binary:logistic``);
* ``lgbm``: LightGBM, 100 trees of 31 leaves, saved as LightGBM text;
* ``onnx``: a 30-16-1 MLP written as an ONNX graph (``shoal.modelgen.train_onnx_mlp``).

Every model takes 30 float32 features; ``row`` is the first row of the table as a
``[1, 30]`` float32 array, the request body of every warm-path call. Training is single
threaded and seeded, so the artifact bytes (and their sha256) are the same on every run.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from shoal import modelgen
from shoal.artifacts import TREE_INPUT
from shoal.frameworks import inspect_artifact

SEED = 0
XGB_TREES, XGB_DEPTH = 100, 6
LGBM_TREES, LGBM_LEAVES = 100, 31
ONNX_HIDDEN, ONNX_EPOCHS = 16, 200


@dataclass(frozen=True)
class BenchModel:
    key: str  # short name in the results: xgb | lgbm | onnx
    framework: str
    format: str
    data: bytes
    sha256: str
    input_name: str
    row: np.ndarray  # [1, 30] float32

    @property
    def size(self) -> int:
        return len(self.data)


@functools.cache
def bench_models() -> dict[str, BenchModel]:
    """Train (once per process) and describe the three benchmark models."""
    x, y = modelgen.dataset(real=True)
    raw = {
        "xgb": modelgen.train_xgboost(x, y, n_trees=XGB_TREES, depth=XGB_DEPTH, seed=SEED),
        "lgbm": modelgen.train_lightgbm(x, y, n_trees=LGBM_TREES, leaves=LGBM_LEAVES, seed=SEED),
        "onnx": modelgen.train_onnx_mlp(x, y, hidden=ONNX_HIDDEN, epochs=ONNX_EPOCHS, seed=SEED),
    }
    row = np.ascontiguousarray(x[:1], dtype=np.float32)
    out = {}
    for key, data in raw.items():
        info = inspect_artifact(data)
        name = info.signature.inputs[0].name if info.signature.inputs else TREE_INPUT
        out[key] = BenchModel(key, info.framework, info.format, data, info.sha256, name, row)
    return out


def variants(key: str, n: int, seed: int = 1) -> list[bytes]:
    """``n`` distinct artifacts of model ``key`` (distinct bytes, so distinct sha256 and no
    sharing through the content-addressed store or disk cache): each is trained like
    ``bench_models()[key]`` on its own seeded 90% sample of the rows."""
    x, y = modelgen.dataset(real=True)
    out = []
    for i in range(n):
        rng = np.random.default_rng(seed * 100_003 + i)
        idx = np.sort(rng.choice(len(x), size=int(0.9 * len(x)), replace=False))
        xs, ys = x[idx], y[idx]
        if key == "xgb":
            data = modelgen.train_xgboost(xs, ys, n_trees=XGB_TREES, depth=XGB_DEPTH, seed=SEED)
        elif key == "lgbm":
            data = modelgen.train_lightgbm(
                xs, ys, n_trees=LGBM_TREES, leaves=LGBM_LEAVES, seed=SEED
            )
        elif key == "onnx":
            data = modelgen.train_onnx_mlp(xs, ys, hidden=ONNX_HIDDEN, epochs=ONNX_EPOCHS,
                                           seed=seed + i)  # fmt: skip
        else:
            raise ValueError(f"unknown bench model {key!r}")
        out.append(data)
    return out
