"""Failures of the control plane's core, and the one table that maps them to gRPC codes.

The core (registry, lookups, warm-ups) raises plain exceptions: its own below, plus the shared
ones from ``shoal`` (``StateUnavailable``, ``Conflict``, ``ObjectStoreUnavailable``,
``ArtifactError``, ``InvalidName``). Transports call ``grpc_status`` and nothing else decides a
status code, so the CLI, the gRPC service and any future HTTP edge agree:

==============================================  ====================
unknown model / version / alias                  NOT_FOUND
invalid artifact, name, percentage, argument     INVALID_ARGUMENT
artifact larger than the configured maximum      RESOURCE_EXHAUSTED
warm-up failed, no workers to warm               FAILED_PRECONDITION
compare-and-swap retries exhausted               ABORTED
etcd or the object store unreachable             UNAVAILABLE
anything else                                    INTERNAL
==============================================  ====================
"""

from __future__ import annotations

import grpc

from shoal.artifacts import ArtifactError
from shoal.objstore import ObjectNotFound, ObjectStoreUnavailable
from shoal.records import InvalidName
from shoal.state import Conflict, StateUnavailable


class ControlError(Exception):
    """Base class of the control plane core's own failures; the message is user-facing."""


class NotFound(ControlError):
    """A model, version, alias or tenant that does not exist (the message names it)."""


class InvalidArgument(ControlError):
    """A request that can never succeed as given (the message says why)."""


class TooLarge(ControlError):
    """An artifact over the configured size limit."""


class FailedPrecondition(ControlError):
    """The system is not in a state that allows the request (e.g. a warm-up failed)."""


class Aborted(ControlError):
    """A compare-and-swap lost every bounded retry to concurrent writers; safe to retry."""


class Unavailable(ControlError):
    """A dependency (etcd, the object store, a worker) could not be reached."""


_TABLE: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (ObjectNotFound, grpc.StatusCode.NOT_FOUND),
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (ArtifactError, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidName, grpc.StatusCode.INVALID_ARGUMENT),
    (TooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (Aborted, grpc.StatusCode.ABORTED),
    (Conflict, grpc.StatusCode.ABORTED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (StateUnavailable, grpc.StatusCode.UNAVAILABLE),
    (ObjectStoreUnavailable, grpc.StatusCode.UNAVAILABLE),
)


def grpc_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """(status code, one-line detail) for ``exc``; unknown exceptions are INTERNAL."""
    for kind, code in _TABLE:
        if isinstance(exc, kind):
            return code, _one_line(exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {_one_line(exc)}"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, (StateUnavailable, ObjectStoreUnavailable)):
        # The dependency's own words, prefixed so a caller knows which one is down.
        kind = "etcd" if isinstance(exc, StateUnavailable) else "object store"
        text = f"{kind} unavailable: {text}"
    return text.splitlines()[0] if text else type(exc).__name__
