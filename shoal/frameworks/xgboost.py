"""XGBoost: JSON (``xgboost-json``) and UBJSON (``xgboost-ubj``) models, as written by
``Booster.save_model``.

One loader (``load``) for registration and GPU models: a ``Booster`` with one thread, on the
CPU or (``device="cuda"``) on the GPU. The worker serves CPU models with a native booster
(``shoal.frameworks.native``: the same load and ``inplace_predict``'s C call, made from Rust
without the GIL, same bits and same messages), or with the Python ``Booster`` where the native
runtime cannot be opened. The signature is one FP32 input ``[-1, features]`` and one FP32
output, ``[-1]`` or ``[-1, classes/targets]``; a JSON model's parameters are read from the
document already parsed (asking the booster configures it, which costs more than the load).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from shoal._native import TreeBooster
from shoal.artifacts import TREE_INPUT, TREE_OUTPUT, ArtifactError, Signature, TensorSpec
from shoal.device import heap_in_use
from shoal.frameworks import native
from shoal.frameworks.base import Unrecognised, first_line, guess, measured, warm_up

NAME = "xgboost"
ACCEPTS = "XGBoost JSON/UBJ (Booster.save_model)"
PLATFORM = "xgboost"  # in ModelMetadata, as Triton names it


FORMATS = ("xgboost-json", "xgboost-ubj")


def detect(data: bytes) -> str | None:
    if data[:64].lstrip().startswith((b'{"', b"{\n", b"{ ")):
        return "xgboost-json"
    if data[:1] == b"{":
        return "xgboost-ubj"
    return None


LIBRARY = "xgboost"


def load(data: bytes, device: str) -> Any:
    import xgboost as xgb

    params: dict[str, Any] = {"nthread": 1}
    if device == "cuda":
        # verbosity 0: a CPU input to a CUDA booster logs a device-mismatch warning per call.
        params.update(device="cuda", verbosity=0)
    booster = xgb.Booster(params=params)
    buf = bytearray(data)
    fmt = detect(data) or "xgboost"
    try:
        booster.load_model(buf)
    except xgb.core.XGBoostError as exc:
        raise ArtifactError(f"invalid XGBoost model ({fmt}): {first_line(exc)}") from None
    finally:
        del buf
    return booster


def describe(data: bytes, fmt: str) -> tuple[Signature, dict[str, Any]]:
    if fmt == "xgboost-json":
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"invalid XGBoost JSON model: {exc}") from None
        if not isinstance(doc, dict) or "learner" not in doc:
            raise Unrecognised("JSON without an XGBoost 'learner'")
    booster = load(data, "cpu")
    learner: dict[str, Any]
    try:
        learner = doc["learner"] if fmt == "xgboost-json" else {}
        params = learner["learner_model_param"]
        n_features = int(params["num_feature"])
        objective = str(learner["objective"]["name"])
    except (KeyError, TypeError, ValueError):
        learner = json.loads(booster.save_config())["learner"]
        params = learner["learner_model_param"]
        n_features = int(booster.num_features())
        objective = str(learner["objective"]["name"])
    n_class = int(params.get("num_class", "0") or 0)
    n_target = int(params.get("num_target", "1") or 1)
    width = n_class if n_class > 1 else (n_target if n_target > 1 else 0)
    out_shape = (-1, width) if width else (-1,)
    sig = Signature(
        (TensorSpec(TREE_INPUT, "FP32", (-1, n_features)),),
        (TensorSpec(TREE_OUTPUT, "FP32", out_shape),),
    )
    trees = _rounds_in(learner)
    if trees is None:
        trees = _rounds(booster)
    return sig, {"objective": objective, "num_features": n_features, "trees": trees}


def _rounds_in(learner: dict[str, Any]) -> int | None:
    """Boosted rounds as a JSON model records them (``iteration_indptr``), or None.

    Asking the booster (``num_boosted_rounds``) first *configures* it, which costs two thirds
    of a small model's validation (device probing, thread setup, parameter checks) and is not
    part of loading: a worker loads without configuring, and a configure failure was never a
    validation failure (``_rounds`` answers 0 then). gbtree and dart keep the rounds of their
    trees; anything else (gblinear, UBJ documents not parsed here) asks the booster.
    """
    try:
        booster = learner["gradient_booster"]
        if booster["name"] == "dart":
            booster = booster["gbtree"]
        if booster["name"] != "gbtree":
            return None
        indptr = booster["model"]["iteration_indptr"]
    except (KeyError, TypeError):
        return None
    return len(indptr) - 1 if isinstance(indptr, list) and indptr else None


def _rounds(booster: Any) -> int:
    try:
        return int(booster.num_boosted_rounds())
    except Exception:
        return 0


#: Resident bytes guessed before a load: artifact size x 1.25 + 16 KiB (calibrated on
#: small tree ensembles).
RESIDENT = (1.25, 16 << 10)


def model(data: bytes, device: str) -> XGBoostModel:
    estimate = guess(RESIDENT, len(data))
    use_native = device == "cpu" and native.available(NAME)
    before = heap_in_use()
    booster = native.load(NAME, data) if use_native else load(data, device)
    nbytes = estimate if device == "cuda" else measured(before, heap_in_use(), estimate)
    return XGBoostModel(booster, device, nbytes)


def gpu_capable() -> bool:
    return True


class XGBoostModel:
    """A loaded model: on the CPU a native booster (``native``, what the native worker front
    predicts with), else the Python package's ``Booster`` (GPU models; CPU models where the
    native runtime cannot be opened) and its ``inplace_predict``."""

    framework = NAME

    def __init__(self, booster: Any, device: str, nbytes: int) -> None:
        self.native: TreeBooster | None = booster if isinstance(booster, TreeBooster) else None
        self._booster = None if self.native is not None else booster
        self.device = device
        self.nbytes = nbytes
        self.bounded = device == "cpu"
        self.warm_s: float | None = None
        if isinstance(booster, TreeBooster):
            self.warm_s = warm_up(booster.predict, lambda: booster.num_features, True)
        elif device == "cpu":
            self.warm_s = warm_up(self._python_predict, booster.num_features, True)

    def predict(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        if self.native is not None:
            return [native.predict(self.native, inputs[0])]
        return [self._python_predict(inputs[0])]

    def _python_predict(self, x: np.ndarray) -> np.ndarray:
        assert self._booster is not None
        return np.asarray(self._booster.inplace_predict(x, validate_features=False))

    def to_host(self) -> XGBoostModel | None:
        if self.device == "cpu":
            return self
        assert self._booster is not None
        if native.available(NAME):
            raw = bytes(self._booster.save_raw("ubj"))
            return XGBoostModel(native.load(NAME, raw), "cpu", self.nbytes)
        booster = self._booster.copy()
        booster.set_param({"device": "cpu"})
        return XGBoostModel(booster, "cpu", self.nbytes)
