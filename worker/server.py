"""The worker process: wiring and lifecycle (``start()`` / ``stop()``, nothing in __init__).

Start: resolve device and budgets, open etcd and the object store, rebuild the disk tier's
index, start the model watch, start the native front (``shoal._native.WorkerFront``: the
inference protocol, grpc.health.v1, and WorkerAdmin handed to Python; ``worker.front``) and
the metrics HTTP port, then register in etcd. The runner (``shoal.runner.Runner``) prints
``banner()``, ``worker: HOST:PORT`` first, once all of that is done, so a parent process can
read the address from the first line of stdout.

Stop (SIGTERM/SIGINT), uvicorn-style: mark the record ``draining``, revoke the lease (the key
disappears at once; routers stop choosing this worker), stop accepting RPCs and give in-flight
ones the grace period (``drain_grace_s``) to finish (then they are cancelled), and close
everything. Exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client import start_http_server

from shoal import _native
from shoal.device import cuda_devices, resolve_device
from shoal.etcd import EtcdStore
from shoal.frameworks import Model
from shoal.objstore import ObjectStore
from shoal.records import ModelVersion, WorkerInfo, check_ident, worker_key
from worker.batching import Batcher
from worker.cache import CacheEvent, Tier, TieredCache
from worker.calls import RuntimeCalls
from worker.catalog import Catalog
from worker.dataplane import Dataplane
from worker.diskcache import DiskCache
from worker.faults import Faults
from worker.front import FrontBridge
from worker.inline import InlinePolicy
from worker.limits import ModelLimiter
from worker.loader import Loader
from worker.metrics import WorkerMetrics
from worker.predictor import Predictor
from worker.quarantine import FailureMemory
from worker.registration import Registration
from worker.settings import WorkerSettings, host_memory_bytes, resolve_budget
from worker.types import ModelId, Stats
from worker.warmth import WarmKeeper

log = logging.getLogger(__name__)


def _demote(_key: Any, model: Any) -> tuple[Any, int] | None:
    """GPU -> host: the same model rebuilt for the CPU (None: it cannot move, drop it)."""
    try:
        host = model.to_host()
    except Exception:
        log.exception("demoting a model to host memory failed; dropping it")
        return None
    return (host, host.nbytes) if host is not None else None


class WorkerServer:
    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.metrics = WorkerMetrics()
        self.address = ""
        self.metrics_address = ""
        self.worker_id = ""
        self.device = "cpu"
        self.started_at = 0.0
        self.draining = False
        self.budgets: dict[str, int] = {}
        self._front: FrontBridge | None = None
        self._http: Any = None
        self._etcd: EtcdStore | None = None
        self._catalog: Catalog | None = None
        self._loader: Loader | None = None
        self._registration: Registration | None = None
        self._predict_pool: ThreadPoolExecutor | None = None
        self._load_pool: ThreadPoolExecutor | None = None
        self._calls: tuple[RuntimeCalls, ...] = ()
        self._rate_mark = (0.0, 0)
        self._digests: dict[ModelId, str] = {}
        self._disk: DiskCache | None = None
        self._warmth: WarmKeeper | None = None

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        check_ident("pool", s.pool)
        self.device = resolve_device(s.device)
        self.budgets = self._budgets()
        self.started_at = time.time()

        self._etcd = await EtcdStore.of(s).connect()
        store = ObjectStore(s.store_url(), s)
        disk = DiskCache(s.data_dir / "cache" / "sha256", self.budgets["disk"])
        await asyncio.to_thread(disk.scan)
        self._disk = disk
        # Artifact digest of each model in memory, so an eviction from host can tell whether
        # the model stays on the disk tier (a demotion) or leaves the machine (an eviction).
        digests = self._digests
        cache: TieredCache[ModelId, Model] = TieredCache(
            {Tier.GPU: self.budgets["gpu"], Tier.HOST: self.budgets["host"]},
            policy=s.cache_policy,
            demote=_demote,
            on_disk=lambda mid: digests.get(mid, "") in disk,
            listener=self._cache_event,
        )
        m = self.metrics
        for tier in (Tier.GPU, Tier.HOST):
            m.watch_tier(
                tier.value,
                lambda t=tier: cache.resident_bytes(t),  # type: ignore[misc]
                lambda t=tier: cache.count(t),  # type: ignore[misc]
                self.budgets[tier.value],
            )
        m.watch_tier("disk", lambda: disk.used, lambda: len(disk), self.budgets["disk"])

        faults = Faults.parse(s.fault_inject)
        if faults:
            log.warning("FAULT INJECTION ON (tests and chaos drills only): %s", s.fault_inject)
        # Each pool has ``stuck_headroom`` threads beyond what its gate lets run at once: a
        # call abandoned as stuck keeps its thread (it cannot be killed) and a spare one
        # takes its place, so a hung model does not starve the others (worker/calls.py).
        threads = s.threads()
        self._predict_pool = ThreadPoolExecutor(
            threads + s.stuck_headroom, thread_name_prefix="shoal-predict"
        )
        self._load_pool = ThreadPoolExecutor(1 + s.stuck_headroom, thread_name_prefix="shoal-load")
        predict_calls = RuntimeCalls("predict", self._predict_pool, threads, s.predict_timeout_s, m)
        load_calls = RuntimeCalls("load", self._load_pool, 1, s.load_timeout_s, m)
        self._calls = (predict_calls, load_calls)
        self._catalog = Catalog(self._etcd, s.record_cache_size, listener=self._record)
        await self._catalog.start()
        loader = Loader(
            cache,
            disk,
            store,
            self.device,
            load_calls,
            m,
            FailureMemory(s.load_backoff_s, s.load_backoff_max_s, stuck=load_calls.stuck),
            digests,
            faults,
            fetch_timeout_s=s.fetch_timeout_s,
        )
        predictor = Predictor(
            predict_calls,
            ModelLimiter(s.model_concurrency(), s.model_max_queue, s.model_queue_wait_s),
            FailureMemory(
                s.quarantine_s,
                s.quarantine_max_s,
                threshold=s.quarantine_after,
                stuck=lambda mid: predict_calls.stuck(mid) + self._front_stuck(mid),
            ),
            m,
            InlinePolicy(s.inline_max_us / 1e6, s.inline_max_bytes)
            if s.inline_max_us > 0
            else None,
            faults,
        )
        batcher = (
            Batcher(
                predictor.run_batch,
                s.max_batch_rows,
                s.max_delay_us / 1e6,
                when_idle=s.batch_when_idle,
                on_expired=m.child(m.expired, "batch").inc,
            )
            if s.batching_enabled(self.device)
            else None
        )
        self._loader = loader
        self.dataplane = dp = Dataplane(
            self._catalog,
            cache,
            loader,
            predictor,
            m,
            s.max_request_rows,
            batcher,
            on_resident=self._resident,
            before_load=self._touch,
        )

        front = _native.WorkerFront(
            host=s.host,
            port=s.port,
            predict_threads=threads,
            stuck_headroom=s.stuck_headroom,
            predict_timeout_s=s.predict_timeout_s,
            # Larger requests get RESOURCE_EXHAUSTED before they are decoded.
            max_message_bytes=s.max_request_bytes,
            max_rows=s.max_request_rows,
            batching=s.batching_enabled(self.device),
            max_batch_rows=s.max_batch_rows,
            max_delay_s=s.max_delay_us / 1e6,
            batch_when_idle=s.batch_when_idle,
            inline_max_s=s.inline_max_us / 1e6,
            inline_max_bytes=s.inline_max_bytes,
            model_concurrency=s.model_concurrency(),
            model_max_queue=s.model_max_queue,
            model_queue_wait_s=s.model_queue_wait_s,
            tls_cert=s.tls_cert,
            tls_key=s.tls_key,
            tls_ca=s.tls_ca,
            tls_client_auth=s.tls_client_auth,
        )
        self._front = FrontBridge(front, dp, m, self.stats)
        # Stuck prediction calls: Python's threads and the front's.
        m.stuck_calls.labels("predict").set_function(
            lambda: predict_calls.stuck_total + front.stats()["stuck"]
        )
        self._front.start()
        port = front.start()  # OSError when the address cannot be bound
        self.address = s.advertise_address or f"{s.host}:{port}"
        self.worker_id = s.resolve_worker_id(port)
        check_ident("worker id", self.worker_id)

        if s.metrics_port >= 0:
            self._http, _thread = start_http_server(s.metrics_port, s.host, m.registry)
            self.metrics_address = f"{s.host}:{self._http.server_port}"

        self._warmth = WarmKeeper(
            self._etcd,
            s.pool,
            self.worker_id,
            dp,
            m,
            self.budgets["host"],
            hot_list_size=s.hot_list_size,
            hot_list_s=s.hot_list_s,
            handoff_wait_s=s.handoff_wait_s,
            max_pinned_fraction=s.max_pinned_fraction,
            saved=s.data_dir / "hot.json",
        )
        await self._warmth.prepare()  # a pool to join: registered not ready until warm
        self._registration = Registration(
            self._etcd, worker_key(s.pool, self.worker_id), self.info, s.lease_ttl
        )
        await self._registration.start()
        self._warmth.start(self._registration)
        front.set_ready(True)
        log.info(
            "worker %s (%s, pool %s) serving on %s, metrics on %s",
            self.worker_id,
            self.device,
            s.pool,
            self.address,
            self.metrics_address or "-",
        )

    def banner(self) -> list[str]:
        metrics = [f"metrics: {self.metrics_address}"] if self.metrics_address else []
        return [f"worker: {self.address}", *metrics]

    async def stop(self, grace: float | None = None) -> None:
        """Drain (in-flight RPCs get ``grace`` seconds, default ``drain_grace_s``) and shut
        down; safe to call once after ``start`` (or a failed start)."""
        t0 = time.monotonic()
        if self._warmth is not None and self._registration is not None and not self.draining:
            # Keep serving while the members taking over preload this worker's hot models.
            await self._warmth.leave()
            log.info("handed over in %.3fs", time.monotonic() - t0)
        self.draining = True
        if self._front is not None:
            self._front.front.set_ready(False)
        if self._registration is not None:
            await self._registration.publish()
            await self._registration.stop()
            log.info("deregistered in %.3fs", time.monotonic() - t0)
        if self._front is not None:
            await self._front.stop(self.settings.drain_grace_s if grace is None else grace)
            log.info("drained in %.3fs", time.monotonic() - t0)
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._warmth is not None:
            await self._warmth.stop()
        if self._catalog is not None:
            await self._catalog.stop()
        if self._loader is not None:
            await self._loader.close()  # disk-tier copies under way
        for pool in (self._predict_pool, self._load_pool):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        if self.stuck_calls:
            log.error(
                "%d runtime calls are still stuck; their threads cannot be joined (the process "
                "exits without them)",
                self.stuck_calls,
            )
        if self._etcd is not None:
            await self._etcd.close()
        log.info("stopped in %.3fs", time.monotonic() - t0)

    # --- views ----------------------------------------------------------------------------

    @property
    def stuck_calls(self) -> int:
        """Abandoned runtime calls whose threads have not returned (Python's and the
        native front's)."""
        front = self._front.front.stats()["stuck"] if self._front is not None else 0
        return sum(c.stuck_total for c in self._calls) + int(front)

    def _front_stuck(self, mid: ModelId) -> int:
        return self._front.front.stuck(str(mid)) if self._front is not None else 0

    @property
    def ready(self) -> bool:
        return self._registration is not None and not self.draining

    def info(self) -> WorkerInfo:
        w = self._warmth
        return WorkerInfo(
            worker_id=self.worker_id,
            pool=self.settings.pool,
            address=self.address,
            zone=self.settings.zone,
            device=self.device,
            host_budget=self.budgets["host"],
            gpu_budget=self.budgets["gpu"],
            disk_budget=self.budgets["disk"],
            started_at=self.started_at,
            ready=not self.draining and not (w is not None and w.warming),
            draining=self.draining,
            metrics_address=self.metrics_address,
            leaving=w is not None and w.leaving,
            warmed=w.warmed if w is not None else 0,
        )

    def stats(self) -> Stats:
        cache = self.dataplane.cache
        now = time.monotonic()
        front = self._front.front.stats() if self._front is not None else {}
        total = front.get("total", 0)
        mark_t, mark_n = self._rate_mark
        rate = (total - mark_n) / (now - mark_t) if mark_t and now > mark_t else 0.0
        if not mark_t or now - mark_t > 10.0:
            self._rate_mark = (now, total)
        disk_used = self._disk.used if self._disk is not None else 0
        return Stats(
            worker_id=self.worker_id,
            pool=self.settings.pool,
            address=self.address,
            zone=self.settings.zone,
            device=self.device,
            ready=self.ready,
            draining=self.draining,
            started_at=self.started_at,
            budgets=dict(self.budgets),
            resident_bytes={
                "gpu": cache.resident_bytes(Tier.GPU),
                "host": cache.resident_bytes(Tier.HOST),
                "disk": disk_used,
            },
            models_resident=len(cache),
            requests_per_s=rate,
            in_flight=front.get("in_flight", 0),
            metrics_address=self.metrics_address,
        )

    # --- internals ------------------------------------------------------------------------

    def _budgets(self) -> dict[str, int]:
        s = self.settings
        gpu_total = cuda_devices().total_memory if self.device == "cuda" else 0
        s.data_dir.mkdir(parents=True, exist_ok=True)
        disk_total = shutil.disk_usage(s.data_dir).total
        return {
            "host": resolve_budget(s.host_budget, host_memory_bytes(), "host"),
            "gpu": resolve_budget(s.gpu_budget, gpu_total, "gpu") if gpu_total else 0,
            "disk": resolve_budget(s.disk_budget, disk_total, "disk"),
        }

    def _resident(self, mid: ModelId, mv: ModelVersion, model: Model) -> None:
        if self._front is not None:
            self._front.resident(mid, mv, model)

    def _record(self, key: tuple[str, str] | None, value: bytes | None) -> None:
        if self._front is not None:
            self._front.record(key, value)

    def _touch(self) -> None:
        if self._front is not None:
            self._front.touch()

    def _cache_event(self, ev: CacheEvent) -> None:
        if self._front is not None:  # the front serves host-memory versions only
            self._front.gone(ev.key)
        m = self.metrics
        if ev.kind == "demote" and ev.dst is not None:
            m.child(m.demotions, ev.src.value, ev.dst.value).inc()
        else:
            m.child(m.evictions, ev.src.value).inc()
        if ev.dst is not Tier.GPU and ev.dst is not Tier.HOST:
            self._digests.pop(ev.key, None)
