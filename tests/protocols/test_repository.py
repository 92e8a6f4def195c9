"""ModelConfig, ModelStatistics and RepositoryIndex through the gateway, with tritonclient:
configs from the signatures, statistics that follow the requests just made, an index of the
caller's own models (paged), and another tenant's model answering like a missing one."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from shoal.oip import path
from tests.protocols.conftest import MODELS, Served


def _infer(client: triton.InferenceServerClient, served: Served, model: str, n: int) -> None:
    inp = triton.InferInput(served.inputs[model], [n, served.rows.shape[1]], "FP32")
    inp.set_data_from_numpy(served.rows[:n])
    client.infer(model, [inp], headers=served.auth())


def _refusal(call: Callable[..., object], *args: object) -> str:
    with pytest.raises(InferenceServerException) as info:
        call(*args)
    return f"{info.value.status()}: {info.value.message()}"


def test_model_config_follows_the_signature(served: Served) -> None:
    client = triton.InferenceServerClient(served.router)
    try:
        for model in MODELS:
            meta = client.get_model_metadata(model, headers=served.auth())
            config = client.get_model_config(model, headers=served.auth()).config
            assert config.name == model
            assert config.platform == meta.platform
            assert config.backend == {"acme/onnx": "onnxruntime"}.get(model, meta.platform)
            assert config.max_batch_size == 0  # dims carry the batch dimension as -1
            assert [i.name for i in config.input] == [i.name for i in meta.inputs]
            assert [list(i.dims) for i in config.input] == [list(i.shape) for i in meta.inputs]
            assert [list(o.dims) for o in config.output] == [list(o.shape) for o in meta.outputs]
            for i in config.input:
                assert triton.model_config_pb2.DataType.Name(i.data_type) == "TYPE_FP32"
            assert config.input[0].dims[-1] == served.rows.shape[1]
        # Pinned versions resolve as for inference; an unknown one is NOT_FOUND.
        assert client.get_model_config("acme/xgb", "1", headers=served.auth()).config.input
        assert _refusal(
            lambda: client.get_model_config("acme/xgb", "9", headers=served.auth())
        ).startswith("StatusCode.NOT_FOUND")
    finally:
        client.close()


def test_statistics_follow_the_requests_just_made(served: Served) -> None:
    client = triton.InferenceServerClient(served.router)
    try:

        def stats(model: str) -> tuple[int, int, int, int, int, int]:
            (s,) = client.get_inference_statistics(model, headers=served.auth()).model_stats
            assert s.name == model and s.version == "1"
            st = s.inference_stats
            # Requests as the gateway counts them; executions and rows as the workers do.
            return (
                st.success.count,
                st.fail.count,
                s.execution_count,
                s.inference_count,
                st.compute_infer.count,
                s.last_inference,
            )

        for m in MODELS:  # resident: the request that loads a model is the loader's, not a
            _infer(client, served, m, 1)  # runtime call of the worker's (see the README)
        before = {m: stats(m) for m in MODELS}
        for _ in range(3):
            _infer(client, served, "acme/lgbm", 2)
        # A failure (wrong width) counts as a failed request of that version, never runs.
        bad = triton.InferInput("input__0", [1, 2], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 2), np.float32))
        with pytest.raises(InferenceServerException):
            client.infer("acme/lgbm", [bad], headers=served.auth())
        after = {m: stats(m) for m in MODELS}
        delta = [
            a - b for a, b in zip(after["acme/lgbm"][:5], before["acme/lgbm"][:5], strict=True)
        ]
        assert delta == [3, 1, 3, 6, 3]  # ok, failed, executions, rows, compute calls
        assert after["acme/lgbm"][5] > 0
        (s,) = client.get_inference_statistics("acme/lgbm", headers=served.auth()).model_stats
        assert s.inference_stats.success.ns > s.inference_stats.compute_infer.ns > 0
        for m in ("acme/xgb", "acme/onnx"):  # untouched models did not move
            assert after[m][:5] == before[m][:5]
        # No name: every model of the caller's tenant, and only those.
        every = client.get_inference_statistics(headers=served.auth()).model_stats
        assert sorted(s.name for s in every) == sorted(MODELS)
    finally:
        client.close()


def test_the_index_lists_the_callers_own_models_paged(served: Served) -> None:
    client = triton.InferenceServerClient(served.router)
    try:
        index = client.get_model_repository_index(headers=served.auth()).models
        assert sorted((m.name, m.version, m.state) for m in index) == [
            (m, "1", "READY") for m in sorted(MODELS)
        ]
        other = client.get_model_repository_index(headers=served.auth("other")).models
        assert [(m.name, m.state) for m in other] == [("other/xgb", "READY")]
    finally:
        client.close()
    # Pages: metadata in, the next token in the trailers (a raw call reads them).
    with grpc.insecure_channel(served.router) as channel:
        call = channel.unary_unary(
            path("RepositoryIndex"),
            request_serializer=triton.service_pb2.RepositoryIndexRequest.SerializeToString,
            response_deserializer=triton.service_pb2.RepositoryIndexResponse.FromString,
        )
        names: list[str] = []
        token = ""
        pages = 0
        while True:
            md = [*served.auth().items(), ("shoal-page-size", "2")]
            if token:
                md.append(("shoal-page-token", token))
            reply, rpc = call.with_call(
                triton.service_pb2.RepositoryIndexRequest(), metadata=md, timeout=10
            )
            pages += 1
            names += [m.name for m in reply.models]
            token = dict(rpc.trailing_metadata() or ()).get("shoal-next-page-token", "")
            if not token:
                break
        assert pages == 2 and names == sorted(MODELS)
        with pytest.raises(grpc.RpcError) as info:
            call(
                triton.service_pb2.RepositoryIndexRequest(),
                metadata=[*served.auth().items(), ("shoal-page-size", "0")],
                timeout=10,
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_every_call_refuses_a_missing_key_and_hides_other_tenants(served: Served) -> None:
    client = triton.InferenceServerClient(served.router)
    try:
        calls = {
            "config": lambda model, h: client.get_model_config(model, headers=h),
            "statistics": lambda model, h: client.get_inference_statistics(model, headers=h),
        }
        for name, call in calls.items():
            missing = _refusal(call, "acme/nope", served.auth())
            foreign = _refusal(call, "other/xgb", served.auth())
            assert missing.startswith("StatusCode.NOT_FOUND"), (name, missing)
            assert foreign.replace("other/xgb", "acme/nope") == missing, name
            for h in ({}, {"authorization": "Bearer wrong"}):
                got = _refusal(call, "acme/xgb", h)
                assert got.startswith("StatusCode.UNAUTHENTICATED"), (name, got)
        got = _refusal(lambda: client.get_model_repository_index(headers={}))
        assert got.startswith("StatusCode.UNAUTHENTICATED")
        # The other tenant's statistics never show this tenant's models.
        other = client.get_inference_statistics(headers=served.auth("other")).model_stats
        assert [s.name for s in other] == ["other/xgb"]
    finally:
        client.close()
