"""``bench_cache``'s live side: the models, the workers' restarts, the request stream sent one
at a time with the workers' counters scraped between blocks, and the rolling restart.

Every request is sent alone (one in flight, through the router), so the order the workers see
is the order of the stream, which is what the simulator replays; a scrape between two requests
therefore attributes every hit and miss to the block of requests it falls in, exactly.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import shutil
import signal
import threading
import time
import urllib.error
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from bench.bench_register import tiny_models, variant
from bench.common import figure
from bench.shoal_harness import ShoalBench
from bench.tenants_traffic import Bodies, Counters, scrape
from bench.wire import INFER_PATH, infer_request
from capacity.inputs import Fleet
from shoal import modelgen
from shoal.procs import wait_until

FEATURES = 8  # the tiny models' input width (bench_register.tiny_models)
ONNX_INPUT = "input"  # shoal.modelgen.train_onnx_mlp's input name


def artifacts(framework: str, n: int) -> list[bytes]:
    """``n`` distinct valid artifacts of one framework, all of the same length (so the cache
    charges each the same bytes: the median bytes-per-artifact-byte ratio times the length).

    xgboost: ``bench_register``'s tiny booster with a distinct ``base_score`` (fixed-width
    text); onnx: a tiny MLP (8-8-1) whose ``doc_string`` carries a fixed-width ordinal.
    """
    if framework == "xgboost":
        base = tiny_models()["xgboost"]
        out = [variant(base, "xgboost", i, n) for i in range(n)]
    elif framework == "onnx":
        import onnx

        x, y = modelgen.dataset(n_rows=200, n_features=FEATURES, seed=7)
        model = onnx.load_from_string(modelgen.train_onnx_mlp(x, y, hidden=8, epochs=20))
        out = []
        for i in range(n):
            model.doc_string = f"shoal bench_cache model {i:07d}"
            out.append(bytes(model.SerializeToString()))
    else:
        raise ValueError(f"BENCH_CACHE_FRAMEWORK {framework!r}: expected xgboost or onnx")
    if len({len(a) for a in out}) != 1 or len(set(out)) != n:
        raise RuntimeError("expected distinct artifacts of one length")
    return out


class ModelBodies(Bodies):
    """Pre-encoded 1-row ModelInferRequest per model, for the framework's input name."""

    def __init__(self, fleet: Fleet, input_name: str) -> None:
        super().__init__(fleet)
        self.input_name = input_name

    def __call__(self, m: int) -> bytes:
        body = self._cache.get(m)
        if body is None:
            f = self.fleet
            name = f"{f.tenants[int(f.model_tenant[m])]}/{f.model_names[m]}"
            body = self._cache[m] = infer_request(name, self.row, self.input_name)
        return body


def restart_workers(sb: ShoalBench, env: Mapping[str, str], empty: bool = True) -> dict[str, str]:
    """Stop every worker (SIGTERM by PID), empty its data folder when ``empty``, start it again
    with ``env`` added to its environment; wait until the snapshot holds them all. Returns
    worker id -> metrics address."""
    c = sb.c
    ids = [w.extra["worker_id"] for w in c.workers]
    for w in c.workers:
        w.proc.stop(10)
        if empty:
            shutil.rmtree(c.data_dir / "workers" / w.extra["worker_id"], ignore_errors=True)
    c.worker_env.update(env)
    for wid in ids:
        c.add_worker(wait_in_snapshot=False, worker_id=wid)
    c.wait_snapshot(set(ids))
    return metrics_addresses(sb)


def metrics_addresses(sb: ShoalBench) -> dict[str, str]:
    out = {}
    for i in range(len(sb.c.workers)):
        s = sb.worker_stats(i)
        out[s.worker_id] = s.metrics_address
    return out


# --- the stream, one request at a time ------------------------------------------------------


@dataclass
class Block:
    """Requests ``[start, end)`` of a stream and what the workers counted while they ran."""

    start: int
    end: int
    hits: float
    misses: float


@dataclass
class Sequential:
    """A stream sent one request at a time, scraped at ``boundaries``."""

    blocks: list[Block]
    errors: int
    wall_s: float
    bytes_per_model: list[float] = field(default_factory=list)  # host bytes / models resident


def _call(call: Any, body: bytes, errors: list[int], deadline_s: float = 60.0) -> None:
    """One request; an error (a worker not yet in the router's view) is retried, the same
    request, until ``deadline_s``."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            call(body, timeout=30.0)
            return
        except grpc.RpcError:
            errors[0] += 1
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def send_sequential(
    sb: ShoalBench,
    bodies: Callable[[int], bytes],
    requests: Sequence[int],
    boundaries: Sequence[int],
    metrics: Mapping[str, str],
    sample_from: int,
) -> Sequential:
    """Send ``requests`` in order, one in flight; scrape every worker's counters at each of
    ``boundaries`` (indices into ``requests``, 0 and the end included) and, from
    ``sample_from`` on, the bytes per resident model each worker's host tier accounts."""
    cuts = sorted({0, len(requests), *boundaries})
    addresses = list(metrics.values())
    errors = [0]
    blocks: list[Block] = []
    per_model: list[float] = []
    last = _sum_scrapes(addresses)
    t0 = time.perf_counter()
    with grpc.insecure_channel(sb.router_address) as channel:
        call = channel.unary_unary(INFER_PATH)
        for a, b in itertools.pairwise(cuts):
            for m in requests[a:b]:
                _call(call, bodies(int(m)), errors)
            now = _sum_scrapes(addresses)
            blocks.append(Block(a, b, now.hits - last.hits, now.misses - last.misses))
            last = now
            if b > sample_from:
                stats = [sb.worker_stats(i) for i in range(len(sb.c.workers))]
                resident = sum(s.models_resident for s in stats)
                if resident:
                    per_model.append(sum(s.host_bytes for s in stats) / resident)
    return Sequential(blocks, errors[0], time.perf_counter() - t0, per_model)


def _sum_scrapes(addresses: Sequence[str]) -> Counters:
    total = Counters(0.0, 0.0, 0.0, {})
    for a in addresses:
        total = total + scrape(a)
    return total


# --- the rolling restart --------------------------------------------------------------------


class Driver(threading.Thread):
    """Sends ``requests`` through the router in a loop, one in flight; ``done`` counts the
    answered ones (a failed request is retried, the same one)."""

    def __init__(self, address: str, bodies: Callable[[int], bytes], requests: np.ndarray):
        super().__init__(daemon=True)
        self.address = address
        self.bodies = bodies
        self.requests = requests.tolist()
        self.done = 0
        self.errors = [0]
        self.failure: BaseException | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        try:
            with grpc.insecure_channel(self.address) as channel:
                call = channel.unary_unary(INFER_PATH)
                n = len(self.requests)
                while not self.halt.is_set():
                    _call(call, self.bodies(self.requests[self.done % n]), self.errors)
                    self.done += 1
        except BaseException as exc:  # reported by wait_done
            self.failure = exc

    def wait_done(self, n: int, timeout: float = 600.0) -> int:
        deadline = time.monotonic() + timeout
        while self.done < n:
            if self.failure is not None:
                raise RuntimeError(f"traffic failed: {self.failure}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.done} of {n} requests answered")
            time.sleep(0.01)
        return self.done


@dataclass
class RestartWindow:
    steady_requests: int
    steady_hits: float
    steady_misses: float
    window_requests: int
    window_hits: float
    window_misses: float
    restart_s: list[float]  # SIGTERM to back in the snapshot, per worker
    errors: int
    #: (what, requests answered, misses counted) at each SIGTERM, exit, back, and the end:
    #: where in the window the misses fall (a worker away, or the one back warming up).
    marks: list[tuple[str, int, float]] = field(default_factory=list)


def _listed(sb: ShoalBench, worker_id: str, address: str) -> bool:
    snap = sb.c.snapshot()
    return snap is not None and any(
        m.worker_id == worker_id and m.address == address for m in snap.members
    )


def rolling_restart(
    sb: ShoalBench, bodies: Callable[[int], bytes], stream: np.ndarray, warm: int, steady: int,
    tail: int,
) -> RestartWindow:  # fmt: skip
    """Zipf traffic through the router; after ``warm`` requests, ``steady`` requests measure
    the steady state; then every worker in turn gets SIGTERM, is waited for, and is started
    again with the same id and data folder until it is back in the snapshot; ``tail`` more
    requests after the last one let the restarted caches warm. Cache counters are summed per
    process: an old process from the window's start to its last scrape (it is scraped until
    it exits, so its drain is counted), a new one from zero."""
    c = sb.c
    driver = Driver(sb.router_address, bodies, stream)
    driver.start()
    try:
        driver.wait_done(warm)
        metrics = metrics_addresses(sb)
        s0, n0 = _sum_scrapes(list(metrics.values())), driver.done
        driver.wait_done(n0 + steady)
        at_start = {wid: scrape(a) for wid, a in metrics.items()}
        n1 = driver.done
        s1 = Counters(0.0, 0.0, 0.0, {})
        for v in at_start.values():
            s1 = s1 + v
        window = Counters(0.0, 0.0, 0.0, {})
        took = []
        live = {wid: (a, at_start[wid]) for wid, a in metrics.items()}  # base per process
        marks: list[tuple[str, int, float]] = []

        def mark(what: str) -> None:
            total = window.misses
            for a, base in live.values():
                with contextlib.suppress(OSError, urllib.error.URLError):
                    total += (scrape(a) - base).misses
            marks.append((what, driver.done, total))

        for wid in [w.extra["worker_id"] for w in c.workers]:
            role = next(w for w in c.workers if w.extra["worker_id"] == wid)
            last = scrape(metrics[wid])
            t0 = time.perf_counter()
            mark(f"{wid} SIGTERM")
            role.proc.signal(signal.SIGTERM)  # drain, then exit
            while role.proc.alive():
                with contextlib.suppress(OSError, urllib.error.URLError):
                    last = scrape(metrics[wid])
                time.sleep(0.05)
            role.proc.stop(1)  # reaps the process group
            window = window + (last - at_start[wid])
            del live[wid]
            mark(f"{wid} exited")
            new = c.add_worker(worker_id=wid, wait_in_snapshot=False)
            # Back means the published snapshot names it at its new address (the old member
            # may still be listed while its lease runs out).
            listed = functools.partial(_listed, sb, wid, new.address)
            wait_until(listed, 60.0, 0.05, f"{wid} at {new.address} in the snapshot")
            took.append(time.perf_counter() - t0)
            live[wid] = (metrics_addresses(sb)[wid], Counters(0.0, 0.0, 0.0, {}))
            mark(f"{wid} back")
        n_back = driver.done
        driver.wait_done(n_back + tail)
        metrics = metrics_addresses(sb)
        for a in metrics.values():
            window = window + scrape(a)
        n2 = driver.done
        marks.append(("end", n2, window.misses))
    finally:
        driver.halt.set()
        driver.join(60)
    return RestartWindow(
        steady_requests=n1 - n0,
        steady_hits=s1.hits - s0.hits,
        steady_misses=s1.misses - s0.misses,
        window_requests=n2 - n1,
        window_hits=window.hits,
        window_misses=window.misses,
        restart_s=took,
        errors=driver.errors[0],
        marks=marks,
    )


# --- figures ---------------------------------------------------------------------------------


def restart_figures(w: Any) -> list[dict[str, Any]]:
    steady_rate = w.steady_misses / max(w.steady_requests, 1)
    extra = w.window_misses - steady_rate * w.window_requests
    share = 100.0 * extra / max(w.window_requests, 1)
    return [
        figure("rolling restart: misses beyond steady state, share of the window's requests",
               share, "%", "<= 1", share <= 1),
        figure("rolling restart: misses beyond steady state", extra, "misses"),
        figure("rolling restart: window requests", w.window_requests, "requests"),
        figure("rolling restart: window miss rate", 100.0 * w.window_misses
               / max(w.window_requests, 1), "%"),
        figure("rolling restart: steady miss rate", 100.0 * steady_rate, "%"),
        figure("rolling restart: SIGTERM to back in the snapshot, mean",
               float(np.mean(w.restart_s)), "s"),
        *_where(w.marks, steady_rate),
    ]  # fmt: skip


def _where(marks: list[tuple[str, int, float]], steady_rate: float) -> list[dict[str, Any]]:
    """Misses beyond the steady rate split by where they fall: while a worker is away
    (SIGTERM to back in the snapshot: the pool is one worker short) and after (the one back,
    and its takers, settling), as shares of the window's requests."""
    if not marks:
        return []
    total = marks[-1][1] - marks[0][1]
    away = after = 0.0
    for (what, n0, m0), (_next, n1, m1) in itertools.pairwise(marks):
        extra = (m1 - m0) - steady_rate * (n1 - n0)
        if what.endswith("back") or what == "end":
            after += extra
        else:
            away += extra
    return [
        figure("  of which while a worker was away (SIGTERM to back)",
               100.0 * away / max(total, 1), "%"),
        figure("  of which after it was back", 100.0 * after / max(total, 1), "%"),
    ]  # fmt: skip
