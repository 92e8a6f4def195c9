"""The worker's protections in-process, with injected clocks: slots and the per-model bound,
runtime calls (deadline, timeout, stuck accounting), quarantine, fault specs, request parsing
and the batcher's handling of expired requests."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from shoal.pb import shoal_inference_pb2 as pb
from worker.batching import Batcher
from worker.calls import Abandoned, RuntimeCalls
from worker.convert import parse_infer_request
from worker.errors import (
    Code,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
)
from worker.faults import Faults
from worker.limits import Admission, ModelLimiter, Slots, check_rows
from worker.metrics import WorkerMetrics
from worker.quarantine import FailureMemory
from worker.types import ModelId, Tensor

# --- slots and the per-model bound ----------------------------------------------------------


async def test_slots_are_fifo_bounded_and_never_leak_on_cancel() -> None:
    s = Slots(1, max_waiting=2)
    assert s.try_acquire() and not s.try_acquire()
    first = asyncio.ensure_future(s.acquire(None))
    second = asyncio.ensure_future(s.acquire(None))
    await asyncio.sleep(0)
    assert s.waiting == 2
    assert await s.acquire(None) is Admission.FULL  # the line is full: no wait at all
    second.cancel()
    await asyncio.sleep(0)
    assert s.waiting == 1
    s.release()  # handed to the oldest waiter
    assert await first is Admission.GRANTED and s.held == 1
    assert await s.acquire(0.01) is Admission.TIMEOUT
    s.release()
    assert s.idle


async def test_model_limiter_names_the_model_and_honours_the_deadline() -> None:
    now = [0.0]
    lim = ModelLimiter(limit=1, max_waiting=1, wait_s=0.05, now=lambda: now[0])
    await lim.acquire("t/m", None)
    waiter = asyncio.ensure_future(lim.acquire("t/m", None))
    await asyncio.sleep(0)
    with pytest.raises(ResourceExhausted, match="model t/m is at its concurrency limit"):
        await lim.acquire("t/m", None)  # the one-place line is taken
    with pytest.raises(ResourceExhausted, match="no slot freed within"):
        await waiter
    with pytest.raises(DeadlineExceeded, match="deadline passed while waiting for t/m"):
        await lim.acquire("t/m", deadline=0.01)
    await lim.acquire("t/other", None)  # other models have their own slots
    lim.release("t/m")
    lim.release("t/other")
    assert len(lim) == 0  # idle models are forgotten


def test_rows_limit_names_the_setting() -> None:
    t = Tensor("x", "FP32", np.zeros((5, 2), np.float32))
    check_rows([t], 5)
    with pytest.raises(ResourceExhausted, match="SHOAL_MAX_REQUEST_ROWS"):
        check_rows([t], 4)


# --- runtime calls --------------------------------------------------------------------------


async def test_a_call_past_its_deadline_is_not_run() -> None:
    ran: list[int] = []
    with ThreadPoolExecutor(1) as pool:
        calls = RuntimeCalls("predict", pool, 1, 5.0, WorkerMetrics(), now=lambda: 10.0)
        with pytest.raises(DeadlineExceeded, match="not run"):
            await calls.run("k", lambda: ran.append(1), deadline=9.0)
        assert await calls.run("k", lambda: 7, deadline=11.0) == 7
    assert ran == [] and calls.running == 0


async def test_a_hung_call_is_abandoned_counted_stuck_and_frees_the_gate() -> None:
    release = threading.Event()
    m = WorkerMetrics()
    with ThreadPoolExecutor(2) as pool:  # capacity 1 + headroom 1
        calls = RuntimeCalls("predict", pool, 1, 0.2, m)
        with pytest.raises(Abandoned):
            await calls.run("bad", release.wait)
        assert calls.stuck("bad") == 1 and calls.running == 0
        assert await calls.run("good", lambda: "ok") == "ok"  # the spare thread serves
        release.set()
        for _ in range(100):
            if not calls.stuck_total:
                break
            await asyncio.sleep(0.01)
        assert calls.stuck_total == 0  # the thread came back: no longer stuck
    assert m.registry.get_sample_value("shoal_worker_abandoned_calls_total", {"kind": "predict"})


async def test_a_cancelled_caller_keeps_the_gate_until_its_thread_returns() -> None:
    release = threading.Event()
    with ThreadPoolExecutor(2) as pool:
        calls = RuntimeCalls("predict", pool, 1, 5.0, WorkerMetrics())
        task = asyncio.ensure_future(calls.run("k", release.wait))
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.sleep(0.05)
        assert calls.running == 1  # the runtime still holds its thread
        release.set()
        for _ in range(100):
            if calls.running == 0:
                break
            await asyncio.sleep(0.01)
        assert calls.running == 0


# --- quarantine -----------------------------------------------------------------------------


def test_quarantine_after_n_failures_doubles_and_waits_for_stuck_calls() -> None:
    now = [0.0]
    stuck = {ModelId("t", "m", 1): 0}
    q = FailureMemory(
        base=5.0,
        cap=60.0,
        now=lambda: now[0],
        threshold=3,
        stuck=lambda k: stuck.get(k, 0),
        wall=lambda: 0.0,
    )
    mid = ModelId("t", "m", 1)
    err = FailedPrecondition("t/m:1 is quarantined: its predictions fail")
    assert q.record(mid, err) == 0.0 and q.check(mid) is None
    assert q.record(mid, err) == 0.0 and q.check(mid) is None
    assert q.record(mid, err) == 5.0
    got = q.check(mid)
    assert got is not None and got.code is Code.FAILED_PRECONDITION
    assert "quarantined until 1970-01-01T00:00:05Z; next attempt in 5.0s" in got.message
    now[0] = 5.0
    assert q.check(mid) is None  # one probe is let through ...
    assert q.record(mid, err) == 10.0  # ... and fails: twice as long
    now[0] = 20.0
    stuck[mid] = 1
    held = q.check(mid)
    assert held is not None and "stuck" in held.message  # not lifted while a thread hangs
    stuck[mid] = 0
    assert q.check(mid) is None
    q.clear(mid)
    other = ModelId("t", "n", 1)
    assert q.record(other, err, immediate=True) == 5.0  # a hang: at once


# --- fault specs and request parsing --------------------------------------------------------


def test_fault_spec_parses_and_rejects_bad_entries() -> None:
    f = Faults.parse("hang-predict:a/b, fail-load:c/d, slow-predict:e/f:0.5")
    assert [(x.action, x.call, x.model, x.seconds) for x in f.faults] == [
        ("hang", "predict", "a/b", 3600.0),
        ("fail", "load", "c/d", 0.0),
        ("slow", "predict", "e/f", 0.5),
    ]
    fn = f.wrap("load", "c/d", lambda: 1)
    with pytest.raises(RuntimeError, match="injected fault"):
        fn()
    assert f.wrap("predict", "x/y", int) is int and not Faults.parse("")
    for bad in ("explode:a/b", "hang-predict", "hang-predict:NOT VALID"):
        with pytest.raises(ValueError):
            Faults.parse(bad)


def test_unparsable_requests_name_the_bad_field() -> None:
    req = pb.ModelInferRequest(model_name="a/b")
    req.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    req.raw_input_contents.append(np.ones((1, 2), np.float32).tobytes())
    wire = req.SerializeToString()
    assert parse_infer_request(wire).model == "a/b"
    cases = {
        wire + b"\x0a\x04\xff\xfe/m": "model_name is not valid UTF-8",
        b"\x2a\x05\x0a\x03\xff\xff\xff": "inputs.name is not valid UTF-8",
        wire[:-3]: "claims 8 bytes but only 5 remain",
    }
    for raw, words in cases.items():
        with pytest.raises(InvalidArgument, match="malformed ModelInferRequest") as e:
            parse_infer_request(raw)
        assert words in e.value.message


# --- the batcher and deadlines --------------------------------------------------------------


async def test_batcher_answers_expired_requests_without_running_them() -> None:
    now = [0.0]
    ran: list[int] = []
    expired: list[int] = []

    async def run(key: object, model: object, rows: np.ndarray, deadline: object) -> list:
        ran.append(len(rows))
        return [rows]

    b = Batcher(
        run, max_rows=4, max_delay_s=0.01, when_idle=False,
        on_expired=lambda: expired.append(1), now=lambda: now[0],
    )  # fmt: skip
    x = np.ones((1, 2), np.float32)
    late = asyncio.ensure_future(b.predict("k", None, x, deadline=0.5))
    fine = asyncio.ensure_future(b.predict("k", None, x, deadline=5.0))
    await asyncio.sleep(0)
    now[0] = 1.0  # the deadline of the first passes before the batch goes out
    with pytest.raises(DeadlineExceeded, match="not run"):
        await late
    assert (await fine)[0].shape == (1, 2)
    assert ran == [1] and expired == [1]


def test_batching_is_on_by_default_on_every_device_and_can_be_turned_off() -> None:
    from worker.settings import WorkerSettings

    assert WorkerSettings().batching_enabled("cpu") and WorkerSettings().batching_enabled("cuda")
    off = WorkerSettings(batching="off")
    assert not off.batching_enabled("cpu") and not off.batching_enabled("cuda")
    auto = WorkerSettings(batching="auto")
    assert auto.batching_enabled("cuda") and not auto.batching_enabled("cpu")
