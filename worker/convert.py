"""Open Inference Protocol messages <-> the worker's plain types (the one wire converter).

Inputs are decoded without copies where the wire allows: ``raw_input_contents`` become
read-only ``np.frombuffer`` views; typed contents (FP32, FP64, INT8..64, UINT8..64, BOOL) are
converted by numpy. Outputs always go back as ``raw_output_contents`` (little-endian, row
major), with the datatype of the array the runtime produced. Malformed tensors (unknown
datatype, more than ``MAX_DIMS`` dimensions, negative dimension, byte length or element count
not matching the shape, a shape numpy cannot hold, a typed value the datatype cannot hold)
raise ``InvalidArgument`` naming the tensor and both sizes.

The native worker front (``native/src/worker/codec``) decodes the same way with the same
messages; ``tests/native/test_codec_*`` hold the two to it.

ModelInfer arrives as bytes (``parse_infer_request``): the worker parses it itself so that bytes
protobuf refuses — a truncated field, a string such as ``model_name`` that is not valid UTF-8
— are the caller's INVALID_ARGUMENT, named precisely, instead of the opaque failure gRPC's own
deserializer would report.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from shoal.artifacts import DTYPES
from shoal.pb import shoal_inference_pb2 as pb
from worker.errors import InvalidArgument
from worker.types import InferRequest, InferResult, ModelMeta, Tensor

#: numpy dtype -> V2 datatype name.
DATATYPE_OF: dict[np.dtype[Any], str] = {dt: name for name, dt in DTYPES.items()}

#: numpy's limit on an array's dimensions (NPY_MAXDIMS): a longer shape is refused before its
#: size is computed (numpy could not hold it, and its size need not be printable).
MAX_DIMS = 64

#: Narrow integer datatypes -> the values they hold (``int_contents``/``uint_contents`` carry
#: 32-bit values; numpy would raise OverflowError on one that does not fit).
_RANGES = {"INT8": (-128, 127), "INT16": (-32768, 32767), "UINT8": (0, 255), "UINT16": (0, 65535)}

#: V2 datatype -> the typed-contents field carrying it.
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


def _check_fits(t: Any, shape: tuple[int, ...], itemsize: int) -> None:
    """numpy refuses a shape whose item size times its non-zero dimensions exceeds 2**63 - 1
    bytes, even when another dimension is 0 (only an empty tensor can get here with one)."""
    nbytes = itemsize
    for d in shape:
        nbytes *= d or 1
    if nbytes > 2**63 - 1:
        raise InvalidArgument(
            f"input {t.name!r}: {t.datatype} {list(shape)} is too large: its item size times "
            "its non-zero dimensions exceeds 2**63 - 1 bytes"
        )


def _typed_array(t: Any, field: str, values: Any, dtype: np.dtype[Any]) -> np.ndarray:
    """``np.asarray(values, dtype)``, refusing a value a narrow integer datatype cannot hold."""
    bounds = _RANGES.get(t.datatype)
    if bounds is None or not len(values):
        return np.asarray(values, dtype=dtype)
    wide = np.asarray(values, dtype=np.int64)
    lo, hi = bounds
    bad = np.flatnonzero((wide < lo) | (wide > hi))
    if bad.size:
        i = int(bad[0])
        raise InvalidArgument(
            f"input {t.name!r}: {field}[{i}] = {int(wide[i])} is out of range for "
            f"{t.datatype} [{lo}, {hi}]"
        )
    return wide.astype(dtype)


def _decode_tensor(t: Any, raw: bytes | None) -> Tensor:
    dtype = DTYPES.get(t.datatype)
    if dtype is None:
        raise InvalidArgument(
            f"input {t.name!r}: unsupported datatype {t.datatype!r} "
            f"(expected one of {', '.join(DTYPES)})"
        )
    if len(t.shape) > MAX_DIMS:
        raise InvalidArgument(
            f"input {t.name!r}: {len(t.shape)} dimensions in shape; "
            f"at most {MAX_DIMS} are supported"
        )
    shape = tuple(int(d) for d in t.shape)
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"input {t.name!r}: negative dimension in shape {list(shape)}")
    count = math.prod(shape)
    if raw is not None:
        need = count * dtype.itemsize
        if len(raw) != need:
            raise InvalidArgument(
                f"input {t.name!r}: {len(raw)} bytes of raw contents, but {t.datatype} "
                f"{list(shape)} needs {need}"
            )
        _check_fits(t, shape, dtype.itemsize)
        arr = np.frombuffer(raw, dtype=dtype).reshape(shape)
    else:
        field = _CONTENTS_FIELD.get(t.datatype)
        values = getattr(t.contents, field) if field else ()
        if len(values) != count:
            raise InvalidArgument(
                f"input {t.name!r}: {len(values)} values in contents, but {t.datatype} "
                f"{list(shape)} needs {count}"
            )
        _check_fits(t, shape, dtype.itemsize)
        arr = _typed_array(t, field or "", values, dtype).reshape(shape)
    return Tensor(t.name, t.datatype, arr)


#: String fields of ModelInferRequest (and of the messages inside it) by field number: a name,
#: or (name, fields of the nested message). Only used to explain a parse failure.
_Schema = dict[int, "str | tuple[str, _Schema]"]
_PARAMS: _Schema = {1: "key"}
_REQUEST_STRINGS: _Schema = {
    1: "model_name",
    2: "model_version",
    3: "id",
    4: ("parameters", _PARAMS),
    5: ("inputs", {1: "name", 2: "datatype", 4: ("parameters", _PARAMS)}),
    6: ("outputs", {1: "name", 2: ("parameters", _PARAMS)}),
}


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("a truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _explain(buf: bytes, schema: _Schema, where: str = "") -> str:
    """Why protobuf refused ``buf``: the first bad string field or structural fault found."""
    i = 0
    try:
        while i < len(buf):
            key, i = _varint(buf, i)
            field, wire = key >> 3, key & 7
            if wire == 0:
                _, i = _varint(buf, i)
            elif wire == 1 or wire == 5:
                i += 8 if wire == 1 else 4
            elif wire == 2:
                n, i = _varint(buf, i)
                if i + n > len(buf):
                    return f"field {field}{where} claims {n} bytes but only {len(buf) - i} remain"
                chunk, i = buf[i : i + n], i + n
                spec = schema.get(field)
                if isinstance(spec, str):
                    try:
                        chunk.decode("utf-8")
                    except UnicodeDecodeError:
                        return f"{where.lstrip('.')}{'.' if where else ''}{spec} is not valid UTF-8"
                elif spec is not None:
                    inner = _explain(chunk, spec[1], f"{where}.{spec[0]}")
                    if inner:
                        return inner
            else:
                return f"field {field}{where} has an unsupported wire type {wire}"
            if i > len(buf):
                return f"field {field}{where} is truncated"
    except ValueError as exc:
        return f"{exc} at byte {i}{' in ' + where.lstrip('.') if where else ''}"
    return ""


def parse_infer_request(raw: bytes) -> InferRequest:
    """A ModelInferRequest's wire bytes as a plain request; ``InvalidArgument`` saying why not."""
    try:
        req = pb.ModelInferRequest.FromString(raw)
    except DecodeError:
        why = _explain(raw, _REQUEST_STRINGS) or "not a valid protobuf encoding"
        raise InvalidArgument(f"malformed ModelInferRequest ({len(raw)} bytes): {why}") from None
    return infer_request_from_proto(req)


def infer_request_from_proto(req: pb.ModelInferRequest) -> InferRequest:
    raw = req.raw_input_contents
    if raw and len(raw) != len(req.inputs):
        raise InvalidArgument(
            f"{len(raw)} raw_input_contents for {len(req.inputs)} inputs (give one per input)"
        )
    inputs = tuple(_decode_tensor(t, raw[i] if raw else None) for i, t in enumerate(req.inputs))
    return InferRequest(
        model=req.model_name,
        version=req.model_version,
        inputs=inputs,
        outputs=tuple(o.name for o in req.outputs),
        id=req.id,
    )


def infer_response_to_proto(res: InferResult) -> pb.ModelInferResponse:
    resp = pb.ModelInferResponse(model_name=res.model, model_version=str(res.version), id=res.id)
    for t in res.outputs:
        out = resp.outputs.add()
        out.name = t.name
        out.datatype = t.datatype
        out.shape.extend(t.array.shape)
        resp.raw_output_contents.append(np.ascontiguousarray(t.array).tobytes())
    return resp


def output_tensor(name: str, array: np.ndarray) -> Tensor:
    """Wrap a runtime output, naming its V2 datatype (int/float widths the runtime chose)."""
    datatype = DATATYPE_OF.get(array.dtype)
    if datatype is None:
        array = array.astype(np.float64) if array.dtype.kind == "f" else array.astype(np.int64)
        datatype = DATATYPE_OF[array.dtype]
    return Tensor(name, datatype, array)


def model_metadata_to_proto(meta: ModelMeta) -> pb.ModelMetadataResponse:
    resp = pb.ModelMetadataResponse(
        name=meta.name, versions=list(meta.versions), platform=meta.platform
    )
    for t in meta.inputs:
        resp.inputs.add(name=t.name, datatype=t.datatype, shape=list(t.shape))
    for t in meta.outputs:
        resp.outputs.add(name=t.name, datatype=t.datatype, shape=list(t.shape))
    return resp
