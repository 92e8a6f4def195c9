"""One table maps core failures to gRPC codes."""

from __future__ import annotations

import grpc
import pytest

from registry.errors import (
    Aborted,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    TooLarge,
    grpc_status,
)
from shoal.artifacts import ArtifactError
from shoal.objstore import ObjectNotFound, ObjectStoreUnavailable
from shoal.records import InvalidName
from shoal.state import Conflict, StateUnavailable

C = grpc.StatusCode


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (NotFound("model a/b not found"), C.NOT_FOUND),
        (ObjectNotFound("get k: not found"), C.NOT_FOUND),
        (InvalidArgument("bad"), C.INVALID_ARGUMENT),
        (ArtifactError("pickle"), C.INVALID_ARGUMENT),
        (InvalidName("invalid tenant"), C.INVALID_ARGUMENT),
        (TooLarge("big"), C.RESOURCE_EXHAUSTED),
        (FailedPrecondition("warm-up failed"), C.FAILED_PRECONDITION),
        (Aborted("raced"), C.ABORTED),
        (Conflict("raced"), C.ABORTED),
        (StateUnavailable("etcd range: UNAVAILABLE"), C.UNAVAILABLE),
        (ObjectStoreUnavailable("put: timeout"), C.UNAVAILABLE),
        (KeyError("boom"), C.INTERNAL),
    ],
)
def test_status_codes(exc: Exception, code: grpc.StatusCode) -> None:
    got, detail = grpc_status(exc)
    assert got == code and detail and "\n" not in detail


def test_unavailable_names_the_dependency() -> None:
    assert grpc_status(StateUnavailable("x"))[1].startswith("etcd unavailable")
    assert grpc_status(ObjectStoreUnavailable("x"))[1].startswith("object store unavailable")
