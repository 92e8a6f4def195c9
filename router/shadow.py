"""Shadow traffic: copies of a share of requests sent to a shadow version, off the hot path.

``ShadowSender.offer`` never blocks and never fails: it puts the copy on a bounded queue or
drops it (counted) when the queue is full. A background task sends each copy, compares the
shadow's outputs with the primary's, counts agreement per model, and appends a JSON line to
``shadow.jsonl`` (rotated at ``max_bytes``, ``keep`` old files kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from router.metrics import RouterMetrics
from shoal.oip import outputs
from shoal.pb import shoal_inference_pb2 as pb
from shoal.tasks import stop_task

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ShadowJob:
    model: str  # tenant/name
    tenant: str
    primary_version: int
    shadow_version: int
    request: bytes  # the original request, version not yet overridden
    primary_response: bytes


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


class ShadowSender:
    def __init__(
        self,
        send: Callable[[ShadowJob], Awaitable[bytes]],
        metrics: RouterMetrics,
        log_file: RotatingJsonl,
        queue_size: int = 256,
        atol: float = 1e-6,
    ) -> None:
        self._send = send
        self._metrics = metrics
        self._log = log_file
        self._atol = atol
        self._queue: asyncio.Queue[ShadowJob] = asyncio.Queue(queue_size)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        await stop_task(self._task)

    def offer(self, job: ShadowJob) -> bool:
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self._metrics.shadow_dropped.inc()
            return False
        return True

    async def drain(self) -> None:
        """Wait until every queued copy has been sent and recorded."""
        await self._queue.join()

    async def _run(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                await self._one(job)
            except Exception:  # a shadow failure must never stop the loop
                log.exception("shadow copy for %s failed unexpectedly", job.model)
            finally:
                self._queue.task_done()

    async def _one(self, job: ShadowJob) -> None:
        self._metrics.shadow_sent.inc()
        record: dict[str, Any] = {
            "ts": time.time(),
            "model": job.model,
            "primary_version": job.primary_version,
            "shadow_version": job.shadow_version,
        }
        primary = pb.ModelInferResponse.FromString(job.primary_response)
        record["id"] = primary.id
        p_out = outputs(primary)
        record["primary"] = {k: v.tolist() for k, v in p_out.items()}
        try:
            raw = await self._send(job)
        except Exception as exc:  # recorded and counted, never raised
            self._metrics.shadow_errors.labels(job.model).inc()
            record["error"] = _describe(exc)
            self._log.write(record)
            return
        s_out = outputs(pb.ModelInferResponse.FromString(raw))
        record["shadow"] = {k: v.tolist() for k, v in s_out.items()}
        agree = set(p_out) == set(s_out) and all(
            p_out[k].shape == s_out[k].shape
            and np.allclose(p_out[k], s_out[k], atol=self._atol, rtol=0)
            for k in p_out
        )
        record["agree"] = agree
        self._metrics.shadow_compared.labels(job.model).inc()
        if agree:
            self._metrics.shadow_agree.labels(job.model).inc()
        self._log.write(record)


def _describe(exc: BaseException) -> str:
    details = getattr(exc, "details", None)
    text = details() if callable(details) else str(exc)
    code = getattr(exc, "code", None)
    name = code().name if callable(code) else type(exc).__name__
    return f"{name}: {text}"
