"""Background tasks: the one way they are stopped (cancel, then wait until they have ended)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has finished. Its own cancellation is
    absorbed; any other exception it ends with is raised; a cancellation of the caller while
    it waits still propagates."""
    if task is None or (task.done() and task.cancelled()):
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise


async def cancel_and_wait_all(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel every task and wait for all of them to finish; what they ended with is dropped
    (the caller reads it from the tasks)."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
