"""A misbehaving validation-worker task and the probes the validation tests share.

``misbehave`` runs inside worker processes (``ProcessValidator(task=misbehave)``), so it lives
in a module of its own that a worker can import by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import time
from pathlib import Path
from typing import Any

from registry.validation import worker
from registry.validation.protocol import ANSWER_LIMIT, Item, Wire, frame
from registry.validation.worker import answer_items

FORMATS = ["xgboost-json", "xgboost-ubj", "lightgbm-text", "onnx"]
CRASH = b"{crash this worker}"
HANG = b"{stall this worker}"
HUGE = b"{announce a huge answer}"
ENV = b"{answer with the environment}"
PICKLE = b"{answer with a pickle}:"  # + the path its unpickling would create


class Gadget:
    """Unpickling this opens (creates) ``path``: a stand-in for code execution."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def misbehave(items: list[Item]) -> list[Wire]:
    """A worker task that answers like the real one, except for the markers: ``CRASH`` dies
    (as a native crash would), ``HANG`` never answers (after creating the path that follows
    it, if any), ``HUGE`` and ``PICKLE`` write hostile frames, ``ENV`` answers with the
    worker's environment variables as an error message."""
    out = worker.answers
    assert out is not None
    for data, _ in items:
        if data == CRASH:
            os._exit(70)
        if data.startswith(HANG):
            if len(data) > len(HANG):  # a path to create first: "I am stalled now"
                Path(data[len(HANG) :].decode()).touch()
            time.sleep(3600)
        if data == HUGE:
            out.write((ANSWER_LIMIT + 1).to_bytes(4, "big"))
            out.flush()
            time.sleep(3600)
        if data.startswith(PICKLE):
            out.write(frame(pickle.dumps([Gadget(data[len(PICKLE) :].decode())])))
            out.flush()
            time.sleep(3600)
    answers = answer_items(items)
    for n, (data, _) in enumerate(items):
        if data == ENV:
            answers[n] = ["invalid", json.dumps(dict(os.environ))]
    return answers


def children() -> set[int]:
    """Every live child of this process (the validation workers among them)."""
    out: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):
            out.update(int(p) for p in (task / "children").read_text().split())
    return {pid for pid in out if alive(pid)}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) counts as gone.
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def plain(value: Any) -> bool:
    """Only str/int/float/bool/None, and lists and dicts of them (what JSON holds)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return True
    if isinstance(value, list):
        return all(plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and plain(v) for k, v in value.items())
    return False


def same(a: object, b: object) -> bool:
    """Equal outcomes: the same ArtifactInfo, or exceptions of one type with one message."""
    if isinstance(a, Exception) or isinstance(b, Exception):
        return type(a) is type(b) and str(a) == str(b)
    return a == b
