"""API keys: only salted hashes are stored; keys resolve to their tenant; revocation works."""

from __future__ import annotations

import pytest

from shoal.auth import (
    ADMIN,
    AuthError,
    KeyChecker,
    bearer,
    create_key,
    list_keys,
    parse_key,
    revoke_key,
)
from shoal.records import TenantConfig, tenant_key
from shoal.state import MemoryStore


async def test_create_verify_revoke() -> None:
    store = MemoryStore()
    key, key_id = await create_key(store, "acme.eu")
    assert parse_key(key) == ("acme.eu", key_id)
    raw = await store.get(tenant_key("acme.eu"))
    assert raw is not None and key.encode() not in raw.value  # never the key itself
    cfg = TenantConfig.decode(raw.value)
    checker = KeyChecker(lambda t: cfg if t == "acme.eu" else None)
    assert checker.check(key).tenant == "acme.eu"
    with pytest.raises(AuthError):
        checker.check(key[:-3] + "xyz")  # right shape, wrong secret
    with pytest.raises(AuthError, match="missing"):
        checker.check(None)
    with pytest.raises(AuthError):
        checker.check("shoal.other.abc.def")
    assert await list_keys(store, "acme.eu") == [key_id]
    assert await revoke_key(store, "acme.eu", key_id)
    cfg = TenantConfig.decode((await store.get(tenant_key("acme.eu"))).value)  # type: ignore[union-attr]
    checker.invalidate()
    with pytest.raises(AuthError, match="revoked"):
        checker.check(key)


async def test_admin_keys_and_bearer_parsing() -> None:
    store = MemoryStore()
    key, _ = await create_key(store, ADMIN)
    cfg = TenantConfig.decode((await store.get(tenant_key(ADMIN))).value)  # type: ignore[union-attr]
    assert KeyChecker(lambda t: cfg if t == ADMIN else None).check(key).admin
    assert bearer((("authorization", f"Bearer {key}"),)) == key
    assert bearer((("Authorization", "Basic abc"),)) is None
    assert bearer(None) is None
