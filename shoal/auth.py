"""API keys: per-tenant bearer keys whose salted hashes live in etcd.

A key reads ``shoal.<tenant>.<key_id>.<secret>`` (tenant ids may hold dots; the key id and the
secret never do, so the key splits from the right). Only ``<key_id>:<salt>:<sha256>`` is stored,
in the tenant's ``TenantConfig.key_hashes`` at ``/shoal/tenants/<tenant>``; admin keys (the
control plane's) are kept the same way under the reserved tenant ``_admin``, which no real
tenant id can equal (ids start with ``[a-z0-9]``).

Secrets are 256 random bits, so one salted SHA-256 is enough (nothing to brute-force); the
comparison is constant-time. ``KeyChecker`` caches verified keys and forgets them whenever the
tenant records change (its ``generation`` moves), so a revocation takes effect as soon as the
change reaches the mirror.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import grpc

from shoal.records import TenantConfig, check_ident, tenant_key
from shoal.state import Conflict, StateStore, cas_put

ADMIN = "_admin"
PREFIX = "shoal."
NEEDS_ADMIN = "this call needs an admin key"


class AuthError(Exception):
    """Missing or invalid credentials (maps to UNAUTHENTICATED)."""


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str  # ADMIN for an admin key
    key_id: str

    @property
    def admin(self) -> bool:
        return self.tenant == ADMIN


def _digest(salt: str, key: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + key.encode()).hexdigest()


def parse_key(key: str) -> tuple[str, str]:
    """(tenant, key_id) of a key, or ``AuthError`` if it is not shaped like one."""
    if not key.startswith(PREFIX):
        raise AuthError("not a Shoal API key")
    parts = key[len(PREFIX) :].rsplit(".", 2)
    if len(parts) != 3 or not all(parts):
        raise AuthError("malformed API key")
    return parts[0], parts[1]


def new_key(tenant: str) -> tuple[str, str]:
    """A fresh key for ``tenant`` and the ``key_id:salt:hash`` entry to store for it."""
    if tenant != ADMIN:
        check_ident("tenant", tenant)
    key_id = secrets.token_hex(6)
    key = f"{PREFIX}{tenant}.{key_id}.{secrets.token_urlsafe(32).replace('.', '_')}"
    salt = secrets.token_hex(16)
    return key, f"{key_id}:{salt}:{_digest(salt, key)}"


def verify(key: str, entries: tuple[str, ...]) -> str | None:
    """The key id whose stored entry matches ``key``, else None."""
    _, key_id = parse_key(key)
    for entry in entries:
        kid, _, rest = entry.partition(":")
        salt, _, digest = rest.partition(":")
        if kid == key_id and hmac.compare_digest(_digest(salt, key), digest):
            return kid
    return None


def bearer(metadata: Mapping[str, str] | tuple[tuple[str, str | bytes], ...] | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` header, if any."""
    if not metadata:
        return None
    items = metadata.items() if isinstance(metadata, Mapping) else metadata
    for k, v in items:
        if k.lower() == "authorization":
            value = v.decode() if isinstance(v, bytes) else v
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class KeyChecker:
    """Resolves bearer keys to principals against the current tenant configs.

    ``lookup(tenant)`` returns that tenant's config (from an in-memory mirror). Verified keys
    are cached (LRU) while ``generation()`` (e.g. ``PrefixMirror.changes`` of the mirror
    ``lookup`` reads) stays the same, or until ``invalidate()``.
    """

    def __init__(
        self,
        lookup: Callable[[str], TenantConfig | None],
        cache_size: int = 10_000,
        generation: Callable[[], int] = lambda: 0,
    ) -> None:
        self._lookup = lookup
        self._cache: OrderedDict[str, Principal] = OrderedDict()
        self._cache_size = cache_size
        self._generation = generation
        self._seen = generation()

    def invalidate(self) -> None:
        self._cache.clear()

    def check(self, key: str | None) -> Principal:
        if not key:
            raise AuthError("missing API key: send 'authorization: Bearer <key>'")
        generation = self._generation()
        if generation != self._seen:
            self._cache.clear()
            self._seen = generation
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        tenant, _ = parse_key(key)
        cfg = self._lookup(tenant)
        key_id = verify(key, cfg.key_hashes) if cfg is not None else None
        if key_id is None:
            raise AuthError("invalid or revoked API key")
        principal = Principal(tenant, key_id)
        self._cache[key] = principal
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return principal


# --- key management (``shoal keys``), compare-and-swap on the tenant record -------------------


async def update_tenant(
    store: StateStore, tenant: str, change: Callable[[TenantConfig], TenantConfig]
) -> TenantConfig:
    key = tenant_key(tenant)
    for _ in range(16):
        kv = await store.get(key)
        cfg = TenantConfig.decode(kv.value) if kv else TenantConfig(tenant)
        new = change(cfg)
        try:
            await cas_put(store, key, new.encode(), kv.mod_revision if kv else 0)
        except Conflict:
            continue
        return new
    raise Conflict(f"tenant {tenant} kept changing; try again")


async def create_key(store: StateStore, tenant: str) -> tuple[str, str]:
    """Create and store a key for ``tenant`` (``ADMIN`` for an admin key): (key, key_id)."""
    key, entry = new_key(tenant)
    await update_tenant(store, tenant, lambda c: replace(c, key_hashes=(*c.key_hashes, entry)))
    return key, entry.split(":", 1)[0]


async def list_keys(store: StateStore, tenant: str) -> list[str]:
    kv = await store.get(tenant_key(tenant))
    if kv is None:
        return []
    return [e.split(":", 1)[0] for e in TenantConfig.decode(kv.value).key_hashes]


async def revoke_key(store: StateStore, tenant: str, key_id: str) -> bool:
    """Remove ``key_id`` from ``tenant``; True if it existed."""
    found = False

    def drop(c: TenantConfig) -> TenantConfig:
        nonlocal found
        kept = tuple(e for e in c.key_hashes if e.split(":", 1)[0] != key_id)
        found = len(kept) != len(c.key_hashes)
        return replace(c, key_hashes=kept)

    await update_tenant(store, tenant, drop)
    return found


# --- server side: a gRPC interceptor for services that need a key --------------------------


class KeyInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Rejects calls without a valid key (UNAUTHENTICATED) or, with ``admin_only``, without
    an admin key (PERMISSION_DENIED). Methods in ``open_methods`` (full paths) pass freely.

    With ``admin_only``, a key that names another tenant is refused PERMISSION_DENIED before
    it is verified: it could never be enough, and such a service holds only the admin keys'
    hashes, so a tenant's real key and a forged one get the same answer."""

    def __init__(
        self,
        checker: KeyChecker,
        admin_only: bool = True,
        open_methods: frozenset[str] = frozenset(),
    ) -> None:
        self.checker = checker
        self.admin_only = admin_only
        self.open_methods = open_methods

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None or details.method in self.open_methods:
            return handler
        key = bearer(details.invocation_metadata)
        try:
            if self.admin_only and key is not None and parse_key(key)[0] != ADMIN:
                return _deny(handler, grpc.StatusCode.PERMISSION_DENIED, NEEDS_ADMIN)
            principal = self.checker.check(key)
        except AuthError as exc:
            return _deny(handler, grpc.StatusCode.UNAUTHENTICATED, str(exc))
        if self.admin_only and not principal.admin:
            return _deny(handler, grpc.StatusCode.PERMISSION_DENIED, NEEDS_ADMIN)
        return handler


def _deny(handler: Any, code: grpc.StatusCode, message: str) -> Any:
    """A handler of the same kind as ``handler`` that fails with ``code``."""

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator

    kind = (bool(handler.request_streaming), bool(handler.response_streaming))
    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[kind]
    fn = streaming if kind[1] else unary
    return make(
        fn,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
