"""Member choice: which shard member gets a request, and in which order to retry.

``MemberPolicy.choose`` returns candidates best first. The default policy
(``WarmPrimaryPolicy``):

* the *primary* of a model version is a stable member of the tenant's shard, picked by hashing
  ``tenant/name:version`` over the k shard members (``shoal.shard.primary_index``, which the
  simulator charges too): every router sends the model to the same worker, which therefore
  holds it warm;
* when the primary has ``spill_at`` or more requests in flight from this router, the next
  shard members (in shard order, starting after the primary) come first: load spreads, and
  those members warm up too;
* members that are down (not in the live worker set) or ejected after failures go last; the
  members beyond k (the ranked fallbacks) follow the shard, so a request still finds a
  worker when the whole shard is down.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping, Sequence
from typing import Protocol

from shoal.records import Member
from shoal.shard import primary_index


class MemberPolicy(Protocol):
    def choose(
        self,
        ranked: Sequence[Member],
        k: int,
        model_key: str,
        in_flight: Mapping[str, int],
        unhealthy: Container[str],
    ) -> list[Member]: ...


class WarmPrimaryPolicy:
    def __init__(self, spill_at: int = 8) -> None:
        self.spill_at = spill_at

    def choose(
        self,
        ranked: Sequence[Member],
        k: int,
        model_key: str,
        in_flight: Mapping[str, int],
        unhealthy: Container[str],
    ) -> list[Member]:
        k = min(k, len(ranked))
        if k == 0:
            return []
        p = primary_index(model_key, k)
        shard = [ranked[(p + i) % k] for i in range(k)]  # primary first, then the rest
        if in_flight.get(shard[0].worker_id, 0) >= self.spill_at:
            # Spill: least-loaded member of the shard first, the primary still in the list.
            shard.sort(key=lambda m: in_flight.get(m.worker_id, 0))
        ordered = shard + list(ranked[k:])
        healthy = [m for m in ordered if m.worker_id not in unhealthy]
        return healthy + [m for m in ordered if m.worker_id in unhealthy]


class Ejector:
    """Short-term ejection of failing members (injected clock, no background task).

    A member is ejected for ``eject_s`` seconds after ``threshold`` consecutive failures; a
    success resets its count.
    """

    def __init__(self, now: Callable[[], float], eject_s: float = 5.0, threshold: int = 1) -> None:
        self._now = now
        self.eject_s = eject_s
        self.threshold = threshold
        self._failures: dict[str, int] = {}
        self._until: dict[str, float] = {}

    def failure(self, worker_id: str) -> None:
        n = self._failures.get(worker_id, 0) + 1
        self._failures[worker_id] = n
        if n >= self.threshold:
            self._until[worker_id] = self._now() + self.eject_s

    def success(self, worker_id: str) -> None:
        self._failures.pop(worker_id, None)
        self._until.pop(worker_id, None)

    def __contains__(self, worker_id: object) -> bool:
        until = self._until.get(worker_id)  # type: ignore[call-overload]
        if until is None:
            return False
        if self._now() >= until:
            del self._until[worker_id]  # type: ignore[arg-type]
            return False
        return True
