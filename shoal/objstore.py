"""The object store: artifacts by key, over obstore (local folder, S3, GCS, Azure).

Addressed by URL: ``file:///abs/path`` (the embedded default, ``<data-dir>/objects``) or
``s3://bucket/prefix`` with endpoint and credentials from settings. Artifacts are
content-addressed (``artifacts/sha256/ab/abcdef...``), so an upload of bytes already present
is a no-op and a key never changes meaning.

Errors: ``ObjectNotFound`` for a missing key; ``ObjectStoreUnavailable`` when the store cannot
be reached (network, permissions); callers map them to NOT_FOUND / UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import obstore
from obstore.exceptions import BaseError, NotFoundError
from obstore.store import LocalStore, S3Store

from shoal.settings import CommonSettings

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ObjectStoreError(Exception):
    """Base class of object-store failures."""


class ObjectNotFound(ObjectStoreError):
    pass


class ObjectStoreUnavailable(ObjectStoreError):
    pass


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    etag: str | None


def artifact_key(sha256: str) -> str:
    """The content-addressed key of an artifact with this digest."""
    if not _SHA256.match(sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return f"artifacts/sha256/{sha256[:2]}/{sha256}"


def _make_store(url: str, settings: CommonSettings | None) -> Any:
    u = urlparse(url)
    if u.scheme == "file":
        path = Path(u.path)
        path.mkdir(parents=True, exist_ok=True)
        return LocalStore(path, mkdir=True)
    if u.scheme == "s3":
        s = settings or CommonSettings()
        config: dict[str, Any] = {"region": s.s3_region}
        if s.s3_endpoint:
            config["endpoint"] = s.s3_endpoint
            config["virtual_hosted_style_request"] = False
        if s.s3_access_key_id:
            config["access_key_id"] = s.s3_access_key_id
            config["secret_access_key"] = s.s3_secret_access_key
        else:
            config["skip_signature"] = True
        prefix = u.path.strip("/") or None
        return S3Store(
            u.netloc,
            prefix=prefix,
            config=config,  # type: ignore[arg-type]
            # A store cut off (no RST) fails a connection in 2 s, not the default 5 s: with two
            # retries a cold load gets UNAVAILABLE within about 10 s.
            client_options={
                "allow_http": s.s3_allow_http,
                "timeout": "30s",
                "connect_timeout": "2s",
            },
            retry_config={"max_retries": 2, "retry_timeout": timedelta(seconds=10)},
        )
    raise ValueError(f"unsupported object store URL {url!r} (use file:// or s3://)")


def _wrap(exc: BaseError, what: str) -> ObjectStoreError:
    if isinstance(exc, NotFoundError):
        return ObjectNotFound(f"{what}: not found")
    return ObjectStoreUnavailable(f"{what}: {type(exc).__name__}: {exc}")


class ObjectStore:
    """Async put/get/head/delete/list on one bucket or folder."""

    def __init__(self, url: str, settings: CommonSettings | None = None) -> None:
        self.url = url
        self._store = _make_store(url, settings)

    async def put(self, key: str, data: bytes) -> None:
        try:
            await obstore.put_async(self._store, key, data)
        except BaseError as exc:
            raise _wrap(exc, f"put {key}") from exc

    async def get(self, key: str, timeout: float | None = None) -> bytes:
        """The object's bytes; ``ObjectStoreUnavailable`` when the store does not answer, or
        not all of them within ``timeout`` seconds (a connection the client pooled may have
        died without a word: the HTTP client's own timeout is sized for the largest object)."""

        async def read() -> bytes:
            result = await obstore.get_async(self._store, key)
            return bytes(await result.bytes_async())

        try:
            if timeout is None:
                return await read()
            return await asyncio.wait_for(read(), timeout)
        except TimeoutError:
            raise ObjectStoreUnavailable(f"get {key}: no answer within {timeout:g}s") from None
        except BaseError as exc:
            raise _wrap(exc, f"get {key}") from exc
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"get {key}: not found") from exc

    async def head(self, key: str) -> ObjectInfo | None:
        try:
            meta = await obstore.head_async(self._store, key)
        except (NotFoundError, FileNotFoundError):
            return None
        except BaseError as exc:
            raise _wrap(exc, f"head {key}") from exc
        return ObjectInfo(meta["path"], int(meta["size"]), meta.get("e_tag"))

    async def delete(self, key: str) -> None:
        try:
            await obstore.delete_async(self._store, key)
        except (NotFoundError, FileNotFoundError):
            return
        except BaseError as exc:
            raise _wrap(exc, f"delete {key}") from exc

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        try:
            async for chunk in obstore.list(self._store, prefix or None, chunk_size=1000):
                for meta in chunk:
                    yield ObjectInfo(meta["path"], int(meta["size"]), meta.get("e_tag"))
        except BaseError as exc:
            raise _wrap(exc, f"list {prefix}") from exc

    async def put_artifact(self, sha256: str, data: bytes) -> tuple[str, bool]:
        """Store ``data`` under its content address; returns (key, written).

        Bytes already present with the same size are not uploaded again.
        """
        key = artifact_key(sha256)
        existing = await self.head(key)
        if existing is not None and existing.size == len(data):
            return key, False
        await self.put(key, data)
        return key, True
