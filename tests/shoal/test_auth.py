"""API keys: only salted hashes are stored; keys resolve to their tenant; revocation works."""

from __future__ import annotations

import hashlib
import re

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


async def test_only_a_salted_digest_is_stored() -> None:
    """SECURITY.md: only ``key_id:salt:sha256(salt || key)`` is stored, a fresh salt per key."""
    store = MemoryStore()
    keys = [await create_key(store, "acme") for _ in range(3)]
    raw = await store.get(tenant_key("acme"))
    assert raw is not None
    entries = TenantConfig.decode(raw.value).key_hashes
    assert len(entries) == len(keys)
    salts = []
    for (key, key_id), entry in zip(keys, entries, strict=True):
        secret = key.rsplit(".", 1)[1]
        assert len(secret) >= 43  # 256 random bits, base64url
        assert secret.encode() not in raw.value and key.encode() not in raw.value
        stored_id, salt, digest = entry.split(":")
        assert stored_id == key_id
        assert re.fullmatch(r"[0-9a-f]{32}", salt), salt  # 128 random bits, hex
        assert digest == hashlib.sha256(bytes.fromhex(salt) + key.encode()).hexdigest()
        salts.append(salt)
    assert len(set(salts)) == len(salts)  # never one salt shared between keys
