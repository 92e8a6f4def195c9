"""One lifecycle for every process role (router, worker, placement), shaped like uvicorn's
``Server.serve``: start, serve until SIGTERM or SIGINT, drain within a grace period, stop.

``Runner(app, grace).serve()``:

1. installs the signal handlers (the first SIGTERM/SIGINT asks to exit; ``exit()`` does too);
2. ``await app.start()``; if that fails, ``await app.stop(0)`` and the failure propagates;
3. writes ``app.banner()`` on ``out``, one line each, flushed: parents read the first lines to
   learn the addresses (``shoal.procs.wait_for_banner``);
4. waits for the exit request, then ``await app.stop(grace)``: the app stops accepting, lets
   work in flight finish for up to ``grace`` seconds, then cancels it (each role says how);
5. removes its signal handlers and returns 0.

Constructors start nothing: ``start`` and ``stop`` do, so tests drive apps without signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Protocol, TextIO

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class App(Protocol):
    async def start(self) -> None: ...

    async def stop(self, grace: float) -> None: ...

    def banner(self) -> Sequence[str]:
        """What to print once started (e.g. ``router: HOST:PORT``), one line each."""
        ...


class Runner:
    def __init__(self, app: App, grace: float = 5.0, out: TextIO | None = None) -> None:
        self.app = app
        self.grace = grace
        self.out = out
        self._exit = asyncio.Event()

    def exit(self) -> None:
        """Ask the runner to drain and stop (what SIGTERM and SIGINT do)."""
        self._exit.set()

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            loop.add_signal_handler(sig, self.exit)
        try:
            try:
                await self.app.start()
            except BaseException:
                await self.app.stop(0)
                raise
            out = self.out or sys.stdout
            out.write("".join(f"{line}\n" for line in self.app.banner()))
            out.flush()
            await self._exit.wait()
            log.info("draining (grace %.1fs)", self.grace)
            await self.app.stop(self.grace)
        finally:
            for sig in SIGNALS:
                with contextlib.suppress(ValueError, RuntimeError):
                    loop.remove_signal_handler(sig)
        return 0
