"""KServe V2 REST on the gateway, with tritonclient.http as the client: JSON and binary
tensors answer like the models themselves, the repository calls answer like their gRPC twins,
and bad requests get Triton's statuses with {"error": ...} while the gateway goes on."""

from __future__ import annotations

import gzip
import json
import urllib.error
import urllib.request
from typing import Any

import numpy as np
import pytest
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from tests.protocols.conftest import MODELS, Served


def _client(served: Served) -> thttp.InferenceServerClient:
    rest = served.cluster.router.extra["rest"] if served.cluster.router else ""
    return thttp.InferenceServerClient(rest)


def _rest(served: Served) -> str:
    assert served.cluster.router is not None
    return served.cluster.router.extra["rest"]


def _call(
    served: Served,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    method: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(
        f"http://{_rest(served)}{path}", data=body, headers=headers or {}, method=method
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_rest_infer_equals_the_models(served: Served, binary: bool) -> None:
    client = _client(served)
    try:
        for model in MODELS:
            meta = client.get_model_metadata(model, headers=served.auth())
            out_name = meta["outputs"][0]["name"]
            for rows in (served.rows[:1], served.rows):
                inp = thttp.InferInput(served.inputs[model], list(rows.shape), "FP32")
                inp.set_data_from_numpy(rows, binary_data=binary)
                out = thttp.InferRequestedOutput(out_name, binary_data=binary)
                result = client.infer(
                    model, [inp], outputs=[out], request_id="r1", headers=served.auth()
                )
                resp = result.get_response()
                assert resp["model_name"] == model and resp["model_version"] == "1"
                assert resp["id"] == "r1"
                assert ("parameters" in resp["outputs"][0]) == binary  # binary_data_size
                got = result.as_numpy(out_name).reshape(len(rows), -1)
                np.testing.assert_allclose(got, served.expected[model][: len(rows)], rtol=1e-6)
    finally:
        client.close()


def test_rest_compression_both_ways(served: Served) -> None:
    client = _client(served)
    try:
        rows = served.rows[:8]
        inp = thttp.InferInput("input__0", list(rows.shape), "FP32")
        inp.set_data_from_numpy(rows, binary_data=False)
        result = client.infer(
            "acme/xgb",
            [inp],
            headers=served.auth(),
            request_compression_algorithm="gzip",
            response_compression_algorithm="gzip",
        )
        got = result.as_numpy(result.get_response()["outputs"][0]["name"]).reshape(8, -1)
        np.testing.assert_allclose(got, served.expected["acme/xgb"][:8], rtol=1e-6)
    finally:
        client.close()


def test_rest_server_and_repository_calls(served: Served) -> None:
    client = _client(served)
    try:
        assert client.is_server_live() and client.is_server_ready()
        meta = client.get_server_metadata()
        assert meta["name"] == "shoal-router"
        assert "binary_tensor_data" in meta["extensions"]
        for model in MODELS:
            assert client.is_model_ready(model, headers=served.auth())
            assert client.is_model_ready(model, "1", headers=served.auth())
            config = client.get_model_config(model, headers=served.auth())
            assert config["name"] == model and config["max_batch_size"] == 0
            assert config["input"][0]["data_type"] == "TYPE_FP32"
            assert config["input"][0]["dims"] == [-1, served.rows.shape[1]]
        assert not client.is_model_ready("other/xgb", headers=served.auth())  # not ours
        index = client.get_model_repository_index(headers=served.auth())
        assert sorted((m["name"], m["state"]) for m in index) == [
            (m, "READY") for m in sorted(MODELS)
        ]
        before = client.get_inference_statistics("acme/onnx", headers=served.auth())
        n0 = before["model_stats"][0]["inference_stats"]["success"]["count"]
        inp = thttp.InferInput("input", [1, served.rows.shape[1]], "FP32")
        inp.set_data_from_numpy(served.rows[:1])
        client.infer("acme/onnx", [inp], headers=served.auth())
        after = client.get_inference_statistics("acme/onnx", headers=served.auth())
        assert after["model_stats"][0]["inference_stats"]["success"]["count"] == n0 + 1
        assert after["model_stats"][0]["inference_stats"]["compute_infer"]["count"] >= 1
        assert after["model_stats"][0]["inference_count"] >= 1
        every = client.get_inference_statistics(headers=served.auth())["model_stats"]
        assert sorted(s["name"] for s in every) == sorted(MODELS)
    finally:
        client.close()
    # The index pages by model name (query parameters in, a header out).
    status, headers, body = _call(
        served, "/v2/repository/index?page_size=2", b"{}", served.auth(), "POST"
    )
    assert status == 200 and len(json.loads(body)) == 2
    token = headers.get("shoal-next-page-token")
    assert token == sorted(MODELS)[1]
    status, headers, body = _call(
        served, f"/v2/repository/index?page_size=2&page_token={token}", b"{}", served.auth(), "POST"
    )
    assert [m["name"] for m in json.loads(body)] == sorted(MODELS)[2:]
    assert "shoal-next-page-token" not in headers


def _error(status: int, body: bytes) -> tuple[int, str]:
    doc = json.loads(body)
    assert set(doc) == {"error"}, doc
    return status, doc["error"]


def test_every_rest_call_refuses_a_missing_key_and_hides_other_tenants(served: Served) -> None:
    infer_body = json.dumps(
        {"inputs": [{"name": "input__0", "shape": [1, 6], "datatype": "FP32", "data": [0] * 6}]}
    ).encode()
    calls: list[tuple[str, str, bytes | None]] = [
        ("GET", "/v2/models/{m}", None),
        ("GET", "/v2/models/{m}/config", None),
        ("GET", "/v2/models/{m}/stats", None),
        ("POST", "/v2/models/{m}/infer", infer_body),
        ("GET", "/v2/models/{m}/versions/1", None),
    ]
    for method, path, body in calls:
        for auth in ({}, {"authorization": "Bearer wrong"}):
            status, headers, raw = _call(served, path.format(m="acme/xgb"), body, auth, method)
            assert _error(status, raw)[0] == 401, (path, raw)
            assert headers.get("www-authenticate") == "Bearer"
        missing = _call(served, path.format(m="acme/nope"), body, served.auth(), method)
        foreign = _call(served, path.format(m="other/xgb"), body, served.auth(), method)
        m_status, m_msg = _error(missing[0], missing[2])
        f_status, f_msg = _error(foreign[0], foreign[2])
        assert m_status == 404 and f_status == 404, (path, m_msg, f_msg)
        assert f_msg.replace("other/xgb", "acme/nope") == m_msg
    for path in ("/v2/models/stats", "/v2/repository/index"):
        method = "POST" if "index" in path else "GET"
        status, _, raw = _call(served, path, b"{}" if method == "POST" else None, {}, method)
        assert _error(status, raw)[0] == 401


def _infer_raw(served: Served, body: Any, headers: dict[str, str] | None = None) -> tuple[int, str]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, _, raw = _call(
        served, "/v2/models/acme/xgb/infer", data, {**served.auth(), **(headers or {})}, "POST"
    )
    return _error(status, raw)


def test_bad_rest_requests_get_precise_errors(served: Served) -> None:
    def tensor(**kw: Any) -> dict[str, Any]:
        return {"inputs": [{"name": "input__0", "shape": [1, 6], "datatype": "FP32", **kw}]}

    status, msg = _infer_raw(served, b"{not json")
    assert status == 400 and "malformed inference request" in msg
    status, msg = _infer_raw(served, tensor(data=[1, 2, 3]))
    assert status == 400 and "3 values for shape [1, 6]" in msg
    status, msg = _infer_raw(served, tensor(data=["a"] * 6))
    assert status == 400 and "not a valid FP32 value" in msg
    status, msg = _infer_raw(served, tensor(data=[1e300] * 6))
    assert status == 400 and "out of range for FP32" in msg
    status, msg = _infer_raw(
        served, {"inputs": [{"name": "x", "shape": [1, 6], "datatype": "FP32", "data": [0] * 6}]}
    )
    assert status == 400 and "input__0" in msg  # the worker names the expected input
    status, msg = _infer_raw(
        served, {"inputs": [{"name": "input__0", "shape": [1, 2], "datatype": "FP32",
                             "data": [0, 1]}]},
    )  # fmt: skip
    assert status == 400, msg
    deep = b'{"inputs":[{"name":"input__0","shape":[1],"datatype":"FP32","data":' + (b"[" * 100_000)
    status, msg = _infer_raw(served, deep)
    assert status == 400 and "recursion limit" in msg
    status, msg = _infer_raw(served, tensor(data=[0] * 6), {"Inference-Header-Content-Length": "x"})
    assert status == 400 and "Inference-Header-Content-Length" in msg
    status, _, raw = _call(served, "/v2/models/acme/xgb/infer", None, served.auth(), "GET")
    assert _error(status, raw)[0] == 405
    status, _, raw = _call(served, "/v2/nothing/here")
    assert _error(status, raw)[0] == 404
    status, _, raw = _call(
        served,
        "/v2/models/acme/xgb/infer",
        gzip.compress(b"x" * (70 << 20)),
        {**served.auth(), "Content-Encoding": "gzip"},
        "POST",
    )
    assert _error(status, raw)[0] == 413
    # After all that, the gateway still answers.
    client = _client(served)
    try:
        inp = thttp.InferInput("input__0", [1, 6], "FP32")
        inp.set_data_from_numpy(served.rows[:1])
        assert client.infer("acme/xgb", [inp], headers=served.auth()).get_response()["outputs"]
    finally:
        client.close()


def test_the_openapi_document_is_served_and_shipped(served: Served) -> None:
    from importlib import resources

    status, headers, raw = _call(served, "/v2/openapi.json")
    assert status == 200 and headers["content-type"] == "application/json"
    shipped = resources.files("shoal").joinpath("openapi.json").read_bytes()
    assert json.loads(raw) == json.loads(shipped)
    assert "/v2/models/{tenant}/{model}/infer" in json.loads(raw)["paths"]


def test_tritonclient_errors_carry_the_message(served: Served) -> None:
    client = _client(served)
    try:
        with pytest.raises(InferenceServerException) as info:
            client.get_model_metadata("acme/nope", headers=served.auth())
        assert "unknown model acme/nope" in str(info.value)
    finally:
        client.close()
