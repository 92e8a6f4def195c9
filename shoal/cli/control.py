"""The one control-plane client of the CLI: target, credentials, key, and error mapping.

Client commands talk to the control plane (``shoal.v1.Control``, served by the placement
service) at ``--control`` (default ``$SHOAL_CONTROL``, then 127.0.0.1:8002) over blocking gRPC,
with ``authorization: Bearer <key>`` from ``--key`` or ``$SHOAL_KEY``, and TLS when
``$SHOAL_TLS_CA`` is set (plus ``$SHOAL_TLS_CERT``/``$SHOAL_TLS_KEY`` for mutual TLS). Any RPC
failure becomes one ``CliError`` line: the server's words, or that the control plane is
unreachable.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc

from shoal.cli.errors import CliError
from shoal.pb import shoal_control_pb2_grpc as pb_grpc
from shoal.records import split_model_name

DEFAULT_CONTROL = "127.0.0.1:8002"

T = TypeVar("T")
Metadata = tuple[tuple[str, str], ...]


def client_args(p: argparse.ArgumentParser) -> None:
    """The flags every control-plane command takes."""
    p.add_argument("--control", help=f"control plane host:port ($SHOAL_CONTROL, {DEFAULT_CONTROL})")
    p.add_argument("--key", help="admin API key, sent as a bearer token ($SHOAL_KEY)")


def model_arg(ns: argparse.Namespace) -> tuple[str, str]:
    """(tenant, name) of the ``T/M`` argument."""
    try:
        return split_model_name(ns.model)
    except ValueError as exc:
        raise CliError(str(exc)) from None


@dataclass(frozen=True, slots=True)
class ControlClient:
    target: str
    metadata: Metadata  # () without a key
    credentials: grpc.ChannelCredentials | None  # None: plaintext

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> ControlClient:
        target = str(ns.control or os.environ.get("SHOAL_CONTROL") or DEFAULT_CONTROL)
        key = ns.key or os.environ.get("SHOAL_KEY", "")
        metadata: Metadata = (("authorization", f"Bearer {key}"),) if key else ()
        return cls(target, metadata, _credentials())

    def stub(self) -> pb_grpc.ControlStub:
        options = [("grpc.max_send_message_length", 64 << 20)]
        channel = (
            grpc.secure_channel(self.target, self.credentials, options=options)
            if self.credentials is not None
            else grpc.insecure_channel(self.target, options=options)
        )
        if self.metadata:
            channel = grpc.intercept_channel(channel, _AddMetadata(self.metadata))
        return pb_grpc.ControlStub(channel)

    def call(self, fn: Callable[[pb_grpc.ControlStub], T]) -> T:
        """Run ``fn(stub)``; any RPC failure becomes a one-line ``CliError``."""
        try:
            return fn(self.stub())
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            details = exc.details() if hasattr(exc, "details") else str(exc)
            if code == grpc.StatusCode.UNAVAILABLE and "etcd" not in (details or ""):
                raise CliError(
                    f"control plane at {self.target} is unavailable: {details}"
                ) from None
            raise CliError(details or str(code)) from None


def _credentials() -> grpc.ChannelCredentials | None:
    """TLS credentials when $SHOAL_TLS_CA is set (plus our certificate for mutual TLS)."""
    ca = os.environ.get("SHOAL_TLS_CA", "")
    if not ca:
        return None
    cert, key = os.environ.get("SHOAL_TLS_CERT", ""), os.environ.get("SHOAL_TLS_KEY", "")
    try:
        return grpc.ssl_channel_credentials(
            root_certificates=Path(ca).read_bytes(),
            private_key=Path(key).read_bytes() if key and cert else None,
            certificate_chain=Path(cert).read_bytes() if key and cert else None,
        )
    except OSError as exc:
        raise CliError(f"cannot read TLS file: {exc}") from None


class _AddMetadata(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Adds fixed metadata (the bearer key) to every call of a blocking channel."""

    def __init__(self, metadata: Metadata) -> None:
        self._metadata = metadata

    def _details(self, details: Any) -> Any:
        return details._replace(metadata=(*(details.metadata or ()), *self._metadata))

    def intercept_unary_unary(self, cont: Any, details: Any, request: Any) -> Any:
        return cont(self._details(details), request)

    def intercept_stream_unary(self, cont: Any, details: Any, requests: Any) -> Any:
        return cont(self._details(details), requests)

    def intercept_unary_stream(self, cont: Any, details: Any, request: Any) -> Any:
        return cont(self._details(details), request)

    def intercept_stream_stream(self, cont: Any, details: Any, requests: Any) -> Any:
        return cont(self._details(details), requests)
