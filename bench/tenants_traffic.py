"""``bench_tenants``'s traffic and measurements: the workers' counters (scraped from their
Prometheus endpoints), each model's primary worker (the router's own code on the live
snapshot), the request phases through the router, and the exact hit/miss classification of
requests sent one at a time."""

from __future__ import annotations

import asyncio
import math
import re
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from bench.config import wait_for
from bench.shoal_harness import ShoalBench
from bench.tenants_setup import FEATURES
from bench.wire import INFER_PATH, infer_request
from capacity.inputs import Fleet
from shoal.artifacts import TREE_INPUT
from shoal.records import Member
from shoal.shard import Placement, Pool, member_order

# --- metrics --------------------------------------------------------------------------------

_HITS = re.compile(r'^shoal_worker_cache_hits_total\{tier="(?:host|gpu)"\} (\S+)$', re.M)
_MISSES = re.compile(r'^shoal_worker_cache_misses_total\{tier="memory"\} (\S+)$', re.M)
_DISK_HITS = re.compile(r'^shoal_worker_cache_hits_total\{tier="disk"\} (\S+)$', re.M)
_LOAD_BUCKET = re.compile(
    r'^shoal_worker_load_seconds_bucket\{framework="[^"]*",le="([^"]+)"\} (\S+)$', re.M
)


@dataclass(frozen=True)
class Counters:
    """One scrape of one worker (or a sum): cache counters and the load-time histogram."""

    hits: float
    misses: float
    disk_hits: float
    load_buckets: dict[float, float]  # upper bound (s) -> cumulative count, all frameworks

    def __add__(self, o: Counters) -> Counters:
        b = {
            le: self.load_buckets.get(le, 0.0) + o.load_buckets.get(le, 0.0)
            for le in {*self.load_buckets, *o.load_buckets}
        }
        return Counters(self.hits + o.hits, self.misses + o.misses, self.disk_hits + o.disk_hits, b)

    def __sub__(self, o: Counters) -> Counters:
        b = {le: v - o.load_buckets.get(le, 0.0) for le, v in self.load_buckets.items()}
        return Counters(self.hits - o.hits, self.misses - o.misses, self.disk_hits - o.disk_hits, b)


def _sum(pattern: re.Pattern[str], text: str) -> float:
    return sum(float(v) for v in pattern.findall(text))


def scrape_text(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as r:
        text: str = r.read().decode()
    return text


def scrape(address: str) -> Counters:
    text = scrape_text(address)
    buckets: dict[float, float] = {}
    for le, v in _LOAD_BUCKET.findall(text):
        bound = math.inf if le == "+Inf" else float(le)
        buckets[bound] = buckets.get(bound, 0.0) + float(v)
    return Counters(_sum(_HITS, text), _sum(_MISSES, text), _sum(_DISK_HITS, text), buckets)


def scrape_all(addresses: Sequence[str]) -> Counters:
    total = Counters(0.0, 0.0, 0.0, {})
    for a in addresses:
        total = total + scrape(a)
    return total


def histogram_quantile(q: float, buckets: dict[float, float]) -> float:
    """Prometheus' ``histogram_quantile``: linear within the bucket holding the quantile
    (the lowest bucket starts at 0; a quantile in the +Inf bucket returns the last bound)."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return math.nan
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for b in bounds:
        c = buckets[b]
        if c >= rank:
            if math.isinf(b):
                return lower
            return lower + (b - lower) * ((rank - below) / (c - below) if c > below else 0.0)
        lower, below = b, c
    return lower


class Primaries:
    """The worker the router sends each model to: its own code on the live snapshot."""

    def __init__(self, pool: Pool, fleet: Fleet) -> None:
        self.pool = pool
        self.placement = Placement(pool)
        self.index = {m.worker_id: i for i, m in enumerate(pool.members)}
        self.fleet = fleet

    def __call__(self, m: int) -> Member:
        """The member the gateway's policy tries first (idle, every member healthy)."""
        f = self.fleet
        tenant = f.tenants[int(f.model_tenant[m])]
        ranked, k = self.placement.ranked(tenant)
        key = f"{tenant}/{f.model_names[m]}:{int(f.versions[m])}"
        n = len(self.pool.members)
        order = member_order([self.index[w.worker_id] for w in ranked], k, key, 8, [0] * n,
                             [False] * n)  # fmt: skip
        return self.pool.members[order[0]]


class StatsSampler:
    """Samples every worker's ``WorkerAdmin/Stats`` (host bytes, models resident) in a thread
    until stopped: the bytes per resident model the workers account while serving."""

    def __init__(self, sb: ShoalBench, workers: int, interval_s: float = 0.5) -> None:
        self.sb = sb
        self.workers = workers
        self.interval_s = interval_s
        self.samples: list[tuple[int, int]] = []  # (host bytes, models resident), summed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            stats = [self.sb.worker_stats(i) for i in range(self.workers)]
            self.samples.append(
                (sum(s.host_bytes for s in stats), sum(s.models_resident for s in stats))
            )

    def __enter__(self) -> StatsSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def bytes_per_model(self) -> float:
        b = sum(x for x, _ in self.samples)
        m = sum(y for _, y in self.samples)
        return b / m if m else math.nan


# --- traffic ---------------------------------------------------------------------------------


class Bodies:
    """Pre-encoded 1-row ModelInferRequest per model, built on first use."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.row = np.full((1, FEATURES), 0.5, np.float32)
        self._cache: dict[int, bytes] = {}

    def __call__(self, m: int) -> bytes:
        body = self._cache.get(m)
        if body is None:
            f = self.fleet
            name = f"{f.tenants[int(f.model_tenant[m])]}/{f.model_names[m]}"
            body = self._cache[m] = infer_request(name, self.row, TREE_INPUT)
        return body


@dataclass
class Phase:
    name: str
    requests: int
    concurrency: int
    wall_s: float
    errors: int
    latencies_ms: np.ndarray

    def summary(self) -> dict[str, Any]:
        lat = self.latencies_ms
        pct = np.percentile(lat, [50, 99]).tolist() if lat.size else [math.nan, math.nan]
        return {
            "name": self.name,
            "requests": self.requests,
            "concurrency": self.concurrency,
            "wall_s": self.wall_s,
            "req_per_s": self.requests / max(self.wall_s, 1e-9),
            "errors": self.errors,
            "p50_ms": pct[0],
            "p99_ms": pct[1],
        }


async def _drive(address: str, bodies: list[bytes], concurrency: int) -> tuple[list[float], int]:
    lat: list[float] = []
    errors = 0
    it = iter(bodies)
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(INFER_PATH)

        async def caller() -> None:
            nonlocal errors
            for body in it:  # the shared iterator keeps the stream order across callers
                s = time.perf_counter()
                try:
                    await call(body, timeout=60.0)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                lat.append((time.perf_counter() - s) * 1000.0)

        await asyncio.gather(*(caller() for _ in range(concurrency)))
    return lat, errors


def run_phase(
    name: str, address: str, bodies: Bodies, requests: np.ndarray, concurrency: int
) -> Phase:
    encoded = [bodies(int(m)) for m in requests]
    t0 = time.perf_counter()
    lat, errors = asyncio.run(_drive(address, encoded, concurrency))
    wall = time.perf_counter() - t0
    phase = Phase(name, len(encoded), concurrency, wall, errors, np.asarray(lat))
    s = phase.summary()
    print(
        f"  {name}: {s['requests']} requests at c={concurrency} in {wall:.1f} s "
        f"({s['req_per_s']:.0f} req/s), errors {errors}",
        flush=True,
    )
    return phase


@dataclass
class Classified:
    hit_ms: list[float]
    miss_ms: list[float]
    unclassified: int
    errors: int
    wall_s: float


def run_classified(
    address: str,
    bodies: Bodies,
    requests: np.ndarray,
    primaries: Primaries,
    metrics: dict[str, str],
) -> Classified:
    """One request at a time; the primary's counters before and after classify each one."""
    out = Classified([], [], 0, 0, 0.0)
    last: dict[str, tuple[float, float]] = {}
    t0 = time.perf_counter()
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(INFER_PATH)
        for m in requests.tolist():
            wid = primaries(m).worker_id
            addr = metrics[wid]
            if wid not in last:
                text = scrape_text(addr)
                last[wid] = (_sum(_HITS, text), _sum(_MISSES, text))
            body = bodies(m)
            s = time.perf_counter()
            try:
                call(body, timeout=60.0)
                ms = (time.perf_counter() - s) * 1000.0
            except grpc.RpcError:
                out.errors += 1
                ms = math.nan
            text = scrape_text(addr)
            now = (_sum(_HITS, text), _sum(_MISSES, text))
            dh, dm = now[0] - last[wid][0], now[1] - last[wid][1]
            last[wid] = now
            if math.isnan(ms):
                continue
            if (dh, dm) == (1.0, 0.0):
                out.hit_ms.append(ms)
            elif (dh, dm) == (0.0, 1.0):
                out.miss_ms.append(ms)
            else:
                out.unclassified += 1
    out.wall_s = time.perf_counter() - t0
    return out


def probe_workers(
    sb: ShoalBench, bodies: Bodies, primaries: Primaries, metrics: dict[str, str], n: int
) -> list[int]:
    """One request per worker, to the least popular tenants it is primary for, retried until
    the router reaches that worker (its request counters move): the restarted workers are
    then in the router's view and not ejected."""
    used: list[int] = []
    for wid, addr in metrics.items():
        m = next(i for i in range(n - 1, -1, -1) if primaries(i).worker_id == wid)

        def reached(m: int = m, addr: str = addr, wid: str = wid) -> None:
            before = scrape(addr)
            with grpc.insecure_channel(sb.router_address) as channel:
                channel.unary_unary(INFER_PATH)(bodies(m), timeout=30.0)
            after = scrape(addr)
            if after.hits + after.misses <= before.hits + before.misses:
                raise RuntimeError(f"the router did not send tenant model {m} to {wid}")

        wait_for(f"the router reaching {wid}", reached, timeout=60.0, interval=0.5)
        used.append(m)
    return used
