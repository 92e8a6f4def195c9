"""Native tree boosters (``shoal._native.TreeBooster``): errors, ownership, the GIL, fallback.

* Refused artifacts give the Python loaders' ``ArtifactError`` messages, word for word; bytes
  the Python packages cannot survive (an empty XGBoost buffer, a cut LightGBM tree) are
  refused without a crash.
* A prediction the library refuses (a column count the model does not take) raises the
  package's own exception with the library's message; other arrays raise, never crash.
* A booster whose last Python reference goes away during a prediction on another thread
  lives until that prediction ends; boosters are freed when dropped (``TreeBooster.live``).
* Predictions release the GIL.
* Without the native libraries, models are served by the Python packages (one log line).
"""

from __future__ import annotations

import gc
import logging
import re
import threading
import time
from typing import Any

import numpy as np
import pytest

from shoal._native import TreeBooster
from shoal.artifacts import ArtifactError
from shoal.frameworks import lightgbm as lightgbm_fw
from shoal.frameworks import load_model, native
from shoal.frameworks import xgboost as xgboost_fw
from shoal.frameworks.base import first_line
from tests.native import trees


@pytest.fixture(scope="module", autouse=True)
def _runtimes() -> None:
    assert native.available("xgboost") and native.available("lightgbm")


def _xgboost_variants() -> dict[str, bytes]:
    j = trees.xgboost_model("binary:logistic")
    u = trees.xgboost_model("binary:logistic", "ubj")
    return {
        "not json": b"{garbage",
        "cut json": j[: len(j) // 2],
        "cut ubj": u[: len(u) // 2],
        "cut ubj header": u[:40],
        "no learner": j.replace(b'"learner"', b'"learnerx"'),
        "empty object": b"{}",
        "learner not an object": b'{"learner": 1}',
        "last byte": j[:-1] + b"x",
        "binary": b"\x00\x01",
    }


def _lightgbm_variants() -> dict[str, bytes]:
    t = trees.lightgbm_model("multiclass")
    return {
        "not utf-8": b"\xff\xfe end of trees",
        "cut": t[: len(t) // 2],
        "no header": b"tree\nend of trees",
        "no num_class": t.replace(b"num_class=3\n", b""),
    }


def _refusal(load: Any, *args: Any) -> str:
    with pytest.raises(ArtifactError) as err:
        load(*args)
    return str(err.value)


@pytest.mark.parametrize("variant", list(_xgboost_variants()))
def test_refused_xgboost_artifacts_read_as_the_python_loader(variant: str) -> None:
    data = _xgboost_variants()[variant]
    want = _refusal(xgboost_fw.load, data, "cpu")
    assert _refusal(native.load, "xgboost", data) == want
    assert re.match(r"invalid XGBoost model \(xgboost(-json|-ubj)?\): [^\[\n]", want)


@pytest.mark.parametrize("variant", list(_lightgbm_variants()))
def test_refused_lightgbm_artifacts_read_as_the_python_loader(variant: str) -> None:
    data = _lightgbm_variants()[variant]
    want = _refusal(lightgbm_fw.load, data, "cpu")
    assert _refusal(native.load, "lightgbm", data) == want


def test_bytes_the_python_packages_crash_on_are_refused() -> None:
    assert _refusal(native.load, "xgboost", b"") == "invalid XGBoost model (xgboost): empty model"
    # Without tree sizes LightGBM parses trees one by one, reading past a cut one.
    text = re.sub(rb"tree_sizes=[^\n]*\n", b"", trees.lightgbm_model("multiclass"))
    cut = text[: len(text) // 2] + b"\nend of trees\n"
    assert _refusal(native.load, "lightgbm", cut).startswith("invalid LightGBM model: ")


def _model(framework: str) -> Any:
    if framework == "xgboost":
        return load_model(trees.xgboost_model("binary:logistic"), framework, "cpu")
    return load_model(trees.lightgbm_model("multiclass"), framework, "cpu")


def test_a_column_count_the_model_refuses_is_the_librarys_error() -> None:
    import lightgbm as lgb
    import xgboost as xgb

    narrow = np.ones((2, trees.N_FEATURES - 1), np.float32)
    reference = xgboost_fw.load(trees.xgboost_model("binary:logistic"), "cpu")
    with pytest.raises(xgb.core.XGBoostError) as want:
        reference.inplace_predict(narrow, validate_features=False)
    with pytest.raises(xgb.core.XGBoostError) as got:
        _model("xgboost").predict([narrow])
    assert first_line(got.value) == first_line(want.value)
    assert "Number of columns in data must equal" in first_line(got.value)

    python = lgb.Booster(model_str=trees.lightgbm_model("multiclass").decode())
    with pytest.raises(lgb.basic.LightGBMError) as want_l:
        python.predict(narrow, num_threads=1)
    with pytest.raises(lgb.basic.LightGBMError) as got_l:
        _model("lightgbm").predict([narrow])
    assert str(got_l.value) == str(want_l.value)


@pytest.mark.parametrize("framework", ["xgboost", "lightgbm"])
def test_arrays_the_booster_cannot_take_raise(framework: str) -> None:
    booster = _model(framework).native
    for x in (np.ones(trees.N_FEATURES, np.float32), np.ones((1, 1, trees.N_FEATURES))):
        with pytest.raises(TypeError):
            booster.predict(x)
    with pytest.raises(ValueError, match="C-contiguous"):
        booster.predict(np.ones((4, 2 * trees.N_FEATURES), np.float32)[:, ::2])
    with pytest.raises(TypeError):
        booster.predict([[0.0] * trees.N_FEATURES])
    assert booster.predict(np.ones((3, trees.N_FEATURES), np.float32)).shape[0] == 3


def test_served_models_are_bounded_measured_and_warm() -> None:
    for framework in ("xgboost", "lightgbm"):
        model = _model(framework)
        assert model.native is not None and model.device == "cpu" and model.bounded
        assert model.nbytes > 0 and model.to_host() is model
        assert model.warm_s is not None and 0 <= model.warm_s < 0.5


def test_boosters_are_freed_when_dropped() -> None:
    gc.collect()
    live = TreeBooster.live()
    models = [_model(fw) for fw in ("xgboost", "lightgbm") for _ in range(3)]
    assert TreeBooster.live() == live + 6
    for variant in _xgboost_variants().values():
        with pytest.raises(ArtifactError):
            native.load("xgboost", variant)
    for variant in _lightgbm_variants().values():
        with pytest.raises(ArtifactError):
            native.load("lightgbm", variant)
    assert TreeBooster.live() == live + 6  # a failed load frees what it created
    del models
    gc.collect()
    assert TreeBooster.live() == live


@pytest.fixture(scope="module")
def long_prediction() -> tuple[bytes, np.ndarray, np.ndarray]:
    """A model, rows it takes about half a second to predict on this machine, and the
    prediction (made by another booster)."""
    import xgboost as xgb

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 8)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(np.float32)
    params = {"objective": "binary:logistic", "max_depth": 8, "nthread": 1}
    data = bytes(xgb.train(params, xgb.DMatrix(x, label=y), 200).save_raw("ubj"))
    rows = rng.normal(size=(200_000, 8)).astype(np.float32)
    return data, rows, native.load("xgboost", data).predict(rows)


def _predict_once(
    holder: list[Any], started: threading.Event, out: list[np.ndarray], batch: np.ndarray
) -> None:
    """Take the only reference to the model from `holder`, then predict `batch` with it."""
    model = holder.pop()
    started.set()
    out.append(model.predict([batch])[0])


def test_a_booster_dropped_during_a_prediction_lives_until_it_ends(
    long_prediction: tuple[bytes, np.ndarray, np.ndarray],
) -> None:
    data, rows, want = long_prediction
    # On a busy machine the prediction may end before this thread gets to look: then the
    # experiment is repeated with more rows (it must be seen running at least once).
    for repeat in (1, 4, 16):
        batch = np.ascontiguousarray(np.tile(rows, (repeat, 1)))
        holder = [load_model(data, "xgboost", "cpu")]
        gc.collect()
        live = TreeBooster.live()
        started = threading.Event()
        out: list[np.ndarray] = []

        thread = threading.Thread(target=_predict_once, args=(holder, started, out, batch))
        thread.start()
        started.wait()
        gc.collect()  # the main thread holds no reference any more
        assert not holder
        seen_running = False
        while thread.is_alive():
            assert TreeBooster.live() == live  # not freed under the prediction
            seen_running = True
            time.sleep(0.005)
        thread.join()
        assert out[0].tobytes() == np.tile(want, repeat).tobytes()
        gc.collect()
        assert TreeBooster.live() == live - 1  # freed by its last holder, once it ended
        if seen_running:
            return
    pytest.fail("the prediction always ended before it could be looked at")


def test_predictions_release_the_gil(long_prediction: tuple[bytes, np.ndarray, np.ndarray]) -> None:
    data, rows, _ = long_prediction
    booster = native.load("xgboost", data)
    span: dict[str, float] = {}

    def predict() -> None:
        span["start"] = time.perf_counter()
        booster.predict(rows)
        span["end"] = time.perf_counter()

    thread = threading.Thread(target=predict)
    ticks = []
    thread.start()
    while thread.is_alive():  # runs only while this thread can take the GIL
        ticks.append(time.perf_counter())
        time.sleep(0.001)
    thread.join()
    start, end = span["start"], span["end"]
    margin = (end - start) / 10
    inside = [t for t in ticks if start + margin < t < end - margin]
    assert len(inside) >= 10, (end - start, len(ticks))


def test_without_the_native_libraries_the_python_packages_serve(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import lightgbm as lgb

    def no_library(framework: str) -> list[str]:
        return []

    monkeypatch.setattr(native, "_opened", {})
    monkeypatch.setattr(native, "_library_paths", no_library)
    xgb_data = trees.xgboost_model("multi:softprob")
    lgbm_data = trees.lightgbm_model("multiclass")
    with caplog.at_level(logging.WARNING, logger=native.__name__):
        models = [load_model(d, fw, "cpu") for d, fw in [(xgb_data, "xgboost")] * 2]
        models += [load_model(lgbm_data, "lightgbm", "cpu") for _ in range(2)]
    warnings = [r.getMessage() for r in caplog.records if r.name == native.__name__]
    assert len(warnings) == 2, warnings  # one line per framework, not per load
    assert all("serving through its Python package" in w for w in warnings)
    rows = trees.probe_rows(trees.N_FEATURES)
    want_x = xgboost_fw.load(xgb_data, "cpu").inplace_predict(rows, validate_features=False)
    want_l = lgb.Booster(model_str=lgbm_data.decode()).predict(rows, num_threads=1)
    for model, want in zip(models, [want_x, want_x, want_l, want_l], strict=True):
        assert model.native is None and model.bounded and model.warm_s is not None
        (got,) = model.predict([rows])
        assert got.tobytes() == want.tobytes()


def test_a_gpu_model_demoted_to_the_host_is_served_natively() -> None:
    data = trees.xgboost_model("multi:softprob")
    booster = xgboost_fw.load(data, "cpu")  # stands in for a CUDA booster: to_host reads it
    gpu = xgboost_fw.XGBoostModel(booster, "cuda", 1234)
    assert gpu.native is None and not gpu.bounded and gpu.warm_s is None
    host = gpu.to_host()
    assert host is not None and host.native is not None
    assert (host.device, host.nbytes, host.bounded) == ("cpu", 1234, True)
    rows = trees.probe_rows(trees.N_FEATURES)
    (got,) = host.predict([rows])
    assert got.tobytes() == booster.inplace_predict(rows, validate_features=False).tobytes()
