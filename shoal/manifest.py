"""Bulk registration from a JSONL manifest (``shoal register --manifest models.jsonl``).

One JSON object per line: ``tenant``, ``name``, ``path`` (a local file, relative to the
manifest's folder) or ``uri`` (an object already in the store), and optionally ``framework``,
``alias``, ``pool``, ``labels`` (or ``metadata``: string values) and ``sha256`` (checked by the
server). Blank lines and lines starting with ``#`` are skipped.

Algorithm: the lines are dealt round-robin onto ``streams`` concurrent ``BulkRegister`` streams
on one HTTP/2 connection. Each stream reads its files in batches off the event loop and keeps at
most ``window`` items unanswered (so memory is bounded by ``streams * window`` artifacts, not by
the manifest), and the server validates and writes what has arrived in batched etcd
transactions. An artifact whose sha256 the model already has is reported ``unchanged`` and
nothing is written, so a re-run, or a run restarted after being killed, converges on the same
state with no duplicate versions; a killed run leaves nothing half-written (the server writes a
record only after its artifact is uploaded and validated).

Failure modes: every bad line is reported with its number and reason (bad JSON, missing field,
unreadable file, rejected artifact, server error); the other lines still register. When a
whole stream breaks (control plane down, bad credentials), each of its unanswered lines is
reported with that status. Nothing is retried automatically: re-running the manifest is the
retry, and it is cheap for the lines that already went through.
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

#: Files read per trip to the reader thread (one thread hop per file would cost more than
#: reading a small model).
READ_BATCH = 16
#: Largest gRPC message the client sends: one whole artifact per BulkRegister item.
MAX_MESSAGE = 512 << 20

Metadata = tuple[tuple[str, str], ...]


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
    sha256: str = ""


@dataclass
class Outcome:
    line: int
    ok: bool
    created: bool = False
    version: int = 0
    error: str = ""
    model: str = ""
    pruned: tuple[int, ...] = ()


@dataclass
class Summary:
    """What a manifest run did: counts, and every failed line with its reason."""

    registered: int = 0
    unchanged: int = 0
    failed: int = 0
    pruned: int = 0  # old versions removed by the server's retention setting
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
            "pruned": self.pruned,
            "total": self.total,
            "seconds": round(self.seconds, 3),
            "errors": [{"line": e.line, "model": e.model, "error": e.error} for e in self.errors],
        }


def _str_field(d: dict[str, Any], key: str) -> str:
    value = d.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string")
    return value


def parse_line(no: int, raw: str) -> ManifestLine | Outcome | None:
    """One manifest line: the item, a failed outcome naming the problem, or None (skipped)."""
    if not raw.strip() or raw.lstrip().startswith("#"):
        return None
    try:
        d = json.loads(raw)
    except json.JSONDecodeError as exc:
        return Outcome(no, False, error=f"not valid JSON: {exc.msg}")
    if not isinstance(d, dict):
        return Outcome(no, False, error="not a JSON object")
    missing = [k for k in ("tenant", "name") if not isinstance(d.get(k), str) or not d[k]]
    if missing:
        return Outcome(no, False, error=f"missing {', '.join(missing)}")
    model = f"{d['tenant']}/{d['name']}"
    if bool(d.get("path")) == bool(d.get("uri")):
        return Outcome(no, False, error="give exactly one of path or uri", model=model)
    labels = d.get("labels") or d.get("metadata") or {}
    if not isinstance(labels, dict):
        return Outcome(no, False, error="labels must be an object", model=model)
    try:
        return ManifestLine(
            no,
            d["tenant"],
            d["name"],
            _str_field(d, "path"),
            _str_field(d, "uri"),
            _str_field(d, "framework"),
            _str_field(d, "alias"),
            _str_field(d, "pool"),
            {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in labels.items()},
            _str_field(d, "sha256"),
        )
    except ValueError as exc:
        return Outcome(no, False, error=str(exc), model=model)


def parse_manifest(text: str) -> tuple[list[ManifestLine], list[Outcome]]:
    """Parse every line; malformed ones become failed outcomes naming the line."""
    good: list[ManifestLine] = []
    bad: list[Outcome] = []
    for no, raw in enumerate(text.splitlines(), start=1):
        parsed = parse_line(no, raw)
        if isinstance(parsed, ManifestLine):
            good.append(parsed)
        elif parsed is not None:
            bad.append(parsed)
    return good, bad


class Progress:
    """A one-line progress bar on ``out`` (stderr), redrawn at most 10 times a second.

    Enabled when ``out`` is a terminal or ``force`` is set; otherwise silent.
    """

    def __init__(self, total: int, out: TextIO | None = None, force: bool = False) -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self.out = out if out is not None else sys.stderr
        self.enabled = force or self.out.isatty()
        self.start = time.monotonic()
        self._last = 0.0
        self._closed = False

    def advance(self, n: int = 1, failed: int = 0) -> None:
        self.done += n
        self.failed += failed
        now = time.monotonic()
        finished = self.done >= self.total
        if self.enabled and not self._closed and (now - self._last > 0.1 or finished):
            self._last = now
            rate = self.done / max(now - self.start, 1e-9)
            width = 30
            filled = int(width * self.done / max(self.total, 1))
            failed_note = f"  {self.failed} failed" if self.failed else ""
            self.out.write(
                f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}"
                f"  {rate:,.0f}/s{failed_note}"
            )
            if finished:
                self.out.write("\n")
                self._closed = True
            self.out.flush()


def _read_files(items: list[ManifestLine], base: Path) -> list[bytes | OSError]:
    """Read each item's file (in a worker thread): its bytes or the error."""
    out: list[bytes | OSError] = []
    for it in items:
        path = Path(it.path)
        if not path.is_absolute():
            path = base / path
        try:
            out.append(path.read_bytes())
        except OSError as exc:
            out.append(exc)
    return out


def _header(item: ManifestLine) -> cpb.RegisterHeader:
    return cpb.RegisterHeader(
        tenant=item.tenant,
        name=item.name,
        framework=item.framework,
        pool=item.pool,
        alias=item.alias,
        labels=item.labels,
        uri=item.uri,
        sha256=item.sha256,
    )


def _result_outcome(res: cpb.BulkRegisterResult) -> Outcome:
    if res.ok:
        r = res.result
        return Outcome(res.seq, True, r.created, r.version, pruned=tuple(r.pruned))
    return Outcome(res.seq, False, error=f"{res.code}: {res.error}" if res.code else res.error)


async def register_manifest(
    channel: grpc.aio.Channel,
    items: list[ManifestLine],
    base: Path,
    streams: int = 4,
    window: int = 128,
    on_result: Callable[[Outcome], None] | None = None,
    metadata: Metadata | None = None,
) -> list[Outcome]:
    """Register ``items`` through BulkRegister; one outcome per item, in no set order.

    ``streams`` streams run concurrently, each with at most ``window`` items sent and not yet
    answered. Never raises for a line's or a stream's failure: those become outcomes.
    """
    stub = cgrpc.ControlStub(channel)
    outcomes: list[Outcome] = []
    by_line = {it.line: it for it in items}
    streams = max(1, streams)
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
        sem = asyncio.Semaphore(max(1, window))
        pending = {it.line for it in chunk}

        async def requests() -> AsyncIterator[cpb.BulkRegisterItem]:
            for lo in range(0, len(chunk), READ_BATCH):
                batch = chunk[lo : lo + READ_BATCH]
                files = [it for it in batch if it.path]
                read = await asyncio.to_thread(_read_files, files, base) if files else []
                data = dict(zip((it.line for it in files), read, strict=True))
                for it in batch:
                    payload = data.get(it.line, b"")
                    if isinstance(payload, OSError):
                        pending.discard(it.line)
                        reason = payload.strerror or type(payload).__name__
                        record(Outcome(it.line, False, error=f"cannot read {it.path}: {reason}"))
                        continue
                    await sem.acquire()
                    yield cpb.BulkRegisterItem(seq=it.line, header=_header(it), data=payload)

        call = stub.BulkRegister(requests(), metadata=metadata)
        try:
            async for res in call:
                sem.release()
                if res.seq not in pending:
                    continue  # not ours (or answered twice): never count a line twice
                pending.discard(res.seq)
                record(_result_outcome(res))
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
        s.pruned += len(o.pruned)
    s.errors.sort(key=lambda o: o.line)
    return s


def _load(manifest: Path) -> tuple[list[ManifestLine], list[Outcome], Path]:
    items, bad = parse_manifest(manifest.read_text())
    return items, bad, manifest.resolve().parent


def channel_options() -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE),
        ("grpc.max_receive_message_length", 64 << 20),
    ]


async def run_manifest(
    control: str,
    manifest: Path,
    streams: int = 4,
    progress: bool = False,
    metadata: Metadata | None = None,
    credentials: grpc.ChannelCredentials | None = None,
    out: TextIO | None = None,
) -> Summary:
    """Parse ``manifest`` and register it through the control plane at ``control``.

    ``credentials``: TLS channel credentials (None: plaintext); ``metadata``: sent with every
    stream (e.g. the ``authorization`` bearer key); ``progress``: draw the bar on ``out``
    (stderr) even when it is not a terminal.
    """
    start = time.monotonic()
    items, bad, base = await asyncio.to_thread(_load, manifest)
    bar = Progress(len(items) + len(bad), out=out, force=progress)
    bar.advance(len(bad), failed=len(bad))
    if credentials is not None:
        channel = grpc.aio.secure_channel(control, credentials, options=channel_options())
    else:
        channel = grpc.aio.insecure_channel(control, options=channel_options())
    async with channel:
        outcomes = await register_manifest(
            channel,
            items,
            base,
            streams,
            on_result=lambda o: bar.advance(failed=0 if o.ok else 1),
            metadata=metadata,
        )
    return summarize(bad + outcomes, time.monotonic() - start)
