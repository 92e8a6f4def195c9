"""Shared fixtures: real etcd and SeaweedFS servers, stores, and small trained models.

Coroutine tests run on one session-wide event loop (a minimal hook instead of a plugin):
grpc.aio binds its completion queue to the first loop it sees, so every test shares that one.
Servers are started once per session on free loopback ports and stopped by PID; the etcd
keyspace is wiped after each test that used it.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.devservers import LocalEtcd, LocalSeaweedS3
from shoal.etcd import EtcdStore
from shoal.settings import CommonSettings

_LOOP: asyncio.AbstractEventLoop | None = None


def run(coro: Any) -> Any:
    """Run ``coro`` to completion on the session loop (also for sync fixtures)."""
    global _LOOP
    if _LOOP is None or _LOOP.is_closed():
        _LOOP = asyncio.new_event_loop()
    return _LOOP.run_until_complete(coro)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if inspect.iscoroutinefunction(pyfuncitem.obj):
        names = pyfuncitem._fixtureinfo.argnames
        kwargs = {name: pyfuncitem.funcargs[name] for name in names}
        run(pyfuncitem.obj(**kwargs))
        return True
    return None


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _LOOP is not None and not _LOOP.is_closed():
        _LOOP.run_until_complete(_LOOP.shutdown_asyncgens())
        _LOOP.close()


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEtcd]:
    server = LocalEtcd(tmp_path_factory.mktemp("etcd")).start()
    yield server
    server.stop()


@pytest.fixture
def etcd_url(etcd_server: LocalEtcd) -> Iterator[str]:
    """The session etcd's URL; every key is deleted after the test."""
    yield etcd_server.url

    async def wipe() -> None:
        async with EtcdStore(etcd_server.url) as store:
            await store.delete("", prefix=True)

    run(wipe())


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSeaweedS3]:
    server = LocalSeaweedS3(tmp_path_factory.mktemp("seaweed")).start()
    server.create_bucket("shoal-test")
    yield server
    server.stop()


@pytest.fixture
def s3_settings(s3_server: LocalSeaweedS3) -> CommonSettings:
    return CommonSettings(s3_endpoint=s3_server.endpoint)


@pytest.fixture
def file_store_url(tmp_path: Path) -> str:
    return (tmp_path / "objects").as_uri()


@pytest.fixture(scope="session")
def model_bytes() -> dict[str, Any]:
    """One small model of each format, trained once per session, with its training data."""
    from shoal import modelgen

    x, y = modelgen.dataset(n_rows=400, n_features=12, seed=1)
    return {
        "x": x,
        "y": y,
        "xgboost-json": modelgen.train_xgboost(x, y, n_trees=10),
        "xgboost-ubj": modelgen.train_xgboost(x, y, n_trees=10, fmt="ubj"),
        "lightgbm-text": modelgen.train_lightgbm(x, y, n_trees=10),
        "onnx": modelgen.train_onnx_mlp(x, y, epochs=50),
    }
