"""Triton's ModelStreamInfer through the gateway, with tritonclient's own stream API: many
requests on one stream, each routed on its own, answered with its id; failures answer on the
stream without ending it; keys and tenant isolation hold as for unary calls."""

from __future__ import annotations

import queue
from typing import Any

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from tests.protocols.conftest import MODELS, Served


def _input(name: str, rows: np.ndarray) -> triton.InferInput:
    inp = triton.InferInput(name, list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows)
    return inp


class Stream:
    def __init__(self, served: Served, headers: dict[str, str] | None) -> None:
        self.client = triton.InferenceServerClient(served.router)
        self.answers: queue.Queue[tuple[Any, InferenceServerException | None]] = queue.Queue()
        self.client.start_stream(
            callback=lambda result, error: self.answers.put((result, error)),
            headers=headers,
        )

    def take(self, n: int, timeout: float = 60) -> list[tuple[Any, Any]]:
        return [self.answers.get(timeout=timeout) for _ in range(n)]

    def close(self) -> None:
        self.client.stop_stream()
        self.client.close()


def test_a_thousand_requests_on_one_stream_answer_with_their_ids(served: Served) -> None:
    s = Stream(served, served.auth())
    try:
        sent: dict[str, tuple[str, int, int]] = {}
        for i in range(1000):
            model = MODELS[i % len(MODELS)]
            lo, n = i % 60, 1 + i % 4
            rows = served.rows[lo : lo + n]
            s.client.async_stream_infer(
                model, [_input(served.inputs[model], rows)], request_id=f"r{i}"
            )
            sent[f"r{i}"] = (model, lo, n)
        answers = s.take(1000)
    finally:
        s.close()
    seen = set()
    for result, error in answers:
        assert error is None, error
        resp = result.get_response()
        model, lo, n = sent[resp.id]
        assert f"{resp.model_name}" == model and resp.model_version == "1"
        got = result.as_numpy(resp.outputs[0].name).reshape(n, -1)
        np.testing.assert_allclose(got, served.expected[model][lo : lo + n], rtol=1e-6)
        seen.add(resp.id)
    assert seen == set(sent)


def test_failures_answer_on_the_stream_and_it_goes_on(served: Served) -> None:
    s = Stream(served, served.auth())
    try:
        row = served.rows[:1]
        s.client.async_stream_infer("acme/xgb", [_input("input__0", row)], request_id="ok-1")
        s.client.async_stream_infer("acme/nope", [_input("input__0", row)], request_id="missing")
        s.client.async_stream_infer("other/xgb", [_input("input__0", row)], request_id="foreign")
        s.client.async_stream_infer(
            "acme/xgb", [_input("input__0", served.rows[:2, :3])], request_id="shape"
        )
        s.client.async_stream_infer("acme/xgb", [_input("input__0", row)], request_id="ok-2")
        answers = s.take(5)
    finally:
        s.close()
    ok = sorted(r.get_response().id for r, e in answers if e is None)
    errors = sorted(str(e.message()) for r, e in answers if e is not None)
    assert ok == ["ok-1", "ok-2"]  # the stream outlived three failures
    assert len(errors) == 3
    # Another tenant's model answers exactly like a missing one of the caller's own.
    assert "acme/nope" in errors[0] or "acme/nope" in errors[1] or "acme/nope" in errors[2]
    missing = next(m for m in errors if "acme/nope" in m)
    foreign = next(m for m in errors if "other/xgb" in m)
    assert foreign.replace("other/xgb", "acme/nope") == missing
    shape = next(m for m in errors if m not in (missing, foreign))
    assert "shape" in shape or "expected" in shape, shape


def test_a_stream_without_a_key_is_refused(served: Served) -> None:
    for headers in (None, {"authorization": "Bearer not-a-key"}):
        s = Stream(served, headers)
        try:
            try:
                s.client.async_stream_infer(
                    "acme/xgb", [_input("input__0", served.rows[:1])], request_id="x"
                )
            except InferenceServerException as exc:  # refused before the request went
                assert "no longer in valid state" in str(exc)
            ((result, error),) = s.take(1)
        finally:
            s.close()
        assert result is None and error is not None
        assert error.status() == "StatusCode.UNAUTHENTICATED", error
