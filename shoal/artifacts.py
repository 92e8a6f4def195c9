"""Model artifacts: detect the format, validate it by loading it, hash it, read its signature.

Accepted formats (and nothing else):

* XGBoost JSON (``xgboost-json``) and UBJSON (``xgboost-ubj``), as written by
  ``Booster.save_model``;
* LightGBM text (``lightgbm-text``), as written by ``Booster.save_model``;
* ONNX (``onnx``), a serialized ``ModelProto``.

Validation *loads* the artifact with its runtime (single-threaded, CPU), so a file that passes
is one a worker can load. Pickle and joblib files are recognised by their first bytes and
refused without being read further: nothing here ever unpickles.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FRAMEWORKS = ("xgboost", "lightgbm", "onnx")
FORMATS = {
    "xgboost-json": "xgboost",
    "xgboost-ubj": "xgboost",
    "lightgbm-text": "lightgbm",
    "onnx": "onnx",
}
ACCEPTED = "XGBoost JSON/UBJ (Booster.save_model), LightGBM text (Booster.save_model) or ONNX"

#: Tensor names for tree models, as Triton's FIL backend names them.
TREE_INPUT = "input__0"
TREE_OUTPUT = "output__0"

_ONNX_DTYPES = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(int8)": "INT8",
}

#: V2 datatypes and their numpy equivalents.
DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}


#: "[02:52:23] /path/to/file.h:46: " that XGBoost puts before its messages.
_LOG_PREFIX = re.compile(r"^\[[\d:]+\] [^ ]+:\d+: ")


class ArtifactError(ValueError):
    """The bytes are not an acceptable model artifact; the message says why."""


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 marks a variable dimension


@dataclass(frozen=True, slots=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [[t.name, t.datatype, list(t.shape)] for t in self.inputs],
            "outputs": [[t.name, t.datatype, list(t.shape)] for t in self.outputs],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Signature:
        return cls(
            tuple(TensorSpec(n, dt, tuple(s)) for n, dt, s in d.get("inputs", [])),
            tuple(TensorSpec(n, dt, tuple(s)) for n, dt, s in d.get("outputs", [])),
        )


@dataclass(frozen=True, slots=True)
class ArtifactInfo:
    framework: str
    format: str
    sha256: str
    size: int
    signature: Signature
    details: dict[str, Any] = field(default_factory=dict)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _refuse_known_unsafe(data: bytes) -> None:
    if len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5:
        raise ArtifactError(
            f"this is a pickle/joblib file, which is never accepted; use {ACCEPTED}"
        )
    if data[:2] in (b"\x78\x9c", b"\x78\x01", b"\x78\xda") or data[:3] == b"\x1f\x8b\x08":
        raise ArtifactError(
            f"this is a compressed (zlib/gzip) file, e.g. a joblib dump; use {ACCEPTED}"
        )
    if data[:4] == b"PK\x03\x04":
        raise ArtifactError(f"this is a zip archive (e.g. a pickled pipeline); use {ACCEPTED}")


def detect_format(data: bytes) -> str:
    """Guess the format from the first bytes; raise ``ArtifactError`` for anything else."""
    if not data:
        raise ArtifactError(f"empty artifact; expected {ACCEPTED}")
    _refuse_known_unsafe(data)
    head = data[:64].lstrip()
    if head.startswith((b'{"', b"{\n", b"{ ")):
        return "xgboost-json"
    if data[:1] == b"{":
        return "xgboost-ubj"
    if data.startswith((b"tree\n", b"tree\r\n")):
        return "lightgbm-text"
    if data[:1] == b"\x08":  # ModelProto field 1 (ir_version), varint
        return "onnx"
    raise ArtifactError(f"unrecognised artifact format; expected {ACCEPTED}")


def _xgboost_info(data: bytes, fmt: str) -> tuple[Signature, dict[str, Any]]:
    import xgboost as xgb

    if fmt == "xgboost-json":
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"invalid XGBoost JSON model: {exc}") from None
        if not isinstance(doc, dict) or "learner" not in doc:
            raise ArtifactError(f"JSON without an XGBoost 'learner'; expected {ACCEPTED}")
    booster = xgb.Booster(params={"nthread": 1})
    try:
        booster.load_model(bytearray(data))
    except xgb.core.XGBoostError as exc:
        first = _LOG_PREFIX.sub("", str(exc).strip().splitlines()[0])[:300]
        raise ArtifactError(f"invalid XGBoost model ({fmt}): {first}") from None
    learner: dict[str, Any]
    try:
        # A JSON model carries its parameters: read them from the document already parsed,
        # which costs a fraction of asking the booster (num_features + save_config).
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
    trees = _xgb_rounds_in(learner)
    if trees is None:
        trees = _xgb_trees(booster)
    return sig, {"objective": objective, "num_features": n_features, "trees": trees}


def _xgb_rounds_in(learner: dict[str, Any]) -> int | None:
    """Boosted rounds as a JSON model records them (``iteration_indptr``), or None.

    Asking the booster (``num_boosted_rounds``) first *configures* it, which costs two thirds
    of a small model's validation (device probing, thread setup, parameter checks) and is not
    part of loading: a worker loads without configuring, and a configure failure was never a
    validation failure (``_xgb_trees`` answers 0 then). gbtree and dart keep the rounds of
    their trees; anything else (gblinear, UBJ documents not parsed here) asks the booster.
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


def _xgb_trees(booster: Any) -> int:
    try:
        return int(booster.num_boosted_rounds())
    except Exception:
        return 0


def _lightgbm_info(data: bytes) -> tuple[Signature, dict[str, Any]]:
    import lightgbm as lgb

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ArtifactError("LightGBM model is not UTF-8 text") from None
    if "end of trees" not in text:
        raise ArtifactError("LightGBM model is truncated (no 'end of trees' marker)")
    try:
        booster = lgb.Booster(model_str=text)
    except lgb.basic.LightGBMError as exc:
        raise ArtifactError(f"invalid LightGBM model: {str(exc)[:300]}") from None
    n_features = int(booster.num_feature())
    per_iter = int(booster.num_model_per_iteration())
    out_shape = (-1, per_iter) if per_iter > 1 else (-1,)
    sig = Signature(
        (TensorSpec(TREE_INPUT, "FP32", (-1, n_features)),),
        (TensorSpec(TREE_OUTPUT, "FP64", out_shape),),
    )
    objective = str(booster.params.get("objective", "")) if booster.params else ""
    return sig, {"objective": objective, "num_features": n_features, "trees": booster.num_trees()}


def _onnx_shape(shape: Any) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (shape or []))


def _onnx_info(data: bytes) -> tuple[Signature, dict[str, Any]]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ArtifactError(f"invalid ONNX model: {msg}") from None

    def spec(arg: Any) -> TensorSpec:
        dt = _ONNX_DTYPES.get(arg.type)
        if dt is None:
            raise ArtifactError(f"ONNX tensor {arg.name!r} has unsupported type {arg.type}")
        return TensorSpec(arg.name, dt, _onnx_shape(arg.shape))

    sig = Signature(
        tuple(spec(a) for a in sess.get_inputs()), tuple(spec(a) for a in sess.get_outputs())
    )
    meta = sess.get_modelmeta()
    return sig, {"producer": meta.producer_name, "graph": meta.graph_name}


def inspect_artifact(data: bytes, framework: str | None = None) -> ArtifactInfo:
    """Validate ``data`` and describe it; ``framework`` (if given) must match what it is.

    Raises ``ArtifactError`` naming the accepted formats for anything else.
    """
    if framework and framework not in FRAMEWORKS:
        raise ArtifactError(
            f"unknown framework {framework!r}; expected one of {', '.join(FRAMEWORKS)}"
        )
    fmt = detect_format(data)
    detected = FORMATS[fmt]
    if framework and framework != detected:
        raise ArtifactError(f"framework {framework!r} given, but the artifact is {fmt}")
    if detected == "xgboost":
        sig, details = _xgboost_info(data, fmt)
    elif detected == "lightgbm":
        sig, details = _lightgbm_info(data)
    else:
        sig, details = _onnx_info(data)
    return ArtifactInfo(detected, fmt, sha256_hex(data), len(data), sig, details)
