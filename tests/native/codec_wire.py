"""Building ModelInferRequests byte by byte (for what protobuf will not write: fields in any
order, non-canonical varints, wire-type mismatches, groups, raw fp32 bit patterns), and the
two paths under comparison: the Python worker's (``parse_infer_request`` + ``check_rows``)
and the native codec's, each reduced to a comparable outcome."""

from __future__ import annotations

from typing import Any

import numpy as np

from shoal import _native
from shoal.artifacts import DTYPES
from worker.convert import parse_infer_request
from worker.errors import WorkerError
from worker.limits import check_rows

#: A decoded request, as both paths are compared: ("ok", model, version, id, inputs as
#: (name, datatype, shape, bytes), outputs), or (code, message) for a refusal.
Outcome = tuple[Any, ...]


def varint(n: int, pad: int = 0) -> bytes:
    """``n`` (taken mod 2**64) as a varint, with ``pad`` extra continuation bytes."""
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if not n:
            out.append(b)
            break
        out.append(b | 0x80)
    if pad:
        out[-1] |= 0x80
        out += b"\x80" * (pad - 1) + b"\x00"
    return bytes(out)


def key(field: int, wire: int, pad: int = 0) -> bytes:
    return varint(field << 3 | wire, pad)


def ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return key(field, 2) + varint(len(payload)) + payload


def vi(field: int, n: int) -> bytes:
    """A varint field."""
    return key(field, 0) + varint(n)


def python_outcome(raw: bytes, max_rows: int) -> Outcome:
    """What the Python worker answers: the decoded request, or (code, message). An exception
    that is not a ``WorkerError`` is INTERNAL with ``Type: text``, as the servicer says it."""
    try:
        req = parse_infer_request(raw)
        check_rows(req.inputs, max_rows)
    except WorkerError as exc:
        return (exc.code.value, exc.message)
    except Exception as exc:
        return ("INTERNAL", f"{type(exc).__name__}: {exc}")
    inputs = []
    for t in req.inputs:
        assert t.array.dtype == DTYPES[t.datatype], (t.datatype, t.array.dtype)
        data = np.ascontiguousarray(t.array).tobytes()
        inputs.append((t.name, t.datatype, list(t.array.shape), data))
    return ("ok", req.model, req.version, req.id, inputs, list(req.outputs))


def native_outcome(raw: bytes, max_rows: int) -> Outcome:
    try:
        model, version, id_, inputs, outputs = _native.decode_infer_request(raw, max_rows)
    except _native.CodecError as exc:
        return tuple(exc.args)
    return ("ok", model, version, id_, [tuple(t) for t in inputs], outputs)
