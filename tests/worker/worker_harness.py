"""Worker test helpers: real worker processes, model registration, metrics scraping.

A ``WorkerProc`` is ``shoal worker`` in a child process (``ManagedProcess``), configured by
``SHOAL_*`` variables like production; its address comes from its ``worker: HOST:PORT`` banner
and its metrics address from the ``WorkerInfo`` it writes to etcd. Models are registered the
way the placement service stores them: the artifact put into the object store under its
content address, a ``ModelRecord`` JSON written to ``/shoal/models/<tenant>/<name>``.

Shared workers are module-scoped and use the session etcd directly (``etcd_server``), not the
``etcd_url`` fixture, whose per-test wipe would delete the worker's own key mid-module; each
module uses its own tenants and deletes ``/shoal/`` when it ends.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from shoal import oip
from shoal.artifacts import Signature, sha256_hex
from shoal.cluster import etcd_get
from shoal.etcd import EtcdStore
from shoal.frameworks import inspect_artifact
from shoal.objstore import ObjectStore, artifact_key
from shoal.pb import shoal_inference_pb2 as pb
from shoal.procs import ManagedProcess, wait_until
from shoal.records import ModelRecord, ModelVersion, WorkerInfo, model_key, worker_key
from shoal.settings import CommonSettings

ROOT = Path(__file__).resolve().parents[2]

Runner = Callable[[Coroutine[Any, Any, Any]], Any]


# --- registration ---------------------------------------------------------------------------


async def put_model(
    etcd: str,
    store_url: str,
    tenant: str,
    name: str,
    data: bytes,
    *,
    version: int = 1,
    aliases: Mapping[str, int] | None = None,
    stored: bytes | None = None,
    like: bytes | None = None,
    settings: CommonSettings | None = None,
) -> ModelVersion:
    """Register ``data`` as ``tenant/name`` version ``version`` (added to any existing record).

    ``stored``: bytes to put in the store instead of ``data`` (a checksum mismatch);
    ``like``: a valid artifact to take framework/format/signature from when ``data`` is not
    one (a corrupt artifact).
    """
    info = inspect_artifact(like if like is not None else data)
    sha = sha256_hex(data)
    store = ObjectStore(store_url, settings)
    key = artifact_key(sha)
    await store.put(key, stored if stored is not None else data)
    mv = ModelVersion(
        version=version,
        uri=key,
        framework=info.framework,
        format=info.format,
        pool="cpu",
        sha256=sha,
        size=len(data),
        signature=info.signature,
    )
    async with EtcdStore(etcd) as s:
        kv = await s.get(model_key(tenant, name))
        rec = ModelRecord.decode(kv.value) if kv else ModelRecord(tenant, name)
        versions = {**rec.versions, version: mv}
        new = ModelRecord(
            tenant,
            name,
            versions,
            {**rec.aliases, **(aliases if aliases is not None else {"stable": version})},
            next_version=max(versions) + 1,
        )
        await s.put(model_key(tenant, name), new.encode())
    return mv


async def wipe(etcd: str, prefix: str = "/shoal/") -> None:
    async with EtcdStore(etcd) as s:
        await s.delete(prefix, prefix=True)


# --- worker processes -----------------------------------------------------------------------


@dataclass
class WorkerProc:
    """``shoal worker`` in a child process."""

    etcd: str
    store_url: str
    data_dir: Path
    env: dict[str, str]
    worker_id: str = ""
    address: str = ""
    metrics: str = ""
    proc: ManagedProcess | None = None

    def start(self, timeout: float = 60.0) -> WorkerProc:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
        env.update(
            SHOAL_ETCD=self.etcd,
            SHOAL_STORE=self.store_url,
            SHOAL_DATA_DIR=str(self.data_dir),
            SHOAL_WORKER_ID=self.worker_id or f"w{os.getpid()}-{id(self) % 100000}",
            SHOAL_HOST_BUDGET="256MiB",
            SHOAL_DISK_BUDGET="256MiB",
            SHOAL_DEVICE="cpu",
        )
        env.update(self.env)
        self.worker_id = env["SHOAL_WORKER_ID"]
        self.pool = env.get("SHOAL_POOL", "cpu")
        self.proc = ManagedProcess(
            [sys.executable, "-m", "shoal.cli", "-v", "worker"],
            self.data_dir / "worker.log",
            env=env,
            cwd=ROOT,
        ).start()
        found: list[str] = []

        def banner() -> bool:
            assert self.proc is not None
            if not self.proc.alive():
                raise RuntimeError(f"worker exited:\n{self.proc.log_tail()}")
            for line in self.proc.log_path.read_text(errors="replace").splitlines():
                if line.startswith("worker: "):
                    found.append(line.split(": ", 1)[1].strip())
                    return True
            return False

        try:
            wait_until(banner, timeout, 0.05, "the worker's banner")
        except TimeoutError:
            raise TimeoutError(f"worker did not start:\n{self.proc.log_tail()}") from None
        self.address = found[0]
        info = self.info()
        assert info is not None, "worker printed its banner before registering"
        self.metrics = info.metrics_address
        return self

    @property
    def key(self) -> str:
        return worker_key(self.pool, self.worker_id)

    def info(self) -> WorkerInfo | None:
        raw = etcd_get(self.etcd, self.key)
        return WorkerInfo.decode(raw) if raw else None

    def stop(self) -> int | None:
        return self.proc.stop(15.0) if self.proc is not None else None

    def log_tail(self) -> str:
        return self.proc.log_tail(80) if self.proc is not None else ""

    def scrape(self) -> Metrics:
        with urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=5) as r:
            text = r.read().decode()
        values: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                values[(s.name, frozenset(s.labels.items()))] = s.value
        return Metrics(values)


@dataclass
class Metrics:
    values: dict[tuple[str, frozenset[tuple[str, str]]], float]

    def get(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.values.items() if n == name and want <= ls)


# --- client helpers -------------------------------------------------------------------------


def infer_request(
    model: str,
    x: np.ndarray,
    version: str = "",
    name: str = "input__0",
    datatype: str = "FP32",
    typed: bool = False,
) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=model, model_version=version)
    t = req.inputs.add(name=name, datatype=datatype, shape=list(x.shape))
    if typed:
        field = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT32": "int_contents"}
        getattr(t.contents, field[datatype]).extend(x.ravel().tolist())
    else:
        req.raw_input_contents.append(np.ascontiguousarray(x).tobytes())
    return req


def output_array(resp: pb.ModelInferResponse, i: int = 0) -> np.ndarray:
    from shoal.artifacts import DTYPES

    out = resp.outputs[i]
    return np.frombuffer(resp.raw_output_contents[i], DTYPES[out.datatype]).reshape(
        tuple(out.shape)
    )


class Client:
    """An inference-protocol client on one grpc.aio channel (use ``async with``)."""

    def __init__(self, address: str) -> None:
        self.address = address

    async def __aenter__(self) -> Client:
        self.channel = grpc.aio.insecure_channel(self.address)
        self.stub = oip.InferenceStub(self.channel)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.channel.close()

    async def infer(self, model: str, x: np.ndarray, version: str = "", **kw: Any) -> np.ndarray:
        resp = await self.stub.ModelInfer(infer_request(model, x, version, **kw), timeout=60)
        return output_array(resp)

    async def ready(self, model: str, version: str = "") -> bool:
        resp = await self.stub.ModelReady(pb.ModelReadyRequest(name=model, version=version))
        return bool(resp.ready)


def signature_of(data: bytes) -> Signature:
    return inspect_artifact(data).signature
