"""Malformed ModelInferRequests against the router and a worker (real processes).

hypothesis builds requests with wrong byte lengths, shape/datatype mismatches, negative or
huge dims, missing inputs, non-UTF-8 names, more rows than a worker accepts and oversized
payloads. As SECURITY.md says, each malformation gets INVALID_ARGUMENT, and only the size
limits (the message size, the rows per request) get RESOURCE_EXHAUSTED: the expected code is
asserted per kind of malformation. No process may die, and a correct request sent after each
malformed one must still succeed."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal import modelgen
from shoal.cluster import LocalCluster
from shoal.oip import path
from shoal.pb import shoal_inference_pb2 as pb
from shoal.procs import wait_until
from tests.e2e.conftest import FAST, Control

MODEL = "fuzz/m"
FEATURES = 12
#: A worker's default SHOAL_MAX_REQUEST_ROWS.
MAX_ROWS = 65536
#: What each kind of malformation must be answered: only the row limit is a size limit.
EXPECTED = {
    "bytes": grpc.StatusCode.INVALID_ARGUMENT,
    "shape": grpc.StatusCode.INVALID_ARGUMENT,
    "dtype": grpc.StatusCode.INVALID_ARGUMENT,
    "dims": grpc.StatusCode.INVALID_ARGUMENT,
    "missing": grpc.StatusCode.INVALID_ARGUMENT,
    "typed": grpc.StatusCode.INVALID_ARGUMENT,
    "utf8": grpc.StatusCode.INVALID_ARGUMENT,
    "extra": grpc.StatusCode.INVALID_ARGUMENT,
    "rows": grpc.StatusCode.RESOURCE_EXHAUSTED,
}
DTYPES = ["FP32", "FP64", "INT32", "INT64", "FP16", "BOOL", "BYTES", "UINT8", "NOPE", ""]


@pytest.fixture(scope="module")
def fuzz_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("fuzz"), workers=1, shard_size=1, env=FAST)
    c.start()
    assert c.placement is not None
    x, y = modelgen.dataset(n_rows=200, n_features=FEATURES)
    ctl = Control(c.placement.address)
    ctl.register("fuzz", "m", modelgen.train_xgboost(x, y, n_trees=3), alias="stable")
    ctl.close()
    # The router and the worker learn the model through etcd watches: wait until both answer.
    assert c.router is not None
    _wait_answered(c.router.address, _good())
    _wait_answered(c.workers[0].address, _good(pinned=True))
    yield c
    c.stop()


def _wait_answered(address: str, good: bytes) -> None:
    with grpc.insecure_channel(address) as channel:
        wait_until(
            lambda: _call(channel, good)[0] == grpc.StatusCode.OK,
            timeout=30,
            what=f"{address} to answer {MODEL}",
        )


def _pin(payload: bytes) -> bytes:
    """Workers are addressed with a pinned version (as the router sends it: appended)."""
    return payload + pb.InferRoutingHeader(model_version="1").SerializeToString()


def _good(pinned: bool = False) -> bytes:
    req = pb.ModelInferRequest(model_name=MODEL)
    req.inputs.add(name="input__0", datatype="FP32", shape=[2, FEATURES])
    req.raw_input_contents.append(np.ones((2, FEATURES), np.float32).tobytes())
    wire = req.SerializeToString()
    return _pin(wire) if pinned else wire


class Malformed:
    """A malformed request and its kind (a plain class: hypothesis prints its short repr)."""

    def __init__(self, kind: str, wire: bytes) -> None:
        self.kind = kind
        self.wire = wire

    def __repr__(self) -> str:  # short: a row-limit request is megabytes
        return f"Malformed({self.kind!r}, {len(self.wire)} bytes: {self.wire[:80]!r})"


@st.composite
def malformed(draw: st.DrawFn) -> Malformed:
    kind = draw(st.sampled_from(sorted(EXPECTED)))
    req = pb.ModelInferRequest(model_name=MODEL, id=draw(st.text(max_size=8)))
    rows = (
        draw(st.integers(MAX_ROWS + 1, MAX_ROWS + 64))
        if kind == "rows"
        else draw(st.integers(1, 4))
    )
    shape = [rows, FEATURES]
    dtype = "FP32"
    data = np.ones((rows, FEATURES), np.float32).tobytes()
    if kind == "bytes":
        cut = draw(st.integers(-len(data), 64).filter(lambda n: n != 0))
        data = data[:cut] if cut < 0 else data + b"\x00" * cut
    elif kind == "shape":
        shape = draw(
            st.lists(st.integers(0, 40), min_size=0, max_size=4).filter(lambda s: s != shape)
        )
    elif kind == "dtype":
        dtype = draw(st.sampled_from([d for d in DTYPES if d != "FP32"]))
    elif kind == "dims":
        shape = [draw(st.sampled_from([-1, -7, 2**40, 2**62, -(2**62)])), FEATURES]
    if kind == "missing":
        pass  # no input at all
    elif kind == "typed":
        t = req.inputs.add(name="input__0", datatype="FP32", shape=shape)
        n = draw(st.integers(0, 3 * FEATURES))
        t.contents.fp32_contents.extend([1.0] * n if n != rows * FEATURES else [1.0] * (n + 1))
    else:
        req.inputs.add(name="input__0", datatype=dtype, shape=shape)
        req.raw_input_contents.append(data)
    if kind == "extra":
        req.raw_input_contents.append(b"\x00" * 8)  # more raw buffers than inputs
    wire = req.SerializeToString()
    if kind == "utf8":
        # model_name (field 1) as invalid UTF-8, appended so it overrides the valid one.
        wire = wire + b"\x0a\x04\xff\xfe/m"
    return Malformed(kind, wire)


def _call(channel: grpc.Channel, payload: bytes) -> tuple[grpc.StatusCode, str]:
    infer = channel.unary_unary(path("ModelInfer"))
    try:
        infer(payload, timeout=30)
    except grpc.RpcError as exc:
        return exc.code(), str(exc.details())  # type: ignore[attr-defined]
    return grpc.StatusCode.OK, ""


@pytest.mark.parametrize("target", ["router", "worker"])
def test_malformed_requests_get_invalid_argument(fuzz_cluster: LocalCluster, target: str) -> None:
    role = fuzz_cluster.router if target == "router" else fuzz_cluster.workers[0]
    assert role is not None
    channel = grpc.insecure_channel(
        role.address, options=[("grpc.max_send_message_length", 256 << 20)]
    )
    pinned = target == "worker"
    good = _good(pinned)
    ok = (grpc.StatusCode.OK, "")
    assert _call(channel, good) == ok

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
    @given(malformed())
    def run(drawn: Malformed) -> None:
        kind = drawn.kind
        code, details = _call(channel, _pin(drawn.wire) if pinned else drawn.wire)
        assert code == EXPECTED[kind], (kind, code, details)
        if kind == "rows":
            assert f"at most {MAX_ROWS} rows per request" in details, details
        assert _call(channel, good) == ok

    run()
    # Oversized: far beyond the 64 MiB message limit.
    huge = pb.ModelInferRequest(model_name=MODEL)
    huge.inputs.add(name="input__0", datatype="FP32", shape=[1, FEATURES])
    huge.raw_input_contents.append(b"\x00" * (80 << 20))
    assert _call(channel, huge.SerializeToString())[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _call(channel, good) == ok
    channel.close()
    assert all(p.proc.alive() for p in [fuzz_cluster.router, *fuzz_cluster.workers] if p)
