"""Small real models for tests, the demo and benchmarks, trained here (no binary blobs).

* ``dataset()``: a deterministic binary-classification table (synthetic by default; the breast
  cancer table that ships with scikit-learn, 30 features, when ``real=True``);
* ``train_xgboost`` / ``train_lightgbm``: tree ensembles saved in their native formats;
* ``train_onnx_mlp``: a one-hidden-layer MLP fitted with numpy and written as an ONNX graph
  (MatMul/Add/Relu/Sigmoid, so it runs on onnxruntime's CUDA provider too).

All outputs are ``bytes`` ready to register; nothing here is used on the serving path.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np


def dataset(
    n_rows: int = 512, n_features: int = 30, seed: int = 0, real: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(X float32 [n, f], y int {0,1}); ``real`` uses scikit-learn's breast cancer data."""
    if real:
        from sklearn.datasets import load_breast_cancer

        x, y = load_breast_cancer(return_X_y=True)
        return x.astype(np.float32), y.astype(np.int64)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_rows, n_features)).astype(np.float32)
    w = rng.normal(size=n_features)
    logits = x @ w + 0.5 * np.sin(3 * x[:, 0])
    y = (logits + rng.normal(scale=0.5, size=n_rows) > 0).astype(np.int64)
    return x, y


def train_xgboost(
    x: np.ndarray,
    y: np.ndarray,
    n_trees: int = 20,
    depth: int = 4,
    fmt: str = "json",
    seed: int = 0,
) -> bytes:
    """A binary:logistic booster saved as XGBoost JSON (``fmt="json"``) or UBJSON."""
    import xgboost as xgb

    params = {
        "objective": "binary:logistic",
        "max_depth": depth,
        "nthread": 1,
        "seed": seed,
        "eta": 0.3,
    }
    booster = xgb.train(params, xgb.DMatrix(x, label=y), num_boost_round=n_trees)
    raw = booster.save_raw(raw_format="json" if fmt == "json" else "ubj")
    return bytes(raw)


def train_lightgbm(
    x: np.ndarray, y: np.ndarray, n_trees: int = 20, leaves: int = 15, seed: int = 0
) -> bytes:
    import lightgbm as lgb

    params = {
        "objective": "binary",
        "num_leaves": leaves,
        "verbosity": -1,
        "num_threads": 1,
        "seed": seed,
        "min_data_in_leaf": 5,
    }
    booster = lgb.train(params, lgb.Dataset(x, label=y), num_boost_round=n_trees)
    return str(booster.model_to_string()).encode()


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-z)))


def train_onnx_mlp(
    x: np.ndarray, y: np.ndarray, hidden: int = 16, epochs: int = 200, seed: int = 0
) -> bytes:
    """Fit a tiny MLP with full-batch gradient descent; return it as ONNX bytes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    n, f = x.shape
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xs = (x - mu) / sd
    w1 = rng.normal(scale=1 / np.sqrt(f), size=(f, hidden))
    b1 = np.zeros(hidden)
    w2 = rng.normal(scale=1 / np.sqrt(hidden), size=(hidden, 1))
    b2 = np.zeros(1)
    yy = y.reshape(-1, 1).astype(np.float64)
    for _ in range(epochs):
        h = np.maximum(xs @ w1 + b1, 0)
        p = _sigmoid(h @ w2 + b2)
        g = (p - yy) / n
        gw2, gb2 = h.T @ g, g.sum(0)
        gh = (g @ w2.T) * (h > 0)
        gw1, gb1 = xs.T @ gh, gh.sum(0)
        w1 -= 0.5 * gw1
        b1 -= 0.5 * gb1
        w2 -= 0.5 * gw2
        b2 -= 0.5 * gb2
    # Fold the standardisation into the first layer: (x - mu)/sd @ w1 = x @ (w1/sd) - (mu/sd) @ w1
    w1f = (w1 / sd[:, None]).astype(np.float32)
    b1f = (b1 - (mu / sd) @ w1).astype(np.float32)
    inits = [
        numpy_helper.from_array(w1f, "w1"),
        numpy_helper.from_array(b1f, "b1"),
        numpy_helper.from_array(w2.astype(np.float32), "w2"),
        numpy_helper.from_array(b2.astype(np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["z0"]),
        helper.make_node("Add", ["z0", "b2"], ["z1"]),
        helper.make_node("Sigmoid", ["z1"], ["probability"]),
    ]
    graph = helper.make_graph(
        nodes,
        "shoal_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", f])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["N", 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def tmp_artifacts(kinds: tuple[str, ...] = ("xgboost", "lightgbm", "onnx")) -> dict[str, Path]:
    """Write one small model of each kind to a temp folder (for manual experiments)."""
    x, y = dataset()
    makers = {
        "xgboost": lambda: train_xgboost(x, y),
        "lightgbm": lambda: train_lightgbm(x, y),
        "onnx": lambda: train_onnx_mlp(x, y),
    }
    out = Path(tempfile.mkdtemp(prefix="shoal-models-"))
    ext = {"xgboost": "json", "lightgbm": "txt", "onnx": "onnx"}
    return {k: write(out / f"model.{ext[k]}", makers[k]()) for k in kinds}
