"""LightGBM: text models (``lightgbm-text``) as written by ``Booster.save_model``.

One loader (``load``) for registration and the worker: a ``Booster`` from the model string,
CPU only. The signature is one FP32 input ``[-1, features]`` and one FP64 output, ``[-1]`` or
``[-1, models per iteration]`` (multiclass). A text that does not end its trees is refused
before the library parses it (LightGBM accepts some truncated files silently).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from shoal.artifacts import TREE_INPUT, TREE_OUTPUT, ArtifactError, Signature, TensorSpec
from shoal.device import heap_in_use
from shoal.frameworks.base import first_line, guess, measured

log = logging.getLogger(__name__)

NAME = "lightgbm"
ACCEPTS = "LightGBM text (Booster.save_model)"
PLATFORM = "lightgbm"  # in ModelMetadata, as Triton names it


FORMATS = ("lightgbm-text",)


def detect(data: bytes) -> str | None:
    return "lightgbm-text" if data.startswith((b"tree\n", b"tree\r\n")) else None


LIBRARY = "lightgbm"


def load(data: bytes, device: str) -> Any:
    import lightgbm as lgb

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ArtifactError("LightGBM model is not UTF-8 text") from None
    if "end of trees" not in text:
        raise ArtifactError("LightGBM model is truncated (no 'end of trees' marker)")
    try:
        return lgb.Booster(model_str=text)
    except lgb.basic.LightGBMError as exc:
        raise ArtifactError(f"invalid LightGBM model: {first_line(exc)}") from None


def describe(data: bytes, fmt: str) -> tuple[Signature, dict[str, Any]]:
    booster = load(data, "cpu")
    n_features = int(booster.num_feature())
    per_iter = int(booster.num_model_per_iteration())
    out_shape = (-1, per_iter) if per_iter > 1 else (-1,)
    sig = Signature(
        (TensorSpec(TREE_INPUT, "FP32", (-1, n_features)),),
        (TensorSpec(TREE_OUTPUT, "FP64", out_shape),),
    )
    objective = str(booster.params.get("objective", "")) if booster.params else ""
    return sig, {"objective": objective, "num_features": n_features, "trees": booster.num_trees()}


#: Resident bytes guessed before a load: artifact size x 1.25 + 32 KiB (calibrated on
#: small tree ensembles).
RESIDENT = (1.25, 32 << 10)


def model(data: bytes, device: str) -> LightGBMModel:
    before = heap_in_use()
    booster = load(data, "cpu")
    return LightGBMModel(booster, measured(before, heap_in_use(), guess(RESIDENT, len(data))))


def gpu_capable() -> bool:
    return False


class LightGBMModel:
    framework = NAME
    device = "cpu"
    bounded = True

    def __init__(self, booster: Any, nbytes: int) -> None:
        self._booster = booster
        self.nbytes = nbytes
        self.warm_s = self._warm_up()

    def _warm_up(self) -> float | None:
        """One 1-row prediction at load: its CPU time (worker/inline.py), or None."""
        try:
            row = np.zeros((1, int(self._booster.num_feature())), dtype=np.float32)
            started = time.thread_time()
            self._booster.predict(row, num_threads=1)
            return time.thread_time() - started
        except Exception as exc:  # the first request will tell; the load itself succeeded
            log.info("LightGBM warm-up prediction failed: %s", first_line(exc))
            return None

    def predict(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        # num_threads=1 per call (not a booster parameter: LightGBM ignores parameters given
        # with a model string).
        return [np.asarray(self._booster.predict(inputs[0], num_threads=1))]

    def to_host(self) -> LightGBMModel | None:
        return self
