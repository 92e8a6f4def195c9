"""Shoal across real hosts (network namespaces on a bridge, ``hosts.py``), under steady
tritonclient load from a client host, through faults of whole hosts.

Hosts: three etcd members (one cluster), SeaweedFS, two placement services, two worker hosts
in zones a and b (two workers each), the router, the client. Each process runs with the
command and environment its container runs in ``deploy/`` (``shoal worker|router|placement``,
``SHOAL_HOST=0.0.0.0``, the host's address advertised, S3 credentials from files, API keys
on); only lease TTLs and the debounce are shortened so the test takes a minute.

Phases, each printing its requests, failures and time to recover:
1. steady;
2. a worker host cut off: the next snapshot drops its workers, and once it is published no
   request fails; its workers come back when it is restored;
3. one etcd member cut off: serving and registration go on on the quorum; it rejoins;
4. the placement leader's host killed: the standby leads and publishes;
5. the object store cut off: warm models keep answering, a cold one gets UNAVAILABLE; all
   recover when it returns;
6. everything restored: steady again.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from shoal import modelgen
from shoal.devservers import find_binary
from shoal.etcd import EtcdStore
from shoal.pb import shoal_control_pb2 as cpb
from shoal.pb import shoal_control_pb2_grpc as cgrpc
from shoal.procs import ManagedProcess, wait_for_banner, wait_until
from shoal.records import ELECTION, PoolSnapshot, placement_key
from tests.multihost.diagnose import reporting
from tests.multihost.hosts import Hosts, why_not

HERE = Path(__file__).resolve().parent
SHOAL = str(Path(sys.executable).parent / "shoal")  # the image's entrypoint
ETCD_HOSTS = ("etcd1", "etcd2", "etcd3")
WORKERS = {"zone-a": ("w-a0", "w-a1"), "zone-b": ("w-b0", "w-b1")}
TENANTS = [f"mh{i}" for i in range(6)]
BUCKET = "shoal-mh"


class _Say:
    """The phases' figures, written to the terminal past pytest's capture (set by the test)."""

    write: Callable[[str], None] = print


def say(line: str) -> None:
    _Say.write(line)


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}


class Cluster:
    def __init__(self, hosts: Hosts, tmp: Path) -> None:
        self.hosts, self.tmp = hosts, tmp
        self.ip = {n: h.ip for n, h in hosts.hosts.items()}
        self.etcd = ",".join(f"http://{self.ip[n]}:2379" for n in ETCD_HOSTS)
        self.procs: dict[str, ManagedProcess] = {}
        secrets = tmp / "secrets"
        secrets.mkdir()
        (secrets / "access-key-id").write_text("multihost\n")
        (secrets / "secret-access-key").write_text("multihost\n")
        # The ConfigMap and the mounted S3 Secret of deploy/base.
        self.common = {
            **_base_env(),
            "SHOAL_ETCD": self.etcd,
            "SHOAL_STORE": f"s3://{BUCKET}/artifacts",
            "SHOAL_S3_ENDPOINT": f"http://{self.ip['s3']}:8333",
            "SHOAL_S3_REGION": "us-east-1",
            "SHOAL_S3_ALLOW_HTTP": "true",
            "SHOAL_AUTH": "true",
            "SHOAL_S3_ACCESS_KEY_ID_FILE": str(secrets / "access-key-id"),
            "SHOAL_S3_SECRET_ACCESS_KEY_FILE": str(secrets / "secret-access-key"),
        }

    def start_etcd(self) -> None:
        initial = ",".join(f"{n}=http://{self.ip[n]}:2380" for n in ETCD_HOSTS)
        for n in ETCD_HOSTS:
            ip = self.ip[n]
            self.procs[n] = self.hosts.run(n, n, [
                find_binary("etcd"), "--name", n, "--data-dir", str(self.tmp / n),
                "--listen-client-urls", f"http://{ip}:2379",
                "--advertise-client-urls", f"http://{ip}:2379",
                "--listen-peer-urls", f"http://{ip}:2380",
                "--initial-advertise-peer-urls", f"http://{ip}:2380",
                "--initial-cluster", initial, "--initial-cluster-state", "new",
                "--initial-cluster-token", "shoal-multihost", "--log-level", "warn",
            ], _base_env())  # fmt: skip
        wait_until(lambda: asyncio.run(self._etcd_ok()), 60, 0.2, "the etcd cluster")

    async def _etcd_ok(self, endpoints: str | None = None) -> bool:
        try:
            async with EtcdStore(endpoints or self.etcd, timeout=1) as store:
                await store.status()
            return True
        except Exception:
            return False

    def start_s3(self) -> None:
        d = self.tmp / "weed"
        d.mkdir()
        self.procs["s3"] = self.hosts.run("s3", "weed", [
            find_binary("weed"), "-logtostderr", "server", f"-ip={self.ip['s3']}",
            "-ip.bind=0.0.0.0", f"-dir={d}", "-s3", "-s3.port=8333", "-s3.port.iceberg=0",
            "-s3.port.lance=0", f"-filer.localSocket={d / 'filer.sock'}",
            f"-s3.localSocket={d / 's3.sock'}", "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64", "-volume.max=8", "-metricsPort=0",
        ], {**_base_env(), "TMPDIR": str(d)})  # fmt: skip
        url = f"http://{self.ip['s3']}:8333/{BUCKET}"

        def bucket() -> bool:
            try:
                urllib.request.urlopen(urllib.request.Request(url, method="PUT"), timeout=5)
                return True
            except urllib.error.HTTPError as exc:
                return exc.code == 409
            except OSError:
                return False

        wait_until(bucket, 90, 0.3, "SeaweedFS's S3 gateway")

    def start_placement(self, name: str) -> None:
        ip = self.ip[name]
        self.procs[name] = self.hosts.run(name, name, [SHOAL, "placement"], {
            **self.common, "SHOAL_HOST": "0.0.0.0", "SHOAL_CONTROL_PORT": "8002",
            "SHOAL_METRICS_PORT": "9090", "SHOAL_INSTANCE_ID": name,
            "SHOAL_ADVERTISE_ADDRESS": f"{ip}:8002", "SHOAL_DATA_DIR": str(self.tmp / name),
            "SHOAL_SHARD_SIZE": "2", "SHOAL_LEASE_TTL": "3", "SHOAL_DEBOUNCE_S": "0.5",
        })  # fmt: skip

    def start_worker(self, zone: str, i: int) -> None:
        wid, ip = WORKERS[zone][i], self.ip[zone]
        port = 8001 + 10 * i
        self.procs[wid] = self.hosts.run(zone, wid, [SHOAL, "worker"], {
            **self.common, "SHOAL_HOST": "0.0.0.0", "SHOAL_PORT": str(port),
            "SHOAL_METRICS_PORT": str(9090 + i), "SHOAL_WORKER_ID": wid,
            "SHOAL_ADVERTISE_ADDRESS": f"{ip}:{port}", "SHOAL_ZONE": zone,
            "SHOAL_DEVICE": "cpu", "SHOAL_HOST_BUDGET": "256MiB", "SHOAL_DISK_BUDGET": "1GiB",
            "SHOAL_DRAIN_GRACE_S": "5", "SHOAL_LEASE_TTL": "3",
            "SHOAL_DATA_DIR": str(self.tmp / wid),
        })  # fmt: skip

    def start_router(self) -> None:
        self.procs["router"] = self.hosts.run("router", "router", [SHOAL, "router"], {
            **self.common, "SHOAL_HOST": "0.0.0.0", "SHOAL_PORT": "8001",
            "SHOAL_METRICS_PORT": "9090", "SHOAL_ROUTER_ID": "router",
            "SHOAL_ADVERTISE_ADDRESS": f"{self.ip['router']}:8001",
            "SHOAL_DRAIN_GRACE_S": "5", "SHOAL_DATA_DIR": str(self.tmp / "router"),
        })  # fmt: skip

    def key(self, *args: str) -> str:
        out = ManagedProcess(
            [SHOAL, "keys", "--etcd", self.etcd, "create", "--json", *args],
            self.tmp / "keys.log",
            env=_base_env(),
        ).start()
        assert out.proc is not None and out.proc.wait(60) == 0, out.log_tail()
        line = out.log_tail().strip().splitlines()[-1]
        return str(json.loads(line)["key"])

    async def snapshot(self) -> PoolSnapshot | None:
        async with EtcdStore(self.etcd, timeout=2) as store:
            kvs = (await store.range(placement_key("cpu"))).kvs
        return PoolSnapshot.decode(kvs[0].value) if kvs else None

    async def leader(self) -> str:
        async with EtcdStore(self.etcd, timeout=2) as store:
            kvs = (await store.range(ELECTION)).kvs
        return kvs[0].value.decode() if kvs else ""


def _register(address: str, key: str, tenant: str, name: str, data: bytes) -> int:
    """Register ``data``; UNAVAILABLE (etcd electing a leader) is retried as a client would:
    registering the same bytes again is idempotent. Prints the attempts it took."""
    with grpc.insecure_channel(address) as ch:
        stub = cgrpc.ControlStub(ch)

        def chunks() -> Iterator[cpb.RegisterChunk]:
            yield cpb.RegisterChunk(header=cpb.RegisterHeader(tenant=tenant, name=name))
            yield cpb.RegisterChunk(data=data)

        for attempt in range(1, 11):
            try:
                resp = stub.Register(
                    chunks(), timeout=60, metadata=[("authorization", f"Bearer {key}")]
                )
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == 10:
                    raise
                say(f"[multihost] register {tenant}/{name}: {exc.details()}; retrying")
                time.sleep(0.5)
                continue
            return int(resp.version)
    raise AssertionError("unreachable")


class Load:
    """The client host's load, read back from its JSONL."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]

    def window(self, t0: float, t1: float) -> tuple[int, Counter[str], float]:
        """Requests sent in [t0, t1), failures by code, and the last failure's delay after t0."""
        recs = [r for r in self.records() if t0 <= r["t"] < t1]
        fails = Counter(r["code"] for r in recs if r["code"] != "OK")
        last = max((r["t"] - t0 for r in recs if r["code"] != "OK"), default=0.0)
        return len(recs), fails, last


#: Longest a request of the load can take (its deadline), plus a margin: a phase's figures
#: are read once every request it sent has been answered.
SETTLE_S = 3.5


def _phase(name: str, load: Load, t0: float, t1: float, **extra: Any) -> Counter[str]:
    time.sleep(max(0.0, t1 + SETTLE_S - time.time()))
    n, fails, last = load.window(t0, t1)
    more = ", ".join(f"{k} {v}" for k, v in extra.items())
    say(
        f"[multihost] {name}: {n} requests, {sum(fails.values())} failed {dict(fails)}, "
        f"last failure {last:.2f} s after the fault{', ' + more if more else ''}",
    )
    assert n > 0, f"{name}: no requests were sent"
    return fails


def _until(what: str, check: Callable[[], bool], timeout: float) -> float:
    started = time.monotonic()
    wait_until(check, timeout, 0.1, what)
    return time.monotonic() - started


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    reason = why_not()
    if reason is not None:
        if os.environ.get("SHOAL_REQUIRE_MULTIHOST") == "1":  # .ci/run: it must run there
            pytest.fail(f"multi-host test required but cannot run: {reason}")
        pytest.skip(f"multi-host test not run: {reason}")
    h = Hosts(tmp_path / "logs")
    (tmp_path / "logs").mkdir()
    try:
        for name in (*ETCD_HOSTS, "s3", "place1", "place2", "zone-a", "zone-b", "router"):
            h.add(name)
        h.add("client")
        yield h
    finally:
        h.close()


def test_a_cluster_across_hosts_rides_out_host_faults(
    hosts: Hosts, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def to_terminal(line: str) -> None:
        with capsys.disabled():
            print(line, flush=True)

    _Say.write = to_terminal
    c = Cluster(hosts, tmp_path)
    with reporting(c.etcd, c.procs, say):
        c.start_etcd()
        c.start_s3()
        for p in ("place1", "place2"):
            c.start_placement(p)
        for zone in WORKERS:
            for i in range(2):
                c.start_worker(zone, i)
        c.start_router()
        banners = {"place1": "control", "place2": "control", "router": "router"}
        for name, proc in c.procs.items():
            if name.startswith("w-") or name in banners:
                wait_for_banner(proc, banners.get(name, "worker"), 90)
        control = f"{c.ip['place1']}:8002"
        admin = c.key("--admin")

        x, y = modelgen.dataset(n_rows=200, n_features=4, seed=3)
        data = modelgen.train_xgboost(x, y, n_trees=5)
        data2 = modelgen.train_xgboost(x, y, n_trees=6)  # a new version of a model
        cold = modelgen.train_xgboost(x, y, n_trees=7)  # bytes no worker has seen (artifacts are
        # content-addressed: the same bytes under another name would be found on disk)
        keys = {t: c.key(t) for t in (*TENANTS, "cold")}
        for t in TENANTS:
            assert _register(control, admin, t, "m", data) == 1
        assert _register(control, admin, "cold", "m", cold) == 1
        wait_until(lambda: len(_members(c)) == 4, 60, 0.2, "a snapshot of the 4 workers")
        out = tmp_path / "load.jsonl"
        stop = tmp_path / "stop"
        models = [
            {"model": f"{t}/m", "key": keys[t], "input": "input__0", "row": x[0].tolist()}
            for t in TENANTS
        ]
        cfg = tmp_path / "load.json"
        router = f"{c.ip['router']}:8001"
        cfg.write_text(json.dumps({"router": router, "models": models, "rate": 60,
                                   "out": str(out), "stop": str(stop)}))  # fmt: skip
        load = Load(out)
        hosts.run("client", "load", [sys.executable, str(HERE / "load.py"), str(cfg)], _base_env())

        def answered_since(t: float, n: int = 24) -> bool:
            recs = [r for r in load.records() if r["t"] >= t]
            return len(recs) >= n and all(r["code"] == "OK" for r in recs[-n:])

        try:
            # 1. Steady (after every model's first load).
            _until("every model warm", lambda: answered_since(0), 90)
            t0 = time.time()
            time.sleep(4)
            assert not _phase("steady", load, t0, time.time())

            # 2. A worker host cut off.
            t0 = time.time()
            hosts.isolate("zone-a")
            dropped = _until(
                "the snapshot without zone-a's workers",
                lambda: _members(c) == set(WORKERS["zone-b"]),
                30,
            )
            after = time.time()
            time.sleep(3)
            # Calls in flight to the cut-off workers are found out by the router's PINGs and retried
            # on the zone-b members: none is lost, before or after the snapshot drops them.
            until = _phase("worker host cut off (until the snapshot)", load, t0, after,
                           dropped=f"{dropped:.1f} s")  # fmt: skip
            assert not until
            assert not _phase("worker host cut off (after the snapshot)", load, after, time.time())
            hosts.restore("zone-a")
            back = _until(
                "zone-a's workers back in the snapshot",
                lambda: len(_members(c)) == 4,
                60,
            )
            say(f"[multihost] zone-a back in the snapshot after {back:.1f} s")

            # 3. One etcd member cut off: serving and registration go on.
            t0 = time.time()
            hosts.isolate("etcd3")
            # A model no traffic goes to yet: the load measures serving, this the registration.
            assert _register(control, admin, "late", "m", data2) == 1
            time.sleep(3)
            assert not _phase("etcd member cut off", load, t0, time.time())
            hosts.restore("etcd3")
            rejoined = _until(
                "etcd3 answering again",
                lambda: asyncio.run(c._etcd_ok(f"http://{c.ip['etcd3']}:2379")),
                30,
            )
            say(f"[multihost] etcd3 rejoined after {rejoined:.1f} s")

            # 4. The placement leader's host dies: the standby leads.
            leader = asyncio.run(c.leader())
            assert leader in ("place1", "place2"), leader
            standby = "place2" if leader == "place1" else "place1"
            before = asyncio.run(c.snapshot())
            assert before is not None
            t0 = time.time()
            hosts.kill(leader)
            took = _until("the standby leading", lambda: asyncio.run(c.leader()) == standby, 30)
            time.sleep(2)
            assert not _phase(f"placement leader ({leader}) killed", load, t0, time.time(),
                              standby_led=f"{took:.1f} s")  # fmt: skip
            standby_control = f"{c.ip[standby]}:8002"
            assert _register(standby_control, admin, "mh1", "m", data2) == 2  # acknowledged: kept
            registered = time.time()
            _until("mh1's new version warm", lambda: answered_since(registered), 60)

            # 5. The object store cut off: warm models answer, a cold one is UNAVAILABLE.
            t0 = time.time()
            hosts.isolate("s3")
            time.sleep(3)
            assert not _phase("object store cut off (warm models)", load, t0, time.time())
            answer = _call(router, "cold/m", keys["cold"], x[0])
            say(f"[multihost] cold model while the store is cut off: {answer}")
            assert answer == "UNAVAILABLE"
            hosts.restore("s3")
            recovered = _until(
                "the cold model after the store returns",
                lambda: _call(router, "cold/m", keys["cold"], x[0], quiet=True) == "OK",
                60,
            )
            say(f"[multihost] cold model answered {recovered:.1f} s after the store returned")

            # 6. Everything restored: steady, and no acknowledged registration lost.
            t0 = time.time()
            time.sleep(3)
            assert not _phase("restored", load, t0, time.time())
            with grpc.insecure_channel(standby_control) as ch:
                rec = cgrpc.ControlStub(ch).GetModel(
                    cpb.GetModelRequest(tenant="mh1", name="m"),
                    metadata=[("authorization", f"Bearer {admin}")],
                    timeout=10,
                )
            assert sorted(v.version for v in rec.versions) == [1, 2]
            late_key = c.key("late")
            late = _call(router, "late/m", late_key, x[0])
            assert late == "OK", late  # registered while an etcd member was cut off
        finally:
            stop.touch()


def _members(c: Cluster) -> set[str]:
    snap = asyncio.run(c.snapshot())
    return {m.worker_id for m in snap.members} if snap is not None else set()


def _call(router: str, model: str, key: str, row: np.ndarray, quiet: bool = False) -> str:
    import tritonclient.grpc as tc
    from tritonclient.utils import InferenceServerException

    client = tc.InferenceServerClient(router)
    x = np.asarray(row, np.float32).reshape(1, -1)
    inp = tc.InferInput("input__0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    try:
        client.infer(model, [inp], headers={"authorization": f"Bearer {key}"},
                     client_timeout=10)  # fmt: skip
        return "OK"
    except InferenceServerException as exc:
        if not quiet:
            say(f"[multihost] {model}: {exc.status()}: {exc.message()}")
        return str(exc.status()).removeprefix("StatusCode.")
    finally:
        client.close()
