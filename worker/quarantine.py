"""Remembered failures and the quarantine they earn, per model version.

Both the loader (loads that fail or hang) and the predictor (predictions that fail or hang)
keep one ``FailureMemory``: until the backoff elapses the version is *quarantined* and its
requests get the remembered error, saying until when, without touching the store or the
runtime; each further failure doubles the delay up to a cap; a success forgets. Other models
are unaffected.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import cachetools

from worker.errors import WorkerError
from worker.types import ModelId


@dataclass(slots=True)
class _Failure:
    error: WorkerError
    attempts: int
    retry_at: float  # monotonic; 0: failing, but not (yet) quarantined


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FailureMemory:
    """Failures by key, and the quarantine they earn: exponential backoff after a threshold.

    The n-th consecutive failure of a key (n >= ``threshold``) quarantines it for
    ``base * 2**(n - threshold)`` seconds, capped at ``cap``; until then ``check`` answers the
    remembered error, saying until when (``quarantined until <UTC>; next attempt in Ns``). When
    the quarantine ends the next call is let through: a failure re-quarantines at once for
    twice as long, a success (``clear``) forgets the key. ``record(..., immediate=True)``
    (a hang) quarantines on the first failure whatever the threshold.

    ``stuck(key)`` (optional) counts the key's abandoned calls whose threads have not returned;
    while it is non-zero the quarantine is not lifted, so a model that hangs ties up at most
    the threads it held when it hung. Bounded (LRU of ``max_keys``); clocks are injected.
    """

    def __init__(
        self,
        base: float,
        cap: float,
        now: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
        threshold: int = 1,
        stuck: Callable[[ModelId], int] | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.base = base
        self.cap = cap
        self.threshold = max(1, threshold)
        self._now = now
        self._wall = wall
        self._stuck = stuck
        self._failures: cachetools.LRUCache[ModelId, _Failure] = cachetools.LRUCache(max_keys)

    def __len__(self) -> int:
        """Keys remembered as failing (quarantined or not)."""
        return len(self._failures)

    def check(self, key: ModelId) -> WorkerError | None:
        """The remembered error (a copy naming the quarantine) while it lasts, else None."""
        if not self._failures:  # the common case, on every request: nothing is failing
            return None
        f = self._failures.get(key)
        if f is None or not f.retry_at:
            return None
        wait = f.retry_at - self._now()
        if wait > 0:
            until = f"quarantined until {_utc(self._wall() + wait)}; next attempt in {wait:.1f}s"
        elif self._stuck is not None and self._stuck(key) > 0:
            until = "quarantined while a call of it is stuck on a runtime thread"
        else:
            return None
        return type(f.error)(f"{f.error.message} (failed {f.attempts}x; {until})", f.error.code)

    def record(self, key: ModelId, error: WorkerError, immediate: bool = False) -> float:
        """Remember a failure; returns the quarantine it starts (0: below the threshold)."""
        prev = self._failures.get(key)
        attempts = prev.attempts + 1 if prev else 1
        if immediate:
            attempts = max(attempts, self.threshold)
        delay = 0.0
        if attempts >= self.threshold:
            delay = float(min(self.cap, self.base * 2 ** (attempts - self.threshold)))
        self._failures[key] = _Failure(error, attempts, self._now() + delay if delay else 0.0)
        return delay

    def clear(self, key: ModelId) -> None:
        self._failures.pop(key, None)
