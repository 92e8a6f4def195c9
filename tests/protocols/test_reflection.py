"""gRPC server reflection on the gateway, read with grpcio-reflection's client (what grpcurl
does): the services are listed, ModelInfer is described, a request built from the reflected
descriptors alone is answered, and every reflected message of the inference service agrees
field by field with tritonclient's own definitions."""

from __future__ import annotations

import grpc
import numpy as np
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from tritonclient.grpc import service_pb2

from tests.protocols.conftest import Served

SERVICES = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
    "inference.GRPCInferenceService",
]


def _fields(d: Descriptor) -> dict[str, tuple[int, int, int, str]]:
    return {
        f.name: (
            f.number,
            f.type,
            f.label,
            (f.message_type or f.enum_type).full_name if (f.message_type or f.enum_type) else "",
        )
        for f in d.fields
    }


def test_reflection_lists_describes_and_serves(served: Served) -> None:
    with grpc.insecure_channel(served.router) as channel:  # no key: it describes the API only
        db = ProtoReflectionDescriptorDatabase(channel)
        assert sorted(db.get_services()) == SERVICES
        pool = descriptor_pool.DescriptorPool(db)
        service = pool.FindServiceByName("inference.GRPCInferenceService")
        infer = service.methods_by_name["ModelInfer"]
        assert infer.input_type.full_name == "inference.ModelInferRequest"
        assert infer.output_type.full_name == "inference.ModelInferResponse"
        stream = service.methods_by_name["ModelStreamInfer"]
        assert stream.client_streaming and stream.server_streaming
        assert {"ModelConfig", "ModelStatistics", "RepositoryIndex"} <= set(service.methods_by_name)

        # Every message reflected agrees with tritonclient's definition of it.
        checked = 0
        for method in service.methods:
            for ours in (method.input_type, method.output_type):
                todo = [ours]
                while todo:
                    d = todo.pop()
                    theirs = service_pb2.DESCRIPTOR.pool.FindMessageTypeByName(d.full_name)
                    mine, ref = _fields(d), _fields(theirs)
                    assert set(mine) <= set(ref), d.full_name
                    for name, spec in mine.items():
                        assert spec == ref[name], (d.full_name, name, spec, ref[name])
                    checked += 1
                    todo += [f.message_type for f in d.fields if f.message_type is not None]
        assert checked > 20

        # A client that knows only what reflection told it (grpcurl's way) gets an answer.
        request_cls = message_factory.GetMessageClass(infer.input_type)
        response_cls = message_factory.GetMessageClass(infer.output_type)
        row = served.rows[0]
        req = request_cls(model_name="acme/xgb", id="refl")
        tensor = req.inputs.add(name="input__0", datatype="FP32", shape=[1, len(row)])
        tensor.contents.fp32_contents.extend(row.tolist())
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_cls.FromString,
        )
        reply = call(req, metadata=list(served.auth().items()), timeout=30)
        assert reply.id == "refl" and reply.model_name == "acme/xgb"
        got = np.frombuffer(reply.raw_output_contents[0], np.float32)
        np.testing.assert_allclose(got, served.expected["acme/xgb"][0], rtol=1e-6)


def test_reflection_answers_not_found_for_unknown_symbols(served: Served) -> None:
    with grpc.insecure_channel(served.router) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        try:
            db.FindFileContainingSymbol("inference.NoSuchThing")
        except KeyError:
            pass
        else:
            raise AssertionError("an unknown symbol was found")
        # The stream stays usable after a miss.
        assert db.FindFileContainingSymbol("inference.ModelInferRequest").package == "inference"


def test_v1_answers_as_v1alpha(served: Served) -> None:
    """grpc.reflection.v1 (what newer grpcurl asks first) has v1alpha's message layout."""
    from grpc_reflection.v1alpha import reflection_pb2 as rpb

    with grpc.insecure_channel(served.router) as channel:
        call = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=rpb.ServerReflectionRequest.SerializeToString,
            response_deserializer=rpb.ServerReflectionResponse.FromString,
        )
        asks = [
            rpb.ServerReflectionRequest(host="h", list_services=""),
            rpb.ServerReflectionRequest(file_containing_symbol="inference.Nope"),
        ]
        listed, missing = list(call(iter(asks), timeout=10))
        assert [s.name for s in listed.list_services_response.service] == SERVICES
        assert listed.valid_host == "h" and listed.original_request.list_services == ""
        assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
