"""``StateStore.get_many``: the records of a bulk batch in one read-only transaction per
``MAX_TXN_OPS`` keys, answering exactly what one ``get`` per key would."""

from __future__ import annotations

from shoal.etcd import EtcdStore
from shoal.state import MAX_TXN_OPS, MemoryStore, StateStore


async def _check(store: StateStore) -> None:
    keys = [f"/shoal/models/t{i:04d}/m" for i in range(2 * MAX_TXN_OPS + 44)]
    for i, key in enumerate(keys):
        if i % 3:
            await store.put(key, f"v{i}".encode())
    await store.put("/shoal/models/t0000/m-neighbour", b"not asked for")
    asked = [*reversed(keys), keys[1], "/shoal/models/nobody/m"]
    got = await store.get_many(asked)
    assert got == [await store.get(k) for k in asked]
    assert [kv.value if kv else None for kv in got[:3]] == [
        f"v{len(keys) - 1}".encode(),
        None if (len(keys) - 2) % 3 == 0 else f"v{len(keys) - 2}".encode(),
        None if (len(keys) - 3) % 3 == 0 else f"v{len(keys) - 3}".encode(),
    ]
    assert got[-1] is None
    assert await store.get_many([]) == []


async def test_get_many_on_etcd(etcd_url: str) -> None:
    async with EtcdStore(etcd_url) as store:
        await _check(store)


async def test_get_many_in_memory() -> None:
    await _check(MemoryStore())
