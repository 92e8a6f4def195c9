"""Worker failures as plain exceptions carrying a status code name.

The core raises these; the front's bridge (``worker.front``) is the one place that maps the code
to a gRPC status. Codes are the gRPC names so metrics and logs read the same.
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
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    INTERNAL = "INTERNAL"
    CANCELLED = "CANCELLED"


class WorkerError(Exception):
    """A failure the caller should see with ``code`` and a one-line ``message``."""

    code: Code = Code.INTERNAL
    #: The router's retry hint, sent as the trailing metadata ``shoal-retry``: "elsewhere"
    #: when another worker may well succeed (a transient limit of this one: the router tries
    #: the tenant's next shard member), "nowhere" when none would (a shared dependency is
    #: down: the router answers at once), "" for the router's own rules.
    retry: str = ""

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


class StoreUnavailable(Unavailable):
    """The object store cannot be reached: every worker would fail the same load, so the
    router does not try another one (it would spend the caller's deadline on the same wait)."""

    retry = "nowhere"


class ResourceExhausted(WorkerError):
    """A limit was reached (request size or rows, a model's concurrency bound): the message
    names the limit and the setting that sets it."""

    code = Code.RESOURCE_EXHAUSTED


class Busy(ResourceExhausted):
    """This worker's bound for the model is reached (its calls running, its line full): a
    transient, local condition, so the router may try another shard member."""

    retry = "elsewhere"


class DeadlineExceeded(WorkerError):
    """The caller's deadline passed before the work ran, or a runtime call overran its
    timeout and was abandoned."""

    code = Code.DEADLINE_EXCEEDED


class Internal(WorkerError):
    code = Code.INTERNAL
