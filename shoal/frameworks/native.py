"""Models served by Rust: XGBoost and LightGBM boosters whose library handles the native
module owns (``shoal._native.TreeBooster``, native/src/runtime), and ONNX sessions on the ONNX
Runtime library the onnxruntime wheel ships (``shoal._native.OnnxSession``).

The native side opens the very shared libraries the Python packages loaded (``_library_paths``),
once per process (``available``); when it cannot, the frameworks keep serving through the
Python packages, and one line is logged. A native booster predicts without the GIL, exactly as
the package's own predict (``Booster.inplace_predict`` / ``Booster.predict(x, num_threads=1)``)
would, and is freed only when the last holder lets go: the model object, a prediction in
flight, or the native worker front.

Errors: a model the library refuses raises ``ArtifactError`` with the Python loader's message;
a failed prediction raises the package's own exception class (``XGBoostError``,
``LightGBMError``) with the library's message, as the package's predict would.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from shoal._native import (
    OnnxError,
    OnnxModelError,
    OnnxSession,
    TreeBooster,
    TreeError,
    TreeModelError,
)
from shoal.artifacts import DTYPES, ArtifactError
from shoal.frameworks.base import first_line

log = logging.getLogger(__name__)

_opened: dict[str, bool] = {}
_lock = threading.Lock()


def _library_paths(framework: str) -> list[str]:
    """Candidate library files. ONNX: the C API library in the onnxruntime package's ``capi``
    folder (a second instance of the runtime, of the same release as the Python extension's).
    Trees: the one the package loaded first (its ctypes handle's name), so
    both sides share one instance of the library, then those the package's own finder lists
    (``find_lib_path``, ``_find_lib_path`` in recent LightGBM releases), in its order."""
    if framework == "onnx":
        capi = Path(importlib.import_module("onnxruntime").__file__ or ".").parent / "capi"
        return sorted(str(p) for p in capi.glob("libonnxruntime.so*"))
    loader = importlib.import_module(
        "xgboost.core" if framework == "xgboost" else "lightgbm.libpath"
    )
    libpath = importlib.import_module(f"{framework}.libpath")
    loaded = getattr(getattr(loader, "_LIB", None), "_name", None)
    finder = getattr(libpath, "find_lib_path", None) or getattr(libpath, "_find_lib_path", None)
    paths = [loaded] if isinstance(loaded, str) else []
    found = [str(p) for p in finder()] if finder is not None else []
    return [*paths, *(p for p in found if p not in paths)]


def available(framework: str) -> bool:
    """Whether ``framework``'s models are served natively here: its library is opened on the
    first call (blocking, once per process); a failure is logged once and remembered."""
    with _lock:
        ok = _opened.get(framework)
        if ok is None:
            ok = _opened[framework] = _open(framework)
        return ok


def _open(framework: str) -> bool:
    try:
        tried = []
        for path in _library_paths(framework):
            try:
                if framework == "onnx":
                    OnnxSession.open_runtime(path)
                else:
                    TreeBooster.open_runtime(framework, path)
                return True
            except OSError as exc:
                tried.append(str(exc))
        reason = "; ".join(tried) or "no library file found"
    except Exception as exc:  # the package or the native module is not what we expect
        reason = first_line(exc)
    log.warning(
        "native %s runtime unavailable, serving through its Python package: %s", framework, reason
    )
    return False


def load(framework: str, data: bytes) -> TreeBooster:
    """``data`` as a native ``TreeBooster`` (call ``available`` first); ``ArtifactError`` with
    the Python loader's message for bytes the library refuses."""
    try:
        return TreeBooster.load(framework, data)
    except TreeModelError as exc:
        raise ArtifactError(str(exc)) from None


def predict(booster: TreeBooster, x: np.ndarray) -> np.ndarray:
    """``booster``'s prediction for the 2-D ``x``: float64 values are read as such, others as
    float32 (as the packages read them), copied only when not C-contiguous and aligned."""
    dtype = np.float64 if x.dtype == np.float64 else np.float32
    try:
        return booster.predict(np.require(x, dtype, ("C", "A")))
    except TreeError as exc:
        raise _library_error(booster.framework, str(exc)) from None


def load_onnx(data: bytes) -> OnnxSession:
    """``data`` as a native ``OnnxSession`` (call ``available("onnx")`` first);
    ``ArtifactError`` with the Python loader's message for bytes the runtime refuses."""
    try:
        return OnnxSession.load(data)
    except OnnxModelError as exc:
        raise ArtifactError(str(exc)) from None


#: numpy's dtype of each V2 datatype an ONNX tensor may have (``shoal.frameworks.onnx``).
_V2 = {np.dtype(v): k for k, v in DTYPES.items()}


def run_onnx(session: OnnxSession, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``session``'s outputs for ``inputs`` (the graph's order), as ``InferenceSession.run``
    returns them; ``OnnxError`` with the runtime's message when it refuses them."""
    feed = []
    for a in inputs:
        datatype = _V2.get(a.dtype)
        if datatype is None:
            raise OnnxError(f"unsupported input type {a.dtype}")
        feed.append((datatype, list(a.shape), np.ascontiguousarray(a).tobytes()))
    return [
        np.frombuffer(raw, DTYPES[datatype]).reshape(shape)
        for datatype, shape, raw in session.run(feed)
    ]


def _library_error(framework: str, message: str) -> Exception:
    if framework == "xgboost":
        from xgboost.core import XGBoostError

        return XGBoostError(message)
    from lightgbm.basic import LightGBMError

    return LightGBMError(message)
