"""Worker settings: one frozen object per process, filled from ``SHOAL_*`` variables.

Budgets are strings (``"512MiB"``, ``"2G"``, ``"0.25"``): a fraction applies to the machine's
memory (host), the GPU's memory (gpu) or the disk holding ``data_dir`` (disk); ``resolve_*``
turn them into bytes once the machine is known.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from shoal.records import DEFAULT_POOL
from shoal.settings import CommonSettings, doc, parse_bytes


def _cores() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True)
class WorkerSettings(CommonSettings):
    """Everything ``shoal worker`` reads at start; see ``shoal worker --help``."""

    host: str = doc("address the inference protocol binds to", "127.0.0.1")
    port: int = doc("inference protocol port (0: a free port)", 0)
    metrics_port: int = doc("Prometheus metrics HTTP port (0: a free port, -1: off)", 0)
    worker_id: str = doc("worker id in the pool (empty: HOSTNAME-PORT)", "")
    pool: str = doc("pool this worker joins", DEFAULT_POOL)
    zone: str = doc("failure zone label (placement spreads shards across zones)", "")
    device: str = doc("auto | cpu | cuda: where models run (auto: cuda when a GPU exists)", "auto")
    host_budget: str = doc("host memory for models: bytes or a fraction of RAM", "0.25")
    gpu_budget: str = doc("GPU memory for models: bytes or a fraction of the GPU", "0.5")
    disk_budget: str = doc(
        "local disk cache for artifacts: bytes or a fraction of the disk", "2GiB"
    )
    cache_policy: str = doc(
        "memory tiers' cache policy: tinylfu (scan-resistant: a model asked for once does not "
        "displace ones asked for often) or lru (least recently used first)",
        "tinylfu",
    )
    hot_list_size: int = doc("hottest resident models published for warm hand-offs", 256)
    hot_list_s: float = doc("how often the hot list is published (when it changed)", 10.0)
    handoff_wait_s: float = doc(
        "longest a leaving worker waits for its takers to preload, and a joining one for its "
        "warm-up order, before it leaves or says ready anyway",
        15.0,
    )
    max_pinned_fraction: float = doc(
        "pinned models may take at most this share of the host budget (more is refused)", 0.8
    )
    lease_ttl: int = doc("etcd lease TTL in seconds (a dead worker vanishes after this)", 5)
    drain_grace_s: float = doc("on SIGTERM, seconds in-flight requests get to finish", 20.0)
    predict_threads: int = doc("prediction threads (0: one per core)", 0)
    batching: str = doc(
        "adaptive batching: on | off | auto (on for cuda only); a request arriving while its "
        "model is idle is sent at once, so batching costs a lightly loaded model nothing",
        "on",
    )
    max_batch_rows: int = doc("largest merged batch, rows", 256)
    max_delay_us: int = doc("longest a request waits for others to batch with, µs", 500)
    batch_when_idle: bool = doc(
        "send a request at once when its model has no batch running (false: always wait up "
        "to max_delay_us or max_batch_rows)",
        True,
    )
    inline_max_us: int = doc(
        "a prediction of a bounded CPU model (tree ensemble, ONNX without loops) whose calls "
        "have taken at most this long on average runs on the event loop instead of a "
        "prediction thread, µs (0: always use the threads; worker/inline.py)",
        1000,
    )
    inline_max_bytes: int = doc(
        "largest request (input bytes) a prediction may run inline with", 64 << 10
    )
    load_backoff_s: float = doc("first retry delay after a failed load, seconds", 1.0)
    load_backoff_max_s: float = doc("longest retry delay after repeated failed loads", 60.0)
    record_cache_size: int = doc("model records kept in memory (LRU)", 100_000)
    # --- limits and poison containment (worker/limits.py, calls.py, predictor.py) ----------
    max_request_bytes: int = doc(
        "largest ModelInfer message accepted, bytes (RESOURCE_EXHAUSTED above); the default is "
        "the router's 64 MiB plus room for the routing fields the router appends",
        (64 << 20) + (64 << 10),
    )
    max_request_rows: int = doc(
        "most rows (first dimension of an input) in one request (RESOURCE_EXHAUSTED above)",
        65536,
    )
    model_max_concurrency: int = doc(
        "runtime calls one model may have running at once (0: half the prediction threads, "
        "at least 1), so one hot model cannot take every prediction thread",
        0,
    )
    model_max_queue: int = doc(
        "requests that may wait for a busy model; beyond them RESOURCE_EXHAUSTED at once", 64
    )
    model_queue_wait_s: float = doc(
        "longest a request waits for its busy model before RESOURCE_EXHAUSTED, seconds "
        "(waiting holds no thread; the caller's deadline also ends the wait)",
        5.0,
    )
    predict_timeout_s: float = doc(
        "a prediction running longer is abandoned (DEADLINE_EXCEEDED) and its version "
        "quarantined, seconds (as long as the router's default deadline: a caller has given "
        "up by then)",
        30.0,
    )
    fetch_timeout_s: float = doc(
        "an artifact fetch from the object store not done within this many seconds, plus one "
        "per 10 MB, counts as the store unreachable (UNAVAILABLE)",
        5.0,
    )
    load_timeout_s: float = doc(
        "a deserialization running longer is abandoned (DEADLINE_EXCEEDED) and its version "
        "quarantined, seconds",
        60.0,
    )
    stuck_headroom: int = doc(
        "spare threads in the prediction and load pools that stand in for calls abandoned as "
        "stuck (a Python thread cannot be killed)",
        4,
    )
    quarantine_after: int = doc(
        "consecutive failed predictions of a version before it is quarantined", 3
    )
    quarantine_s: float = doc(
        "first quarantine of a version whose predictions fail or hang, seconds (doubles on "
        "each further failure)",
        5.0,
    )
    quarantine_max_s: float = doc("longest quarantine, seconds", 300.0)
    fault_inject: str = doc(
        "FOR TESTS AND CHAOS DRILLS ONLY, leave empty in production: comma-separated "
        "KIND:TENANT/NAME[:SECONDS] faults, KIND one of hang-predict, slow-predict, "
        "fail-predict, hang-load, fail-load (worker/faults.py)",
        "",
    )

    # --- derived values -------------------------------------------------------------------

    def threads(self) -> int:
        return self.predict_threads if self.predict_threads > 0 else _cores()

    def model_concurrency(self) -> int:
        """Runtime calls one model may run at once: the setting, else half the threads."""
        if self.model_max_concurrency > 0:
            return self.model_max_concurrency
        return max(1, (self.threads() + 1) // 2)

    def batching_enabled(self, device: str) -> bool:
        if self.batching == "auto":
            return device == "cuda"
        return self.batching.lower() in ("on", "1", "true", "yes")

    def resolve_worker_id(self, port: int) -> str:
        return self.worker_id or f"{socket.gethostname().lower()}-{port}"


def host_memory_bytes() -> int:
    """Total RAM in bytes (``sysconf``); 0 where the platform does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError):
        return 0


def resolve_budget(value: str, total: int, what: str) -> int:
    """Bytes for a budget setting; a fraction needs ``total`` (raises ``ValueError`` naming it)."""
    try:
        n = parse_bytes(value, total or None)
    except ValueError as exc:
        raise ValueError(f"{what} budget {value!r}: {exc}") from None
    if n < 0:
        raise ValueError(f"{what} budget {value!r} is negative")
    return n
