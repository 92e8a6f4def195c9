"""The native input checks and response encoder agree with the Python worker's.

``check_inputs`` / ``select_outputs`` (``worker.validate``) against the native ones for
generated signatures and inputs: the same tensors chosen in the same order, or the same
message; and ``encode_infer_response`` gives byte for byte what
``infer_response_to_proto(...).SerializeToString()`` gives.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from shoal import _native
from shoal.artifacts import DTYPES, Signature, TensorSpec
from worker.convert import infer_response_to_proto
from worker.errors import WorkerError
from worker.types import InferResult, Tensor
from worker.validate import check_inputs, select_outputs

NAMES = st.sampled_from(["a", "b", "input__0", "it's", "é", ""])
SPEC_TYPES = st.sampled_from([*DTYPES, "BYTES"])
SPEC_SHAPES = st.lists(st.sampled_from([-1, 0, 1, 2, 3]), max_size=3)
SHAPES = st.lists(st.integers(0, 3), max_size=3)
specs = st.builds(TensorSpec, NAMES, SPEC_TYPES, SPEC_SHAPES.map(tuple))
tensors = st.builds(
    lambda name, dt, shape: Tensor(name, dt, np.zeros(shape, DTYPES[dt])),
    NAMES,
    st.sampled_from(list(DTYPES)),
    SHAPES,
)


def _sig(sig: Signature) -> tuple[list, list]:
    meta = lambda specs: [(s.name, s.datatype, list(s.shape)) for s in specs]  # noqa: E731
    return meta(sig.inputs), meta(sig.outputs)


def _reference_inputs(label: str, sig: Signature, inputs: list[Tensor]) -> tuple:
    try:
        arrays = check_inputs(label, sig, inputs)
    except WorkerError as exc:
        return (exc.code.value, exc.message)
    # The arrays returned are the inputs' own: name each by its position.
    return ("ok", [next(i for i, t in enumerate(inputs) if t.array is a) for a in arrays])


def _native_inputs(label: str, sig: Signature, inputs: list[Tensor]) -> tuple:
    meta = [(t.name, t.datatype, list(t.array.shape)) for t in inputs]
    try:
        return ("ok", _native.check_inputs(label, _sig(sig), meta))
    except _native.CodecError as exc:
        return tuple(exc.args)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(specs, min_size=0, max_size=3),
    st.lists(tensors, max_size=4),
    st.sampled_from(["acme/churn:3", "t/m:1"]),
)
@example(  # a name given twice: the last one is checked (its batch is empty)
    [
        TensorSpec("a", "FP32", (-1,)),
        TensorSpec("b", "INT64", (-1, 2)),
        TensorSpec("b", "INT64", ()),
    ],
    [
        Tensor("a", "FP32", np.zeros(1, np.float32)),
        Tensor("b", "INT64", np.zeros((1, 2), np.int64)),
        Tensor("a", "FP32", np.zeros(0, np.float32)),
    ],
    "m",
)
def test_check_inputs_agrees(spec_list: list[TensorSpec], inputs: list[Tensor], label: str) -> None:
    sig = Signature(tuple(spec_list), ())
    assert _native_inputs(label, sig, inputs) == _reference_inputs(label, sig, inputs)


@settings(max_examples=300, deadline=None)
@given(st.lists(NAMES, max_size=4), st.lists(NAMES, max_size=4))
def test_select_outputs_agrees(outputs: list[str], requested: list[str]) -> None:
    sig = Signature((), tuple(TensorSpec(n, "FP32", (-1,)) for n in outputs))
    try:
        want: tuple = ("ok", select_outputs(sig, requested))
    except WorkerError as exc:
        want = (exc.code.value, exc.message)
    try:
        got: tuple = ("ok", _native.select_outputs(_sig(sig), requested))
    except _native.CodecError as exc:
        got = tuple(exc.args)
    assert got == want


outputs = st.lists(
    st.tuples(
        st.text(max_size=5),
        st.sampled_from(list(DTYPES)),
        st.lists(st.integers(0, 3), max_size=3),
        st.randoms(use_true_random=False),
    ),
    max_size=3,
)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=12), st.integers(0, 2**63 - 1), st.text(max_size=6), outputs)
def test_response_bytes_equal_pythons(model: str, version: int, id_: str, outs: list) -> None:
    tensors, native = [], []
    for name, dt, shape, rnd in outs:
        size = math.prod(shape) * DTYPES[dt].itemsize
        data = rnd.randbytes(size)
        tensors.append(Tensor(name, dt, np.frombuffer(data, DTYPES[dt]).reshape(shape)))
        native.append((name, dt, shape, data))
    want = infer_response_to_proto(InferResult(model, version, tuple(tensors), id_))
    assert _native.encode_infer_response(model, version, id_, native) == want.SerializeToString()


def test_binding_refuses_what_the_decoder_never_produces() -> None:
    with pytest.raises(ValueError, match="BYTES"):
        _native.check_inputs("m", ([], []), [("x", "BYTES", [1])])
    with pytest.raises(ValueError, match="fp32"):
        _native.encode_infer_response("m", 1, "", [("o", "fp32", [1], b"\x00" * 4)])
