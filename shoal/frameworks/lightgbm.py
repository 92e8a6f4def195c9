"""LightGBM: text models (``lightgbm-text``) as written by ``Booster.save_model``.

One loader (``load``) for registration: a ``Booster`` from the model string, CPU only. The
worker serves with a native booster (``shoal.frameworks.native``: the same load, checks and
messages, and ``Booster.predict(x, num_threads=1)``'s C calls made from Rust without the GIL),
or with the Python ``Booster`` where the native runtime cannot be opened. The signature is
one FP32 input ``[-1, features]`` and one FP64 output, ``[-1]`` or ``[-1, models per
iteration]`` (multiclass). A text that does not end its trees is refused
before the library parses it (LightGBM accepts some truncated files silently).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from shoal._native import TreeBooster
from shoal.artifacts import TREE_INPUT, TREE_OUTPUT, ArtifactError, Signature, TensorSpec
from shoal.device import heap_in_use
from shoal.frameworks import native
from shoal.frameworks.base import first_line, guess, measured, warm_up

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
    use_native = native.available(NAME)
    before = heap_in_use()
    booster = native.load(NAME, data) if use_native else load(data, "cpu")
    return LightGBMModel(booster, measured(before, heap_in_use(), guess(RESIDENT, len(data))))


def gpu_capable() -> bool:
    return False


class LightGBMModel:
    """A loaded model: a native booster (``native``, what the native worker front predicts
    with), or the Python package's ``Booster`` where the native runtime cannot be opened."""

    framework = NAME
    device = "cpu"
    bounded = True

    def __init__(self, booster: Any, nbytes: int) -> None:
        self.native: TreeBooster | None = booster if isinstance(booster, TreeBooster) else None
        self._booster = None if self.native is not None else booster
        self.nbytes = nbytes
        if isinstance(booster, TreeBooster):
            self.warm_s = warm_up(booster.predict, lambda: booster.num_features, False)
        else:
            self.warm_s = warm_up(self._python_predict, booster.num_feature, False)

    def predict(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        if self.native is not None:
            return [native.predict(self.native, inputs[0])]
        return [self._python_predict(inputs[0])]

    def _python_predict(self, x: np.ndarray) -> np.ndarray:
        # num_threads=1 per call (not a booster parameter: LightGBM ignores parameters given
        # with a model string).
        assert self._booster is not None
        return np.asarray(self._booster.predict(x, num_threads=1))

    def to_host(self) -> LightGBMModel | None:
        return self
