"""How the etcd store reaches etcd beyond its endpoints (``EtcdAccess``, from the ``etcd_*``
settings): TLS to etcd when a CA is given or an endpoint is ``https://`` (with a client
certificate for etcd's ``--client-cert-auth``), and etcd's own users: ``Token`` sends the token
with every call and authenticates again when etcd says it is no longer valid (simple tokens
expire).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from aetcd import rpc


@dataclass(frozen=True)
class EtcdAccess:
    """How to reach etcd beyond its endpoints: PEM files for TLS, and etcd user credentials."""

    ca: str = ""
    cert: str = ""
    key: str = ""
    username: str = ""
    password: str = ""

    @classmethod
    def of(cls, settings: Any) -> EtcdAccess:
        """From a settings object's ``etcd_ca``, ``etcd_cert``, ... fields."""
        return cls(
            settings.etcd_ca,
            settings.etcd_cert,
            settings.etcd_key,
            settings.etcd_username,
            settings.etcd_password,
        )

    def credentials(self, endpoints: str) -> grpc.ChannelCredentials | None:
        """TLS credentials, or None for a plaintext channel."""
        tls = bool(self.ca or self.cert) or any(
            ep.strip().startswith("https://") for ep in endpoints.split(",")
        )
        if not tls:
            return None
        if bool(self.cert) != bool(self.key):
            raise ValueError("etcd_cert and etcd_key go together")

        def read(path: str) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca),
            private_key=read(self.key),
            certificate_chain=read(self.cert),
        )


_AUTHENTICATE = "/etcdserverpb.Auth/Authenticate"


def _token_expired(exc: grpc.aio.AioRpcError) -> bool:
    return exc.code() == grpc.StatusCode.UNAUTHENTICATED or "invalid auth token" in str(
        exc.details()
    )


class Token(  # grpc.aio's interceptor classes are untyped (Any)
    grpc.aio.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.aio.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.aio.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Adds etcd's auth token to every call; a unary call refused for an expired token is
    made again once with a new one (streams take the current token when they open)."""

    def __init__(self, username: str, password: str) -> None:
        self.username, self.password = username, password
        self.token = ""
        self.stub: Any = None  # the Auth stub, set once the channel exists
        self._lock = asyncio.Lock()

    async def refresh(self, stale: str | None = None) -> None:
        async with self._lock:
            if stale is not None and self.token != stale:
                return  # another call refreshed it meanwhile
            resp = await self.stub.Authenticate(
                rpc.AuthenticateRequest(name=self.username, password=self.password),
                timeout=10,
            )
            self.token = resp.token

    def _details(self, details: Any) -> Any:
        if details.method in (_AUTHENTICATE, _AUTHENTICATE.encode()):
            return details
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata["token"] = self.token
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        token = self.token
        call = await continuation(self._details(details), request)
        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            if details.method in (_AUTHENTICATE, _AUTHENTICATE.encode()) or not _token_expired(exc):
                raise
        await self.refresh(token)
        return await (await continuation(self._details(details), request))

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_stream_stream(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._details(details), request_iterator)
