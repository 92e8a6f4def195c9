"""The object store over a local folder and over a real S3 server (SeaweedFS)."""

from __future__ import annotations

import pytest

from shoal.artifacts import sha256_hex
from shoal.objstore import ObjectNotFound, ObjectStore, ObjectStoreUnavailable, artifact_key
from shoal.settings import CommonSettings


async def _exercise(store: ObjectStore) -> None:
    await store.put("m/a.bin", b"alpha")
    await store.put("m/b.bin", b"beta!")
    await store.put("other/c.bin", b"c")
    assert await store.get("m/a.bin") == b"alpha"
    info = await store.head("m/b.bin")
    assert info is not None and info.size == 5
    assert await store.head("m/none") is None
    listed = sorted([o.key async for o in store.list("m/")])
    assert listed == ["m/a.bin", "m/b.bin"]
    await store.delete("m/a.bin")
    with pytest.raises(ObjectNotFound):
        await store.get("m/a.bin")
    await store.delete("m/a.bin")  # deleting what is gone is not an error
    data = b"model-bytes" * 100
    key, written = await store.put_artifact(sha256_hex(data), data)
    assert written and key == artifact_key(sha256_hex(data))
    _, again = await store.put_artifact(sha256_hex(data), data)
    assert not again  # content-addressed: identical bytes are not uploaded twice
    assert await store.get(key) == data


async def test_file_store(file_store_url: str) -> None:
    await _exercise(ObjectStore(file_store_url))


async def test_s3_store(s3_settings: CommonSettings) -> None:
    await _exercise(ObjectStore("s3://shoal-test/objstore-test", s3_settings))


async def test_s3_store_unreachable_is_unavailable() -> None:
    settings = CommonSettings(s3_endpoint="http://127.0.0.1:9")  # discard port: nothing listens
    store = ObjectStore("s3://nobucket/x", settings)
    with pytest.raises(ObjectStoreUnavailable):
        await store.get("k")


def test_artifact_key_rejects_non_digests() -> None:
    with pytest.raises(ValueError):
        artifact_key("../../etc/passwd")
