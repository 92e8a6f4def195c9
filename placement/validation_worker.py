"""The validation worker process: loads artifacts for ``placement.validation`` and answers
in plain JSON over its stdin/stdout pipes. Nothing here, nor in the parent, ever unpickles.

Started by ``ProcessValidator`` as ``python -I -c BOOT <sys.path as JSON> <parent pid>
<task>`` with an explicit environment (see ``validation.worker_env``). Wire protocol, every
integer a 4-byte big-endian length:

* worker -> parent, once, when the runtimes are imported: a frame holding ``{"ready":true}``;
* parent -> worker, a request: a frame holding a JSON list of ``[framework, size]`` per item,
  followed by the items' bytes back to back (``size`` bytes each);
* worker -> parent, the answer: a frame holding a JSON list with one entry per item, in
  order: ``["ok", framework, format, sha256, size, signature, details]`` (``sha256`` and
  ``size`` of the bytes the worker received), ``["invalid", message]`` for an
  ``ArtifactError``, or ``["error", exception type name, message]`` for any other exception.

The worker serves requests one at a time until its stdin ends (the parent closed it, or died),
then exits. It also dies with its parent while busy: a kernel parent-death signal (Linux)
kills it even inside a native loader that never returns.

Native code may print (LightGBM writes warnings to stdout): the frames go over private copies
of fds 0 and 1, and fd 1 is pointed at stderr, so nothing else can write into the answers.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, BinaryIO

from shoal.artifacts import ArtifactError
from shoal.frameworks import inspect_artifact, libraries

log = logging.getLogger(__name__)

#: (artifact bytes, framework asked for or "").
Item = tuple[bytes, str]
#: One item's answer, as a JSON list (see module docstring).
Wire = list[Any]
Task = Callable[[list[Item]], list[Wire]]

READY = {"ready": True}
#: Runtimes imported before the worker says it is ready, so a first load does not wait.
RUNTIMES = libraries()
_PR_SET_PDEATHSIG = 1

#: The answers pipe while ``main`` runs (tests write hostile frames to it).
answers: BinaryIO | None = None


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


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
        try:
            info = inspect_artifact(data, framework or None)
        except ArtifactError as exc:
            out.append(["invalid", str(exc)])
        except Exception as exc:
            out.append(["error", type(exc).__name__, str(exc)])
        else:
            sig = info.signature.to_dict()
            out.append(
                ["ok", info.framework, info.format, info.sha256, info.size, sig, info.details]
            )
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
