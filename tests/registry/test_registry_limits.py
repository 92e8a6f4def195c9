"""Bounds of bulk registration, in-process: transactions within etcd's op and byte limits,
records that would outgrow a request refused, validation bounded by its thread pool.
``MemoryStore`` has etcd's transaction semantics (pure logic; the wiring runs against the real
etcd in the other modules)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import registry.registration as registration_module
from registry.errors import TooLarge
from registry.facade import Registry
from registry.registration import Registered, RegisterSpec
from registry.store import MAX_TXN_BYTES
from shoal.artifacts import ArtifactInfo
from shoal.frameworks import inspect_artifact
from shoal.objstore import ObjectStore
from shoal.state import MAX_TXN_OPS, Compare, MemoryStore, Op, Put, TxnResult
from tests.registry.helpers import model_variant


class CountingStore(MemoryStore):
    """A MemoryStore that records the size of every transaction."""

    def __init__(self) -> None:
        super().__init__()
        self.txns: list[tuple[int, int]] = []  # (ops, value bytes)

    async def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        size = sum(len(op.value) + len(op.key) for op in ops if isinstance(op, Put))
        self.txns.append((len(ops), size))
        return await super().txn(compares, ops)


async def test_bulk_transactions_stay_within_etcd_limits(tmp_path: Path) -> None:
    store = CountingStore()
    reg = Registry(store, ObjectStore((tmp_path / "objects").as_uri()))
    try:
        # Long labels make each record ~20 KiB: the byte budget binds before the op count.
        label = {"notes": "x" * 20_000}
        items: list[tuple[RegisterSpec, bytes | str]] = [
            (RegisterSpec(f"t{i:04d}", "m", labels=label), model_variant(i % 6)[1])
            for i in range(300)
        ]
        out = await reg.register_many(items)
        assert all(isinstance(o, Registered) and o.created for o in out)
        assert len(store.txns) > 300 * 20_000 // MAX_TXN_BYTES  # several, not one
        assert all(ops <= MAX_TXN_OPS and size <= MAX_TXN_BYTES for ops, size in store.txns)

        # Small records: the op count binds (300 models, 128 per transaction -> 3).
        store.txns.clear()
        small: list[tuple[RegisterSpec, bytes | str]] = [
            (RegisterSpec(f"s{i:04d}", "m"), model_variant(i % 6)[1]) for i in range(300)
        ]
        await reg.register_many(small)
        assert [ops for ops, _ in store.txns] == [128, 128, 44]
    finally:
        reg.close()


async def test_a_record_too_large_for_etcd_is_refused(tmp_path: Path) -> None:
    reg = Registry(MemoryStore(), ObjectStore((tmp_path / "objects").as_uri()))
    try:
        huge = {f"k{i}": "v" * 1000 for i in range(1100)}  # ~1.1 MB of labels
        with pytest.raises(TooLarge, match="prune"):
            await reg.register(RegisterSpec("acme", "m", labels=huge), model_variant(0)[1])
        (out,) = await reg.register_many(
            [(RegisterSpec("acme", "m", labels=huge), model_variant(0)[1])]
        )
        assert isinstance(out, TooLarge)
        ok = await reg.register(RegisterSpec("acme", "m"), model_variant(0)[1])
        assert ok.version == 1  # nothing was half-written by the refusals
    finally:
        reg.close()


async def test_validation_runs_on_a_bounded_pool_off_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = threading.Lock()
    running = [0, 0, 0]  # now, most at once, calls
    threads: set[str] = set()

    def slow_inspect(data: bytes, framework: str | None = None) -> ArtifactInfo:
        with lock:
            running[0] += 1
            running[2] += 1
            running[1] = max(running[1], running[0])
            threads.add(threading.current_thread().name)
        time.sleep(0.01)
        try:
            return inspect_artifact(data, framework)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(registration_module, "inspect_artifact", slow_inspect)
    reg = Registry(
        MemoryStore(),
        ObjectStore((tmp_path / "objects").as_uri()),
        validate_processes=0,
        validate_threads=3,
    )
    try:
        items: list[tuple[RegisterSpec, Any]] = [
            (RegisterSpec(f"t{i}", "m"), model_variant(i)[1]) for i in range(24)
        ]
        out = await reg.register_many(items, concurrency=24)
        assert all(isinstance(o, Registered) for o in out)
        assert running[1] == 3  # parallel, and never more than the pool
        assert all(name.startswith("shoal-validate") for name in threads)
        # The same bytes for other models: validated once (cached by sha256).
        calls = running[2]
        again = await reg.register_many(
            [(RegisterSpec(f"u{i}", "m"), items[i][1]) for i in range(24)]
        )
        assert all(isinstance(o, Registered) and o.created for o in again)
        assert running[2] == calls == 24
    finally:
        reg.close()
