"""Pure logic of the worker, in-process: cache accounting (hypothesis), backoff, batching,
the disk tier, wire conversion and validation, record resolution."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.artifacts import Signature, TensorSpec, sha256_hex
from shoal.pb import shoal_inference_pb2 as pb
from shoal.records import ModelRecord, ModelVersion, model_key
from shoal.state import MemoryStore
from worker.batching import Batcher
from worker.cache import CacheEvent, LargestFirstPolicy, Tier, TieredCache
from worker.catalog import Catalog, parse_version
from worker.convert import infer_request_from_proto, infer_response_to_proto, output_tensor
from worker.diskcache import DiskCache
from worker.errors import Code, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from worker.policy import POLICIES
from worker.quarantine import FailureMemory
from worker.types import InferResult, ModelId, Tensor
from worker.validate import check_inputs, select_outputs

# --- the tiered cache -----------------------------------------------------------------------


def test_lru_goes_first_and_host_evictions_demote_to_disk() -> None:
    events: list[CacheEvent] = []
    c: TieredCache[str, str] = TieredCache(
        {Tier.HOST: 30}, on_disk=lambda k: k != "b", listener=events.append
    )
    for k in "abc":
        c.admit(k, k.upper(), 10, Tier.HOST)
    assert c.get("a") is not None  # a is now the most recently used
    c.admit("d", "D", 10, Tier.HOST)
    assert c.keys(Tier.HOST) == ["c", "a", "d"]
    assert events == [CacheEvent("evict", "b", Tier.HOST, None, 10)]  # b was not on disk
    c.admit("e", "E", 10, Tier.HOST)
    assert events[-1] == CacheEvent("demote", "c", Tier.HOST, Tier.DISK, 10)
    assert c.used(Tier.HOST) == c.resident_bytes(Tier.HOST) == 30 and len(c) == 3


def test_pinned_entries_are_skipped_and_restored_to_budget_on_release() -> None:
    c: TieredCache[str, str] = TieredCache({Tier.HOST: 20})
    c.admit("a", "A", 10, Tier.HOST)
    c.admit("b", "B", 10, Tier.HOST)
    pa = c.acquire("a")
    pb_ = c.acquire("b")
    assert pa is not None and pb_ is not None
    c.admit("c", "C", 10, Tier.HOST)  # nothing can move: overshoot by the new entry only
    assert set(c.keys(Tier.HOST)) == {"a", "b", "c"} and c.used(Tier.HOST) == 30
    c.release(pb_)  # b unpinned: the tier is brought back within budget, b (LRU) goes
    assert set(c.keys(Tier.HOST)) == {"a", "c"}
    c.release(pa)
    assert c.used(Tier.HOST) == 20


def test_reservation_makes_room_before_the_load_and_admit_replaces_it() -> None:
    c: TieredCache[str, str] = TieredCache({Tier.HOST: 30})
    c.admit("a", "A", 10, Tier.HOST)
    c.admit("b", "B", 10, Tier.HOST)
    assert c.reserve("n", Tier.HOST, 15)
    assert c.keys(Tier.HOST) == ["b"] and "n" not in c and c.used(Tier.HOST) == 25
    assert c.resident_bytes(Tier.HOST) == 10
    c.admit("n", "N", 12, Tier.HOST)
    assert c.keys(Tier.HOST) == ["b", "n"] and c.used(Tier.HOST) == 22
    assert c.reserve("m", Tier.HOST, 5)
    c.unreserve("m")
    assert c.used(Tier.HOST) == 22


def test_gpu_victims_are_demoted_to_host_through_the_demoter() -> None:
    events: list[CacheEvent] = []

    def demote(key: Any, value: Any) -> tuple[Any, int] | None:
        return (f"{value}@host", 7) if key != "x" else None

    c: TieredCache[str, str] = TieredCache(
        {Tier.GPU: 20, Tier.HOST: 10}, demote=demote, listener=events.append
    )
    c.admit("a", "A", 10, Tier.GPU)
    c.admit("x", "X", 10, Tier.GPU)
    c.admit("b", "B", 10, Tier.GPU)  # a demoted to host
    assert c.keys(Tier.GPU) == ["x", "b"] and c.keys(Tier.HOST) == ["a"]
    peek = c.peek("a")
    assert peek is not None and peek.value == "A@host" and peek.nbytes == 7
    c.admit("c", "C", 10, Tier.GPU)  # x cannot move: dropped
    assert events[-1] == CacheEvent("evict", "x", Tier.GPU, None, 10)
    assert c.keys(Tier.GPU) == ["b", "c"]
    assert c.fits(Tier.GPU, 20) and not c.fits(Tier.GPU, 21)


def test_largest_first_policy_is_swappable() -> None:
    c: TieredCache[str, str] = TieredCache({Tier.HOST: 30}, policy=lambda _: LargestFirstPolicy())
    c.admit("small", "s", 5, Tier.HOST)
    c.admit("big", "b", 20, Tier.HOST)
    c.admit("mid", "m", 5, Tier.HOST)
    c.admit("new", "n", 10, Tier.HOST)
    assert sorted(c.keys(Tier.HOST)) == ["mid", "new", "small"]


_ops = st.lists(
    st.tuples(
        st.sampled_from(["admit", "reserve", "admit_reserved", "acquire", "release", "get", "rm"]),
        st.integers(0, 7),
        st.integers(1, 40),
        st.sampled_from([Tier.GPU, Tier.HOST]),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(_ops, st.integers(20, 100), st.integers(0, 60), st.sampled_from(POLICIES))
def test_cache_accounting_invariants(ops: list[Any], host: int, gpu: int, policy: str) -> None:
    c: TieredCache[int, str] = TieredCache(
        {Tier.HOST: host, Tier.GPU: gpu}, policy=policy, demote=lambda k, v: (v, 5)
    )
    pins: list[Any] = []
    reserved: set[int] = set()
    last_admitted: dict[Tier, int] = {}
    for op, key, size, tier in ops:
        present = c.peek(key) is not None
        if op == "admit" and not present and key not in reserved:
            c.admit(key, "v", size, tier)
            last_admitted[tier] = key
        elif op == "reserve" and not present and key not in reserved:
            c.reserve(key, tier, size)
            reserved.add(key)
        elif op == "admit_reserved" and key in reserved:
            c.admit(key, "v", size, tier)
            reserved.discard(key)
            last_admitted[tier] = key
        elif op == "acquire":
            e = c.acquire(key)
            if e is not None:
                pins.append(e)
        elif op == "release" and pins:
            c.release(pins.pop(0))
        elif op == "get":
            c.get(key)
        elif op == "rm" and present and not any(p.key == key for p in pins):
            c.remove(key)
        # Invariants.
        for t in (Tier.GPU, Tier.HOST):
            entries = list(c.entries(t))
            assert c.used(t) == sum(e.nbytes for e in entries)
            assert c.resident_bytes(t) == sum(e.nbytes for e in entries if not e.reserved)
            assert c.count(t) == sum(1 for e in entries if not e.reserved)
            assert c.policy(t).tracked() == (c.count(t), c.resident_bytes(t))
            if c.used(t) > c.budget(t):
                movable = [e for e in entries if e.pins == 0 and not e.reserved]
                assert all(e.key == last_admitted.get(t) for e in movable), (t, entries)
        for p in pins:  # a pinned model is never displaced
            assert c.peek(p.key) is p
        assert {k for k in reserved} == {
            e.key for t in (Tier.GPU, Tier.HOST) for e in c.entries(t) if e.reserved
        }


# --- failure backoff ------------------------------------------------------------------------


def test_failures_back_off_exponentially_up_to_a_cap_and_clear_on_success() -> None:
    now = [100.0]
    fm = FailureMemory(base=1.0, cap=5.0, now=lambda: now[0])
    mid = ModelId("t", "m", 1)
    assert fm.check(mid) is None
    assert fm.record(mid, FailedPrecondition("checksum mismatch")) == 1.0
    err = fm.check(mid)
    assert isinstance(err, FailedPrecondition) and "checksum mismatch" in err.message
    assert "next attempt in 1.0s" in err.message
    now[0] += 1.0
    assert fm.check(mid) is None  # one retry allowed
    assert [fm.record(mid, NotFound("gone")) for _ in range(4)] == [2.0, 4.0, 5.0, 5.0]
    assert fm.check(mid) is not None and fm.check(mid).code is Code.NOT_FOUND  # type: ignore[union-attr]
    assert fm.check(ModelId("t", "other", 1)) is None  # other models unaffected
    fm.clear(mid)
    assert fm.check(mid) is None


# --- batching -------------------------------------------------------------------------------


async def test_batcher_merges_concurrent_requests_and_splits_rows() -> None:
    calls: list[int] = []
    gate = asyncio.Event()

    async def run(key: object, model: object, rows: np.ndarray, deadline: Any) -> list[np.ndarray]:
        calls.append(len(rows))
        await gate.wait()
        return [rows.sum(axis=1), rows * 2]

    b = Batcher(run, max_rows=8, max_delay_s=60.0)
    x = np.arange(40, dtype=np.float32).reshape(20, 2)
    first = asyncio.ensure_future(b.predict("k", None, x[:1]))  # idle: sent at once
    await asyncio.sleep(0)
    rest = [asyncio.ensure_future(b.predict("k", None, x[i : i + 1])) for i in range(1, 20)]
    try:
        for _ in range(10):  # let the queued tasks run up to the gate
            await asyncio.sleep(0)
        assert calls == [1, 8, 8]  # two full batches went without waiting; 3 rows queue
    finally:
        gate.set()
    outs = await asyncio.gather(first, *rest)
    assert calls == [1, 8, 8, 3]  # the queue went when the model became idle
    for i, (s, d) in enumerate(outs):
        np.testing.assert_array_equal(s, x[i : i + 1].sum(axis=1))
        np.testing.assert_array_equal(d, x[i : i + 1] * 2)
    assert len(b) == 0  # idle keys are forgotten


async def test_a_request_for_an_idle_model_runs_in_its_own_task_and_others_queue_behind() -> None:
    ran_in: list[asyncio.Task[Any] | None] = []
    calls: list[int] = []
    gate = asyncio.Event()

    async def run(key: object, model: object, rows: np.ndarray, deadline: Any) -> list[np.ndarray]:
        ran_in.append(asyncio.current_task())
        calls.append(len(rows))
        await gate.wait()
        return [rows + 1]

    b = Batcher(run, max_rows=8, max_delay_s=60.0)
    x = np.arange(8, dtype=np.float32).reshape(4, 2)
    first = asyncio.ensure_future(b.predict("k", None, x[:1]))
    await asyncio.sleep(0)
    assert ran_in == [first]  # no batch task of its own
    rest = [asyncio.ensure_future(b.predict("k", None, x[i : i + 1])) for i in range(1, 4)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert calls == [1]  # the others wait for the running call, then go as one batch
    gate.set()
    outs = await asyncio.gather(first, *rest)
    assert calls == [1, 3] and ran_in[1] not in (first, *rest)
    for i, (o,) in enumerate(outs):
        np.testing.assert_array_equal(o, x[i : i + 1] + 1)
    assert len(b) == 0


async def test_a_cancelled_lone_request_leaves_the_batcher_clean() -> None:
    gate = asyncio.Event()

    async def run(key: object, model: object, rows: np.ndarray, deadline: Any) -> list[np.ndarray]:
        await gate.wait()
        return [rows]

    b = Batcher(run, max_rows=8, max_delay_s=60.0)
    t = asyncio.ensure_future(b.predict("k", None, np.ones((1, 2), np.float32)))
    await asyncio.sleep(0)
    assert len(b) == 1
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t
    assert len(b) == 0
    gate.set()
    (o,) = await b.predict("k", None, np.zeros((1, 2), np.float32))
    assert o.shape == (1, 2)


async def test_batcher_without_idle_dispatch_waits_for_a_full_batch_or_the_delay() -> None:
    calls: list[int] = []

    async def run(key: object, model: object, rows: np.ndarray, deadline: Any) -> list[np.ndarray]:
        calls.append(len(rows))
        return [rows]

    b = Batcher(run, max_rows=4, max_delay_s=0.01, when_idle=False)
    x = np.ones((6, 3), dtype=np.float32)
    outs = await asyncio.gather(*(b.predict("k", None, x[i : i + 1]) for i in range(6)))
    assert calls == [4, 2] and all(o[0].shape == (1, 3) for o in outs)


async def test_a_failed_batch_fails_each_of_its_callers() -> None:
    async def run(key: object, model: object, rows: np.ndarray, deadline: Any) -> list[np.ndarray]:
        raise FailedPrecondition("boom")

    b = Batcher(run, max_rows=4, max_delay_s=0.01, when_idle=False)
    res = await asyncio.gather(
        *(b.predict("k", None, np.ones((1, 2))) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, FailedPrecondition) for r in res)


# --- disk tier ------------------------------------------------------------------------------


def test_disk_tier_is_lru_within_budget_and_survives_a_restart(tmp_path: Path) -> None:
    blobs = [bytes([i]) * 100 for i in range(4)]
    shas = [sha256_hex(b) for b in blobs]
    d = DiskCache(tmp_path / "c", budget=250)
    d.scan()
    assert d.write(shas[0], blobs[0]) and d.write(shas[1], blobs[1])
    assert d.read(shas[0]) == blobs[0]  # 0 is now more recent than 1
    d.write(shas[2], blobs[2])
    assert shas[1] not in d and not d.path(shas[1]).exists()
    assert d.used == 200 and len(d) == 2
    assert not d.write(shas[3], b"x" * 300)  # larger than the whole budget: not kept
    again = DiskCache(tmp_path / "c", budget=250)
    again.scan()
    assert shas[0] in again and shas[2] in again and again.used == 200
    again.remove(shas[0])
    assert again.read(shas[0]) is None


# --- wire conversion and validation ---------------------------------------------------------

SIG = Signature(
    (TensorSpec("input__0", "FP32", (-1, 3)),), (TensorSpec("output__0", "FP32", (-1,)),)
)


def _request(x: np.ndarray, datatype: str = "FP32", typed: bool = False) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="t/m", model_version="2")
    t = req.inputs.add(name="input__0", datatype=datatype, shape=list(x.shape))
    if typed:
        field = {"FP32": t.contents.fp32_contents, "INT64": t.contents.int64_contents}[datatype]
        field.extend(x.ravel().tolist())
    else:
        req.raw_input_contents.append(x.tobytes())
    return req


@pytest.mark.parametrize("typed", [False, True])
def test_inputs_decode_from_raw_and_typed_contents(typed: bool) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    req = infer_request_from_proto(_request(x, typed=typed))
    assert (req.model, req.version) == ("t/m", "2")
    np.testing.assert_array_equal(req.inputs[0].array, x)
    assert check_inputs("t/m:2", SIG, req.inputs)[0].shape == (2, 3)
    ints = infer_request_from_proto(_request(x.astype(np.int64), "INT64", typed))
    assert ints.inputs[0].array.dtype == np.int64
    with pytest.raises(InvalidArgument, match=r"expected FP32 \[-1, 3\], received INT64 \[2, 3\]"):
        check_inputs("t/m:2", SIG, ints.inputs)


def test_malformed_tensors_are_invalid_arguments() -> None:
    x = np.zeros((2, 3), dtype=np.float32)
    bad = _request(x)
    bad.raw_input_contents[0] = bad.raw_input_contents[0][:-1]
    with pytest.raises(InvalidArgument, match="23 bytes of raw contents, but FP32 \\[2, 3\\]"):
        infer_request_from_proto(bad)
    bad = _request(x)
    bad.inputs[0].datatype = "BF17"
    with pytest.raises(InvalidArgument, match="unsupported datatype"):
        infer_request_from_proto(bad)
    req = infer_request_from_proto(_request(np.zeros((2, 4), dtype=np.float32)))
    with pytest.raises(InvalidArgument, match=r"expected FP32 \[-1, 3\], received FP32 \[2, 4\]"):
        check_inputs("t/m:2", SIG, req.inputs)
    with pytest.raises(InvalidArgument, match="unknown output 'nope'"):
        select_outputs(SIG, ["nope"])
    assert select_outputs(SIG, []) == [0]


def test_what_numpy_cannot_hold_is_invalid_argument_not_internal() -> None:
    """Formerly numpy's OverflowError / ValueError, which the servicer answered INTERNAL."""
    req = pb.ModelInferRequest(model_name="t/m")
    req.inputs.add(name="x", datatype="INT8", shape=[3]).contents.int_contents.extend([1, 2, 300])
    with pytest.raises(InvalidArgument, match=r"int_contents\[2\] = 300 is out of range for INT8"):
        infer_request_from_proto(req)
    req.inputs[0].datatype = "INT16"
    assert infer_request_from_proto(req).inputs[0].array.tolist() == [1, 2, 300]
    req = pb.ModelInferRequest(model_name="t/m", raw_input_contents=[b"\x01"])
    req.inputs.add(name="x", datatype="BOOL", shape=[1] * 65)
    with pytest.raises(InvalidArgument, match="65 dimensions in shape; at most 64"):
        infer_request_from_proto(req)
    req.inputs[0].ClearField("shape")
    req.inputs[0].shape.extend([0, 2**62, 2])
    req.raw_input_contents[0] = b""
    with pytest.raises(InvalidArgument, match=r"BOOL \[0, 4611686018427387904, 2\] is too large"):
        infer_request_from_proto(req)
    req.inputs[0].shape[2] = 1
    assert infer_request_from_proto(req).inputs[0].array.shape == (0, 2**62, 1)


def test_outputs_encode_as_raw_contents_with_their_datatype() -> None:
    y = np.array([0.25, 0.5], dtype=np.float64)
    t = output_tensor("output__0", y)
    assert t.datatype == "FP64"
    resp = infer_response_to_proto(InferResult("t/m", 3, (t,), "id-1"))
    assert (resp.model_name, resp.model_version, resp.id) == ("t/m", "3", "id-1")
    assert resp.outputs[0].datatype == "FP64" and list(resp.outputs[0].shape) == [2]
    np.testing.assert_array_equal(np.frombuffer(resp.raw_output_contents[0], np.float64), y)
    assert output_tensor("o", np.zeros(2, dtype=np.float32)).datatype == "FP32"
    assert isinstance(t, Tensor)


# --- record resolution ----------------------------------------------------------------------


def _version(v: int) -> ModelVersion:
    return ModelVersion(v, f"k{v}", "xgboost", "xgboost-json", "cpu", "0" * 64, 10, SIG)


async def test_catalog_resolves_numbers_aliases_and_reports_what_is_missing() -> None:
    assert parse_version("") == "stable" and parse_version("12") == 12
    with pytest.raises(InvalidArgument):
        parse_version("0")
    store = MemoryStore()
    rec = ModelRecord("t", "m", {1: _version(1)}, {"stable": 1})
    await store.put(model_key("t", "m"), rec.encode())
    cat = Catalog(store)
    await cat.start()
    try:
        await asyncio.wait_for(cat.watching.wait(), 5)
        _r, mv = await cat.resolve("t", "m", "")
        assert mv.version == 1
        with pytest.raises(NotFound, match="version 2 of t/m not found"):
            await cat.resolve("t", "m", "2")
        with pytest.raises(NotFound, match="model t/x not found"):
            await cat.resolve("t", "x", "1")
        # A new version and a moved alias: the watch updates the cached record.
        moved = ModelRecord("t", "m", {1: _version(1), 2: _version(2)}, {"stable": 2})
        await store.put(model_key("t", "m"), moved.encode())
        for _ in range(100):
            if (await cat.resolve("t", "m", "stable"))[1].version == 2:
                break
            await asyncio.sleep(0.01)
        assert (await cat.resolve("t", "m", "stable"))[1].version == 2
        assert (await cat.resolve("t", "m", "1"))[1].version == 1
        # etcd down: cached versions still resolve; an uncached model is UNAVAILABLE.
        store.available = False
        assert (await cat.resolve("t", "m", "2"))[1].version == 2
        with pytest.raises(Unavailable):
            await cat.resolve("t", "other", "1")
    finally:
        await cat.stop()
