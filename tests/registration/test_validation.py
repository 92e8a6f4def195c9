"""The validation pool: worker processes answer exactly what in-process validation does,
refuse what it refuses, survive an artifact that crashes a worker, and leave no process
behind (closed, or with the parent killed)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from placement.registry import Registered, RegisterSpec, Registry
from placement.validation import (
    Item,
    ProcessValidator,
    ThreadValidator,
    Wire,
    _validate_in_worker,
)
from shoal.artifacts import ArtifactError, ArtifactInfo, inspect_artifact
from shoal.objstore import ObjectStore
from shoal.state import MemoryStore
from tests.registration.helpers import ROOT, model_variant

FORMATS = ["xgboost-json", "xgboost-ubj", "lightgbm-text", "onnx"]
CRASH = b"{crash this worker}"


def crash_on_marker(items: list[Item]) -> list[Wire]:
    """A worker task that dies (as a native crash would) when it meets ``CRASH``."""
    if any(data == CRASH for data, _ in items):
        os._exit(70)
    return _validate_in_worker(items)


def _children() -> set[int]:
    return {p.pid for p in multiprocessing.active_children() if p.pid is not None}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) counts as gone.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def _plain(value: Any) -> bool:
    """Only str/int/float/bool/None, and tuples, lists and dicts of them."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return True
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(_plain(k) and _plain(v) for k, v in value.items())
    return False


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


def test_only_plain_values_come_back_from_a_worker(model_bytes: dict[str, Any]) -> None:
    items: list[Item] = [(model_bytes[f], "") for f in FORMATS] + [(b"\x80\x04junk", "")]
    answers = _validate_in_worker(items)
    assert [a[0] for a in answers] == ["ok"] * 4 + ["invalid"]
    assert all(_plain(a) for a in answers)


async def test_an_artifact_that_kills_its_worker_fails_alone(
    model_bytes: dict[str, Any],
) -> None:
    good = [(model_variant(i)[1], "") for i in range(6)]
    items: list[Item] = [*good[:3], (CRASH, ""), *good[3:]]
    pool = ProcessValidator(2, task=crash_on_marker)
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
    finally:
        pool.close()


async def test_close_stops_every_worker(model_bytes: dict[str, Any]) -> None:
    before = _children()
    pool = ProcessValidator(2)
    await pool.validate([(model_bytes[f], "") for f in FORMATS])
    workers = _children() - before
    assert workers, "the pool started no process"
    pool.close()
    assert not (_children() & workers)
    assert not any(_alive(pid) for pid in workers)
    with pytest.raises(RuntimeError, match="closed"):
        await pool.validate([(model_bytes["onnx"], "")])


async def test_idle_workers_stop_and_come_back(model_bytes: dict[str, Any]) -> None:
    before = _children()
    pool = ProcessValidator(1, idle_s=0.2)
    try:
        items: list[Item] = [(model_bytes["xgboost-json"], "")]
        (first,) = await pool.validate(items)
        workers = _children() - before
        assert workers
        for _ in range(400):  # up to 20 s: the pool stops them without waiting
            if not any(_alive(pid) for pid in workers):
                break
            await asyncio.sleep(0.05)
        assert not any(_alive(pid) for pid in workers)
        assert await pool.validate(items) == [first]
        assert await pool.validate([]) == []
    finally:
        pool.close()
    assert not (_children() - before)


_ORPHAN = """
import asyncio, os, signal
from placement.validation import ProcessValidator
from tests.registration.helpers import model_variant

async def main():
    pool = ProcessValidator(2)
    await pool.validate([(model_variant(i)[1], "") for i in range(4)])
    # Every child: the workers, and the resource tracker that spawning starts.
    tasks = [f"/proc/self/task/{t}/children" for t in os.listdir("/proc/self/task")]
    print(" ".join(open(t).read() for t in tasks), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


def test_workers_exit_when_their_parent_is_killed() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _ORPHAN],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    pids = [int(p) for p in proc.stdout.split()]
    assert pids, proc.stderr[-2000:]
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids)


async def test_registry_on_the_process_pool(tmp_path: Path) -> None:
    before = _children()
    reg = Registry(
        MemoryStore(), ObjectStore((tmp_path / "objects").as_uri()), validate_processes=2
    )
    try:
        items: list[tuple[RegisterSpec, bytes | str]] = [
            (RegisterSpec(f"t{i}", "m"), model_variant(i)[1]) for i in range(40)
        ]
        items.append((RegisterSpec("bad", "m"), pickle.dumps([1, 2], protocol=4)))
        items.append((RegisterSpec("wrong", "m", framework="lightgbm"), model_variant(0)[1]))
        out = await reg.register_many(items)
        assert all(isinstance(o, Registered) and o.created for o in out[:40])
        for o, (_, data) in zip(out[:40], items[:40], strict=True):
            assert isinstance(o, Registered) and isinstance(data, bytes)
            (mv,) = o.record.versions.values()
            info = inspect_artifact(data)
            assert (mv.sha256, mv.framework, mv.format, mv.size, mv.signature) == (
                info.sha256,
                info.framework,
                info.format,
                info.size,
                info.signature,
            )
        assert isinstance(out[40], ArtifactError) and "pickle" in str(out[40])
        assert isinstance(out[41], ArtifactError) and "is xgboost-json" in str(out[41])
        assert _children() - before  # validated by worker processes
    finally:
        reg.close()
    assert not (_children() - before)
