"""A local Shoal cluster of real processes: etcd, placement, workers, router.

Used by ``shoal up``, the end-to-end tests and the benchmarks. Every process binds
127.0.0.1 on a free port (or the port asked for), logs to ``<data_dir>/logs/<name>.log``,
announces its address on its first stdout lines (``worker: HOST:PORT`` ...), and is stopped
by PID: SIGTERM, then SIGKILL after a grace period. Roles are configured through ``SHOAL_*``
environment variables, the same settings a production deployment uses.

Readiness is read through etcd's JSON gateway (plain HTTP), so this module needs no event loop
and can run inside a test process that owns one.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from shoal.auth import ADMIN, new_key
from shoal.devservers import LocalEtcd
from shoal.procs import ManagedProcess, wait_for_banner, wait_until
from shoal.records import PoolSnapshot, TenantConfig, placement_key, tenant_key, worker_key


def etcd_get(url: str, key: str, timeout: float = 2.0) -> bytes | None:
    """One key through etcd's v3 JSON gateway (no gRPC client, no event loop)."""
    body = json.dumps({"key": base64.b64encode(key.encode()).decode()}).encode()
    req = urllib.request.Request(f"{url}/v3/kv/range", data=body, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        doc = json.loads(r.read())
    kvs = doc.get("kvs") or []
    return base64.b64decode(kvs[0]["value"]) if kvs else None


def etcd_put(url: str, key: str, value: bytes, timeout: float = 2.0) -> None:
    """Write one key through etcd's v3 JSON gateway."""
    body = json.dumps(
        {
            "key": base64.b64encode(key.encode()).decode(),
            "value": base64.b64encode(value).decode(),
        }
    ).encode()
    req = urllib.request.Request(f"{url}/v3/kv/put", data=body, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        r.read()


def add_key(url: str, tenant: str) -> str:
    """Create an API key for ``tenant`` (``shoal.auth.ADMIN`` for admin) in the cluster's etcd.

    A plain read-modify-write: meant for cluster start-up, before anything else writes
    tenant records (``shoal keys`` does the compare-and-swap version).
    """
    key, entry = new_key(tenant)
    raw = etcd_get(url, tenant_key(tenant))
    cfg = TenantConfig.decode(raw) if raw else TenantConfig(tenant)
    etcd_put(url, tenant_key(tenant), replace(cfg, key_hashes=(*cfg.key_hashes, entry)).encode())
    return key


@dataclass
class Role:
    name: str
    proc: ManagedProcess
    address: str = ""
    extra: dict[str, str] = field(default_factory=dict)


def _shoal_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "shoal.cli", *args]


class LocalCluster:
    """Start with ``start()``, stop with ``stop()``; ``info()`` is what cluster.json holds."""

    def __init__(
        self,
        data_dir: Path,
        workers: int = 2,
        router_port: int = 0,
        rest_port: int = 0,
        control_port: int = 0,
        shard_size: int = 2,
        env: Mapping[str, str] | None = None,
        worker_env: Mapping[str, str] | None = None,
        etcd_url: str = "",
        store: str = "",
        auth: bool = False,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.n_workers = workers
        self.router_port = router_port
        self.rest_port = rest_port
        self.control_port = control_port
        self.shard_size = shard_size
        self.env = dict(env or {})
        self.worker_env = dict(worker_env or {})
        self.etcd: LocalEtcd | None = None
        self.etcd_url = etcd_url
        self.store = store or (self.data_dir / "objects").as_uri()
        self.placement: Role | None = None
        self.standbys: list[Role] = []
        self.workers: list[Role] = []
        self.router: Role | None = None
        self._next_worker = 0
        self.auth = auth
        self.admin_key = ""

    # --- process plumbing ---------------------------------------------------------------

    def _env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
        env.update(
            SHOAL_ETCD=self.etcd_url,
            SHOAL_STORE=self.store,
            SHOAL_AUTH="1" if self.auth else "0",
            PYTHONUNBUFFERED="1",
        )
        env.update(self.env)
        env.update(extra)
        return env

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> ManagedProcess:
        log = self.data_dir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")
        return ManagedProcess(args, log, env=env, cwd=self.data_dir).start()

    # --- lifecycle ----------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> LocalCluster:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            if not self.etcd_url:
                self.etcd = LocalEtcd(self.data_dir / "etcd").start()
                self.etcd_url = self.etcd.url
            if self.auth:
                self.admin_key = add_key(self.etcd_url, ADMIN)
            self.start_placement(timeout)
            for _ in range(self.n_workers):
                self.add_worker(timeout, wait_in_snapshot=False)
            self.wait_snapshot({w.extra["worker_id"] for w in self.workers}, timeout)
            self.start_router(timeout)
        except BaseException:
            self.stop()
            raise
        self.write_info()
        return self

    def start_placement(self, timeout: float = 60.0) -> Role:
        env = self._env(
            SHOAL_CONTROL_PORT=str(self.control_port),
            SHOAL_SHARD_SIZE=str(self.shard_size),
            SHOAL_DATA_DIR=str(self.data_dir),
            SHOAL_INSTANCE_ID="placement-0",
        )
        proc = self._spawn("placement", _shoal_cmd("placement"), env)
        self.placement = Role("placement", proc, wait_for_banner(proc, "control", timeout))
        return self.placement

    def add_placement(self, timeout: float = 60.0) -> Role:
        """Start one more placement instance (a standby while another leads)."""
        n = len(self.standbys) + 1
        env = self._env(
            SHOAL_CONTROL_PORT="0",
            SHOAL_SHARD_SIZE=str(self.shard_size),
            SHOAL_DATA_DIR=str(self.data_dir),
            SHOAL_INSTANCE_ID=f"placement-{n}",
        )
        proc = self._spawn(f"placement-{n}", _shoal_cmd("placement"), env)
        role = Role(f"placement-{n}", proc, wait_for_banner(proc, "control", timeout))
        self.standbys.append(role)
        return role

    def add_worker(
        self, timeout: float = 60.0, wait_in_snapshot: bool = True, worker_id: str = ""
    ) -> Role:
        """Start a worker (a new id, or ``worker_id`` to bring a stopped one back)."""
        if not worker_id:
            worker_id = f"worker-{self._next_worker}"
            self._next_worker += 1
        if any(w.extra["worker_id"] == worker_id and w.proc.alive() for w in self.workers):
            raise ValueError(f"{worker_id} is still running")
        self.workers = [w for w in self.workers if w.extra["worker_id"] != worker_id]
        env = self._env(
            SHOAL_WORKER_ID=worker_id,
            SHOAL_PORT="0",
            SHOAL_DATA_DIR=str(self.data_dir / "workers" / worker_id),
            **self.worker_env,
        )
        proc = self._spawn(worker_id, _shoal_cmd("worker"), env)
        role = Role(
            worker_id, proc, wait_for_banner(proc, "worker", timeout), {"worker_id": worker_id}
        )
        self.workers.append(role)
        if wait_in_snapshot:
            self.wait_snapshot(
                {w.extra["worker_id"] for w in self.workers if w.proc.alive()}, timeout
            )
        return role

    def start_router(self, timeout: float = 60.0) -> Role:
        env = self._env(
            SHOAL_PORT=str(self.router_port),
            SHOAL_REST_PORT=str(self.rest_port),
            SHOAL_DATA_DIR=str(self.data_dir),
        )
        proc = self._spawn("router", _shoal_cmd("router"), env)
        self.router = Role("router", proc, wait_for_banner(proc, "router", timeout))
        if self.rest_port >= 0:
            self.router.extra["rest"] = wait_for_banner(proc, "rest", timeout)
        self.router.extra["metrics"] = wait_for_banner(proc, "metrics", timeout)
        return self.router

    def snapshot(self, pool: str = "cpu") -> PoolSnapshot | None:
        raw = etcd_get(self.etcd_url, placement_key(pool))
        return PoolSnapshot.decode(raw) if raw else None

    def wait_snapshot(
        self, worker_ids: set[str], timeout: float = 60.0, pool: str = "cpu"
    ) -> PoolSnapshot:
        """Wait until the published snapshot of ``pool`` holds exactly ``worker_ids``."""
        got: list[PoolSnapshot] = []

        def ready() -> bool:
            snap = self.snapshot(pool)
            if snap is not None and {m.worker_id for m in snap.members} == worker_ids:
                got.append(snap)
                return True
            return False

        wait_until(ready, timeout, 0.1, f"snapshot of pool {pool} = {sorted(worker_ids)}")
        return got[0]

    def worker_registered(self, worker_id: str, pool: str = "cpu") -> bool:
        return etcd_get(self.etcd_url, worker_key(pool, worker_id)) is not None

    def info(self) -> dict[str, object]:
        return {
            "router": self.router.address if self.router else "",
            "rest": self.router.extra.get("rest", "") if self.router else "",
            "control": self.placement.address if self.placement else "",
            "etcd": self.etcd_url,
            "store": self.store,
            "data_dir": str(self.data_dir),
            "pids": {
                **({"etcd": self.etcd.proc.pid} if self.etcd and self.etcd.proc else {}),
                **({"placement": self.placement.proc.pid} if self.placement else {}),
                **{p.name: p.proc.pid for p in self.standbys},
                **{w.name: w.proc.pid for w in self.workers},
                **({"router": self.router.proc.pid} if self.router else {}),
            },
            "workers": {w.name: w.address for w in self.workers},
            "auth": self.auth,
            "started_at": time.time(),
        }

    def write_info(self) -> Path:
        path = self.data_dir / "cluster.json"
        path.write_text(json.dumps(self.info(), indent=2) + "\n")
        return path

    def stop(self, grace: float = 10.0) -> None:
        """Stop everything, router first and etcd last, each by PID."""
        if self.router:
            self.router.proc.stop(grace)
        for w in self.workers:
            w.proc.stop(grace)
        for p in [self.placement, *self.standbys]:
            if p is not None:
                p.proc.stop(grace)
        if self.etcd:
            self.etcd.stop(grace)
