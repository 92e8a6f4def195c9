"""The one lifecycle of every role (``shoal.runner``) and the one way to stop a background
task (``shoal.tasks``), in-process with fake apps."""

from __future__ import annotations

import asyncio
import io

import pytest

from shoal.runner import Runner
from shoal.tasks import cancel_and_wait, cancel_and_wait_all


class FakeApp:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls: list[str] = []
        self.announced = asyncio.Event()

    async def start(self) -> None:
        self.calls.append("start")
        if self.fail:
            raise OSError("cannot bind")

    async def stop(self, grace: float) -> None:
        self.calls.append(f"stop {grace:g}")

    def banner(self) -> list[str]:
        self.announced.set()
        return ["app: 127.0.0.1:1", "metrics: 127.0.0.1:2"]


async def test_start_banner_drain_on_exit_then_stop() -> None:
    app, out = FakeApp(), io.StringIO()
    runner = Runner(app, grace=2.5, out=out)
    serving = asyncio.create_task(runner.serve())
    await asyncio.wait_for(app.announced.wait(), 5)
    assert out.getvalue() == "app: 127.0.0.1:1\nmetrics: 127.0.0.1:2\n"
    assert app.calls == ["start"]
    runner.exit()
    assert await asyncio.wait_for(serving, 5) == 0
    assert app.calls == ["start", "stop 2.5"]


async def test_a_failed_start_stops_at_once_and_raises() -> None:
    app, out = FakeApp(fail=True), io.StringIO()
    with pytest.raises(OSError, match="cannot bind"):
        await Runner(app, grace=9, out=out).serve()
    assert app.calls == ["start", "stop 0"] and out.getvalue() == ""


async def test_cancel_and_wait_absorbs_the_cancellation_and_raises_a_failure() -> None:
    forever = asyncio.create_task(asyncio.sleep(3600))
    await cancel_and_wait(forever)
    assert forever.cancelled()
    await cancel_and_wait(None)

    async def broken() -> None:
        raise ValueError("boom")

    failed = asyncio.create_task(broken())
    await asyncio.sleep(0)
    with pytest.raises(ValueError, match="boom"):
        await cancel_and_wait(failed)
    both = [asyncio.create_task(asyncio.sleep(3600)), asyncio.create_task(broken())]
    await cancel_and_wait_all(both)
    assert all(t.done() for t in both)
