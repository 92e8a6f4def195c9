"""Demo tenants for ``shoal up --demo``: a few hundred real models, trained here.

Each tenant gets its own model (a bootstrap sample of scikit-learn's breast-cancer table, 30
features, with its own seed), rotating through XGBoost (JSON and UBJ), LightGBM and ONNX, so the
first prediction works for every framework. Artifacts and a registration manifest (JSONL, the
format ``shoal register --manifest`` reads) are written under ``<data_dir>/demo``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shoal import modelgen

KINDS = ("xgboost", "lightgbm", "onnx")
EXT = {"xgboost": "json", "lightgbm": "txt", "onnx": "onnx"}


@dataclass(frozen=True, slots=True)
class DemoModel:
    tenant: str
    name: str
    framework: str
    path: Path


def demo_tenant(i: int) -> str:
    return f"tenant-{i:04d}"


def build(out: Path, tenants: int = 300, trees: int = 20) -> list[DemoModel]:
    """Train one model per tenant into ``out``; returns them (and writes manifest.jsonl)."""
    x, y = modelgen.dataset(real=True)
    out.mkdir(parents=True, exist_ok=True)
    models = []
    for i in range(tenants):
        rng = np.random.default_rng(i)
        idx = rng.integers(0, len(x), size=len(x))
        xs, ys = x[idx], y[idx]
        kind = KINDS[i % len(KINDS)]
        if kind == "xgboost":
            data = modelgen.train_xgboost(xs, ys, n_trees=trees, seed=i)
        elif kind == "lightgbm":
            data = modelgen.train_lightgbm(xs, ys, n_trees=trees, seed=i)
        else:
            data = modelgen.train_onnx_mlp(xs, ys, epochs=60, seed=i)
        path = out / f"{demo_tenant(i)}-churn.{EXT[kind]}"
        path.write_bytes(data)
        models.append(DemoModel(demo_tenant(i), "churn", kind, path))
    with open(out / "manifest.jsonl", "w") as f:
        for m in models:
            f.write(
                json.dumps(
                    {
                        "tenant": m.tenant,
                        "name": m.name,
                        # Relative to the manifest, as manifest paths are read: the demo
                        # works whatever the data dir and the current directory are.
                        "path": m.path.name,
                        "framework": m.framework,
                        "alias": "stable",
                    }
                )
                + "\n"
            )
    return models


def sample_row() -> list[float]:
    """One real row of the demo's feature table (for the printed example)."""
    x, _ = modelgen.dataset(real=True)
    return [round(float(v), 4) for v in x[0]]
