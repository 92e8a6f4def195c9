"""The warm path's shortcuts, and that they never change an answer or a protection.

* ``InlinePolicy`` (pure logic): which predictions may run on the event loop.
* ``onnx.bounded``: ONNX graphs with control flow are never run inline.
* A real worker process: a fast model's predictions go inline after a few measured calls and
  answer exactly what the library answers; a faulted model, a model with a loop and a worker
  with inlining off keep every call on the prediction threads.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from conftest import WorkerFactory
from worker_harness import Client, WorkerProc, put_model

from shoal.frameworks import load_model
from shoal.frameworks import onnx as onnx_fw
from worker.inline import InlinePolicy

ROW = [np.zeros((1, 4), np.float32)]

# --- InlinePolicy ---------------------------------------------------------------------------


def test_inline_needs_a_bounded_model_proven_fast_on_enough_calls() -> None:
    p = InlinePolicy(max_s=0.001, min_samples=3)
    assert not p.eligible("m", True, ROW)  # never measured
    p.observe("m", 0.0002)
    p.observe("m", 0.0002)
    assert not p.eligible("m", True, ROW)  # two samples are not enough
    p.observe("m", 0.0002)
    assert p.eligible("m", True, ROW)
    assert not p.eligible("m", False, ROW)  # unbounded runtime (loops, GPU)
    assert not p.eligible("other", True, ROW)


def test_inline_refuses_large_requests() -> None:
    p = InlinePolicy(max_s=0.001, max_bytes=1024, min_samples=1)
    p.observe("m", 0.0001)
    assert p.eligible("m", True, [np.zeros((16, 16), np.float32)])  # exactly 1 KiB
    assert not p.eligible("m", True, [np.zeros((17, 16), np.float32)])


def test_a_slow_call_sends_the_model_back_to_the_threads_until_it_is_fast_again() -> None:
    p = InlinePolicy(max_s=0.001, min_samples=1, alpha=0.5, jump=4.0)
    p.observe("m", 0.0001)
    assert p.eligible("m", True, ROW)
    p.observe("m", 0.010)  # more than jump x max_s: the average jumps to it
    assert not p.eligible("m", True, ROW)
    for _ in range(3):
        p.observe("m", 0.0001)
    assert not p.eligible("m", True, ROW)  # 10 ms -> 5 -> 2.5 -> 1.3 ms: still too slow
    p.observe("m", 0.0001)
    assert p.eligible("m", True, ROW)  # 0.7 ms


def test_moderately_slow_samples_move_the_average_gradually() -> None:
    p = InlinePolicy(max_s=0.001, min_samples=1, alpha=0.5, jump=4.0)
    p.observe("m", 0.0005)
    p.observe("m", 0.003)  # under jump x max_s: 0.5 + 0.5 * 2.5 = 1.75 ms
    assert not p.eligible("m", True, ROW)


def test_a_failure_forgets_the_history() -> None:
    p = InlinePolicy(max_s=0.001, min_samples=2)
    for _ in range(5):
        p.observe("m", 0.0001)
    assert p.eligible("m", True, ROW)
    p.forget("m")
    assert not p.eligible("m", True, ROW)
    p.observe("m", 0.0001)
    assert not p.eligible("m", True, ROW)  # has to prove itself again
    p.observe("m", 0.0001)
    assert p.eligible("m", True, ROW)


def test_a_load_time_prediction_stands_for_the_proof_once() -> None:
    p = InlinePolicy(max_s=0.001, min_samples=3)
    p.seed("m", 0.0002)
    assert p.eligible("m", True, ROW)
    p.seed("slow", 0.005)
    assert not p.eligible("slow", True, ROW)
    p.observe("m", 0.010)  # real calls are slower than the warm-up said: threads again
    p.seed("m", 0.0001)  # a later load of the same model does not wipe what calls showed
    assert not p.eligible("m", True, ROW)


def test_zero_max_disables_inlining() -> None:
    p = InlinePolicy(max_s=0.0, min_samples=1)
    p.observe("m", 0.0)
    assert not p.eligible("m", True, ROW)


def test_the_policy_remembers_a_bounded_number_of_models() -> None:
    p = InlinePolicy(max_s=0.001, min_samples=1, models=10)
    for i in range(50):
        p.observe(i, 0.0001)
    assert len(p) == 10
    assert p.eligible(49, True, ROW) and not p.eligible(0, True, ROW)


# --- ONNX control flow ------------------------------------------------------------------------


def _loop_model() -> bytes:
    """A graph whose Loop runs as many times as its input says (carrying ``x`` through)."""
    from onnx import TensorProto, helper

    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Identity", ["x_in"], ["x_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x_in", TensorProto.FLOAT, [None, 4]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x_out", TensorProto.FLOAT, [None, 4]),
        ],
    )
    cond = helper.make_tensor("c", TensorProto.BOOL, [], [True])
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["cond"], value=cond),
            helper.make_node("Loop", ["trips", "cond", "x"], ["y"], body=body),
        ],
        "looping",
        [
            helper.make_tensor_value_info("trips", TensorProto.INT64, []),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what the pinned onnxruntime reads
    return bytes(model.SerializeToString())


def test_onnx_graphs_without_control_flow_are_bounded(model_bytes: dict[str, Any]) -> None:
    assert onnx_fw.bounded(model_bytes["onnx"]) is True


def test_onnx_loops_custom_domains_and_garbage_are_not_bounded() -> None:
    from onnx import TensorProto, helper

    assert onnx_fw.bounded(_loop_model()) is False
    custom = helper.make_model(
        helper.make_graph(
            [helper.make_node("Spin", ["x"], ["y"], domain="com.example")],
            "custom",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        ),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)],
    )
    assert onnx_fw.bounded(custom.SerializeToString()) is False
    sized = helper.make_model(  # output size read from the input's values
        helper.make_graph(
            [helper.make_node("ConstantOfShape", ["shape"], ["y"])],
            "sized",
            [helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None])],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    assert onnx_fw.bounded(sized.SerializeToString()) is False
    assert onnx_fw.bounded(b"\x3a\xff\xff\xff\xff\x0f") is False  # truncated field
    assert onnx_fw.bounded(b"") is False


def test_loaded_models_say_whether_they_are_bounded(model_bytes: dict[str, Any]) -> None:
    assert load_model(model_bytes["xgboost-json"], "xgboost", "cpu").bounded is True
    assert load_model(model_bytes["lightgbm-text"], "lightgbm", "cpu").bounded is True
    assert load_model(model_bytes["onnx"], "onnx", "cpu").bounded is True
    assert load_model(_loop_model(), "onnx", "cpu").bounded is False


# --- a real worker ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inline_worker(worker_factory: WorkerFactory) -> WorkerProc:
    return worker_factory(
        {"SHOAL_BATCHING": "off", "SHOAL_FAULT_INJECT": "slow-predict:fast/faulted:0.01"}
    )


@pytest.fixture(scope="module")
def threads_worker(worker_factory: WorkerFactory) -> WorkerProc:
    return worker_factory({"SHOAL_BATCHING": "off", "SHOAL_INLINE_MAX_US": "0"})


INLINE = "shoal_worker_inline_predictions_total"
NATIVE = "shoal_worker_native_requests_total"


async def _calls(w: WorkerProc, model: str, x: np.ndarray, n: int, **kw: Any) -> list[np.ndarray]:
    async with Client(w.address) as c:
        return [await c.infer(model, x, **kw) for _ in range(n)]


async def test_fast_models_run_inline_and_answer_what_the_library_answers(
    inline_worker: WorkerProc, model_bytes: dict[str, Any]
) -> None:
    import lightgbm as lgb
    import onnxruntime as ort
    import xgboost as xgb

    w = inline_worker
    x = np.ascontiguousarray(model_bytes["x"][:3])
    booster = xgb.Booster()
    booster.load_model(bytearray(model_bytes["xgboost-json"]))
    session = ort.InferenceSession(model_bytes["onnx"], providers=["CPUExecutionProvider"])
    expected = {
        "xgb": booster.inplace_predict(x),
        "lgbm": lgb.Booster(model_str=model_bytes["lightgbm-text"].decode()).predict(x),
        "onnx": session.run(None, {session.get_inputs()[0].name: x})[0],
    }
    # Tree models are seeded by a 1-row prediction at load: every call may run inline (a
    # garbage collection landing in a call can send one back to the threads). The first
    # call (the miss) is Python's; every later one the native front's, without Python, which
    # applies the same policy on its own thread. An ONNX model is not seeded at load: the
    # front measures its first two calls on the threads, then runs it inline.
    bounds = {"xgb": ((11, 12), 11), "lgbm": ((11, 12), 11), "onnx": ((8, 10), 11)}
    for name, key in (("xgb", "xgboost-json"), ("lgbm", "lightgbm-text"), ("onnx", "onnx")):
        await put_model(w.etcd, w.store_url, "fast", name, model_bytes[key])
        before = w.scrape()
        kw = {"name": "input"} if name == "onnx" else {}
        answers = await _calls(w, f"fast/{name}", x, 12, **kw)
        after = w.scrape()
        inlined = after.get(INLINE) - before.get(INLINE)
        native = after.get(NATIVE) - before.get(NATIVE)
        (low, high), want_native = bounds[name]
        assert low <= inlined <= high, (name, inlined)
        assert native == want_native, (name, native)
        for a in answers:
            np.testing.assert_allclose(a.ravel(), np.ravel(expected[name]), rtol=1e-6)


async def test_faulted_and_looping_models_never_run_inline(
    inline_worker: WorkerProc, model_bytes: dict[str, Any]
) -> None:
    w = inline_worker
    x = np.ascontiguousarray(model_bytes["x"][:2])
    await put_model(w.etcd, w.store_url, "fast", "faulted", model_bytes["xgboost-json"])
    await put_model(w.etcd, w.store_url, "fast", "loop", _loop_model())
    before = w.scrape()
    await _calls(w, "fast/faulted", x, 8)
    middle = w.scrape()
    # A fault drill's model is never handed to the native front: its faults are Python's.
    assert middle.get(NATIVE) == before.get(NATIVE)
    async with Client(w.address) as c:
        for _ in range(8):
            resp = await c.stub.ModelInfer(_loop_request(), timeout=60)
            assert resp.outputs[0].name == "y"
    after = w.scrape()
    assert after.get(INLINE) == before.get(INLINE)
    # The looping model is served by the front after its miss, always on a thread.
    assert after.get(NATIVE) - middle.get(NATIVE) == 7


def _loop_request() -> Any:
    from shoal.pb import shoal_inference_pb2 as pb

    req = pb.ModelInferRequest(model_name="fast/loop")
    req.inputs.add(name="trips", datatype="INT64", shape=[])
    req.raw_input_contents.append(np.int64(3).tobytes())
    req.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    req.raw_input_contents.append(np.ones((2, 4), np.float32).tobytes())
    return req


async def test_inlining_off_keeps_every_call_on_the_threads(
    threads_worker: WorkerProc, model_bytes: dict[str, Any]
) -> None:
    w = threads_worker
    await put_model(w.etcd, w.store_url, "slow", "xgb", model_bytes["xgboost-json"])
    await _calls(w, "slow/xgb", np.ascontiguousarray(model_bytes["x"][:2]), 10)
    assert w.scrape().get(INLINE) == 0
