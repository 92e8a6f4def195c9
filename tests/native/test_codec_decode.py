"""The native ModelInferRequest decoder answers what the Python worker answers.

For generated requests — well formed, with wrong tensors, with extra fields protobuf skips or
refuses, damaged byte by byte, or arbitrary bytes — ``_native.decode_infer_request`` and
``parse_infer_request`` + ``check_rows`` give the same outcome: equal tensors (name, datatype,
shape and bytes; numpy's dtype is checked against the datatype), or the same status code and
exactly the same message. The Python path never answers INTERNAL for any of them.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from shoal import _native
from shoal.pb import shoal_inference_pb2 as pb
from tests.native.codec_strategies import EXTRA, EXTRA_FIELDS, damaged, requests
from tests.native.codec_wire import Outcome, key, ld, native_outcome, python_outcome, vi

ROWS = st.sampled_from([0, 1, 2, 3, 65536])
FAST = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _same(raw: bytes, max_rows: int) -> Outcome:
    want = python_outcome(raw, max_rows)
    assert want[0] != "INTERNAL", want
    assert native_outcome(raw, max_rows) == want
    return want


@FAST
@given(requests(), ROWS)
def test_generated_requests(raw: bytes, max_rows: int) -> None:
    _same(raw, max_rows)


@FAST
@given(damaged(), ROWS)
def test_damaged_requests(raw: bytes, max_rows: int) -> None:
    _same(raw, max_rows)


@FAST
@given(st.binary(max_size=80))
def test_arbitrary_bytes(raw: bytes) -> None:
    _same(raw, 65536)


@settings(max_examples=200, deadline=None)
@given(requests(), EXTRA)
@example(b"", ld(1, b"\xff"))
def test_extra_fields_anywhere(raw: bytes, extra: bytes) -> None:
    _same(extra + raw, 65536)
    _same(raw + extra, 65536)


def _valid() -> bytes:
    req = pb.ModelInferRequest(model_name="a/b")
    req.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    req.raw_input_contents.append(b"\x00" * 8)
    return req.SerializeToString()


@pytest.mark.parametrize("extra", EXTRA_FIELDS, ids=lambda e: e.hex()[:24])
def test_each_extra_field_before_and_after(extra: bytes) -> None:
    """Every field of the list, deterministically (hypothesis samples them rarely)."""
    for base in (b"", _valid()):
        _same(base + extra, 65536)
        _same(extra + base, 65536)


def _typed(datatype: str, field: int, *values: int) -> bytes:
    """One input of `datatype` whose typed contents are `values` as raw varints of `field`."""
    contents = b"".join(vi(field, v) for v in values)
    return ld(5, ld(1, b"x") + ld(2, datatype.encode()) + vi(3, len(values)) + ld(5, contents))


def _request(datatype: str, shape: list[int], raw: bytes | None = None, **contents: list) -> bytes:
    req = pb.ModelInferRequest(model_name="a/b", model_version="2", id="r")
    t = req.inputs.add(name="x", datatype=datatype, shape=shape)
    for field, values in contents.items():
        getattr(t.contents, field).extend(values)
    if raw is not None:
        req.raw_input_contents.append(raw)
    return req.SerializeToString()


MAX = 2**63 - 1
CASES = {
    "every datatype raw": [
        _request(d, [2], b"\x01" * 2 * n)
        for d, n in [
            ("BOOL", 1),
            ("UINT8", 1),
            ("UINT16", 2),
            ("UINT32", 4),
            ("UINT64", 8),
            ("INT8", 1),
            ("INT16", 2),
            ("INT32", 4),
            ("INT64", 8),
            ("FP16", 2),
            ("FP32", 4),
            ("FP64", 8),
        ]
    ],
    "typed": [
        _request("BOOL", [3], bool_contents=[True, False, True]),
        _request("INT8", [2], int_contents=[-128, 127]),
        _request("INT8", [2], int_contents=[5, 300]),
        _request("INT16", [1], int_contents=[-32769]),
        _request("UINT8", [1], uint_contents=[256]),
        _request("UINT16", [2], uint_contents=[65535, 65536]),
        _request("INT64", [1, 1], int64_contents=[-(2**63)]),
        _request("UINT64", [1], uint64_contents=[2**64 - 1]),
        _request("FP32", [2], fp32_contents=[1.5, float("nan")]),
        _request("FP64", [1], fp64_contents=[-0.0]),
        _request("FP16", [0, 3]),
        _request("FP16", [1]),
        _request("INT32", [2], int64_contents=[1, 2]),
        # Varints past 32 bits in 32-bit fields: protobuf keeps the low 32 bits.
        _typed("INT8", 2, 2**32 + 5),
        _typed("INT8", 2, 2**32 + 300),
        _typed("INT16", 2, 2**40 - 1),
        _typed("INT32", 2, 2**33 + 9, 2**64 - 1),
        _typed("UINT8", 4, 2**32 + 7),
        _typed("UINT16", 4, 2**36 + 65536),
        _typed("UINT32", 4, 2**64 - 1),
        _typed("BOOL", 1, 2**63, 0, 2**32),
    ],
    "huge dims": [
        _request("FP64", [MAX, MAX, 3], b"\x00"),
        _request("FP64", [MAX] * 64, b""),
        _request("FP32", [MAX] * 64),
        _request("UINT8", [0, MAX], b""),
        _request("UINT16", [0, MAX], b""),
        _request("FP32", [2**61, 0], b""),
        _request("FP32", [0, 2**61 - 1]),
        _request("BOOL", [1] * 64, b"\x01"),
        _request("BOOL", [1] * 65, b"\x01"),
        _request("BOOL", [-1] * 65, b"\x01"),
        _request("FP32", [1, -(2**63)], b""),
    ],
}


@pytest.mark.parametrize("raw", [r for rs in CASES.values() for r in rs], ids=lambda r: str(len(r)))
def test_chosen_cases(raw: bytes) -> None:
    _same(raw, 65536)


def test_fp32_nan_bit_patterns_come_back_as_numpy_sees_them() -> None:
    bits = [0x7F800001, 0xFF800001, 0x7FC00000, 0x7F800000, 0x3FC00000]
    packed = b"".join(struct.pack("<I", b) for b in bits)
    tensor = ld(1, b"x") + ld(2, b"FP32") + vi(3, len(bits)) + ld(5, ld(6, packed))
    got = _same(ld(5, tensor), 65536)
    arr = np.frombuffer(got[4][0][3], np.uint32)
    assert arr.tolist() == [0x7FC00001, 0xFFC00001, 0x7FC00000, 0x7F800000, 0x3FC00000]


def test_out_of_range_values_are_invalid_argument() -> None:
    """Formerly numpy's OverflowError, answered INTERNAL."""
    got = _same(_request("INT8", [3], int_contents=[1, 2, 300]), 65536)
    assert got == (
        "INVALID_ARGUMENT",
        "input 'x': int_contents[2] = 300 is out of range for INT8 [-128, 127]",
    )


def test_shapes_numpy_cannot_hold_are_invalid_argument() -> None:
    """Formerly numpy's ValueError (too many dimensions, too big), answered INTERNAL; and a
    byte-count message with more than 4,300 digits could not be written at all."""
    assert _same(_request("BOOL", [1] * 65, b"\x01"), 9) == (
        "INVALID_ARGUMENT",
        "input 'x': 65 dimensions in shape; at most 64 are supported",
    )
    assert _same(_request("FP32", [MAX] * 300, b""), 9)[1].startswith("input 'x': 300 dim")
    assert _same(_request("FP32", [2**61, 0], b""), 9) == (
        "INVALID_ARGUMENT",
        "input 'x': FP32 [2305843009213693952, 0] is too large: its item size times its "
        "non-zero dimensions exceeds 2**63 - 1 bytes",
    )


def test_row_limit_is_resource_exhausted() -> None:
    raw = _request("FP32", [5, 1], b"\x00" * 20)
    assert _same(raw, 4) == (
        "RESOURCE_EXHAUSTED",
        "input 'x' has 5 rows; this worker accepts at most 4 rows per request "
        "(SHOAL_MAX_REQUEST_ROWS): split the batch",
    )
    assert _same(raw, 5)[0] == "ok"


def test_groups_nest_up_to_upbs_limit() -> None:
    def nested(depth: int) -> bytes:
        return key(15, 3) * depth + key(15, 4) * depth

    assert _same(nested(100), 1)[0] == "ok"
    assert _same(nested(101), 1)[1].endswith("field 15 has an unsupported wire type 3")
    # Inside an input, the input itself is one level.
    assert _same(ld(5, nested(99)), 1)[1].startswith("input '': unsupported datatype ''")
    assert _same(ld(5, nested(100)), 1)[1].endswith(
        "field 15.inputs has an unsupported wire type 3"
    )


def test_the_binding_reports_malformed_bytes_as_codec_error() -> None:
    with pytest.raises(_native.CodecError) as e:
        _native.decode_infer_request(b"\x0a\x04\xff\xfe/m", 1)
    assert e.value.args == (
        "INVALID_ARGUMENT",
        "malformed ModelInferRequest (6 bytes): model_name is not valid UTF-8",
    )
