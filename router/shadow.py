"""Shadow traffic: what the gateway's shadow copies answered, compared and logged.

The native gateway sends the copies (a bounded queue: a full queue drops copies, counted as
``shoal_router_shadow_dropped``; never slowing the primary answer) and keeps each outcome.
``ShadowRecorder`` takes the outcomes in batches, off the request path, compares the shadow's
outputs with the primary's (``atol``), counts agreement per model, and appends one JSON line
per copy to ``shadow.jsonl`` (rotated at ``max_bytes``, ``keep`` old files kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from router.metrics import RouterMetrics
from shoal.oip import outputs
from shoal.pb import shoal_inference_pb2 as pb
from shoal.tasks import cancel_and_wait

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ShadowOutcome:
    """One shadow copy as the gateway reports it."""

    ts: float
    model: str  # tenant/name
    primary_version: int
    shadow_version: int
    primary_response: bytes  # ModelInferResponse bytes
    shadow_response: bytes | None
    error: str | None  # "CODE: message" when the copy failed


#: ``Gateway.take_shadow(max, timeout_s)``: up to ``max`` outcomes, waiting at most
#: ``timeout_s`` for the first (blocking; run on a thread).
TakeOutcomes = Callable[[int, float], Sequence[tuple[Any, ...]]]


class RotatingJsonl:
    def __init__(self, path: Path, max_bytes: int, keep: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with contextlib.suppress(FileNotFoundError):
            if self.path.stat().st_size + len(line) > self.max_bytes:
                self._rotate()
        with open(self.path, "a") as f:
            f.write(line)

    def _rotate(self) -> None:
        for i in range(self.keep - 1, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{i}")
            if src.exists():
                src.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.keep > 0:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink()


class ShadowRecorder:
    """Records the gateway's shadow outcomes (see the module docstring)."""

    def __init__(
        self,
        take: TakeOutcomes,
        metrics: RouterMetrics,
        log_file: RotatingJsonl,
        atol: float = 1e-6,
        batch: int = 256,
        wait_s: float = 0.2,
    ) -> None:
        self._take = take
        self._metrics = metrics
        self._log = log_file
        self._atol = atol
        self._batch = batch
        self._wait_s = wait_s
        self.recorded = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            got = await asyncio.to_thread(self._take, self._batch, self._wait_s)
            for raw in got:
                try:
                    self.record(ShadowOutcome(*raw))
                except Exception:  # one bad outcome must never stop the recorder
                    log.exception("recording a shadow outcome failed")

    def record(self, o: ShadowOutcome) -> None:
        record: dict[str, Any] = {
            "ts": o.ts,
            "model": o.model,
            "primary_version": o.primary_version,
            "shadow_version": o.shadow_version,
        }
        primary = pb.ModelInferResponse.FromString(o.primary_response)
        record["id"] = primary.id
        p_out = outputs(primary)
        record["primary"] = {k: v.tolist() for k, v in p_out.items()}
        self.recorded += 1
        if o.shadow_response is None:
            self._metrics.shadow_errors.labels(o.model).inc()
            record["error"] = o.error or "UNKNOWN: no answer"
            self._log.write(record)
            return
        s_out = outputs(pb.ModelInferResponse.FromString(o.shadow_response))
        record["shadow"] = {k: v.tolist() for k, v in s_out.items()}
        agree = set(p_out) == set(s_out) and all(
            p_out[k].shape == s_out[k].shape
            and np.allclose(p_out[k], s_out[k], atol=self._atol, rtol=0)
            for k in p_out
        )
        record["agree"] = agree
        self._metrics.shadow_compared.labels(o.model).inc()
        if agree:
            self._metrics.shadow_agree.labels(o.model).inc()
        self._log.write(record)
