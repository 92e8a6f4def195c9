"""XGBoost: JSON (``xgboost-json``) and UBJSON (``xgboost-ubj``) models, as written by
``Booster.save_model``; served with ``inplace_predict``, or its C call made directly.

One loader (``load``) for registration and the worker: a ``Booster`` with one thread, on the
CPU or (``device="cuda"``) on the GPU. The signature is one FP32 input ``[-1, features]`` and
one FP32 output, ``[-1]`` or ``[-1, classes/targets]``; a JSON model's parameters are read from
the document already parsed (asking the booster configures it, which costs more than the load).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from shoal.artifacts import TREE_INPUT, TREE_OUTPUT, ArtifactError, Signature, TensorSpec
from shoal.device import heap_in_use
from shoal.frameworks.base import Unrecognised, first_line, guess, measured

log = logging.getLogger(__name__)

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
    before = heap_in_use()
    booster = load(data, device)
    nbytes = estimate if device == "cuda" else measured(before, heap_in_use(), estimate)
    return XGBoostModel(booster, device, nbytes)


def gpu_capable() -> bool:
    return True


class XGBoostModel:
    framework = NAME

    def __init__(self, booster: Any, device: str, nbytes: int) -> None:
        self._booster = booster
        self.device = device
        self.nbytes = nbytes
        self.bounded = device == "cpu"
        self._direct = _DirectPredict.verified(booster) if device == "cpu" else None
        self.warm_s = self._direct.probe_s if self._direct is not None else None

    def predict(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        x = inputs[0]
        direct = self._direct
        if direct is not None and x.ndim == 2 and x.dtype == np.float32 and x.flags.c_contiguous:
            return [direct(x)]
        return [np.asarray(self._booster.inplace_predict(x, validate_features=False))]

    def to_host(self) -> XGBoostModel | None:
        if self.device == "cpu":
            return self
        booster = self._booster.copy()
        booster.set_param({"device": "cpu"})
        return XGBoostModel(booster, "cpu", self.nbytes)


class _DirectPredict:
    """XGBoost's in-place dense prediction called through its C API with fixed arguments.

    ``Booster.inplace_predict`` spends ~2/3 of a 1-row call in Python: it re-encodes its
    arguments and the array's description as JSON, creates ctypes types and wraps the output
    through ``__array_interface__`` on every call (~360 µs against ~120 µs here for the bench's
    100-tree model). This makes the same C call (``XGBoosterPredictFromDense``, the one
    ``inplace_predict`` makes for a NumPy array) with the arguments encoded once, for
    C-contiguous float32 matrices. It relies on xgboost's ``_LIB`` handle, so it is used only
    when it gives exactly ``inplace_predict``'s answer on probe rows at load time (``verified``);
    otherwise, and for any other input, the model uses ``inplace_predict``.
    """

    _ARGS = (
        b'{"type": 0, "training": false, "iteration_begin": 0, "iteration_end": 0, '
        b'"missing": NaN, "strict_shape": false, "cache_id": 0}'
    )

    def __init__(self, booster: Any) -> None:
        import ctypes

        from xgboost.core import _LIB, _check_call

        self._ctypes = ctypes
        self._booster = booster
        self._fn = _LIB.XGBoosterPredictFromDense
        self._check = _check_call
        self._ulong = ctypes.c_uint64  # xgboost's bst_ulong
        self._shape_ptr = ctypes.POINTER(ctypes.c_uint64)
        self._float_ptr = ctypes.POINTER(ctypes.c_float)
        self.probe_s: float | None = None  # CPU seconds of a 1-row call, set by ``verified``

    @classmethod
    def verified(cls, booster: Any) -> _DirectPredict | None:
        try:
            direct = cls(booster)
            n = int(booster.num_features())
            rng = np.random.default_rng(0)
            probe = rng.normal(0.0, 10.0, size=(5, max(n, 1))).astype(np.float32)
            probe[1, ::2] = np.nan
            probe[2, :] = 0.0
            want = np.asarray(booster.inplace_predict(probe, validate_features=False))
            got = direct(probe)
            one = np.ascontiguousarray(probe[:1])
            started = time.thread_time()
            single = direct(one)
            direct.probe_s = time.thread_time() - started
        except Exception as exc:  # a private API changed: the public one still works
            log.info("xgboost direct prediction unavailable: %s", first_line(exc))
            return None
        if got.shape != want.shape or not np.array_equal(got, want, equal_nan=True):
            log.warning("xgboost direct prediction differs from inplace_predict; not used")
            return None
        if not np.array_equal(single, want[:1], equal_nan=True):
            log.warning("xgboost direct prediction of one row differs; not used")
            return None
        return direct

    def __call__(self, x: np.ndarray) -> np.ndarray:
        ct = self._ctypes
        shape = self._shape_ptr()
        dims = self._ulong()
        preds = self._float_ptr()
        iface = (
            b'{"data": [%d, true], "shape": [%d, %d], "strides": null, "typestr": "<f4", '
            b'"version": 3}' % (x.ctypes.data, x.shape[0], x.shape[1])
        )
        self._check(
            self._fn(
                self._booster.handle,
                iface,
                self._ARGS,
                None,
                ct.byref(shape),
                ct.byref(dims),
                ct.byref(preds),
            )
        )
        out_shape = tuple(int(shape[i]) for i in range(dims.value))
        out = np.empty(out_shape, dtype=np.float32)
        if out.size:
            ct.memmove(out.ctypes.data, preds, out.nbytes)
        return out
