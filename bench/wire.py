"""Request bodies and single verified calls, shared by the load generators.

``infer_request`` encodes one ModelInferRequest (raw_input_contents, as tritonclient sends
by default); ``grpc_frame`` wraps it the way gRPC puts a message on an HTTP/2 stream
(1 byte "compressed" flag, 4 bytes big-endian length, the bytes), which is what h2load posts.
``infer_once`` makes one real gRPC call and checks the status and the outputs, since h2load
counts HTTP statuses and never reads gRPC trailers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from shoal.artifacts import DTYPES
from shoal.pb import shoal_inference_pb2 as pb

INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"


def infer_request(
    model: str, row: np.ndarray, input_name: str = "input__0", version: str = ""
) -> bytes:
    arr = np.ascontiguousarray(row, dtype=np.float32)
    req = pb.ModelInferRequest(model_name=model, model_version=version)
    req.inputs.add(name=input_name, datatype="FP32", shape=list(arr.shape))
    req.raw_input_contents.append(arr.tobytes())
    return req.SerializeToString()


def grpc_frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


@dataclass(frozen=True)
class CallResult:
    model: str
    version: str
    outputs: dict[str, list[Any]]
    response_bytes: int


def decode_outputs(resp: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for i, t in enumerate(resp.outputs):
        if i < len(resp.raw_output_contents):
            arr = np.frombuffer(resp.raw_output_contents[i], dtype=DTYPES[t.datatype])
            out[t.name] = arr.reshape([int(d) for d in t.shape]).tolist()
        else:
            c = t.contents
            vals = list(c.fp32_contents or c.fp64_contents or c.int64_contents or c.int_contents)
            out[t.name] = vals
    return out


def infer_once(address: str, body: bytes, timeout: float = 30.0) -> CallResult:
    """One ModelInfer over a fresh channel; raises ``grpc.RpcError`` on any non-OK status."""
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(INFER_PATH)
        raw: bytes = call(body, timeout=timeout)
    resp = pb.ModelInferResponse.FromString(raw)
    return CallResult(resp.model_name, resp.model_version, decode_outputs(resp), len(raw))
