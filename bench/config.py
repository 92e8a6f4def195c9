"""Benchmark knobs, from ``BENCH_*`` environment variables (read when a script starts).

``BENCH_SMOKE=1`` shrinks every phase so that each script finishes in well under a minute
(for checking the plumbing, never for figures). Explicit variables win over the smoke preset.

| variable | meaning | default (smoke) |
|---|---|---|
| ``BENCH_DURATION`` | seconds measured per load phase | 6 (1) |
| ``BENCH_WARMUP`` | seconds of warm-up before each load phase | 2 (0.3) |
| ``BENCH_CONCURRENCY`` | comma-separated concurrencies of the warm path | 1,32 |
| ``BENCH_MODELS`` | warm-path models (xgb, lgbm, onnx) | xgb,lgbm,onnx |
| ``BENCH_LOADGEN`` | h2load or python | h2load |
| ``BENCH_MLSERVER_OMP_THREADS`` | OMP_NUM_THREADS for MLServer ('' = library default) | 1 |
| ``BENCH_COLD_REPEATS`` | uncached first predictions timed per framework and tier | 10 (3) |
| ``BENCH_DENSITY_MODELS`` | models loaded per framework for the density figures | 1000 (50) |
| ``BENCH_PROFILE_DURATION`` | seconds py-spy records the router and a worker | 15 (2) |
| ``BENCH_KEEP`` | keep the temporary data folders (logs) after a run | 0 |
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


@dataclass(frozen=True)
class BenchConfig:
    smoke: bool
    duration_s: float
    warmup_s: float
    concurrency: tuple[int, ...]
    models: tuple[str, ...]
    mlserver_omp_threads: str
    cold_repeats: int
    density_models: int
    profile_duration_s: float
    keep: bool

    @classmethod
    def from_env(cls) -> BenchConfig:
        smoke = _env("BENCH_SMOKE", "0") not in ("", "0", "false", "no")
        return cls(
            smoke=smoke,
            duration_s=float(_env("BENCH_DURATION", "1" if smoke else "6")),
            warmup_s=float(_env("BENCH_WARMUP", "0.3" if smoke else "2")),
            concurrency=tuple(int(c) for c in _env("BENCH_CONCURRENCY", "1,32").split(",") if c),
            models=tuple(m for m in _env("BENCH_MODELS", "xgb,lgbm,onnx").split(",") if m),
            mlserver_omp_threads=_env("BENCH_MLSERVER_OMP_THREADS", "1"),
            cold_repeats=int(_env("BENCH_COLD_REPEATS", "3" if smoke else "10")),
            density_models=int(_env("BENCH_DENSITY_MODELS", "50" if smoke else "1000")),
            profile_duration_s=float(_env("BENCH_PROFILE_DURATION", "2" if smoke else "15")),
            keep=_env("BENCH_KEEP", "0") not in ("", "0", "false", "no"),
        )

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


@contextlib.contextmanager
def scratch(name: str, keep: bool = False) -> Iterator[Path]:
    """A temporary folder for one benchmark's data and logs, removed afterwards unless kept."""
    path = Path(tempfile.mkdtemp(prefix=f"shoal-bench-{name}-"))
    try:
        yield path
    finally:
        if keep:
            print(f"kept {path}", flush=True)
        else:
            shutil.rmtree(path, ignore_errors=True)


def wait_for(what: str, fn: Callable[[], T], timeout: float = 60.0, interval: float = 0.2) -> T:
    """Call ``fn`` until it returns without raising; re-raise its last error after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except Exception as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: still failing after {timeout:.0f}s: {exc}") from exc
            time.sleep(interval)
