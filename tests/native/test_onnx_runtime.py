"""Native ONNX sessions answer what the Python package answers, bit for bit
(native/src/runtime/onnx.rs, ``shoal._native.OnnxSession``).

The reference is the Python loader's own ``InferenceSession`` (``shoal.frameworks.onnx.load``,
the options the native session copies): for an MLP and for a graph with an input and an
output of every datatype an ONNX signature may carry, on one row, rows of special values
(NaN, +-inf, -0.0, subnormals, the extremes of each type) and 64 rows; through
``OnnxSession`` and through the model the worker serves (``load_model(...).predict``). Load
and run errors read as the Python package words them.
"""

from __future__ import annotations

import gc
from typing import Any

import numpy as np
import pytest

from shoal._native import OnnxError, OnnxSession
from shoal.artifacts import ArtifactError
from shoal.frameworks import load_model, native
from shoal.frameworks import onnx as onnx_fw


@pytest.fixture(scope="module", autouse=True)
def _runtime() -> None:
    assert native.available("onnx")
    assert (OnnxSession.opened_runtime() or "").rsplit("/", 1)[-1].startswith("libonnxruntime")


def _same(got: list[np.ndarray], want: list[Any]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        w = np.asarray(w)
        assert (g.dtype, g.shape) == (w.dtype, w.shape)
        assert g.tobytes() == w.tobytes()  # bits: NaN payloads and -0.0 included


def _every_type() -> bytes:
    """Inputs of every V2 datatype ONNX signatures carry here, each feeding one output."""
    from onnx import TensorProto as T
    from onnx import helper, numpy_helper

    def io(name: str, t: int, dims: list[Any]) -> Any:
        return helper.make_tensor_value_info(name, t, dims)

    two = numpy_helper.from_array
    nodes = [
        helper.make_node("Mul", ["f64", "k64"], ["f64_2"]),
        helper.make_node("Add", ["f64_2", "f64"], ["out_f64"]),  # 3x, rounded twice
        helper.make_node("Sigmoid", ["f32"], ["out_f32"]),
        helper.make_node("Mul", ["f16", "f16"], ["out_f16"]),
        helper.make_node("Add", ["i64", "i64"], ["out_i64"]),  # wraps at the extremes
        helper.make_node("Neg", ["i32"], ["out_i32"]),
        helper.make_node("Not", ["b"], ["out_bool"]),
        helper.make_node("Cast", ["u8"], ["out_i8"], to=T.INT8),  # 255 -> -1
        helper.make_node("ArgMax", ["f64"], ["out_argmax"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "every_type",
        [
            io("f64", T.DOUBLE, ["N", 3]),
            io("f32", T.FLOAT, ["N", 2]),
            io("f16", T.FLOAT16, ["N", 2]),
            io("i64", T.INT64, ["N", 2]),
            io("i32", T.INT32, ["N"]),
            io("b", T.BOOL, ["N", 1]),
            io("u8", T.UINT8, ["N", 2]),
        ],
        [
            io("out_f64", T.DOUBLE, ["N", 3]),
            io("out_f32", T.FLOAT, ["N", 2]),
            io("out_f16", T.FLOAT16, ["N", 2]),
            io("out_i64", T.INT64, ["N", 2]),
            io("out_i32", T.INT32, ["N"]),
            io("out_bool", T.BOOL, ["N", 1]),
            io("out_i8", T.INT8, ["N", 2]),
            io("out_argmax", T.INT64, ["N"]),
        ],
        [two(np.array(2.0), "k64")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


SPECIAL_F = [np.nan, np.inf, -np.inf, -0.0, 0.0, 5e-324, 1e308, -1e-310, 1.5]


def _every_type_rows(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    f64 = rng.normal(size=(n, 3))
    f64.flat[: min(f64.size, len(SPECIAL_F))] = SPECIAL_F[: f64.size]
    f32 = rng.normal(size=(n, 2)).astype(np.float32)
    f32.flat[: min(f32.size, 6)] = np.array(
        [np.nan, np.inf, -np.inf, -0.0, 1e-45, 88.7], np.float32
    )[: f32.size]
    f16 = rng.normal(size=(n, 2)).astype(np.float16)
    f16.flat[: min(f16.size, 4)] = np.array([np.nan, 65504, -0.0, 6e-8], np.float16)[: f16.size]
    i64 = rng.integers(-(2**62), 2**62, size=(n, 2), dtype=np.int64)
    i64.flat[: min(i64.size, 2)] = np.array([2**63 - 1, -(2**63)], np.int64)[: i64.size]
    i32 = rng.integers(-(2**31), 2**31 - 1, size=n, dtype=np.int32)
    i32[:1] = -(2**31)
    return {
        "f64": f64,
        "f32": f32,
        "f16": f16,
        "i64": i64,
        "i32": i32,
        "b": rng.integers(0, 2, size=(n, 1)).astype(bool),
        "u8": rng.integers(0, 256, size=(n, 2), dtype=np.uint8),
    }


def _mlp_rows(n: int, f: int) -> np.ndarray:
    x = np.random.default_rng(n).normal(size=(n, f)).astype(np.float32)
    x.flat[:7] = [np.nan, np.inf, -np.inf, -0.0, 1e-45, 3e38, -3e38]
    return x


@pytest.mark.parametrize("n", [1, 2, 64])
def test_the_mlp_answers_the_python_sessions_bits(model_bytes: dict[str, Any], n: int) -> None:
    data = model_bytes["onnx"]
    x = _mlp_rows(n, model_bytes["x"].shape[1])
    want = onnx_fw.load(data, "cpu").run(None, {"input": x})
    _same(native.run_onnx(native.load_onnx(data), [x]), want)
    served = load_model(data, "onnx", "cpu")
    assert isinstance(served.native, OnnxSession)  # what the worker front runs
    _same(served.predict([x]), want)


@pytest.mark.parametrize("n", [1, 3, 64])
def test_every_datatype_answers_the_python_sessions_bits(n: int) -> None:
    data = _every_type()
    feed = _every_type_rows(n, seed=n)
    want = onnx_fw.load(data, "cpu").run(None, feed)
    session = native.load_onnx(data)
    assert session.inputs == list(feed)
    assert session.outputs[0] == "out_f64" and len(session.outputs) == len(want)
    _same(native.run_onnx(session, list(feed.values())), want)
    _same(load_model(data, "onnx", "cpu").predict(list(feed.values())), want)


@pytest.mark.parametrize(
    "data",
    [b"\x08garbage", b"", b"\x08\x08", "truncated"],
    ids=["garbage", "empty", "no-graph", "truncated"],
)
def test_refused_models_read_as_the_python_loader_words_them(
    model_bytes: dict[str, Any], data: Any
) -> None:
    if data == "truncated":
        data = model_bytes["onnx"][: len(model_bytes["onnx"]) // 2]
    with pytest.raises(ArtifactError) as python:
        onnx_fw.load(data, "cpu")
    with pytest.raises(ArtifactError) as ours:
        native.load_onnx(data)
    assert str(ours.value) == str(python.value)
    assert str(ours.value).startswith("invalid ONNX model: [ONNXRuntimeError] : ")


def test_a_refused_call_raises_the_runtimes_message(model_bytes: dict[str, Any]) -> None:
    data = model_bytes["onnx"]
    narrow = np.zeros((2, 3), np.float32)
    with pytest.raises(Exception) as python:
        onnx_fw.load(data, "cpu").run(None, {"input": narrow})
    with pytest.raises(OnnxError) as ours:
        native.run_onnx(native.load_onnx(data), [narrow])
    assert str(ours.value) == str(python.value)
    assert "INVALID_ARGUMENT" in str(ours.value)
    with pytest.raises(ValueError, match="do not hold a FP32 tensor of shape"):
        native.load_onnx(data).run([("FP32", [2, 12], b"\x00" * 8)])


def test_a_session_is_freed_by_its_last_holder(model_bytes: dict[str, Any]) -> None:
    gc.collect()
    live = OnnxSession.live()
    model = load_model(model_bytes["onnx"], "onnx", "cpu")
    assert OnnxSession.live() == live + 1
    held = model.native
    del model
    gc.collect()
    assert OnnxSession.live() == live + 1  # still held
    del held
    gc.collect()
    assert OnnxSession.live() == live
