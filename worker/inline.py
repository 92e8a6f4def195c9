"""Which predictions run on the event loop instead of a prediction thread.

Handing a 1-row prediction to a pool thread and back costs more than many predictions
themselves: the submit, the wake-up of the thread, the ``call_soon_threadsafe`` back, and the
two threads taking turns on the GIL cost ~0.7 ms of CPU per request on the reference
machine, against ~0.1-0.5 ms for a 100-tree ensemble on one row. So a prediction that is
known to be short runs inline, on the loop, where a thread would only add to it.

A call runs inline only when all of these hold:

* the model is ``bounded``: its runtime has no loops whose length depends on the data (tree
  ensembles; ONNX graphs without loops, subgraphs or operators whose output size comes from
  a tensor's values: ``shoal.frameworks.onnx.bounded``), and it runs on the CPU;
* no fault is injected for it (fault drills exercise the thread pool's timeout);
* the request is small: its inputs hold at most ``max_bytes``;
* the model has proven fast: at least ``min_samples`` calls measured (or a 1-row prediction
  made at load, for tree models: ``seed``), and the average of their durations is at most
  ``max_s``.

Every call, inline or not, is measured in CPU time of the thread that ran it (a call preempted
by other work on a busy host is not slow, and wall time would say it was). The average moves
by ``alpha`` per sample, and jumps to a sample more than ``jump`` times ``max_s`` at once: a
model that turns slow (large batches) goes back to the thread pool on its next call and earns
its way back. A failed call forgets
the model's history, so its next calls go through the pool, where a hang is bounded by the
prediction timeout. What inline gives up: a call that ran inline cannot be abandoned, so a
bounded model whose call still took long holds the loop for that long (at most one such
call: the next one goes to the pool).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
from cachetools import LRUCache


@dataclass(slots=True)
class _Speed:
    samples: int = 0
    avg_s: float = 0.0


class InlinePolicy:
    def __init__(
        self,
        max_s: float,
        max_bytes: int = 64 << 10,
        min_samples: int = 2,
        alpha: float = 0.2,
        jump: float = 4.0,
        models: int = 65536,
    ) -> None:
        self.max_s = max_s
        self.max_bytes = max_bytes
        self.min_samples = min_samples
        self.alpha = alpha
        self.jump = jump
        self._speed: LRUCache[Hashable, _Speed] = LRUCache(maxsize=models)

    def __len__(self) -> int:
        return len(self._speed)

    def eligible(self, key: Hashable, bounded: bool, inputs: Sequence[np.ndarray]) -> bool:
        """Whether this call may run on the loop (see the module docstring)."""
        if not bounded or self.max_s <= 0:
            return False
        if sum(a.nbytes for a in inputs) > self.max_bytes:
            return False
        s = self._speed.get(key)
        return s is not None and s.samples >= self.min_samples and s.avg_s <= self.max_s

    def observe(self, key: Hashable, seconds: float) -> None:
        """A call of ``key`` that succeeded in ``seconds`` of CPU (inline or on a thread)."""
        s = self._speed.get(key)
        if s is None:
            self._speed[key] = _Speed(1, seconds)
            return
        s.samples += 1
        if seconds > self.jump * self.max_s:
            s.avg_s = seconds
        else:
            s.avg_s += self.alpha * (seconds - s.avg_s)

    def seed(self, key: Hashable, seconds: float) -> None:
        """A freshly loaded model's load-time 1-row prediction took ``seconds`` of CPU: it
        stands for the proof (a call of a bounded model costs about the same every time, and
        a slower real call sends it back to the threads)."""
        if key not in self._speed:
            self._speed[key] = _Speed(self.min_samples, seconds)

    def forget(self, key: Hashable) -> None:
        """A call of ``key`` failed or was abandoned: back to the pool until proven again."""
        self._speed.pop(key, None)
