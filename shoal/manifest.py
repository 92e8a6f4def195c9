"""Bulk registration from a JSONL manifest (``shoal register --manifest models.jsonl``).

One JSON object per line: ``tenant``, ``name``, ``path`` (a local file) or ``uri`` (an object
already in the store), and optionally ``framework``, ``alias``, ``pool``, ``labels``. Lines
are streamed to the control plane's ``BulkRegister`` RPC over ``streams`` concurrent streams
(files are read in threads, at most ``window`` items in flight per stream). The server
validates each artifact and writes version records in batched etcd transactions; an artifact
whose sha256 the model already has is reported ``unchanged`` and nothing is written, so a
re-run, or a run restarted after being killed, ends in the same state with no duplicates.

Every bad line is reported with its number and reason (bad JSON, missing field, missing file,
rejected artifact); the other lines register.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import grpc

from shoal.pb import shoal_control_pb2 as cpb
from shoal.pb import shoal_control_pb2_grpc as cgrpc


@dataclass(frozen=True, slots=True)
class ManifestLine:
    line: int
    tenant: str
    name: str
    path: str = ""
    uri: str = ""
    framework: str = ""
    alias: str = ""
    pool: str = ""
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class Outcome:
    line: int
    ok: bool
    created: bool = False
    version: int = 0
    error: str = ""
    model: str = ""


@dataclass
class Summary:
    registered: int = 0
    unchanged: int = 0
    failed: int = 0
    errors: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return self.registered + self.unchanged + self.failed

    def to_dict(self) -> dict[str, Any]:
        return {
            "registered": self.registered,
            "unchanged": self.unchanged,
            "failed": self.failed,
            "seconds": round(self.seconds, 3),
            "errors": [{"line": e.line, "model": e.model, "error": e.error} for e in self.errors],
        }


def parse_manifest(text: str) -> tuple[list[ManifestLine], list[Outcome]]:
    """Parse every line; malformed ones become failed outcomes naming the line."""
    good: list[ManifestLine] = []
    bad: list[Outcome] = []
    for no, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        try:
            d = json.loads(raw)
        except json.JSONDecodeError as exc:
            bad.append(Outcome(no, False, error=f"not valid JSON: {exc.msg}"))
            continue
        if not isinstance(d, dict):
            bad.append(Outcome(no, False, error="not a JSON object"))
            continue
        missing = [k for k in ("tenant", "name") if not isinstance(d.get(k), str) or not d[k]]
        if missing:
            bad.append(Outcome(no, False, error=f"missing {', '.join(missing)}"))
            continue
        if bool(d.get("path")) == bool(d.get("uri")):
            bad.append(Outcome(no, False, error="give exactly one of path or uri"))
            continue
        labels = d.get("labels") or d.get("metadata") or {}
        if not isinstance(labels, dict):
            bad.append(Outcome(no, False, error="labels must be an object"))
            continue
        good.append(
            ManifestLine(
                no,
                d["tenant"],
                d["name"],
                str(d.get("path", "")),
                str(d.get("uri", "")),
                str(d.get("framework", "")),
                str(d.get("alias", "")),
                str(d.get("pool", "")),
                {str(k): str(v) for k, v in labels.items()},
            )
        )
    return good, bad


class Progress:
    """A one-line progress bar on a terminal (stderr); silent when not a TTY."""

    def __init__(self, total: int, out: TextIO = sys.stderr, force: bool = False) -> None:
        self.total = total
        self.done = 0
        self.out = out
        self.enabled = force or out.isatty()
        self.start = time.monotonic()
        self._last = 0.0

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self._last > 0.1 or self.done == self.total):
            self._last = now
            rate = self.done / max(now - self.start, 1e-9)
            width = 30
            filled = int(width * self.done / max(self.total, 1))
            self.out.write(
                f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}"
                f"  {rate:,.0f}/s"
            )
            if self.done == self.total:
                self.out.write("\n")
            self.out.flush()


async def _read(item: ManifestLine, base: Path) -> bytes:
    path = Path(item.path)
    if not path.is_absolute():
        path = base / path
    return await asyncio.to_thread(path.read_bytes)


def _header(item: ManifestLine) -> cpb.RegisterHeader:
    return cpb.RegisterHeader(
        tenant=item.tenant,
        name=item.name,
        framework=item.framework,
        pool=item.pool,
        alias=item.alias,
        labels=item.labels,
        uri=item.uri,
    )


async def register_manifest(
    channel: grpc.aio.Channel,
    items: list[ManifestLine],
    base: Path,
    streams: int = 4,
    window: int = 64,
    on_result: Callable[[Outcome], None] | None = None,
    metadata: tuple[tuple[str, str], ...] | None = None,
) -> list[Outcome]:
    """Register ``items`` through BulkRegister; one outcome per item, in no set order."""
    stub = cgrpc.ControlStub(channel)
    outcomes: list[Outcome] = []
    by_line = {it.line: it for it in items}
    queues = [items[i::streams] for i in range(streams)]

    def record(o: Outcome) -> None:
        it = by_line.get(o.line)
        if it is not None:
            o.model = f"{it.tenant}/{it.name}"
        outcomes.append(o)
        if on_result:
            on_result(o)

    async def one_stream(chunk: list[ManifestLine]) -> None:
        if not chunk:
            return
        sem = asyncio.Semaphore(window)
        pending = {it.line for it in chunk}

        async def requests() -> AsyncIterator[cpb.BulkRegisterItem]:
            for it in chunk:
                await sem.acquire()
                data = b""
                if it.path:
                    try:
                        data = await _read(it, base)
                    except OSError as exc:
                        sem.release()
                        pending.discard(it.line)
                        record(
                            Outcome(it.line, False, error=f"cannot read {it.path}: {exc.strerror}")
                        )
                        continue
                yield cpb.BulkRegisterItem(seq=it.line, header=_header(it), data=data)

        call = stub.BulkRegister(requests(), metadata=metadata)
        try:
            async for res in call:
                sem.release()
                pending.discard(res.seq)
                if res.ok:
                    record(Outcome(res.seq, True, res.result.created, res.result.version))
                else:
                    record(
                        Outcome(
                            res.seq,
                            False,
                            error=f"{res.code}: {res.error}" if res.code else res.error,
                        )
                    )
        except grpc.aio.AioRpcError as exc:
            for line in sorted(pending):
                record(Outcome(line, False, error=f"{exc.code().name}: {exc.details()}"))
            pending.clear()
        for line in sorted(pending):  # the server closed the stream without answering these
            record(Outcome(line, False, error="no answer from the control plane"))

    await asyncio.gather(*(one_stream(q) for q in queues))
    return outcomes


def summarize(outcomes: list[Outcome], seconds: float) -> Summary:
    s = Summary(seconds=seconds)
    for o in outcomes:
        if not o.ok:
            s.failed += 1
            s.errors.append(o)
        elif o.created:
            s.registered += 1
        else:
            s.unchanged += 1
    s.errors.sort(key=lambda o: o.line)
    return s


async def run_manifest(
    control: str,
    manifest: Path,
    streams: int = 4,
    progress: bool = False,
    metadata: tuple[tuple[str, str], ...] | None = None,
) -> Summary:
    """Parse ``manifest`` and register it through the control plane at ``control``."""
    start = time.monotonic()
    items, bad = parse_manifest(await asyncio.to_thread(manifest.read_text))
    bar = Progress(len(items) + len(bad), force=progress)
    bar.advance(len(bad))
    options = [
        ("grpc.max_send_message_length", 512 << 20),
        ("grpc.max_receive_message_length", 64 << 20),
    ]
    async with grpc.aio.insecure_channel(control, options=options) as channel:
        outcomes = await register_manifest(
            channel,
            items,
            manifest.parent,
            streams,
            on_result=lambda o: bar.advance(),
            metadata=metadata,
        )
    return summarize(bad + outcomes, time.monotonic() - start)
