"""TLS for every listener and mutual TLS between Shoal processes, from settings.

* A process with ``tls_cert``/``tls_key`` serves TLS; with ``tls_client_auth`` it also demands
  a client certificate that chains to ``tls_ca`` (workers do: only routers and the placement
  service, which hold certificates, may call them).
* Outgoing channels verify the server against ``tls_ca`` and present ``tls_cert`` as the
  client certificate when one is configured (mTLS).
* Without ``tls_cert`` everything is plaintext (the embedded default on loopback).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc

from shoal.settings import CommonSettings


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read TLS file {path}: {exc.strerror}") from None


def add_port(server: grpc.aio.Server, address: str, settings: CommonSettings) -> int:
    """Bind ``address`` with TLS when configured; returns the bound port."""
    if not settings.tls_cert:
        return int(server.add_insecure_port(address))
    creds = grpc.ssl_server_credentials(
        [(_read(settings.tls_key), _read(settings.tls_cert))],
        root_certificates=_read(settings.tls_ca) if settings.tls_ca else None,
        require_client_auth=settings.tls_client_auth,
    )
    return int(server.add_secure_port(address, creds))


def channel(
    address: str, settings: CommonSettings, options: list[tuple[str, Any]] | None = None
) -> grpc.aio.Channel:
    """An outgoing channel: TLS (and mTLS with our certificate) when ``tls_ca`` is set."""
    if not settings.tls_ca:
        return grpc.aio.insecure_channel(address, options=options)
    creds = grpc.ssl_channel_credentials(
        root_certificates=_read(settings.tls_ca),
        private_key=_read(settings.tls_key) if settings.tls_key else None,
        certificate_chain=_read(settings.tls_cert) if settings.tls_cert else None,
    )
    return grpc.aio.secure_channel(address, creds, options=options)
