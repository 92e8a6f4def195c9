"""The registry on its validation pools (processes, or threads), and the placement service
starting its validation workers when it starts."""

from __future__ import annotations

import contextlib
import pickle
import time
from pathlib import Path

from registry.facade import Registry
from registry.registration import Registered, RegisterSpec
from shoal.artifacts import ArtifactError
from shoal.frameworks import inspect_artifact
from shoal.objstore import ObjectStore
from shoal.settings import CommonSettings
from shoal.state import MemoryStore
from tests.registry.conftest import start_control
from tests.registry.helpers import model_variant
from tests.registry.validation_faults import alive, children


async def test_registry_on_the_process_pool(tmp_path: Path) -> None:
    before = children()
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
        assert children() - before  # validated by worker processes
    finally:
        reg.close()
    assert not (children() - before)


async def test_registry_validates_on_threads_with_no_processes(tmp_path: Path) -> None:
    before = children()
    reg = Registry(
        MemoryStore(),
        ObjectStore((tmp_path / "objects").as_uri()),
        validate_processes=0,
        validate_threads=2,
    )
    try:
        reg.start()
        (out,) = await reg.register_many([(RegisterSpec("t", "m"), model_variant(0)[1])])
        assert isinstance(out, Registered) and out.created
        assert not (children() - before)
    finally:
        reg.close()


def _children_of(pid: int) -> set[int]:
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out.update(int(p) for p in (task / "children").read_text().split())
    return {p for p in out if alive(p)}


def test_the_service_starts_its_validation_workers_when_it_starts(
    tmp_path: Path, etcd_url: str, s3_store_url: str, s3_settings: CommonSettings
) -> None:
    control = start_control(
        tmp_path / "procs", etcd_url, s3_store_url, s3_settings, validate_processes="1"
    )
    try:
        (placement,) = control.procs.started
        deadline = time.monotonic() + 60
        while not _children_of(placement.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        # SHOAL_VALIDATE_PROCESSES=1: one worker, before anything was registered.
        assert len(_children_of(placement.pid)) == 1
    finally:
        control.procs.stop_all()
