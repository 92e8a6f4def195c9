"""Model frameworks, one module each (``xgboost``, ``lightgbm``, ``onnx``), and what dispatches
to them: format detection, validation by loading (registration), loading for serving (the
worker), size estimates and device support. Adding a framework is adding one module that
provides ``base.Framework`` and naming it in ``FRAMEWORKS``.

* ``detect_format`` refuses pickles, compressed files and archives from their first bytes
  (``shoal.artifacts.refuse_unsafe``), then asks each framework whose format the bytes are;
* ``inspect_artifact`` validates by *loading* (single-threaded, on the CPU) with the same
  loader the worker uses, so a file that passes is one a worker can load, and describes it;
* ``load_model`` (blocking: call it from a worker thread) re-detects the format, which must
  belong to the framework the record names, and loads the model for ``device``.

Sizes. ``estimate_bytes`` guesses the resident size from the artifact size before a load (the
cache reserves that much). After the load, ``Model.nbytes`` is the *measured* growth of the C
heap across the deserialisation (glibc ``mallinfo2``; the worker loads one model at a time so
other loads do not pollute it), falling back to the estimate where the heap cannot be read or
the delta is not positive. GPU-resident bytes cannot be measured this way; they are estimated.
The first load of each (framework, device) in a process is done twice and the first result
thrown away: it pays the runtime's one-time initialisation (thread pools, registries: up to a
few MiB), which would otherwise be charged to that one model.

Failures: ``ArtifactError`` naming the accepted formats for anything that is not one, or the
library's first line for bytes it rejects; anything else propagates.
"""

from __future__ import annotations

import importlib
import threading

from shoal.artifacts import ArtifactError, ArtifactInfo, refuse_unsafe, sha256_hex
from shoal.frameworks import lightgbm, onnx, xgboost
from shoal.frameworks.base import Framework, Model, Unrecognised, guess

__all__ = [
    "ACCEPTED",
    "FORMATS",
    "FRAMEWORKS",
    "Model",
    "detect_format",
    "estimate_bytes",
    "gpu_capable",
    "import_runtime",
    "inspect_artifact",
    "libraries",
    "load_model",
    "platform",
]

#: name -> module, in detection order.
FRAMEWORKS: dict[str, Framework] = {fw.NAME: fw for fw in (xgboost, lightgbm, onnx)}
#: format -> framework name.
FORMATS = {fmt: fw.NAME for fw in FRAMEWORKS.values() for fmt in fw.FORMATS}
_ACCEPTS = [fw.ACCEPTS for fw in FRAMEWORKS.values()]
ACCEPTED = ", ".join(_ACCEPTS[:-1]) + " or " + _ACCEPTS[-1]


def _framework(name: str) -> Framework:
    fw = FRAMEWORKS.get(name)
    if fw is None:
        raise ArtifactError(f"unknown framework {name!r}; expected one of {', '.join(FRAMEWORKS)}")
    return fw


def detect_format(data: bytes) -> str:
    """Guess the format from the first bytes; raise ``ArtifactError`` for anything else."""
    if not data:
        raise ArtifactError(f"empty artifact; expected {ACCEPTED}")
    refuse_unsafe(data, ACCEPTED)
    for fw in FRAMEWORKS.values():
        fmt = fw.detect(data)
        if fmt is not None:
            return fmt
    raise ArtifactError(f"unrecognised artifact format; expected {ACCEPTED}")


def inspect_artifact(data: bytes, framework: str | None = None) -> ArtifactInfo:
    """Validate ``data`` and describe it; ``framework`` (if given) must match what it is.

    Raises ``ArtifactError`` naming the accepted formats for anything else.
    """
    if framework:
        _framework(framework)
    fmt = detect_format(data)
    detected = FORMATS[fmt]
    if framework and framework != detected:
        raise ArtifactError(f"framework {framework!r} given, but the artifact is {fmt}")
    try:
        sig, details = FRAMEWORKS[detected].describe(data, fmt)
    except Unrecognised as exc:
        raise ArtifactError(f"{exc}; expected {ACCEPTED}") from None
    return ArtifactInfo(detected, fmt, sha256_hex(data), len(data), sig, details)


_warmed: set[tuple[str, str]] = set()
_warm_lock = threading.Lock()


def load_model(data: bytes, framework: str, device: str) -> Model:
    """Deserialize ``data`` (already sha256-verified) for ``device`` (cpu | cuda). Blocking.

    The format is re-detected from the bytes and must belong to ``framework``; pickles and
    archives are refused before any runtime sees them.
    """
    fw = _framework(framework)
    fmt = detect_format(data)
    if FORMATS[fmt] != framework:
        raise ArtifactError(f"model is registered as {framework} but the artifact is {fmt}")
    with _warm_lock:
        if (framework, device) not in _warmed:
            fw.model(data, device)
            _warmed.add((framework, device))
    return fw.model(data, device)


def estimate_bytes(framework: str, artifact_size: int) -> int:
    """Resident size of a ``framework`` model guessed from its artifact size."""
    return guess(_framework(framework).RESIDENT, artifact_size)


def gpu_capable(framework: str) -> bool:
    """Whether this framework's models can be placed in GPU memory here."""
    fw = FRAMEWORKS.get(framework)
    return fw is not None and fw.gpu_capable()


def import_runtime(framework: str) -> None:
    """Import ``framework``'s library (blocking; seconds on a busy machine, once per process).

    The worker calls this before the timed deserialization, so a model's load timeout
    measures the model, not the one-time library import.
    """
    fw = FRAMEWORKS.get(framework)
    if fw is not None:
        importlib.import_module(fw.LIBRARY)


def libraries() -> tuple[str, ...]:
    """The Python modules of every framework's runtime."""
    return tuple(fw.LIBRARY for fw in FRAMEWORKS.values())


def platform(framework: str) -> str:
    """The platform name Triton's ModelMetadata gives ``framework``'s models."""
    fw = FRAMEWORKS.get(framework)
    return fw.PLATFORM if fw is not None else framework
