"""Artifact detection and validation: the three formats pass, everything else is refused."""

from __future__ import annotations

import io
import pickle
import zlib
from typing import Any

import numpy as np
import pytest

from shoal.artifacts import ArtifactError, sha256_hex
from shoal.frameworks import ACCEPTED, inspect_artifact

FORMATS = ["xgboost-json", "xgboost-ubj", "lightgbm-text", "onnx"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_accepts_and_describes(model_bytes: dict[str, Any], fmt: str) -> None:
    data = model_bytes[fmt]
    info = inspect_artifact(data)
    assert info.format == fmt
    assert info.sha256 == sha256_hex(data) and info.size == len(data)
    (inp,) = info.signature.inputs
    assert inp.shape == (-1, 12) and inp.datatype == "FP32"
    assert len(info.signature.outputs) == 1


@pytest.mark.parametrize("fmt", FORMATS)
def test_rejects_truncated(model_bytes: dict[str, Any], fmt: str) -> None:
    data = model_bytes[fmt]
    with pytest.raises(ArtifactError):
        inspect_artifact(data[: len(data) // 2])


def test_rejects_pickle_without_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a: object, **k: object) -> None:
        raise AssertionError("a pickle was loaded")

    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "load", boom)
    for proto in (2, 4, 5):
        data = pickle.dumps({"model": np.arange(3)}, protocol=proto)
        with pytest.raises(ArtifactError, match="pickle") as err:
            inspect_artifact(data)
        assert ACCEPTED in str(err.value)


def test_rejects_joblib_dumps() -> None:
    # joblib writes a pickle stream, optionally zlib-compressed; both must be refused.
    buf = io.BytesIO()
    pickle.dump({"weights": [1.0, 2.0]}, buf, protocol=4)
    with pytest.raises(ArtifactError, match="pickle"):
        inspect_artifact(buf.getvalue())
    with pytest.raises(ArtifactError, match="compressed"):
        inspect_artifact(zlib.compress(buf.getvalue()))


@pytest.mark.parametrize(
    "data", [b"", b"\x00\x01\x02random", b"hello world", b'{"not": "a model"}', b"tree\nbroken"]
)
def test_rejects_garbage_naming_accepted_formats(data: bytes) -> None:
    with pytest.raises(ArtifactError) as err:
        inspect_artifact(data)
    msg = str(err.value)
    assert msg  # a reason is always given
    if data[:1] not in (b"{", b"t"):
        assert ACCEPTED in msg


def test_framework_mismatch_and_unknown(model_bytes: dict[str, Any]) -> None:
    with pytest.raises(ArtifactError, match="unknown framework"):
        inspect_artifact(model_bytes["onnx"], framework="sklearn")
    with pytest.raises(ArtifactError, match="is lightgbm-text"):
        inspect_artifact(model_bytes["lightgbm-text"], framework="xgboost")
    assert inspect_artifact(model_bytes["onnx"], framework="onnx").framework == "onnx"


def test_xgboost_json_and_ubj_signatures_agree_for_multiclass() -> None:
    import xgboost as xgb

    rng = np.random.default_rng(3)
    x = rng.normal(size=(120, 7)).astype(np.float32)
    y = rng.integers(0, 3, size=120)
    params = {"objective": "multi:softprob", "num_class": 3, "nthread": 1, "max_depth": 2}
    booster = xgb.train(params, xgb.DMatrix(x, label=y), num_boost_round=3)
    as_json = inspect_artifact(bytes(booster.save_raw(raw_format="json")))
    as_ubj = inspect_artifact(bytes(booster.save_raw(raw_format="ubj")))
    assert as_json.signature == as_ubj.signature
    assert as_json.signature.inputs[0].shape == (-1, 7)
    assert as_json.signature.outputs[0].shape == (-1, 3)
    assert as_json.details["objective"] == as_ubj.details["objective"] == "multi:softprob"
