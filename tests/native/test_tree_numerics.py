"""Native tree predictions are the libraries' own, bit for bit (native/src/runtime).

For every objective the worker serves (``tests/native/trees.py``), the native booster's output
has the dtype, shape and bytes of ``Booster.inplace_predict(x, validate_features=False)``
(XGBoost, a booster loaded as ``shoal.frameworks.xgboost.load`` loads it, JSON and UBJ) and of
``Booster.predict(x, num_threads=1)`` (LightGBM): one row, rows of one special value each, and
64 rows with NaN, +-inf, zeros, -0.0, huge and tiny values scattered; through ``TreeBooster``
and through the model the worker serves (``load_model(...).predict``).
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np
import pytest

from shoal.frameworks import inspect_artifact, load_model, native
from shoal.frameworks import xgboost as xgboost_fw
from tests.native import trees


@pytest.fixture(scope="module", autouse=True)
def _runtimes() -> None:
    assert native.available("xgboost") and native.available("lightgbm")


def _same(got: np.ndarray, want: np.ndarray) -> None:
    assert (got.dtype, got.shape) == (want.dtype, want.shape)
    assert got.tobytes() == want.tobytes()  # bits: NaN payloads and -0.0 included


def _row_sets(n_features: int) -> list[np.ndarray]:
    x = trees.probe_rows(n_features)
    return [np.ascontiguousarray(r) for r in (x[:1], *(x[i : i + 1] for i in range(1, 8)), x)]


def _xgboost_reference(data: bytes) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # parameters a booster kind does not use
        return xgboost_fw.load(data, "cpu")


SERVED_XGBOOST = [case for case in trees.XGBOOST if case != "gblinear"]


@pytest.mark.parametrize("fmt", ["json", "ubj"])
@pytest.mark.parametrize("case", SERVED_XGBOOST)
def test_xgboost_predictions_are_inplace_predicts(case: str, fmt: str) -> None:
    data = trees.xgboost_model(case, fmt)
    reference = _xgboost_reference(data)
    model: Any = load_model(data, "xgboost", "cpu")
    assert model.native is not None
    for rows in _row_sets(model.native.num_features):
        want = reference.inplace_predict(rows, validate_features=False)
        _same(model.native.predict(rows), want)
        (got,) = model.predict([rows])
        _same(got, want)


@pytest.mark.parametrize("case", list(trees.LIGHTGBM))
def test_lightgbm_predictions_are_predicts(case: str) -> None:
    import lightgbm as lgb

    data = trees.lightgbm_model(case)
    reference = lgb.Booster(model_str=data.decode())
    model: Any = load_model(data, "lightgbm", "cpu")
    assert model.native is not None
    for rows in _row_sets(model.native.num_features):
        want = reference.predict(rows, num_threads=1)
        _same(model.native.predict(rows), want)
        (got,) = model.predict([rows])
        _same(got, want)


def test_gblinear_fails_as_inplace_predict_fails() -> None:
    """XGBoost has no in-place prediction for gblinear: the worker could not serve it before
    and cannot now; the error is the library's, as it was."""
    import xgboost as xgb

    data = trees.xgboost_model("gblinear")
    rows = trees.probe_rows(trees.N_FEATURES)
    with pytest.raises(xgb.core.XGBoostError) as want:
        _xgboost_reference(data).inplace_predict(rows, validate_features=False)
    model = load_model(data, "xgboost", "cpu")
    assert model.warm_s is None  # the warm-up prediction failed; the load did not
    with pytest.raises(xgb.core.XGBoostError) as got:
        model.predict([rows])
    assert _first(got.value) == _first(want.value)
    assert "Inplace predict is not supported" in str(got.value)


def _first(exc: BaseException) -> str:
    from shoal.frameworks.base import first_line

    return first_line(exc)


def _cases() -> list[tuple[str, str]]:
    return [("xgboost", c) for c in SERVED_XGBOOST] + [("lightgbm", c) for c in trees.LIGHTGBM]


@pytest.mark.parametrize(("framework", "case"), _cases())
def test_accessors_describe_what_predict_returns(framework: str, case: str) -> None:
    data = trees.xgboost_model(case) if framework == "xgboost" else trees.lightgbm_model(case)
    model: Any = load_model(data, framework, "cpu")
    booster = model.native
    (got,) = model.predict([trees.probe_rows(booster.num_features, 3)])
    assert booster.output_width() == (got.shape[1] if got.ndim == 2 else 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sig = inspect_artifact(data).signature
    assert sig.inputs[0].shape == (-1, booster.num_features)
    out_shape = sig.outputs[0].shape
    if case != "multi:softmax":  # the signature says [-1, classes]; predictions are [rows]
        assert out_shape == ((-1, booster.output_width()) if booster.output_width() else (-1,))


@pytest.mark.parametrize("framework", ["xgboost", "lightgbm"])
def test_other_layouts_and_dtypes_read_as_the_libraries_read_them(framework: str) -> None:
    import lightgbm as lgb

    if framework == "xgboost":
        data = trees.xgboost_model("multi:softprob")
        reference = _xgboost_reference(data)

        def want(x: np.ndarray) -> np.ndarray:
            return np.asarray(reference.inplace_predict(x, validate_features=False))
    else:
        data = trees.lightgbm_model("multiclass")
        lgbm = lgb.Booster(model_str=data.decode())

        def want(x: np.ndarray) -> np.ndarray:
            return np.asarray(lgbm.predict(x, num_threads=1))

    model = load_model(data, framework, "cpu")
    wide = np.repeat(trees.probe_rows(trees.N_FEATURES), 2, axis=1)
    near = _just_above_thresholds(trees.lightgbm_model("multiclass"))
    if framework == "lightgbm":  # LightGBM reads float64 as such: float32 would change these
        assert not np.array_equal(want(near), want(near.astype(np.float32)))
    inputs = [
        wide[:, ::2],  # strided
        np.asfortranarray(trees.probe_rows(trees.N_FEATURES)),
        near,
        np.arange(5 * trees.N_FEATURES, dtype=np.int64).reshape(5, -1) - 20,
    ]
    for x in inputs:
        (got,) = model.predict([x])
        _same(got, want(x))
    unaligned = np.frombuffer(b"\0" + trees.probe_rows(trees.N_FEATURES, 4).tobytes(), "<f4", -1, 1)
    x = unaligned.reshape(4, -1)
    assert not x.flags.aligned
    (got,) = model.predict([x])
    _same(got, want(np.ascontiguousarray(x)))


def _just_above_thresholds(text: bytes) -> np.ndarray:
    """float64 rows, one per split of a LightGBM model: zeros but for the split's feature, the
    next double above its threshold (which float32 rounds to either side)."""
    rows = []
    for tree in re.finditer(
        rb"split_feature=([^\n]*)\nsplit_gain=[^\n]*\nthreshold=([^\n]*)", text
    ):
        for feature, threshold in zip(tree[1].split(), tree[2].split(), strict=True):
            row = np.zeros(trees.N_FEATURES)
            row[int(feature)] = np.nextafter(float(threshold), np.inf)
            rows.append(row)
    return np.array(rows)


def test_concurrent_predictions_agree() -> None:
    from concurrent.futures import ThreadPoolExecutor

    model: Any = load_model(trees.xgboost_model("binary:logistic"), "xgboost", "cpu")
    lgbm: Any = load_model(trees.lightgbm_model("multiclass"), "lightgbm", "cpu")
    x = trees.probe_rows(trees.N_FEATURES)
    want = (model.native.predict(x).tobytes(), lgbm.native.predict(x).tobytes())

    def both(i: int) -> tuple[bytes, bytes]:
        rows = np.ascontiguousarray(x)
        return model.native.predict(rows).tobytes(), lgbm.native.predict(rows).tobytes()

    with ThreadPoolExecutor(8) as pool:
        assert all(got == want for got in pool.map(both, range(200)))
