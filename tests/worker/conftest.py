"""Fixtures of the worker tests (helpers live in ``worker_harness``).

Shared workers are module-scoped and use the session etcd directly (``etcd_server``), not the
``etcd_url`` fixture, whose per-test wipe would delete a shared worker's own key mid-module;
each module uses its own tenants and wipes ``/shoal/`` when it ends.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from worker_harness import ROOT, WorkerProc, wipe

from shoal.devservers import LocalEtcd

Runner = Callable[[Coroutine[Any, Any, Any]], Any]


@pytest.fixture(scope="session")
def session_run(request: pytest.FixtureRequest) -> Runner:
    """The root conftest's ``run`` (the one session event loop that grpc.aio is bound to)."""
    root = ROOT / "tests" / "conftest.py"
    for plugin in request.config.pluginmanager.get_plugins():
        f = getattr(plugin, "__file__", None)
        if f and Path(f).resolve() == root:
            return plugin.run  # type: ignore[no-any-return]
    raise RuntimeError("tests/conftest.py is not loaded")


@dataclass
class WorkerFactory:
    """Starts workers sharing one etcd and one file:// store; stops them all at the end."""

    etcd: str
    base: Path
    store_url: str
    started: list[WorkerProc] = field(default_factory=list)

    def __call__(self, env: Mapping[str, str] | None = None, store: str = "") -> WorkerProc:
        d = self.base / f"w{len(self.started)}"
        w = WorkerProc(self.etcd, store or self.store_url, d, dict(env or {}))
        self.started.append(w)
        return w.start()


@pytest.fixture(scope="module")
def worker_factory(
    etcd_server: LocalEtcd, tmp_path_factory: pytest.TempPathFactory, session_run: Runner
) -> Iterator[WorkerFactory]:
    base = tmp_path_factory.mktemp("workers")
    factory = WorkerFactory(etcd_server.url, base, (base / "objects").as_uri())
    yield factory
    for w in factory.started:
        w.stop()
    session_run(wipe(etcd_server.url))
