"""The etcd store over TLS with client certificates and etcd users, against a real etcd
started that way (``--client-cert-auth``, auth enabled, simple tokens that expire in 1 s),
and a real ``shoal worker`` configured for it through ``SHOAL_ETCD_*`` (password from a file).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aetcd import rpc

from shoal.devservers import find_binary
from shoal.etcd import EtcdAccess, EtcdStore
from shoal.procs import ManagedProcess, free_port, wait_until
from shoal.records import worker_key
from shoal.state import Put, StateError, StateUnavailable
from tests.security.certs import Certs, make_certs

PASSWORD = "correct horse"


@dataclass
class SecureEtcd:
    url: str
    certs: Certs

    def access(self, **kw: str) -> EtcdAccess:
        base = {
            "ca": str(self.certs.ca),
            "cert": str(self.certs.client_cert),
            "key": str(self.certs.client_key),
            "username": "root",
            "password": PASSWORD,
        }
        base.update(kw)
        return EtcdAccess(**base)


async def _enable_auth(url: str, access: EtcdAccess) -> None:
    async with EtcdStore(url, access=access) as store:
        auth = rpc.AuthStub(store._channel)
        await auth.UserAdd(rpc.AuthUserAddRequest(name="root", password=PASSWORD), timeout=10)
        await auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user="root", role="root"))
        await auth.AuthEnable(rpc.AuthEnableRequest(), timeout=10)


@pytest.fixture
def secure_etcd(tmp_path: Path) -> Iterator[SecureEtcd]:
    certs = make_certs(tmp_path / "certs")
    client, peer = free_port(), free_port()
    url = f"https://127.0.0.1:{client}"
    proc = ManagedProcess(
        [find_binary("etcd"), "--name", "s", "--data-dir", str(tmp_path / "data"),
         "--listen-client-urls", url, "--advertise-client-urls", url,
         "--listen-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"s=http://127.0.0.1:{peer}",
         "--cert-file", str(certs.server_cert), "--key-file", str(certs.server_key),
         "--trusted-ca-file", str(certs.ca), "--client-cert-auth",
         "--auth-token", "simple", "--auth-token-ttl", "1", "--log-level", "warn"],
        tmp_path / "etcd.log",
    ).start()  # fmt: skip
    try:
        etcd = SecureEtcd(url, certs)

        async def up() -> bool:
            try:
                async with EtcdStore(url, timeout=1, access=etcd.access(username="")) as s:
                    await s.status()
                return True
            except StateUnavailable:
                assert proc.alive(), proc.log_tail()
                return False

        wait_until(lambda: asyncio.run(up()), 30, 0.1, "etcd over TLS")
        asyncio.run(_enable_auth(url, etcd.access(username="")))
        yield etcd
    finally:
        proc.stop(5)


async def test_tls_client_certificates_and_a_user_reach_etcd(secure_etcd: SecureEtcd) -> None:
    async with EtcdStore(secure_etcd.url, access=secure_etcd.access()) as store:
        await store.txn([], [Put("/t/a", b"1")])
        assert [kv.value for kv in (await store.range("/t/a")).kvs] == [b"1"]
        first = store._auth.token if store._auth else ""
        # Simple tokens expire after 1 s idle: the next call authenticates again by itself.
        await asyncio.sleep(2.5)
        await store.txn([], [Put("/t/a", b"2")])
        assert [kv.value for kv in (await store.range("/t/a")).kvs] == [b"2"]
        assert store._auth is not None and store._auth.token != first


async def test_without_a_client_certificate_or_credentials_etcd_refuses(
    secure_etcd: SecureEtcd,
) -> None:
    no_cert = secure_etcd.access(cert="", key="")
    with pytest.raises(StateUnavailable):
        async with EtcdStore(secure_etcd.url, timeout=2, access=no_cert) as store:
            await store.range("/t/a")
    with pytest.raises(StateError, match="authenticate"):
        async with EtcdStore(secure_etcd.url, access=secure_etcd.access(password="nope")):
            pass
    # Without a token etcd takes the certificate's CN ("client") as the user: it has no role.
    anonymous = secure_etcd.access(username="", password="")
    with pytest.raises(StateError, match="PERMISSION_DENIED"):
        async with EtcdStore(secure_etcd.url, access=anonymous) as store:
            await store.range("/t/a")
    with pytest.raises(ValueError, match="etcd_cert and etcd_key go together"):
        EtcdAccess(ca=str(secure_etcd.certs.ca), cert="x").credentials("https://h:1")


async def test_a_worker_reaches_a_secured_etcd_from_its_settings(
    secure_etcd: SecureEtcd, tmp_path: Path
) -> None:
    password = tmp_path / "etcd-password"
    password.write_text(PASSWORD + "\n")  # as a Secret's file: the newline is not part of it
    c = secure_etcd.certs
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    env.update(
        SHOAL_ETCD=secure_etcd.url,
        SHOAL_ETCD_CA=str(c.ca),
        SHOAL_ETCD_CERT=str(c.client_cert),
        SHOAL_ETCD_KEY=str(c.client_key),
        SHOAL_ETCD_USERNAME="root",
        SHOAL_ETCD_PASSWORD_FILE=str(password),
        SHOAL_STORE=(tmp_path / "objects").as_uri(),
        SHOAL_DATA_DIR=str(tmp_path / "w"),
        SHOAL_WORKER_ID="secure-w",
        SHOAL_DEVICE="cpu",
        SHOAL_METRICS_PORT="-1",
    )
    proc = ManagedProcess(
        [sys.executable, "-m", "shoal.cli", "worker"], tmp_path / "worker.log", env=env
    ).start()
    try:
        async with EtcdStore(secure_etcd.url, access=secure_etcd.access()) as store:

            async def registered() -> bool:
                return bool((await store.range(worker_key("cpu", "secure-w"))).kvs)

            for _ in range(200):
                if await registered():
                    break
                assert proc.alive(), proc.log_tail()
                await asyncio.sleep(0.05)
            assert await registered(), proc.log_tail()
    finally:
        assert proc.stop(15) == 0
