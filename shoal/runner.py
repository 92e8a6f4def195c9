"""Run a process role until SIGTERM/SIGINT, then stop it gracefully.

``serve(app, banner)`` starts the app, prints ``banner(app)`` on stdout (flushed: parents read
the first lines to learn the addresses), waits for a signal, and calls ``app.stop(grace)``.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from typing import Protocol


class App(Protocol):
    async def start(self) -> None: ...

    async def stop(self, grace: float = ...) -> None: ...


async def serve(app: App, banner: Callable[[], str], grace: float = 5.0) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await app.start()
    except BaseException:
        await app.stop(0)
        raise
    sys.stdout.write(banner() + "\n")
    sys.stdout.flush()
    await stop.wait()
    await app.stop(grace)
    return 0
