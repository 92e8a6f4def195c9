"""Settings of the placement service (``shoal placement``), from ``SHOAL_*`` variables."""

from __future__ import annotations

from dataclasses import dataclass

from shoal.frameworks import FRAMEWORKS
from shoal.records import DEFAULT_POOL
from shoal.settings import CommonSettings, doc


@dataclass(frozen=True)
class PlacementSettings(CommonSettings):
    """The placement service: control plane, leader election, snapshots, hot tenants."""

    host: str = doc("address the control plane listens on", "127.0.0.1")
    control_port: int = doc("control-plane gRPC port (0: pick a free one)", 8002)
    metrics_port: int = doc("Prometheus metrics port (0: pick a free one, -1: off)", -1)
    instance_id: str = doc("this instance's id in leader election (empty: host-pid)", "")
    shard_size: int = doc("default shard size k, written to /shoal/cluster when created", 2)
    lease_ttl: int = doc("leader lease TTL in seconds: a dead leader is replaced after it", 3)
    debounce_s: float = doc("coalesce worker changes for this long before publishing", 2.0)
    max_artifact_bytes: int = doc("largest artifact accepted by Register, in bytes", 256 << 20)
    cas_retries: int = doc("compare-and-swap attempts before a write gives up (ABORTED)", 8)
    artifact_gc: str = doc(
        "retention deletes unreferenced artifacts: cluster (scan all), model, or off", "cluster"
    )
    pool_xgboost: str = doc("default pool of XGBoost versions", DEFAULT_POOL)
    pool_lightgbm: str = doc("default pool of LightGBM versions", DEFAULT_POOL)
    pool_onnx: str = doc("default pool of ONNX versions", DEFAULT_POOL)
    keep_versions: int = doc(
        "retention after each registration: keep the newest N versions per model (0: all)", 0
    )
    validate_processes: int = doc(
        "worker processes that validate (load) uploaded artifacts (-1: min(4, cores); "
        "0: threads in this process instead, see validate_threads)",
        -1,
    )
    validate_threads: int = doc(
        "with validate_processes=0: threads that validate artifacts in this process "
        "(0: min(4, cores))",
        0,
    )
    gc_batch: int = doc("artifacts queued by retention before one cluster-wide GC scan", 4096)
    warm_timeout_s: float = doc("default deadline of a --wait-loaded warm-up per member", 60.0)
    stats_timeout_s: float = doc("deadline of a worker Stats call when listing workers", 0.5)
    hot_rate: float = doc("requests/s above which a tenant's shard grows (0: never)", 200.0)
    hot_max_shard: int = doc("largest shard size the hot-tenant controller sets", 8)
    hot_cooldown_s: float = doc("a hot tenant must stay below the rate this long to shrink", 60.0)
    hot_drain_s: float = doc("announced delay between deciding to shrink and shrinking", 30.0)
    hot_interval_s: float = doc("how often the leader sums load reports", 2.0)
    handoff_wait_s: float = doc(
        "longest a leaving worker stays in the snapshot while the members taking over its hot "
        "models preload them",
        10.0,
    )
    preload_fraction: float = doc(
        "share of a worker's host budget that one hand-off or join may ask it to preload", 0.5
    )

    def default_pools(self) -> dict[str, str]:
        """framework -> the pool its versions join when registration names none
        (``pool_<framework>``; a framework without such a setting: the default pool)."""
        return {fw: str(getattr(self, f"pool_{fw}", DEFAULT_POOL)) for fw in FRAMEWORKS}
