"""Worker failures as plain exceptions carrying a status code name.

The core raises these; the gRPC edge (``worker.servicer``) is the one place that maps the code
to a ``grpc.StatusCode``. Codes are the gRPC names so metrics and logs read the same.
"""

from __future__ import annotations

from enum import StrEnum


class Code(StrEnum):
    OK = "OK"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    UNAVAILABLE = "UNAVAILABLE"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    INTERNAL = "INTERNAL"
    CANCELLED = "CANCELLED"


class WorkerError(Exception):
    """A failure the caller should see with ``code`` and a one-line ``message``."""

    code: Code = Code.INTERNAL

    def __init__(self, message: str, code: Code | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code.value


class InvalidArgument(WorkerError):
    code = Code.INVALID_ARGUMENT


class NotFound(WorkerError):
    code = Code.NOT_FOUND


class FailedPrecondition(WorkerError):
    code = Code.FAILED_PRECONDITION


class Unavailable(WorkerError):
    code = Code.UNAVAILABLE


class Internal(WorkerError):
    code = Code.INTERNAL
