"""An XGBoost JSON model's boosted rounds are read from its document (no booster configure):
they must be exactly what the booster itself reports, for every booster kind."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

from shoal.frameworks import inspect_artifact

CASES: list[tuple[dict[str, Any], int]] = [
    ({"objective": "binary:logistic"}, 3),
    ({"objective": "multi:softprob", "num_class": 3}, 4),
    ({"objective": "binary:logistic", "booster": "dart", "rate_drop": 0.1}, 5),
    ({"objective": "binary:logistic", "num_parallel_tree": 3}, 2),
    ({"objective": "binary:logistic", "booster": "gblinear"}, 3),
    ({"objective": "reg:squarederror", "multi_strategy": "multi_output_tree"}, 2),
]


@pytest.mark.parametrize(("params", "rounds"), CASES)
def test_rounds_from_the_document_match_the_booster(params: dict[str, Any], rounds: int) -> None:
    import xgboost as xgb

    rng = np.random.default_rng(5)
    x = rng.normal(size=(150, 6)).astype(np.float32)
    classes = rng.integers(0, 3, size=150)
    if params.get("num_class"):
        y: Any = classes
    elif params.get("multi_strategy"):
        y = np.stack([classes, 2 * classes], axis=1).astype(np.float32)
    else:
        y = (classes > 0).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gblinear ignores tree parameters, and says so
        booster = xgb.train(
            {**params, "max_depth": 2, "nthread": 1, "tree_method": "hist"},
            xgb.DMatrix(x, label=y),
            num_boost_round=rounds,
        )
    for fmt in ("json", "ubj"):
        info = inspect_artifact(bytes(booster.save_raw(raw_format=fmt)))
        assert info.details["trees"] == booster.num_boosted_rounds() == rounds
        assert info.details["num_features"] == 6
