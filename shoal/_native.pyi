"""Type stubs of ``shoal._native``, the Rust data path (native/src/py)."""

from collections.abc import Sequence
from typing import Any

__version__: str

class Gateway:
    """The router's data path (native/src/gateway): see router/app.py for how it is driven."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        threads: int = 1,
        retries: int = 2,
        default_timeout_s: float = 30.0,
        spill_at: int = 8,
        eject_s: float = 5.0,
        shadow_queue: int = 256,
        max_message_bytes: int = 64 << 20,
        seed: int = 0,
        tenant_rate_limit: float = 0.0,
        tenant_max_in_flight: int = 0,
        tenant_queue_s: float = 0.5,
        tenant_max_queued: int = 256,
        auth: bool = False,
        tls_cert: str = "",
        tls_key: str = "",
        tls_ca: str = "",
        tls_client_auth: bool = False,
        name: str = "shoal-router",
        version: str = "",
    ) -> None: ...
    def start(self) -> str:
        """Bind and serve; returns "host:port". Raises OSError when it cannot bind."""
    @property
    def address(self) -> str | None: ...
    def apply(self, changes: Sequence[tuple[str, bytes | None]]) -> list[tuple[str, str]]:
        """Apply etcd changes; returns (key, why) for values that could not be decoded."""
    def set_view(self, ready: bool, stale: bool) -> None: ...
    def stats(self) -> dict[str, Any]: ...
    def take_load(self) -> dict[str, int]: ...
    def take_shadow(
        self, max: int, timeout_s: float
    ) -> list[tuple[float, str, int, int, bytes, bytes | None, str | None]]: ...
    def stop(self, grace_s: float) -> None: ...
