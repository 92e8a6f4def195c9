"""Stopping background tasks: cancel, then wait until they have really ended."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` and wait for it to end. Its own cancellation is absorbed; an exception
    it ended with is raised; a cancellation of the caller while it waits still propagates."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise


async def stop_tasks(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel every task and wait for all of them to end; what they ended with is dropped
    (the caller reads it from the tasks)."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
