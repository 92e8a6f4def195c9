"""What the cache charges a model: resident sizes learned from the sizes measured at load.

The frameworks measure each load (``shoal.frameworks``: the heap's growth across the
deserialisation) and guess before one (``estimate_bytes``); this turns those noisy single
measurements into the guesses the cache reserves and the charges it keeps.
"""

from __future__ import annotations

import statistics
from collections import defaultdict, deque

from shoal.frameworks import estimate_bytes


class SizeEstimator:
    """Resident-size guesses before a load and charges after it, from measured sizes.

    A single measurement (the process-wide heap's growth across one load) is noisy: request
    buffers allocated or freed by prediction threads during the load land in it, in both
    directions, and a non-positive growth falls back to the static estimate. So each model is
    charged the *median* bytes-per-artifact-byte ratio of the last ``window`` loads of its
    framework times its artifact size, once ``min_samples`` loads have been measured (before
    that, its own measurement). The median ignores the polluted minority; the ratio scales
    with the artifact, so models of one framework but different sizes are charged fairly.

    Guesses before a load are what the load will most likely be charged: the same median
    rule once ``min_samples`` loads are measured (a reservation larger than the charge would
    displace a model for room nobody uses: in a full tier of like-sized models, every miss
    would evict two); before that, an exponential moving average (weight ``alpha``) of the
    ratios with a ``margin`` (10%), and until the first measurement the static
    ``estimate_bytes``. Event loop only.
    """

    def __init__(
        self, alpha: float = 0.2, margin: float = 1.1, window: int = 64, min_samples: int = 8
    ) -> None:
        self.alpha = alpha
        self.margin = margin
        self.min_samples = min_samples
        self._ratio: dict[str, float] = {}
        self._recent: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=window))

    def estimate(self, framework: str, artifact_size: int) -> int:
        recent = self._recent.get(framework)
        if recent is not None and len(recent) >= self.min_samples and artifact_size > 0:
            return max(1, int(artifact_size * statistics.median(recent)))
        r = self._ratio.get(framework)
        if r is None:
            return estimate_bytes(framework, artifact_size)
        return int(artifact_size * r * self.margin) + 1

    def observe(self, framework: str, artifact_size: int, measured: int) -> None:
        if artifact_size <= 0 or measured <= 0:
            return
        r = min(max(measured / artifact_size, 0.05), 500.0)
        prev = self._ratio.get(framework)
        self._ratio[framework] = r if prev is None else prev + self.alpha * (r - prev)
        self._recent[framework].append(r)

    def charge(self, framework: str, artifact_size: int, measured: int) -> int:
        """Record ``measured`` and return the bytes to charge the model (see class doc)."""
        self.observe(framework, artifact_size, measured)
        recent = self._recent.get(framework)
        if artifact_size <= 0 or recent is None or len(recent) < self.min_samples:
            return measured
        return max(1, int(artifact_size * statistics.median(recent)))
