"""A real worker process under abuse: the request limits, the per-model concurrency bound,
expired deadlines, quarantine of failing models, and hung runtime calls.

Misbehaving runtimes come from the worker's fault-injection setting (``SHOAL_FAULT_INJECT``,
worker/faults.py): real models, real threads, a runtime call that sleeps, fails or never
returns for the named models only. Each test fails if the protection it names is removed:
without it the request would be answered OK, or with another code, or only by the client's
own timeout (whose details never say "abandoned").
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import grpc
import numpy as np
import pytest
from conftest import WorkerFactory
from worker_harness import Client, Metrics, WorkerProc, infer_request, put_model

from shoal.oip import RETRY_ELSEWHERE
from shoal.procs import wait_until

FAULTS = ",".join(
    [
        "slow-predict:prot/slow:2",
        "fail-predict:prot/poison",
        "hang-load:prot/hangload",
    ]
)


@pytest.fixture(scope="module")
def guarded(worker_factory: WorkerFactory) -> WorkerProc:
    return worker_factory(
        {
            "SHOAL_BATCHING": "off",
            "SHOAL_PREDICT_THREADS": "2",  # the default per-model bound is then 1
            "SHOAL_MODEL_MAX_QUEUE": "1",
            "SHOAL_MODEL_QUEUE_WAIT_S": "0.2",
            "SHOAL_MAX_REQUEST_ROWS": "100",
            "SHOAL_MAX_REQUEST_BYTES": str(1 << 20),
            "SHOAL_PREDICT_TIMEOUT_S": "5",
            "SHOAL_LOAD_TIMEOUT_S": "5",
            "SHOAL_QUARANTINE_AFTER": "3",
            "SHOAL_QUARANTINE_S": "120",
            "SHOAL_FAULT_INJECT": FAULTS,
        }
    )


async def _code(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code(), str(exc.details())
    return grpc.StatusCode.OK, ""


async def _retry_elsewhere(call: Awaitable[Any]) -> tuple[grpc.StatusCode, bool]:
    """The refusal's code, and whether it invites the router to try another worker."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        trailer = tuple(exc.trailing_metadata() or ())
        return exc.code(), all(item in trailer for item in RETRY_ELSEWHERE)
    return grpc.StatusCode.OK, False


def _delta(after: Metrics, before: Metrics, name: str, **labels: str) -> float:
    return float(after.get(name, **labels) - before.get(name, **labels))


async def test_rows_beyond_the_limit_are_resource_exhausted(
    guarded: WorkerProc, model_bytes: dict[str, Any]
) -> None:
    w = guarded
    await put_model(w.etcd, w.store_url, "prot", "rows", model_bytes["xgboost-json"])
    x = np.ones((101, 12), np.float32)
    async with Client(w.address) as c:
        code, details = await _code(c.infer("prot/rows", x, "1"))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
        assert "101 rows" in details and "at most 100 rows" in details
        assert "SHOAL_MAX_REQUEST_ROWS" in details
        assert (await c.infer("prot/rows", x[:100], "1")).shape == (100,)
        # Any worker would refuse it: the router must not try another one.
        assert await _retry_elsewhere(c.infer("prot/rows", x, "1")) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            False,
        )
    assert w.scrape().get("shoal_worker_rejected_total", reason="rows") == 2


async def test_requests_beyond_the_byte_limit_are_resource_exhausted(
    guarded: WorkerProc, model_bytes: dict[str, Any]
) -> None:
    w = guarded
    await put_model(w.etcd, w.store_url, "prot", "bytes", model_bytes["xgboost-json"])
    req = infer_request("prot/bytes", np.ones((1, 12), np.float32), "1")
    req.raw_input_contents[0] = b"\0" * (2 << 20)  # 2 MiB against a 1 MiB limit
    async with Client(w.address) as c:
        code, details = await _code(c.stub.ModelInfer(req, timeout=30))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
        assert str(1 << 20) in details  # gRPC names the limit: "(2097... vs. 1048576)"
        assert (await c.infer("prot/bytes", np.ones((1, 12), np.float32), "1")).shape == (1,)


async def test_a_busy_model_is_bounded_and_others_keep_their_threads(
    guarded: WorkerProc, model_bytes: dict[str, Any]
) -> None:
    w = guarded
    await put_model(w.etcd, w.store_url, "prot", "slow", model_bytes["xgboost-json"])
    await put_model(w.etcd, w.store_url, "prot", "fast", model_bytes["lightgbm-text"])
    x = model_bytes["x"][:1]
    async with Client(w.address) as c:
        await c.infer("prot/slow", x, "1")  # loaded: only the 2 s predictions remain
        await c.infer("prot/fast", x, "1")
        before = w.scrape()
        # One runs (bound 1), one waits 0.2 s for a slot that stays busy for 2 s, two find
        # the one-place queue full.
        slow = [asyncio.ensure_future(_code(c.infer("prot/slow", x, "1"))) for _ in range(4)]
        # While prot/slow holds its one slot, another model still has a thread.
        assert (await c.infer("prot/fast", x, "1")).shape == (1,)
        # A refusal for a full line is this worker's alone: it invites a try elsewhere.
        assert await _retry_elsewhere(c.infer("prot/slow", x, "1")) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            True,
        )
        results = await asyncio.gather(*slow)
    codes = sorted(code.name for code, _ in results)
    assert codes == ["OK"] + ["RESOURCE_EXHAUSTED"] * 3, results
    for code, details in results:
        if code != grpc.StatusCode.OK:
            assert "model prot/slow is at its concurrency limit" in details
    after = w.scrape()
    assert _delta(after, before, "shoal_worker_rejected_total", reason="concurrency") == 4


async def test_a_model_whose_predictions_keep_failing_is_quarantined(
    guarded: WorkerProc, model_bytes: dict[str, Any]
) -> None:
    w = guarded
    await put_model(w.etcd, w.store_url, "prot", "poison", model_bytes["xgboost-ubj"])
    await put_model(w.etcd, w.store_url, "prot", "healthy", model_bytes["xgboost-ubj"])
    x = model_bytes["x"][:1]
    before = w.scrape()
    async with Client(w.address) as c:
        for _ in range(3):  # SHOAL_QUARANTINE_AFTER=3 consecutive failures
            code, details = await _code(c.infer("prot/poison", x, "1"))
            assert code == grpc.StatusCode.INTERNAL and "injected fault" in details
        for _ in range(5):
            code, details = await _code(c.infer("prot/poison", x, "1"))
            assert code == grpc.StatusCode.FAILED_PRECONDITION, details
            assert "prot/poison:1 is quarantined" in details and "quarantined until" in details
        assert (await c.infer("prot/healthy", x, "1")).shape == (1,)
        assert not await c.ready("prot/poison", "1")
    after = w.scrape()
    assert _delta(after, before, "shoal_worker_quarantines_total", kind="predict") == 1
    assert _delta(after, before, "shoal_worker_rejected_total", reason="quarantine") == 5


async def test_a_hung_load_is_abandoned_quarantined_and_loading_goes_on(
    guarded: WorkerProc, model_bytes: dict[str, Any]
) -> None:
    w = guarded
    await put_model(w.etcd, w.store_url, "prot", "hangload", model_bytes["lightgbm-text"])
    await put_model(w.etcd, w.store_url, "prot", "afterload", model_bytes["onnx"])
    x = model_bytes["x"][:1]
    async with Client(w.address) as c:
        code, details = await _code(c.infer("prot/hangload", x, "1"))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED, details
        assert "abandoned" in details and "quarantined" in details
        code, details = await _code(c.infer("prot/hangload", x, "1"))
        assert code == grpc.StatusCode.FAILED_PRECONDITION, details
        assert "hung" in details and "quarantined" in details
        # The only load thread is stuck; a spare one loads the next model.
        assert (await c.infer("prot/afterload", x, "1", name="input")).shape == (1, 1)
    m = w.scrape()
    assert m.get("shoal_worker_stuck_calls", kind="load") == 1
    assert m.get("shoal_worker_abandoned_calls_total", kind="load") == 1


async def test_a_hung_prediction_is_bounded_and_others_are_served(
    worker_factory: WorkerFactory, model_bytes: dict[str, Any]
) -> None:
    w = worker_factory(
        {
            "SHOAL_BATCHING": "off",
            "SHOAL_PREDICT_THREADS": "2",
            "SHOAL_PREDICT_TIMEOUT_S": "1",
            "SHOAL_QUARANTINE_S": "120",
            "SHOAL_FAULT_INJECT": "hang-predict:hang/stuck",
        }
    )
    await put_model(w.etcd, w.store_url, "hang", "stuck", model_bytes["xgboost-json"])
    await put_model(w.etcd, w.store_url, "hang", "ok", model_bytes["xgboost-json"])
    await put_model(w.etcd, w.store_url, "hang", "also", model_bytes["lightgbm-text"])
    x = model_bytes["x"][:2]
    async with Client(w.address) as c:
        stuck = asyncio.ensure_future(_code(c.infer("hang/stuck", x, "1")))
        # While it hangs, and after, other models are served by the two healthy threads.
        others = await asyncio.gather(
            *(c.infer(f"hang/{n}", x, "1") for _ in range(10) for n in ("ok", "also"))
        )
        assert all(o.shape == (2,) for o in others)
        code, details = await stuck
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED, details  # not the client's 60 s
        assert "abandoned" in details and "hang/stuck:1 is quarantined" in details
        code, details = await _code(c.infer("hang/stuck", x, "1"))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "hung" in details, details
        # Full capacity is still there: the spare thread stands in for the stuck one.
        both = await asyncio.gather(*(c.infer(f"hang/{n}", x, "1") for n in ("ok", "also")))
        assert all(o.shape == (2,) for o in both)
    m = w.scrape()
    assert m.get("shoal_worker_stuck_calls", kind="predict") == 1
    assert m.get("shoal_worker_quarantines_total", kind="predict") == 1
    # SIGTERM exits cleanly even though a thread is stuck (Python would join it forever).
    assert w.stop() == 0
    assert "exiting past 1 stuck runtime threads" in w.log_tail()


async def test_an_expired_request_is_not_run(
    worker_factory: WorkerFactory, model_bytes: dict[str, Any]
) -> None:
    # Batches go out when full (64 rows) or after 2 s: a lone request waits 2 s in the batcher.
    w = worker_factory(
        {
            "SHOAL_BATCHING": "on",
            "SHOAL_MAX_BATCH_ROWS": "64",
            "SHOAL_MAX_DELAY_US": "2000000",
            "SHOAL_BATCH_WHEN_IDLE": "false",
        }
    )
    await put_model(w.etcd, w.store_url, "late", "m", model_bytes["xgboost-json"])
    x = model_bytes["x"][:1]
    async with Client(w.address) as c:
        await c.infer("late/m", model_bytes["x"][:64], "1")  # loaded (a full batch: at once)
        before = w.scrape()
        code, _ = await _code(c.stub.ModelInfer(infer_request("late/m", x, "1"), timeout=0.5))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED

        def dropped() -> bool:
            m = w.scrape()
            return _delta(m, before, "shoal_worker_expired_total", stage="batch") >= 1

        await asyncio.to_thread(wait_until, dropped, 30, 0.05, "the batch to be taken")
        after = w.scrape()
        # The batch was taken after the deadline: nothing ran.
        assert _delta(after, before, "shoal_worker_batch_rows_count") == 0
        expired = {"method": "ModelInfer", "code": "DEADLINE_EXCEEDED"}
        assert _delta(after, before, "shoal_worker_requests_total", **expired) == 1
        assert (await c.infer("late/m", x, "1")).shape == (1,)  # a patient request is served
    assert _delta(w.scrape(), before, "shoal_worker_batch_rows_count") == 1
