"""Small tree models of every objective the worker serves, trained here, and probe rows.

``XGBOOST`` and ``LIGHTGBM`` name a case by its parameters; ``xgboost_model`` /
``lightgbm_model`` train it once per process (a few hundred rows, a dozen rounds) and return
its artifact bytes. Training data holds NaN so trees learn where missing values go.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

N_FEATURES = 8
N_ROWS = 400

#: case -> XGBoost parameters (``num_class`` and labels follow from the objective).
XGBOOST: dict[str, dict[str, Any]] = {
    "reg:squarederror": {"objective": "reg:squarederror"},
    "reg:logistic": {"objective": "reg:logistic"},
    "binary:logistic": {"objective": "binary:logistic"},
    "binary:logitraw": {"objective": "binary:logitraw"},
    "binary:hinge": {"objective": "binary:hinge"},
    "multi:softprob": {"objective": "multi:softprob", "num_class": 3},
    "multi:softmax": {"objective": "multi:softmax", "num_class": 3},
    "count:poisson": {"objective": "count:poisson"},
    "reg:tweedie": {"objective": "reg:tweedie"},
    "reg:gamma": {"objective": "reg:gamma"},
    "reg:absoluteerror": {"objective": "reg:absoluteerror"},
    "reg:pseudohubererror": {"objective": "reg:pseudohubererror"},
    "reg:quantileerror": {"objective": "reg:quantileerror", "quantile_alpha": [0.1, 0.5, 0.9]},
    "survival:cox": {"objective": "survival:cox"},
    "rank:pairwise": {"objective": "rank:pairwise"},
    "rank:ndcg": {"objective": "rank:ndcg"},
    "multi-target": {"objective": "reg:squarederror", "targets": 3},
    "multi-target tree": {
        "objective": "reg:squarederror",
        "targets": 2,
        "multi_strategy": "multi_output_tree",
        "tree_method": "hist",
    },
    "dart": {"objective": "binary:logistic", "booster": "dart", "rate_drop": 0.2},
    "gblinear": {"objective": "reg:squarederror", "booster": "gblinear"},
    "random forest": {"objective": "binary:logistic", "num_parallel_tree": 4, "subsample": 0.8},
    "exact": {"objective": "reg:squarederror", "tree_method": "exact"},
}

#: case -> LightGBM parameters.
LIGHTGBM: dict[str, dict[str, Any]] = {
    "regression": {"objective": "regression"},
    "regression_l1": {"objective": "regression_l1"},
    "binary": {"objective": "binary"},
    "multiclass": {"objective": "multiclass", "num_class": 3},
    "multiclassova": {"objective": "multiclassova", "num_class": 3},
    "poisson": {"objective": "poisson"},
    "tweedie": {"objective": "tweedie"},
    "gamma": {"objective": "gamma"},
    "quantile": {"objective": "quantile", "alpha": 0.8},
    "huber": {"objective": "huber"},
    "fair": {"objective": "fair"},
    "mape": {"objective": "mape"},
    "lambdarank": {"objective": "lambdarank"},
    "rank_xendcg": {"objective": "rank_xendcg"},
    "cross_entropy": {"objective": "cross_entropy"},
    "cross_entropy_lambda": {"objective": "cross_entropy_lambda"},
    "rf": {
        "objective": "binary",
        "boosting": "rf",
        "bagging_freq": 1,
        "bagging_fraction": 0.7,
        "feature_fraction": 0.8,
    },
    "dart": {"objective": "regression", "boosting": "dart"},
    "linear_tree": {"objective": "regression", "linear_tree": True},
}


def _data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N_ROWS, N_FEATURES)).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan
    score = np.nan_to_num(x[:, 0]) * 2.0 + np.nan_to_num(x[:, 1]) - np.nan_to_num(x[:, 2])
    return x, score + rng.normal(scale=0.5, size=N_ROWS)


def _labels(objective: str, score: np.ndarray, classes: int, targets: int) -> np.ndarray:
    if classes > 1:
        return np.digitize(score, np.quantile(score, [1 / 3, 2 / 3])).astype(np.float32)
    if objective.startswith(("binary", "reg:logistic", "cross_entropy")):
        return (score > np.median(score)).astype(np.float32)
    if objective in ("count:poisson", "poisson"):
        return np.floor(np.exp(score / 3.0)).astype(np.float32)
    if objective in ("reg:tweedie", "reg:gamma", "tweedie", "gamma", "mape"):
        return np.exp(score / 3.0).astype(np.float32)
    if objective.startswith("rank") or objective == "lambdarank":
        return np.digitize(score, np.quantile(score, [0.5, 0.8])).astype(np.float32)
    if objective == "survival:cox":  # negative: censored
        t = np.exp(score / 3.0)
        return np.where(np.arange(len(t)) % 4 == 0, -t, t).astype(np.float32)
    if targets > 1:
        return np.stack([score * (i + 1) for i in range(targets)], axis=1).astype(np.float32)
    return score.astype(np.float32)


@functools.cache
def xgboost_model(case: str, fmt: str = "json") -> bytes:
    """The model of ``XGBOOST[case]`` as ``save_raw(fmt)`` writes it."""
    import xgboost as xgb

    params = dict(XGBOOST[case])
    targets = int(params.pop("targets", 1))
    objective = params["objective"]
    x, score = _data(1)
    y = _labels(objective, score, int(params.get("num_class", 1)), targets)
    d = xgb.DMatrix(x, label=y)
    if objective.startswith("rank"):
        d.set_group([40] * (N_ROWS // 40))
    params.update(max_depth=4, nthread=1, seed=0, verbosity=0)
    booster = xgb.train(params, d, num_boost_round=12)
    return bytes(booster.save_raw(fmt))


@functools.cache
def lightgbm_model(case: str) -> bytes:
    """The model of ``LIGHTGBM[case]`` as ``Booster.save_model`` writes it."""
    import lightgbm as lgb

    params = dict(LIGHTGBM[case])
    objective = params["objective"]
    x, score = _data(2)
    y = _labels(objective, score, int(params.get("num_class", 1)), 1)
    group = [40] * (N_ROWS // 40) if objective in ("lambdarank", "rank_xendcg") else None
    params.update(num_leaves=8, min_data_in_leaf=5, num_threads=1, seed=0, verbose=-1)
    data = lgb.Dataset(x, label=y, group=group)
    booster = lgb.train(params, data, num_boost_round=12)
    return booster.model_to_string().encode()


def probe_rows(n_features: int, n: int = 64) -> np.ndarray:
    """The first ``n`` of 64+ C-contiguous float32 rows: ordinary values, NaN, +inf, -inf,
    zeros, -0.0, huge and tiny values, rows 0-7 of a single special value each."""
    rng = np.random.default_rng(7)
    x = rng.normal(scale=3.0, size=(max(n, 64), n_features)).astype(np.float32)
    specials = [np.nan, np.inf, -np.inf, 0.0, -0.0, 3.4e38, -3.4e38, 1e-45]
    for i, v in enumerate(specials):
        x[i, :] = v  # a row of one special value
        x[len(specials) + i :: 2 * len(specials), i % n_features] = v  # scattered
    return np.ascontiguousarray(x[:n])
