"""What every framework module provides, and the helpers they share.

A framework module (``shoal/frameworks/<name>.py``) is the one home of a model format: it
recognises the format from the first bytes (``detect``), turns verified bytes into the
library's runtime object (``load``: the one loader of registration and of the worker),
reads the signature and a few details from that object (``describe``), wraps it for serving
(``model``: a ``Model`` with its measured resident size), guesses the resident size before a
load (``RESIDENT``) and says whether its models can live in GPU memory here
(``gpu_capable``). ``Framework`` is that interface; ``shoal.frameworks`` dispatches to it.
Nothing here unpickles: each library parses its own model format only.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from shoal.artifacts import ArtifactError, Signature

log = logging.getLogger(__name__)

#: "[02:52:23] /path/to/file.h:46: " that XGBoost puts before its messages.
_LOG_PREFIX = re.compile(r"^\[[\d:]+\] [^ ]+:\d+: ")


class Unrecognised(ArtifactError):
    """Bytes that looked like this framework's at first but are not a model of any accepted
    format; ``shoal.frameworks`` completes the message with what is accepted."""


class Model(Protocol):
    """A loaded model version, ready to predict."""

    framework: str
    device: str  # where it runs: cpu | cuda
    nbytes: int
    #: Its prediction time is bounded by the input's size (no data-dependent loops) and it
    #: runs on the CPU: a fast one may run on the event loop (worker/inline.py).
    bounded: bool
    #: CPU seconds of a 1-row prediction made at load (tree models), else None.
    warm_s: float | None

    def predict(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Outputs in the order of the signature's outputs. Thread-safe."""
        ...

    def to_host(self) -> Model | None:
        """The same model on the CPU (a GPU model being demoted), or None if it cannot move."""
        ...


class Framework(Protocol):
    """A framework module (see the module docstring). Every function may block (a load takes
    milliseconds); call them off the event loop. Bytes a library rejects raise
    ``ArtifactError`` with its first line."""

    NAME: str
    #: Formats this framework's artifacts come in, e.g. ("xgboost-json", "xgboost-ubj").
    FORMATS: tuple[str, ...]
    #: How an error message names what is accepted, e.g. "ONNX".
    ACCEPTS: str
    #: The Python module the loader imports (imported ahead of a timed load).
    LIBRARY: str
    #: The platform name Triton's ModelMetadata gives models of this framework.
    PLATFORM: str
    #: (factor, extra): a model is guessed to hold ``artifact size x factor + extra`` bytes
    #: resident before it is loaded (``guess``).
    RESIDENT: tuple[float, int]

    def detect(self, data: bytes) -> str | None:
        """This framework's format of ``data`` (non-empty), judged from its first bytes."""
        ...

    def load(self, data: bytes, device: str) -> Any:
        """The library's runtime object for ``data`` on ``device`` (cpu | cuda), one thread."""
        ...

    def describe(self, data: bytes, fmt: str) -> tuple[Signature, dict[str, Any]]:
        """Load ``data`` (format ``fmt``) on the CPU: its signature and a few details."""
        ...

    def model(self, data: bytes, device: str) -> Model:
        """``data`` loaded for serving on ``device``, its size measured where possible."""
        ...

    def gpu_capable(self) -> bool:
        """Whether this framework's models can be placed in GPU memory here."""
        ...


def first_line(exc: BaseException) -> str:
    """A library error as one line (XGBoost's log prefix dropped), at most 300 characters."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return _LOG_PREFIX.sub("", line)[:300]


def measured(before: int | None, after: int | None, estimate: int) -> int:
    """Heap growth across a load (``shoal.device.heap_in_use`` before and after), or
    ``estimate`` where the heap cannot be read or did not grow (another thread freed memory
    meanwhile)."""
    if before is None or after is None or after - before <= 0:
        return estimate
    return after - before


def warm_up(
    predict: Callable[[np.ndarray], object], n_features: Callable[[], int], untimed_first: bool
) -> float | None:
    """CPU seconds (``time.thread_time``) of a 1-row prediction of zeros made at load
    (``Model.warm_s``), or None when it fails: the first request will tell, the load itself
    succeeded. ``untimed_first``: one prediction is made before the timed one (XGBoost's first
    prediction configures the booster, which is not what later calls cost)."""
    try:
        row = np.zeros((1, int(n_features())), dtype=np.float32)
        if untimed_first:
            predict(row)
        started = time.thread_time()
        predict(row)
        return time.thread_time() - started
    except Exception as exc:
        log.info("warm-up prediction failed: %s", first_line(exc))
        return None


def guess(resident: tuple[float, int], artifact_size: int) -> int:
    """Resident bytes guessed from an artifact's size by a framework's ``RESIDENT``."""
    factor, extra = resident
    return int(artifact_size * factor) + extra
