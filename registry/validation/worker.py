"""The validation worker process: loads artifacts for the registry's ``ProcessValidator`` and
answers in plain JSON over its stdin/stdout pipes (``registry.validation.protocol``). Nothing
here, nor in the parent, ever unpickles.

Started by ``ProcessValidator`` as ``python -I -c BOOT <sys.path as JSON> <parent pid>
<task>`` with an explicit environment (``pool.worker_env``). The worker serves requests one at
a time until its stdin ends (the parent closed it, or died), then exits. It also dies with its
parent while busy: a kernel parent-death signal (Linux) kills it even inside a native loader
that never returns.

Native code may print (LightGBM writes warnings to stdout): the frames go over private copies
of fds 0 and 1, and fd 1 is pointed at stderr, so nothing else can write into the answers.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import BinaryIO

from registry.validation.protocol import (
    ANSWER_LIMIT,
    READY,
    Item,
    MalformedAnswer,
    Outcome,
    Task,
    Wire,
    encode,
    frame,
)
from shoal.frameworks import inspect_artifact, libraries

log = logging.getLogger(__name__)

#: Runtimes imported before the worker says it is ready, so a first load does not wait.
RUNTIMES = libraries()
_PR_SET_PDEATHSIG = 1

#: The answers pipe while ``main`` runs (tests write hostile frames to it).
answers: BinaryIO | None = None


def limit_native_threads() -> None:
    """One native thread per load, in a validation thread or process.

    XGBoost loads with its (thread-local) global ``nthread``, which defaults to every core:
    waking an OpenMP team per tiny model made a validation cost ~4 ms instead of ~1 ms. The
    pool already runs loads in parallel, so one thread each is the right width.
    """
    try:
        import xgboost

        xgboost.set_config(nthread=1)
    except Exception:  # validation still works, only slower
        log.debug("could not limit XGBoost threads in the validation pool", exc_info=True)


def answer_items(items: list[Item]) -> list[Wire]:
    """The default task: ``inspect_artifact`` per item, answered as JSON-ready lists."""
    out: list[Wire] = []
    for data, framework in items:
        outcome: Outcome
        try:
            outcome = inspect_artifact(data, framework or None)
        except Exception as exc:
            outcome = exc
        out.append(encode(outcome))
    return out


def _die_with(parent: int) -> None:
    """SIGKILL this process when ``parent`` (the thread that started it) ends (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            log.debug("no parent-death signal; relying on stdin EOF", exc_info=True)
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def _read(stream: BinaryIO, n: int) -> bytes | None:
    data = stream.read(n)
    return data if len(data) == n else None


def serve(requests: BinaryIO, out: BinaryIO, task: Task) -> None:
    """Answer requests until ``requests`` ends (see module docstring)."""
    out.write(frame(json.dumps(READY).encode()))
    out.flush()
    while True:
        head = _read(requests, 4)
        if head is None:
            return
        header = _read(requests, int.from_bytes(head, "big"))
        if header is None:
            return
        items: list[Item] = []
        for framework, size in json.loads(header):
            data = _read(requests, int(size))
            if data is None:
                return
            items.append((data, str(framework)))
        out.write(frame(json.dumps(task(items), separators=(",", ":")).encode()))
        out.flush()


def main() -> None:
    """Entry point: ``argv`` = [-c, sys.path JSON, parent pid, task as module:function]."""
    global answers
    parent, task_name = int(sys.argv[2]), sys.argv[3]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a ^C to the group is the parent's to handle
    _die_with(parent)
    requests = open(os.dup(0), "rb")  # noqa: SIM115 - open for the process's lifetime
    answers = open(os.dup(1), "wb")  # noqa: SIM115
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)  # whatever a runtime prints goes to stderr, never into the answers
    for name in RUNTIMES:
        try:
            importlib.import_module(name)
        except Exception:  # inspect_artifact reports it per artifact, as in-process
            log.debug("could not import %s", name, exc_info=True)
    limit_native_threads()
    module, _, func = task_name.partition(":")
    task: Task = getattr(importlib.import_module(module), func)
    with contextlib.suppress(BrokenPipeError):  # the parent went away
        serve(requests, answers, task)
    os._exit(0)  # skip the runtimes' atexit work: nothing is left to flush


# --- the parent's side: one worker process and its pipes ----------------------------------

_PIPE_BYTES = 1 << 20
_F_SETPIPE_SZ = 1031  # Linux


class Died(Exception):
    """The worker exited (EOF or a broken pipe)."""


class TimedOut(Exception):
    """The worker missed a deadline."""


class WorkerProcess:
    """One worker process and this side's ends of its pipes.

    Its pipes are used by one thread at a time, the one holding it; any thread may signal it.
    The pipes are non-blocking: every wait is a ``poll`` bounded by the request's deadline.
    """

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, bufsize=0
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._to, self._from = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        for fd in (self._to, self._from):
            os.set_blocking(fd, False)
            with contextlib.suppress(OSError):  # a bigger pipe: fewer wake-ups per request
                fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_BYTES)
        self.ready = False
        self._teardown = threading.Lock()

    def _wait(self, fd: int, event: int, deadline: float) -> None:
        left = deadline - time.monotonic()
        poller = select.poll()
        poller.register(fd, event)
        if left <= 0 or not poller.poll(max(1, int(left * 1000))):
            raise TimedOut

    def _write(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._to, view) :]
            except BlockingIOError:
                self._wait(self._to, select.POLLOUT, deadline)
            except (BrokenPipeError, ConnectionResetError):
                raise Died from None

    def _read(self, n: int, deadline: float) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            try:
                got = os.read(self._from, min(n - len(buf), _PIPE_BYTES))
            except BlockingIOError:
                self._wait(self._from, select.POLLIN, deadline)
                continue
            if not got:
                raise Died
            buf += got
        return bytes(buf)

    def read_frame(self, deadline: float) -> bytes:
        n = int.from_bytes(self._read(4, deadline), "big")
        if n > ANSWER_LIMIT:
            raise MalformedAnswer(f"a {n}-byte answer")
        return self._read(n, deadline)

    def await_ready(self, deadline: float) -> None:
        raw = self.read_frame(deadline)
        try:
            ready = json.loads(raw) == READY
        except (ValueError, RecursionError):
            ready = False
        if not ready:
            raise MalformedAnswer("no ready frame")
        self.ready = True

    def ask(self, items: Sequence[Item], deadline: float) -> bytes:
        """Send one request; its answer frame, not yet parsed."""
        header = json.dumps([[fw, len(data)] for data, fw in items]).encode()
        self._write(frame(header), deadline)
        for data, _ in items:
            self._write(data, deadline)
        return self.read_frame(deadline)

    def signal(self, sig: int) -> None:
        """Send ``sig`` unless the worker was reaped already (any thread)."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)

    def finish(self, deadline: float) -> None:
        """Wait for the worker to exit until ``deadline``, SIGKILL it then, reap it, close
        the pipes. Only by the thread holding it, or once nobody does."""
        try:
            self.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait()
        with self._teardown:
            for pipe in (self.proc.stdin, self.proc.stdout):
                if pipe is not None:
                    pipe.close()
