"""Open Inference Protocol plumbing: method paths, handler registration, client calls.

Our messages live in the ``shoal.oip.v2`` proto package (so ``tritonclient`` can be imported
in the same process), but the wire contract is Triton's/KServe's: methods are served and
called at ``/inference.GRPCInferenceService/<Method>``. This module is the one place that
binds the two.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
import numpy as np

from shoal.artifacts import DTYPES
from shoal.pb import shoal_inference_pb2 as pb

SERVICE = "inference.GRPCInferenceService"

#: method name -> (request type, response type)
METHODS: dict[str, tuple[Any, Any]] = {
    "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse),
    "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
    "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
    "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
    "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
    "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse),
}


#: Trailing metadata of a worker's refusal that another worker may well not give (a model's
#: concurrency line full on this one): the router then tries the tenant's next shard member.
RETRY_ELSEWHERE: tuple[tuple[str, str], ...] = (("shoal-retry", "elsewhere"),)


def path(method: str) -> str:
    return f"/{SERVICE}/{method}"


Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def generic_handler(
    handlers: Mapping[str, Handler], raw: frozenset[str] = frozenset()
) -> grpc.GenericRpcHandler:
    """Bind ``handlers`` (method name -> async fn(request, context)) at the protocol's paths.

    Methods named in ``raw`` receive the request as ``bytes`` and return ``bytes`` (the router
    forwards ModelInfer this way, without decoding tensors).
    """
    unknown = set(handlers) - set(METHODS)
    if unknown:
        raise ValueError(f"not Open Inference Protocol methods: {sorted(unknown)}")
    rpc_handlers = {}
    for name, fn in handlers.items():
        req_t, resp_t = METHODS[name]
        if name in raw:
            rpc_handlers[name] = grpc.unary_unary_rpc_method_handler(fn)
        else:
            rpc_handlers[name] = grpc.unary_unary_rpc_method_handler(
                fn,
                request_deserializer=req_t.FromString,
                response_serializer=resp_t.SerializeToString,
            )
    return grpc.method_handlers_generic_handler(SERVICE, rpc_handlers)


class InferenceStub:
    """Client side of the protocol on one channel, with our message types."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        def call(name: str) -> Any:
            req_t, resp_t = METHODS[name]
            return channel.unary_unary(
                path(name),
                request_serializer=req_t.SerializeToString,
                response_deserializer=resp_t.FromString,
            )

        self.ServerLive = call("ServerLive")
        self.ServerReady = call("ServerReady")
        self.ModelReady = call("ModelReady")
        self.ServerMetadata = call("ServerMetadata")
        self.ModelMetadata = call("ModelMetadata")
        self.ModelInfer = call("ModelInfer")
        #: ModelInfer on bytes in, bytes out (no parsing either way).
        self.ModelInferRaw = channel.unary_unary(path("ModelInfer"))


def outputs(resp: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """Decode a response's outputs (raw or typed contents) to arrays, by name."""
    out: dict[str, np.ndarray] = {}
    for i, t in enumerate(resp.outputs):
        dtype = DTYPES.get(t.datatype)
        if dtype is None:
            continue
        if i < len(resp.raw_output_contents):
            arr = np.frombuffer(resp.raw_output_contents[i], dtype=dtype)
        else:
            c = t.contents
            typed = (
                c.fp32_contents or c.fp64_contents or c.int64_contents or c.int_contents
                or c.uint64_contents or c.uint_contents or c.bool_contents
            )  # fmt: skip
            arr = np.asarray(list(typed), dtype=dtype)
        out[t.name] = arr.reshape(tuple(t.shape)) if arr.size == int(np.prod(t.shape)) else arr
    return out
