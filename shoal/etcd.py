"""``StateStore`` over a real etcd v3 cluster, on the generated stubs of the ``aetcd`` client.

We drive etcd's gRPC API directly (``aetcd.rpc``) rather than aetcd's high-level client because
we need what it does not expose: paginated ranges at a fixed revision, multi-endpoint channels,
and a streaming lease keep-alive that notices expiry. Every call has a deadline
(``timeout``); an unreachable etcd raises ``StateUnavailable`` promptly instead of hanging.

Access (``EtcdAccess``, from the ``etcd_*`` settings): TLS to etcd when a CA is given or an
endpoint is ``https://`` (with a client certificate for etcd's ``--client-cert-auth``), and
etcd's own users: the store authenticates, sends the token with every call, and
authenticates again when etcd says the token is no longer valid (simple tokens expire).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal
from urllib.parse import urlparse

import grpc
from aetcd import rpc

from shoal.etcd_access import EtcdAccess, Token
from shoal.state import (
    KV,
    MAX_TXN_OPS,
    Compare,
    Delete,
    LeaseLost,
    Op,
    Put,
    RangePage,
    StateError,
    StateUnavailable,
    TxnResult,
    WatchEvent,
    prefix_end,
)
from shoal.tasks import cancel_and_wait

log = logging.getLogger(__name__)

_UNAVAILABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
}


def _target(endpoints: str) -> str:
    """gRPC target for comma-separated etcd URLs (``http://h:p``) or ``host:port`` pairs."""
    hosts = []
    for ep in endpoints.split(","):
        ep = ep.strip()
        if not ep:
            continue
        u = urlparse(ep if "://" in ep else f"http://{ep}")
        hosts.append(f"{u.hostname}:{u.port or 2379}")
    if not hosts:
        raise ValueError(f"no etcd endpoint in {endpoints!r}")
    if len(hosts) == 1:
        return hosts[0]
    return "ipv4:" + ",".join(hosts)


def _span(prefix: str) -> tuple[bytes, bytes]:
    """etcd (key, range_end) covering every key under ``prefix`` ("" means the whole keyspace)."""
    if not prefix:
        return b"\x00", b"\x00"
    return prefix.encode(), prefix_end(prefix).encode(errors="surrogateescape")


def _err(exc: grpc.aio.AioRpcError, what: str) -> StateError:
    if exc.code() in _UNAVAILABLE:
        return StateUnavailable(f"etcd {what}: {exc.code().name}: {exc.details()}")
    return StateError(f"etcd {what}: {exc.code().name}: {exc.details()}")


def _kv(m: Any) -> KV:
    return KV(m.key.decode(), m.value, m.mod_revision, m.create_revision, m.version, m.lease)


class _EtcdLease:
    """A granted lease renewed on a keep-alive stream every ttl/3 seconds."""

    def __init__(self, store: EtcdStore, lease_id: int, ttl: int) -> None:
        self.id = lease_id
        self.ttl = ttl
        self._store = store
        self._lost = asyncio.Event()
        self._call: grpc.aio.StreamStreamCall | None = None
        self._task = asyncio.get_running_loop().create_task(self._keepalive())

    @property
    def lost(self) -> asyncio.Event:
        return self._lost

    async def _keepalive(self) -> None:
        interval = max(self.ttl / 3.0, 0.2)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ttl
        while True:
            try:
                # The request iterator is consumed by grpc's own task: the call must be
                # cancelled explicitly or keep-alives go on after this task ends.
                self._call = call = self._store._lease.LeaseKeepAlive(self._requests(interval))
                async for resp in call:
                    if resp.TTL <= 0:
                        log.warning("etcd lease %x expired", self.id)
                        self._lost.set()
                        return
                    deadline = loop.time() + resp.TTL
            except grpc.aio.AioRpcError as exc:
                log.debug("lease keep-alive stream broke: %s", exc.code().name)
            finally:
                if self._call is not None:
                    self._call.cancel()
                    self._call = None
            if loop.time() >= deadline:
                self._lost.set()
                return
            await asyncio.sleep(min(interval, 1.0))

    async def _requests(self, interval: float) -> AsyncIterator[object]:
        while True:
            yield rpc.LeaseKeepAliveRequest(ID=self.id)
            await asyncio.sleep(interval)

    async def revoke(self) -> None:
        await cancel_and_wait(self._task)
        try:
            await self._store._lease.LeaseRevoke(
                rpc.LeaseRevokeRequest(ID=self.id), timeout=self._store.timeout
            )
        except grpc.aio.AioRpcError as exc:
            if "not found" not in (exc.details() or ""):
                raise _err(exc, "lease revoke") from exc

    def stop(self) -> None:
        """Stop renewing (the lease then expires after its TTL); does not revoke."""
        self._task.cancel()
        if self._call is not None:
            self._call.cancel()


class _EtcdWatch:
    """One etcd watch stream over a prefix from a start revision."""

    def __init__(self, store: EtcdStore, prefix: str, start_revision: int) -> None:
        self._store = store
        self._prefix = prefix
        self._start = start_revision
        self._cancel = asyncio.Event()
        self._call: grpc.aio.StreamStreamCall | None = None

    async def _requests(self) -> AsyncIterator[object]:
        key, end = _span(self._prefix)
        create = rpc.WatchCreateRequest(key=key, range_end=end, start_revision=self._start)
        yield rpc.WatchRequest(create_request=create)
        await self._cancel.wait()

    async def __aiter__(self) -> AsyncIterator[WatchEvent]:
        self._call = self._store._watch.Watch(self._requests())
        try:
            async for resp in self._call:
                if resp.compact_revision:
                    raise StateError(f"watch start revision compacted (at {resp.compact_revision})")
                if resp.canceled:
                    if self._cancel.is_set():
                        return
                    raise StateUnavailable(f"etcd canceled the watch: {resp.cancel_reason}")
                for ev in resp.events:
                    kind: Literal["put", "delete"] = (
                        "delete" if ev.type == rpc.Event.DELETE else "put"
                    )
                    yield WatchEvent(kind, ev.kv.key.decode(), ev.kv.value, ev.kv.mod_revision)
        except grpc.aio.AioRpcError as exc:
            if self._cancel.is_set() and exc.code() == grpc.StatusCode.CANCELLED:
                return
            raise _err(exc, "watch") from exc
        if not self._cancel.is_set():
            raise StateUnavailable("etcd watch stream ended")

    async def cancel(self) -> None:
        self._cancel.set()
        if self._call is not None:
            self._call.cancel()

    async def __aenter__(self) -> _EtcdWatch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.cancel()


class EtcdStore:
    """``StateStore`` on etcd. ``connect()`` opens the channel; ``close()`` revokes nothing."""

    def __init__(
        self, endpoints: str, timeout: float = 5.0, access: EtcdAccess | None = None
    ) -> None:
        self.endpoints = endpoints
        self.timeout = timeout
        self.access = access or EtcdAccess()
        self._auth: Token | None = None
        self._channel: grpc.aio.Channel | None = None
        self._leases: list[_EtcdLease] = []

    @classmethod
    def of(cls, settings: Any, timeout: float = 5.0) -> EtcdStore:
        """The store a settings object names: ``etcd`` endpoints and the ``etcd_*`` access."""
        return cls(settings.etcd, timeout, EtcdAccess.of(settings))

    async def connect(self) -> EtcdStore:
        if self._channel is None:
            # A member cut off without a FIN or RST is found out by keepalive: a PING every
            # 5 s (etcd refuses more frequent ones: --grpc-keepalive-min-time) answered within
            # 2 s, or the channel moves to another member.
            options = [
                ("grpc.max_receive_message_length", 64 << 20),
                ("grpc.keepalive_time_ms", 5_000),
                ("grpc.keepalive_timeout_ms", 2_000),
            ]
            a = self.access
            token = Token(a.username, a.password) if a.username else None
            interceptors = [token] if token is not None else None
            creds = a.credentials(self.endpoints)
            target = _target(self.endpoints)
            if creds is None:
                self._channel = grpc.aio.insecure_channel(
                    target, options=options, interceptors=interceptors
                )
            else:
                self._channel = grpc.aio.secure_channel(
                    target, creds, options=options, interceptors=interceptors
                )
            self._auth = token
            if token is not None:
                token.stub = rpc.AuthStub(self._channel)
                try:
                    await token.refresh()
                except grpc.aio.AioRpcError as exc:
                    await self._channel.close()
                    self._channel = None
                    raise _err(exc, "authenticate") from exc
            self._kvs = rpc.KVStub(self._channel)
            self._lease = rpc.LeaseStub(self._channel)
            self._watch = rpc.WatchStub(self._channel)
            self._maint = rpc.MaintenanceStub(self._channel)
        return self

    async def __aenter__(self) -> EtcdStore:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def status(self) -> int:
        """Ping: the cluster's current revision (raises ``StateUnavailable`` when down)."""
        try:
            resp = await self._maint.Status(rpc.StatusRequest(), timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise _err(exc, "status") from exc
        return int(resp.header.revision)

    async def get(self, key: str) -> KV | None:
        try:
            resp = await self._read(rpc.RangeRequest(key=key.encode()))
        except grpc.aio.AioRpcError as exc:
            raise _err(exc, f"get {key}") from exc
        return _kv(resp.kvs[0]) if resp.kvs else None

    async def get_many(self, keys: Sequence[str]) -> list[KV | None]:
        out: list[KV | None] = []
        for lo in range(0, len(keys), MAX_TXN_OPS):
            chunk = keys[lo : lo + MAX_TXN_OPS]
            ops = [rpc.RequestOp(request_range=rpc.RangeRequest(key=k.encode())) for k in chunk]
            try:
                resp = await self._kvs.Txn(rpc.TxnRequest(success=ops), timeout=self.timeout)
            except grpc.aio.AioRpcError as exc:
                raise _err(exc, f"get {len(chunk)} keys") from exc
            for r in resp.responses:
                kvs = r.response_range.kvs
                out.append(_kv(kvs[0]) if kvs else None)
        return out

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        try:
            resp = await self._kvs.Put(
                rpc.PutRequest(key=key.encode(), value=value, lease=lease), timeout=self.timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise _err(exc, f"put {key}") from exc
        return int(resp.header.revision)

    async def delete(self, key: str, prefix: bool = False) -> int:
        if prefix:
            start, end = _span(key)
            req = rpc.DeleteRangeRequest(key=start, range_end=end)
        else:
            req = rpc.DeleteRangeRequest(key=key.encode())
        try:
            resp = await self._kvs.DeleteRange(req, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise _err(exc, f"delete {key}") from exc
        return int(resp.deleted)

    async def _read(self, req: Any) -> Any:
        """A Range, made again while the cluster elects a leader (reads are safe to repeat):
        "leader changed" and "no leader" are etcd's own transient refusals, answered by a
        live member; an unreachable etcd still fails at once."""
        deadline = asyncio.get_running_loop().time() + self.timeout
        pause = 0.05
        while True:
            left = deadline - asyncio.get_running_loop().time()
            try:
                return await self._kvs.Range(req, timeout=max(left, 0.01))
            except grpc.aio.AioRpcError as exc:
                transient = exc.code() == grpc.StatusCode.UNAVAILABLE and any(
                    s in str(exc.details()) for s in ("leader changed", "no leader")
                )
                if not transient or left <= pause:
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)

    async def range(
        self, prefix: str, *, start: str | None = None, limit: int = 1000, revision: int = 0
    ) -> RangePage:
        first, end = _span(prefix)
        req = rpc.RangeRequest(
            key=start.encode(errors="surrogateescape") if start is not None else first,
            range_end=end,
            limit=limit,
            revision=revision,
            sort_order=rpc.RangeRequest.ASCEND,
            sort_target=rpc.RangeRequest.KEY,
        )
        try:
            resp = await self._read(req)
        except grpc.aio.AioRpcError as exc:
            raise _err(exc, f"range {prefix}") from exc
        return RangePage([_kv(m) for m in resp.kvs], bool(resp.more), int(resp.header.revision))

    async def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        cmp = [
            rpc.Compare(
                result=rpc.Compare.EQUAL,
                target=rpc.Compare.MOD,
                key=c.key.encode(),
                mod_revision=c.mod_revision,
            )
            for c in compares
        ]
        reqs = []
        for op in ops:
            if isinstance(op, Put):
                reqs.append(
                    rpc.RequestOp(
                        request_put=rpc.PutRequest(
                            key=op.key.encode(), value=op.value, lease=op.lease
                        )
                    )
                )
            elif isinstance(op, Delete):
                if op.prefix:
                    k, e = _span(op.key)
                    d = rpc.DeleteRangeRequest(key=k, range_end=e)
                else:
                    d = rpc.DeleteRangeRequest(key=op.key.encode())
                reqs.append(rpc.RequestOp(request_delete_range=d))
        try:
            resp = await self._kvs.Txn(
                rpc.TxnRequest(compare=cmp, success=reqs), timeout=self.timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise _err(exc, "txn") from exc
        return TxnResult(bool(resp.succeeded), int(resp.header.revision))

    async def grant_lease(self, ttl: int) -> _EtcdLease:
        try:
            resp = await self._lease.LeaseGrant(
                rpc.LeaseGrantRequest(TTL=ttl), timeout=self.timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise _err(exc, "lease grant") from exc
        if resp.error:
            raise StateError(f"etcd lease grant: {resp.error}")
        lease = _EtcdLease(self, int(resp.ID), int(resp.TTL))
        self._leases.append(lease)
        return lease

    async def lease_ttl(self, lease_id: int) -> int:
        """Remaining TTL of a lease in seconds (-1 when it no longer exists)."""
        try:
            resp = await self._lease.LeaseTimeToLive(
                rpc.LeaseTimeToLiveRequest(ID=lease_id), timeout=self.timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise _err(exc, "lease ttl") from exc
        return int(resp.TTL)

    async def watch(self, prefix: str, start_revision: int) -> _EtcdWatch:
        return _EtcdWatch(self, prefix, start_revision)

    async def close(self) -> None:
        for lease in self._leases:
            lease.stop()
        self._leases.clear()
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


__all__ = ["EtcdAccess", "EtcdStore", "LeaseLost"]
