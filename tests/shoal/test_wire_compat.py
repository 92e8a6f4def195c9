"""Shoal's inference messages are wire-identical to tritonclient's, and import beside them."""

from __future__ import annotations

import numpy as np
import tritonclient.grpc as triton
from google.protobuf.unknown_fields import UnknownFieldSet
from tritonclient.grpc import service_pb2 as tpb

from shoal.pb import shoal_inference_pb2 as pb


def _triton_request() -> tpb.ModelInferRequest:
    a = triton.InferInput("input__0", [3, 4], "FP32")
    a.set_data_from_numpy(np.arange(12, dtype=np.float32).reshape(3, 4))
    b = triton.InferInput("ids", [3], "INT64")
    b.set_data_from_numpy(np.array([1, 2, 3], dtype=np.int64))
    req = tpb.ModelInferRequest(model_name="acme/churn", model_version="7", id="req-1")
    req.parameters["priority"].int64_param = 3
    req.parameters["tag"].string_param = "x"
    req.inputs.extend([a._get_tensor(), b._get_tensor()])
    req.raw_input_contents.extend([a._get_content(), b._get_content()])
    out = req.outputs.add()
    out.name = "output__0"
    typed = req.inputs.add()
    typed.name = "typed"
    typed.datatype = "FP64"
    typed.shape.extend([2])
    typed.contents.fp64_contents.extend([1.5, 2.5])
    return req


def test_request_roundtrip_is_byte_identical() -> None:
    wire = _triton_request().SerializeToString(deterministic=True)
    ours = pb.ModelInferRequest.FromString(wire)
    assert ours.model_name == "acme/churn" and ours.model_version == "7"
    assert list(ours.inputs[0].shape) == [3, 4]
    assert ours.parameters["priority"].int64_param == 3
    assert list(ours.inputs[2].contents.fp64_contents) == [1.5, 2.5]
    # Every field was understood (none kept as unknown bytes), at every nesting level.
    for msg in (ours, *ours.inputs, *ours.outputs, *[i.contents for i in ours.inputs]):
        assert len(UnknownFieldSet(msg)) == 0
    assert ours.SerializeToString(deterministic=True) == wire


def test_response_roundtrip_is_byte_identical() -> None:
    resp = pb.ModelInferResponse(model_name="acme/churn", model_version="7", id="req-1")
    out = resp.outputs.add()
    out.name = "output__0"
    out.datatype = "FP32"
    out.shape.extend([3])
    resp.raw_output_contents.append(np.array([0.1, 0.2, 0.3], np.float32).tobytes())
    resp.parameters["sequence"].bool_param = True
    wire = resp.SerializeToString(deterministic=True)
    theirs = tpb.ModelInferResponse.FromString(wire)
    assert theirs.model_version == "7" and list(theirs.outputs[0].shape) == [3]
    assert theirs.SerializeToString(deterministic=True) == wire
    result = triton.InferResult(theirs)
    np.testing.assert_array_equal(result.as_numpy("output__0"), np.float32([0.1, 0.2, 0.3]))


def test_metadata_messages_match() -> None:
    ours = pb.ModelMetadataResponse(name="a/b", versions=["1", "2"], platform="xgboost")
    t = ours.inputs.add()
    t.name, t.datatype = "input__0", "FP32"
    t.shape.extend([-1, 30])
    wire = ours.SerializeToString(deterministic=True)
    theirs = tpb.ModelMetadataResponse.FromString(wire)
    assert list(theirs.inputs[0].shape) == [-1, 30]
    assert theirs.SerializeToString(deterministic=True) == wire
    for name in ("ServerLiveResponse", "ServerReadyResponse", "ModelReadyRequest"):
        ours_t, theirs_t = getattr(pb, name), getattr(tpb, name)
        fields_o = {(f.name, f.number, f.type) for f in ours_t.DESCRIPTOR.fields}
        fields_t = {(f.name, f.number, f.type) for f in theirs_t.DESCRIPTOR.fields}
        assert fields_o == fields_t, name


def test_routing_header_override_by_appending() -> None:
    """The router's trick: append field 2 to override model_version without re-encoding."""
    wire = _triton_request().SerializeToString()
    header = pb.InferRoutingHeader.FromString(wire)
    assert header.model_name == "acme/churn" and header.model_version == "7"
    patched = wire + pb.InferRoutingHeader(model_version="9").SerializeToString()
    full = pb.ModelInferRequest.FromString(patched)
    assert full.model_version == "9" and full.id == "req-1"
    assert full.raw_input_contents[0] == _triton_request().raw_input_contents[0]


def test_no_inference_symbols_claimed() -> None:
    assert pb.DESCRIPTOR.package == "shoal.oip.v2"
    assert tpb.DESCRIPTOR.package == "inference"
