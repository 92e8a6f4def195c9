"""Background tasks: the one way they are stopped."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has finished; its cancellation is absorbed,
    any other exception it ends with is raised."""
    if task is None or (task.done() and task.cancelled()):
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
