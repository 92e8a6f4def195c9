"""The validation pool: worker processes answer exactly what in-process validation does,
refuse what it refuses, survive an artifact that crashes a worker, and leave no process
behind (closed, or with the parent killed)."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from registry.validation.pool import ProcessValidator, ThreadValidator, worker_env
from registry.validation.protocol import (
    MALFORMED,
    Item,
    MalformedAnswer,
    parse_answer,
)
from registry.validation.worker import answer_items
from shoal.artifacts import ArtifactError, ArtifactInfo
from shoal.frameworks import inspect_artifact
from tests.registry.helpers import ROOT, model_variant
from tests.registry.validation_faults import (
    CRASH,
    ENV,
    FORMATS,
    HANG,
    HUGE,
    PICKLE,
    Gadget,
    alive,
    children,
    misbehave,
    plain,
    same,
)


async def test_pool_answers_exactly_like_in_process_validation(
    model_bytes: dict[str, Any],
) -> None:
    items: list[Item] = [(model_bytes[f], "") for f in FORMATS]
    items += [(model_bytes["xgboost-json"], "xgboost"), (model_bytes["onnx"], "onnx")]
    expected = [inspect_artifact(data, fw or None) for data, fw in items]
    pool = ProcessValidator(2)
    threads = ThreadValidator(2)
    try:
        assert await pool.validate(items) == expected
        assert await threads.validate(items) == expected
        assert all(isinstance(info, ArtifactInfo) for info in expected)
    finally:
        pool.close()
        threads.close()


async def test_pool_refuses_what_in_process_validation_refuses(
    model_bytes: dict[str, Any],
) -> None:
    bad: list[Item] = [
        (pickle.dumps({"model": [1, 2, 3]}, protocol=4), ""),
        (model_bytes["xgboost-json"][:100], ""),
        (model_bytes["lightgbm-text"][: len(model_bytes["lightgbm-text"]) // 2], ""),
        (model_bytes["onnx"][: len(model_bytes["onnx"]) // 2], ""),
        (model_bytes["lightgbm-text"], "xgboost"),
        (model_bytes["onnx"], "sklearn"),
        (b"", ""),
    ]
    pool = ProcessValidator(2)
    try:
        answers = await pool.validate(bad)
    finally:
        pool.close()
    for (data, fw), answer in zip(bad, answers, strict=True):
        assert isinstance(answer, ArtifactError)
        with pytest.raises(ArtifactError) as local:
            inspect_artifact(data, fw or None)
        assert str(answer) == str(local.value)
    assert "pickle" in str(answers[0])


def test_worker_answers_are_plain_json_that_parse_back_exactly(
    model_bytes: dict[str, Any],
) -> None:
    items: list[Item] = [(model_bytes[f], "") for f in FORMATS]
    items += [(b"\x80\x04junk", ""), (model_bytes["onnx"], "xgboost")]
    answers = answer_items(items)
    assert [a[0] for a in answers] == ["ok"] * 4 + ["invalid"] * 2
    assert all(plain(a) for a in answers)
    parsed = parse_answer(json.dumps(answers).encode(), items)
    for (data, fw), got in zip(items, parsed, strict=True):
        try:
            expected: object = inspect_artifact(data, fw or None)
        except ArtifactError as exc:
            expected = exc
        assert same(got, expected)


def _hostile(good: list[Any], path: str) -> dict[str, bytes]:
    """Answers to one item whose true answer is ``good``, each one broken another way."""

    def ok(**change: Any) -> bytes:
        fields = ["tag", "framework", "format", "sha256", "size", "signature", "details"]
        answer = dict(zip(fields, good, strict=True)) | change
        return json.dumps([list(answer.values())]).encode()

    sig = good[5]
    tensor = sig["inputs"][0]
    return {
        "pickle": pickle.dumps([Gadget(path)]),
        "pickle-protocol-0": pickle.dumps([Gadget(path)], protocol=0),
        "empty": b"",
        "not-utf8": b"\xff\xfe[]",
        "nested": b"[" * 100_000 + b"]" * 100_000,
        "null": b"null",
        "object": json.dumps({"answers": [good]}).encode(),
        "no-answers": b"[]",
        "two-answers": json.dumps([good, good]).encode(),
        "a-string": json.dumps(["ok"]).encode(),
        "unknown-tag": json.dumps([["fine", "xgboost"]]).encode(),
        "short-ok": json.dumps([good[:6]]).encode(),
        "invalid-not-str": json.dumps([["invalid", ["x"]]]).encode(),
        "error-short": json.dumps([["error", "OSError"]]).encode(),
        "unknown-framework": ok(framework="sklearn"),
        "unhashable-format": ok(format=["xgboost-json"]),
        "format-of-other-framework": ok(format="lightgbm-text"),
        "sha256-short": ok(sha256="ab" * 16),
        "sha256-upper": ok(sha256=good[3].upper()),
        "size-wrong": ok(size=good[4] + 1),
        "size-bool": ok(size=True),
        "size-float": ok(size=float(good[4])),
        "signature-list": ok(signature=[]),
        "signature-extra-key": ok(signature=sig | {"more": []}),
        "signature-missing-key": ok(signature={"inputs": sig["inputs"]}),
        "tensor-dtype": ok(signature=sig | {"inputs": [[tensor[0], "OBJECT", tensor[2]]]}),
        "tensor-dtype-unhashable": ok(signature=sig | {"inputs": [[tensor[0], [], tensor[2]]]}),
        "tensor-shape-float": ok(signature=sig | {"inputs": [[tensor[0], "FP32", [1.5]]]}),
        "tensor-shape-bool": ok(signature=sig | {"inputs": [[tensor[0], "FP32", [True]]]}),
        "tensor-shape-negative": ok(signature=sig | {"inputs": [[tensor[0], "FP32", [-2]]]}),
        "tensor-name-int": ok(signature=sig | {"inputs": [[1, "FP32", [-1]]]}),
        "details-list": ok(details=[]),
    }


def test_hostile_answers_are_refused_without_unpickling(
    model_bytes: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_unpickling(monkeypatch)
    item: Item = (model_bytes["xgboost-json"], "")
    (good,) = answer_items([item])
    assert parse_answer(json.dumps([good]).encode(), [item]) == [inspect_artifact(item[0])]
    pwned = tmp_path / "pwned"
    for name, raw in _hostile(good, str(pwned)).items():
        with pytest.raises(MalformedAnswer):
            parse_answer(raw, [item])
            pytest.fail(f"{name} was accepted")
    # Asked for LightGBM, the worker may not say XGBoost.
    with pytest.raises(MalformedAnswer):
        parse_answer(json.dumps([good]).encode(), [(item[0], "lightgbm")])
    assert not pwned.exists()


def _no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every way to unpickle in this process raises (the transport must need none)."""
    import _pickle
    import multiprocessing.reduction

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("something unpickled")

    for module in (pickle, _pickle):
        for name in ("loads", "load", "Unpickler"):
            monkeypatch.setattr(module, name, refuse)
    monkeypatch.setattr(multiprocessing.reduction.ForkingPickler, "loads", refuse)


async def test_a_worker_answering_garbage_is_replaced_and_its_chunk_refused(
    model_bytes: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_unpickling(monkeypatch)
    monkeypatch.setenv("SHOAL_S3_SECRET_KEY", "hunter2")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    pwned = tmp_path / "pwned"
    good: Item = (model_bytes["lightgbm-text"], "")
    expected = inspect_artifact(good[0])
    pool = ProcessValidator(1, task=misbehave)
    try:
        assert await pool.validate([good]) == [expected]
        # A frame holding a pickle whose unpickling would create a file.
        answers = await pool.validate([good, (PICKLE + str(pwned).encode(), "")])
        assert [str(a) for a in answers] == [MALFORMED] * 2
        assert all(isinstance(a, ArtifactError) for a in answers)
        assert not pwned.exists()
        assert pool.restarts == 1
        # A frame announcing more than the parent reads.
        answers = await pool.validate([good, (HUGE, "")])
        assert [str(a) for a in answers] == [MALFORMED] * 2
        assert pool.restarts == 2
        # The pool works on, and its workers saw no credentials.
        env_answer, again = await pool.validate([(ENV, ""), good])
        assert again == expected
        env = json.loads(str(env_answer))
        assert not [k for k in env if k.startswith(("SHOAL_", "AWS_"))]
        assert env["OMP_NUM_THREADS"] == "1"
    finally:
        pool.close()


def test_worker_env_keeps_paths_and_locale_only() -> None:
    env = worker_env(
        {"PATH": "/bin", "LC_ALL": "C.UTF-8", "SHOAL_ETCD": "x", "AWS_SECRET_ACCESS_KEY": "y"}
    )
    assert env["PATH"] == "/bin" and env["LC_ALL"] == "C.UTF-8"
    assert not [k for k in env if k.startswith(("SHOAL_", "AWS_"))]


async def test_an_artifact_that_kills_its_worker_fails_alone(
    model_bytes: dict[str, Any],
) -> None:
    good = [(model_variant(i)[1], "") for i in range(6)]
    items: list[Item] = [*good[:3], (CRASH, ""), *good[3:]]
    before = children()
    pool = ProcessValidator(2, task=misbehave)
    try:
        answers = await pool.validate(items)
        assert isinstance(answers[3], ArtifactError)
        assert "crashed" in str(answers[3])
        others = answers[:3] + answers[4:]
        assert others == [inspect_artifact(data) for data, _ in good]
        assert pool.restarts >= 1
        # The pool works on afterwards.
        (again,) = await pool.validate([good[0]])
        assert again == others[0]
        # A worker killed while idle (not by an artifact) is replaced, blaming nothing.
        restarts, workers = pool.restarts, children() - before
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        for _ in range(1000):  # until they are gone (zombies at most)
            if not any(alive(pid) for pid in workers):
                break
            await asyncio.sleep(0.01)
        assert await pool.validate([good[1]]) == [others[1]]
        assert pool.restarts == restarts + len(workers)
    finally:
        pool.close()


async def test_an_artifact_that_stalls_its_worker_times_out_alone() -> None:
    good = [(model_variant(i)[1], "") for i in range(4)]
    items: list[Item] = [*good[:2], (HANG, ""), *good[2:]]
    pool = ProcessValidator(1, task=misbehave, timeout_s=1.0)
    try:
        answers = await pool.validate(items)
        assert isinstance(answers[2], ArtifactError)
        assert "timed out" in str(answers[2])
        assert answers[:2] + answers[3:] == [inspect_artifact(data) for data, _ in good]
        assert pool.restarts == 2  # the chunk's worker, then the one that tried it alone
    finally:
        pool.close()


async def test_close_stops_every_worker(model_bytes: dict[str, Any]) -> None:
    before = children()
    pool = ProcessValidator(2)
    await pool.validate([(model_bytes[f], "") for f in FORMATS])
    workers = children() - before
    assert workers, "the pool started no process"
    pool.close()
    assert not (children() & workers)
    assert not any(alive(pid) for pid in workers)
    with pytest.raises(RuntimeError, match="closed"):
        await pool.validate([(model_bytes["onnx"], "")])


async def test_close_stops_a_busy_worker_too() -> None:
    before = children()
    pool = ProcessValidator(1, task=misbehave, stop_s=1.0)
    stalled = asyncio.create_task(pool.validate([(HANG, "")]))
    for _ in range(1200):  # the worker starts and takes the request
        if children() - before and not pool._idle:
            break
        await asyncio.sleep(0.05)
    workers = children() - before
    assert workers
    await asyncio.to_thread(pool.close)
    with pytest.raises(RuntimeError, match="closed"):
        await stalled
    assert not any(alive(pid) for pid in workers)
    assert not (children() - before)


async def test_start_starts_the_workers_before_any_validation(
    model_bytes: dict[str, Any],
) -> None:
    before = children()
    pool = ProcessValidator(2)
    try:
        assert not (children() - before)  # the constructor starts nothing
        pool.start()
        for _ in range(400):
            if len(children() - before) == 2:
                break
            await asyncio.sleep(0.05)
        workers = children() - before
        assert len(workers) == 2
        await pool.validate([(model_bytes[f], "") for f in FORMATS])
        assert children() - before == workers  # the same ones did the work
    finally:
        pool.close()
    assert not (children() - before)


async def test_idle_workers_stop_and_come_back(model_bytes: dict[str, Any]) -> None:
    before = children()
    pool = ProcessValidator(1, idle_s=0.2)
    try:
        items: list[Item] = [(model_bytes["xgboost-json"], "")]
        (first,) = await pool.validate(items)
        workers = children() - before
        assert workers
        for _ in range(400):  # up to 20 s: the pool stops them without waiting
            if not any(alive(pid) for pid in workers):
                break
            await asyncio.sleep(0.05)
        assert not any(alive(pid) for pid in workers)
        assert await pool.validate(items) == [first]
        assert await pool.validate([]) == []
    finally:
        pool.close()
    assert not (children() - before)


_ORPHAN = """
import asyncio, os, signal, sys, time
from pathlib import Path
from registry.validation.pool import ProcessValidator
from tests.registry.helpers import model_variant
from tests.registry.validation_faults import HANG, misbehave

async def main(busy):
    pool = ProcessValidator(2, task=misbehave)
    await pool.validate([(model_variant(i)[1], "") for i in range(4)])
    if busy:  # one worker stalls in a load: it never reads its stdin's end again
        stalled = Path(sys.argv[2])
        task = asyncio.create_task(pool.validate([(HANG + str(stalled).encode(), "")]))
        while not stalled.exists():
            await asyncio.sleep(0.05)
    tasks = [f"/proc/self/task/{t}/children" for t in os.listdir("/proc/self/task")]
    print(" ".join(open(t).read() for t in tasks), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main(sys.argv[1] == "busy"))
"""


@pytest.mark.parametrize("state", ["idle", "busy"])
def test_workers_exit_when_their_parent_is_killed(state: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _ORPHAN, state, str(tmp_path / "stalled")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    pids = [int(p) for p in proc.stdout.split()]
    assert len(pids) == 2, proc.stderr[-2000:]
    deadline = time.monotonic() + 20
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in pids)
