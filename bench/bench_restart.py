"""Router restart under load (issue 15): how soon a restarted router serves again.

What is measured: a ``LocalCluster`` (etcd, placement, one worker, router as real processes,
the router on a fixed port) holds ``BENCH_RESTART_MODELS`` model records (default 100,000;
written straight into etcd in transactions of 128, each a valid record whose artifact is
never loaded: the router reads records, not artifacts) and one real model that a client keeps
calling (closed loop, one call in flight, 1 s deadline, from a thread of this process). The
router is SIGKILLed, then started again at once on the same port. From the new router's own
gauges (``shoal_router_view_read_started_timestamp_seconds`` and
``..._view_ready_timestamp_seconds``) and the client's log of answers:

* the first etcd read: how long the new router took to read every record into its table;
* first answer after that read began (target <= 2 s): what a client waits once the process
  is up, interpreter start-up excluded;
* from the kill to the first answer, and the calls that failed meanwhile (the client retries;
  no target: nothing serves while no router runs).

Run alone: ``.venv/bin/python -m bench.bench_restart`` (``BENCH_SMOKE=1``: 2,000 records).
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python bench/bench_restart.py
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import grpc

from bench.common import figure, write_results
from bench.config import BenchConfig, scratch, wait_for
from bench.models import bench_models
from bench.shoal_harness import ShoalBench
from bench.wire import INFER_PATH, infer_once, infer_request
from shoal.artifacts import Signature, TensorSpec
from shoal.etcd import EtcdStore
from shoal.procs import free_port
from shoal.records import ModelRecord, ModelVersion, model_key
from shoal.state import Put, batch_write

SIG = Signature(
    (TensorSpec("input__0", "FP32", (-1, 30)),), (TensorSpec("output__0", "FP32", (-1,)),)
)


async def _fill(etcd: str, n: int) -> None:
    """``n`` records ``fill-<i>/m`` in etcd, 128 per transaction."""
    store = await EtcdStore(etcd).connect()
    try:
        ops: list[Put] = []
        for i in range(n):
            v = ModelVersion(1, f"artifacts/sha256/00/{i:064x}", "xgboost", "xgboost-json",
                             "cpu", f"{i:064x}", 1000, SIG)  # fmt: skip
            rec = ModelRecord(f"fill-{i:07d}", "m", {1: v}, aliases={"stable": 1}, next_version=2)
            ops.append(Put(model_key(rec.tenant, rec.name), rec.encode()))
        await batch_write(store, ops)
    finally:
        await store.close()


class Caller(threading.Thread):
    """One call in flight at a time; logs (monotonic time, ok) of each answer."""

    def __init__(self, address: str, body: bytes) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.body = body
        self.log: list[tuple[float, float, bool]] = []  # (sent, answered, ok), unix times
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            with grpc.insecure_channel(self.address) as ch:
                call = ch.unary_unary(INFER_PATH)
                while not self.stop.is_set():
                    sent = time.time()
                    try:
                        call(self.body, timeout=1.0)
                        self.log.append((sent, time.time(), True))
                    except grpc.RpcError:
                        self.log.append((sent, time.time(), False))
                        time.sleep(0.01)
                        break  # a fresh channel: the old one may back off for seconds


def _until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("no answer after the restart")
        time.sleep(0.01)


def _gauge(metrics: str, name: str) -> float:
    with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise KeyError(name)


def main() -> int:
    cfg = BenchConfig.from_env()
    n = int(os.environ.get("BENCH_RESTART_MODELS", "2000" if cfg.smoke else "100000"))
    model = bench_models()["xgb"]
    extra: dict[str, Any] = {"config": cfg.as_dict(), "records": n}
    with scratch("restart", cfg.keep) as tmp:
        port = free_port()
        sb = ShoalBench(tmp / "shoal", router_port=port).start()
        caller: Caller | None = None
        try:
            t0 = time.monotonic()
            asyncio.run(_fill(sb.c.etcd_url, n))
            extra["fill_s"] = time.monotonic() - t0
            sb.register("bench", "xgb", model.data)
            body = infer_request("bench/xgb", model.row, model.input_name)
            wait_for("the model through the router", lambda: infer_once(sb.router_address, body))
            caller = Caller(sb.router_address, body)
            caller.start()
            time.sleep(max(1.0, cfg.warmup_s))
            assert sb.c.router is not None
            killed = time.time()
            sb.c.router.proc.kill()
            spawned = time.time()
            sb.c.start_router(timeout=300)
            metrics = sb.c.router.extra["metrics"]
            read_at = _gauge(metrics, "shoal_router_view_read_started_timestamp_seconds")
            ready_at = _gauge(metrics, "shoal_router_view_ready_timestamp_seconds")
            _until(lambda: any(ok and t > spawned for _, t, ok in caller.log), 60)
            time.sleep(max(1.0, cfg.duration_s / 2))
        finally:
            if caller is not None:
                caller.stop.set()
                caller.join(5)
            sb.stop()
    first_ok = min(t for _, t, ok in caller.log if ok and t > spawned)
    failed = sum(1 for sent, _, ok in caller.log if not ok and sent >= killed)
    after = [ok for sent, _, ok in caller.log if sent > first_ok]
    v = first_ok - read_at
    figs = [
        figure("records in etcd", n, "models"),
        figure("first etcd read of the restarted router", ready_at - read_at, "s"),
        figure("first answer after the first etcd read began", v, "s", "<= 2", v <= 2),
        figure("kill to first answer (process start included)", first_ok - killed, "s"),
        figure("calls failed while no router ran", failed, "calls"),
        figure(
            "calls failed after the first answer",
            after.count(False),
            "calls",
            "0",
            after.count(False) == 0,
        ),
    ]
    extra["calls"] = len(caller.log)
    path = write_results("restart", figs, extra)
    for f in figs:
        print(f"  {f['name']}: {f['value']:.3g} {f['unit']}", flush=True)
    print(f"wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
