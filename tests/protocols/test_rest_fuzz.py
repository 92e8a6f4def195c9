"""Fuzzing the REST surface: schemathesis drives every operation of the shipped OpenAPI
document against the live gateway (no 5xx but the documented UNAVAILABLE, every status and
body as documented); hypothesis throws malformed inference bodies at it (wrong types and
shapes, huge numbers, deep nesting, binary sections that lie, an 80 MiB body). The gateway
must answer each with a 4xx and go on serving."""

from __future__ import annotations

import http.client
import json
import select
import socket
from typing import Any

import hypothesis.strategies as st
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.protocols.conftest import Served


@pytest.fixture
def api(served: Served) -> Any:
    assert served.cluster.router is not None
    rest = served.cluster.router.extra["rest"]
    conn = http.client.HTTPConnection(rest, timeout=30)
    conn.request("GET", "/v2/openapi.json")
    doc = json.loads(conn.getresponse().read())
    conn.close()
    schema = schemathesis.openapi.from_dict(doc)
    schema.config.update(base_url=f"http://{rest}")
    key = served.keys["acme"]

    # A valid key on every call, as schemathesis's auth: the checks reach past authentication
    # into each operation, and its own check probes that a missing or wrong key is refused.
    @schema.auth()
    class Key:
        def get(self, case: Any, ctx: Any) -> str:
            return key

        def set(self, case: Any, data: str, ctx: Any) -> None:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}

    return schema


def test_every_operation_answers_as_documented(api: Any, served: Served) -> None:
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 15
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            # 5xx is judged below: UNAVAILABLE (503: nothing can serve it now) is documented.
            response = case.call_and_validate(excluded_checks=[not_a_server_error])
            assert response.status_code < 500 or response.status_code == 503, response.text

        run()


def _post(served: Served, body: bytes, headers: dict[str, str] | None = None) -> int:
    assert served.cluster.router is not None
    conn = http.client.HTTPConnection(served.cluster.router.extra["rest"], timeout=60)
    try:
        conn.request(
            "POST", "/v2/models/acme/xgb/infer", body, {**served.auth(), **(headers or {})}
        )
        resp = conn.getresponse()
        payload = resp.read()
        if resp.status != 200:
            assert set(json.loads(payload)) == {"error"}, payload
        return resp.status
    finally:
        conn.close()


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False),
    st.text(max_size=8),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=6), max_leaves=40)
inputs = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["input__0", "x", ""]),
        "shape": st.lists(st.integers(min_value=-3, max_value=2**40), max_size=4),
        "datatype": st.sampled_from(
            ["FP32", "FP64", "FP16", "INT8", "UINT64", "BOOL", "BYTES", "fp32", "COMPLEX"]
        ),
    },
    optional={
        "data": values,
        "parameters": st.dictionaries(
            st.sampled_from(["binary_data_size", "binary_data", "other"]), scalars, max_size=2
        ),
    },
)
bodies = st.fixed_dictionaries(
    {},
    optional={
        "inputs": st.one_of(st.lists(inputs, max_size=3), scalars),
        "outputs": st.lists(st.fixed_dictionaries({"name": st.text(max_size=5)}), max_size=2),
        "id": st.one_of(st.text(max_size=5), st.integers()),
        "parameters": st.dictionaries(st.text(max_size=5), scalars, max_size=2),
    },
)


@given(body=bodies, tail=st.binary(max_size=64), header=st.one_of(st.none(), st.integers(-5, 400)))
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
def test_malformed_inference_bodies_get_4xx(
    served: Served, body: dict[str, Any], tail: bytes, header: int | None
) -> None:
    raw = json.dumps(body).encode()
    headers = {}
    if header is not None:
        raw += tail
        headers["Inference-Header-Content-Length"] = str(header)
    status = _post(served, raw, headers)
    assert status in (200, 400, 404, 413), (status, body)


def _post_huge(served: Served, size: int) -> int:
    """POST a body of ``size`` bytes as a client that reads the answer while still sending
    (the gateway answers 413 from the declared length, without reading the body)."""
    assert served.cluster.router is not None
    host, port = served.cluster.router.extra["rest"].rsplit(":", 1)
    key = served.keys["acme"]
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            f"POST /v2/models/acme/xgb/infer HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {key}\r\nContent-Length: {size}\r\n\r\n".encode()
        )
        chunk, sent = b"0" * (1 << 16), 0
        while sent < size:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sent += sock.send(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
        head = sock.recv(4096).decode(errors="replace")
    return int(head.split(" ", 2)[1])


def test_extreme_bodies_get_4xx_and_the_gateway_goes_on(served: Served) -> None:
    assert _post(served, b"[" * 1_000_000) == 400  # deep nesting
    assert _post(served, b'{"inputs":[{"name":"input__0","shape":[1,6],"datatype":"FP32",'
                 b'"data":[1e999999,0,0,0,0,0]}]}') == 400  # fmt: skip
    assert _post_huge(served, 80 << 20) == 413  # 80 MiB
    ok = json.dumps(
        {"inputs": [{"name": "input__0", "shape": [1, 6], "datatype": "FP32", "data": [0] * 6}]}
    ).encode()
    assert _post(served, ok) == 200
