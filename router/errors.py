"""The router's failures: each carries the gRPC status it is answered with."""

from __future__ import annotations

import grpc


class RouteError(Exception):
    """A failure with the gRPC status it maps to."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
