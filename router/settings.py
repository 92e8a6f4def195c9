"""Router settings (``SHOAL_*`` environment variables, or flags of ``shoal router``)."""

from __future__ import annotations

from dataclasses import dataclass

from shoal.settings import CommonSettings, doc


@dataclass(frozen=True)
class RouterSettings(CommonSettings):
    host: str = doc("address the inference endpoint binds", "127.0.0.1")
    port: int = doc("inference endpoint port (gRPC; 0: a free port)", 8001)
    rest_port: int = doc(
        "KServe V2 REST endpoint port (HTTP/JSON and binary tensors; 0: a free port, -1: off)",
        8000,
    )
    metrics_port: int = doc("Prometheus metrics HTTP port (0: a free port, -1: off)", 0)
    retries: int = doc("other members tried after a failed attempt (UNAVAILABLE only)", 2)
    default_timeout_s: float = doc("deadline for a forwarded call when the client sets none", 30.0)
    spill_at: int = doc("in-flight requests at the primary before spilling to other members", 8)
    eject_s: float = doc("how long a failing member is passed over", 5.0)
    worker_ping_s: float = doc(
        "HTTP/2 PING interval on worker connections: one unanswered for twice this closes the "
        "connection, and its calls are retried on another member (0: off)",
        0.5,
    )
    shadow_queue: int = doc("shadow requests waiting to be sent before new ones are dropped", 256)
    shadow_log_bytes: int = doc("size at which the shadow JSONL log is rotated", 64 << 20)
    shadow_log_keep: int = doc("rotated shadow logs kept", 3)
    shadow_atol: float = doc("absolute tolerance for primary/shadow output agreement", 1e-6)
    max_message_bytes: int = doc("largest request or response accepted", 64 << 20)
    seed: int = doc("seed of the traffic-split and shadow sampling (0: from the OS)", 0)
    tenant_rate_limit: float = doc("default per-tenant requests/s (0: unlimited)", 0.0)
    tenant_max_in_flight: int = doc("default per-tenant requests in flight (0: unlimited)", 0)
    tenant_queue_s: float = doc(
        "longest an over-quota request waits for its tenant's turn before RESOURCE_EXHAUSTED "
        "(never past its deadline; 0: refuse at once)",
        0.5,
    )
    tenant_max_queued: int = doc("requests per tenant waiting for an in-flight slot", 256)
    router_id: str = doc(
        "this router's id in load reports (empty: router-HOST-PORT of the advertised address)",
        "",
    )
    load_interval_s: float = doc("how often per-tenant request rates are published", 2.0)
    gateway_threads: int = doc(
        "threads of the native gateway (1: one event loop, no cross-thread wake-ups)", 1
    )
    drain_grace_s: float = doc("how long in-flight requests may finish after SIGTERM", 5.0)
