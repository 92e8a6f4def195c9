"""Closed-loop gRPC load: h2load with a pre-encoded body, or Python clients as a fallback.

What is measured, for one target and one request body: ``concurrency`` callers each keep
exactly one ModelInfer in flight for ``duration_s`` seconds after ``warmup_s`` seconds of
warm-up; requests per second, latency percentiles over every request of the main phase, the
errors, and the CPU seconds spent by the load generator and by the server processes
(``/proc/<pid>/stat`` sampled at the start and the end of the main phase), so a reader can
see whether the client was the bottleneck and what each request cost the server.

**h2load** (Debian's ``nghttp2-client``, written in C, one thread) posts the gRPC-framed body
(``wire.grpc_frame``) with ``content-type: application/grpc`` and ``te: trailers`` over
``concurrency`` HTTP/2 connections, one stream in flight on each. Latencies come from its
``--log-file`` (one line per request of the main phase). h2load checks the HTTP status but
never reads gRPC trailers, so correctness is checked separately: one real gRPC call before
and one after the run (``wire.infer_once``), and a short probe of ``PROBE_REQUESTS`` h2load
requests whose received DATA bytes must equal ``PROBE_REQUESTS * (5 + response size)``: a
gRPC error is a trailers-only answer with no DATA, so any failed call shows up there.

**Python fallback** (``BENCH_LOADGEN=python``, or when h2load is missing and cannot be
installed): ``processes`` client processes, each with one grpc.aio channel and its share of
the concurrency, sending the same bytes without re-encoding. It costs far more client CPU
than h2load; the results say which tool ran.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.procutil import cpu_seconds, ensure_debian_tool, host_cpu_ticks, tree_cpu_seconds
from bench.wire import INFER_PATH, grpc_frame, infer_once

PROBE_REQUESTS = 50
GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")


@dataclass(frozen=True)
class Load:
    concurrency: int
    duration_s: float
    warmup_s: float


@dataclass
class LoadResult:
    tool: str
    concurrency: int
    duration_s: float
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    client_cpu_s: float
    client_cpu_us_per_req: float
    server_cpu_s: float
    server_cpu_us_per_req: float
    server_cpu_by: dict[str, float] = field(default_factory=dict)  # CPU seconds per process
    #: Share of the host's CPU time stolen by the hypervisor during the main phase (%): on a
    #: shared host every figure of a phase with a high share is slowed by someone else.
    host_steal_pct: float = 0.0
    checks: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        return (
            f"{self.rps:8.0f} req/s  p50 {self.p50_ms:6.3f} ms  p99 {self.p99_ms:6.3f} ms  "
            f"errors {self.errors}  client CPU {self.client_cpu_us_per_req:5.0f} µs/req  "
            f"server CPU {self.server_cpu_us_per_req:5.0f} µs/req  "
            f"steal {self.host_steal_pct:4.1f}%  [{self.tool}]"
        )


# --- h2load ---------------------------------------------------------------------------------


def ensure_h2load(install: bool | None = None) -> str | None:
    """Path of ``h2load``; installs ``nghttp2-client`` with apt-get if missing and allowed
    (``BENCH_INSTALL_H2LOAD=0``: never try; the Python clients are used instead)."""
    return ensure_debian_tool("h2load", "nghttp2-client", "BENCH_INSTALL_H2LOAD", install)


def h2load_version() -> str:
    path = shutil.which("h2load")
    if not path:
        return ""
    out = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    return out.strip()


def _duration(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


@dataclass(frozen=True)
class Http:
    """What h2load sends: gRPC (HTTP/2, framed body) by default, or a REST call (HTTP/1.1)."""

    path: str = INFER_PATH
    headers: tuple[str, ...] = GRPC_HEADERS
    h1: bool = False
    grpc_framed: bool = True


GRPC = Http()


def _h2load_cmd(
    h2load: str,
    address: str,
    body_file: Path,
    concurrency: int,
    extra: Sequence[str],
    http: Http = GRPC,
) -> list[str]:
    cmd = [h2load, "-c", str(concurrency), "-m", "1", "-t", "1", "-d", str(body_file)]
    if http.h1:
        cmd.append("--h1")
    for h in http.headers:
        cmd += ["-H", h]
    return [*cmd, *extra, f"http://{address}{http.path}"]


_DATA = re.compile(r"traffic: .*?\((\d+)\) data")
_REQS = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                   r"(\d+) failed, (\d+) errored, (\d+) timeout")  # fmt: skip


def _probe(h2load: str, address: str, body: bytes, response_bytes: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="shoal-h2load-") as tmp:
        body_file = Path(tmp) / "body.bin"
        body_file.write_bytes(grpc_frame(body))
        out = _probe_run(h2load, address, body_file)
    m = _DATA.search(out)
    got = int(m.group(1)) if m else -1
    want = PROBE_REQUESTS * (5 + response_bytes)
    return {"probe_requests": PROBE_REQUESTS, "probe_data_bytes": got, "probe_expected": want,
            "probe_ok": got == want}  # fmt: skip


def _probe_run(h2load: str, address: str, body_file: Path) -> str:
    return subprocess.run(
        _h2load_cmd(h2load, address, body_file, 1, ["-n", str(PROBE_REQUESTS)]),
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout


def _cpu_sample(servers: Mapping[str, int], clients: Sequence[int]) -> dict[str, float]:
    out = {name: tree_cpu_seconds(pid) for name, pid in servers.items()}
    out[_CLIENT] = sum(cpu_seconds(p) for p in clients)
    out[_STEAL], out[_TICKS] = (float(x) for x in host_cpu_ticks())
    return out


_CLIENT = "\0client"
_STEAL = "\0steal"
_TICKS = "\0ticks"
_HOST = (_CLIENT, _STEAL, _TICKS)


def _reap(proc: subprocess.Popen[Any], timeout: float) -> float:
    """Wait for ``proc`` (killing it after ``timeout``); return its total CPU seconds.

    The CPU comes from ``wait4``'s rusage, so it is exact even though the process is gone by
    the time the main phase's end is sampled; it includes the warm-up, which the start
    sample (read from ``/proc`` while the process runs) subtracts again.
    """
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        watchdog.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return float(usage.ru_utime + usage.ru_stime)


def _sample_at(
    t: float, servers: Mapping[str, int], clients: Sequence[int], out: list[dict[str, float]]
) -> None:
    time.sleep(max(0.0, t - time.monotonic()))
    out.append(_cpu_sample(servers, clients))


def run_h2load(
    h2load: str,
    address: str,
    body: bytes,
    load: Load,
    servers: Mapping[str, int],
    http: Http = GRPC,
) -> LoadResult:
    with tempfile.TemporaryDirectory(prefix="shoal-h2load-") as tmp:
        body_file = Path(tmp) / "body.bin"
        body_file.write_bytes(grpc_frame(body) if http.grpc_framed else body)
        log_file = Path(tmp) / "requests.log"
        extra = ["-D", _duration(load.duration_s), "--log-file", str(log_file)]
        if load.warmup_s > 0:
            extra += ["--warm-up-time", _duration(load.warmup_s)]
        cmd = _h2load_cmd(h2load, address, body_file, load.concurrency, extra, http)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        t0 = time.monotonic()
        start: list[dict[str, float]] = []
        end: list[dict[str, float]] = []
        samplers = [
            threading.Thread(target=_sample_at, args=(t, servers, [proc.pid], into))
            for t, into in (
                (t0 + load.warmup_s, start),
                (t0 + load.warmup_s + load.duration_s, end),
            )
        ]
        for s in samplers:
            s.start()
        assert proc.stdout is not None
        out = proc.stdout.read()
        client_total = _reap(proc, load.warmup_s + load.duration_s + 120)
        for s in samplers:
            s.join()
        end[0][_CLIENT] = client_total
        if proc.returncode != 0:
            raise RuntimeError(f"h2load failed ({proc.returncode}):\n{out[-2000:]}")
        lat_us: list[int] = []
        bad = 0
        for line in log_file.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) < 3:
                continue
            if parts[1] != "200":
                bad += 1
                continue
            lat_us.append(int(parts[2]))
    m = _REQS.search(out)
    failed = sum(int(m.group(i)) for i in (5, 6, 7)) if m else 0
    lat_ms = np.asarray(lat_us, dtype=np.float64) / 1000.0
    return _summarise("h2load", load, lat_ms, max(bad, failed), start[0], end[0])


def _summarise(
    tool: str,
    load: Load,
    lat_ms: np.ndarray,
    errors: int,
    cpu_start: dict[str, float],
    cpu_end: dict[str, float],
) -> LoadResult:
    by = {k: cpu_end[k] - cpu_start.get(k, 0.0) for k in cpu_end if k not in _HOST}
    ticks = cpu_end.get(_TICKS, 0.0) - cpu_start.get(_TICKS, 0.0)
    steal = (cpu_end.get(_STEAL, 0.0) - cpu_start.get(_STEAL, 0.0)) / ticks if ticks > 0 else 0.0
    client_cpu = cpu_end[_CLIENT] - cpu_start[_CLIENT]
    server_cpu = sum(by.values())
    n = int(lat_ms.size)
    pct = np.percentile(lat_ms, [50, 90, 99]) if n else np.zeros(3)
    per = 1e6 / n if n else 0.0
    return LoadResult(
        tool=tool,
        concurrency=load.concurrency,
        duration_s=load.duration_s,
        requests=n,
        errors=errors,
        rps=n / load.duration_s,
        p50_ms=float(pct[0]),
        p90_ms=float(pct[1]),
        p99_ms=float(pct[2]),
        mean_ms=float(lat_ms.mean()) if n else 0.0,
        max_ms=float(lat_ms.max()) if n else 0.0,
        client_cpu_s=client_cpu,
        client_cpu_us_per_req=client_cpu * per,
        server_cpu_s=server_cpu,
        server_cpu_us_per_req=server_cpu * per,
        server_cpu_by=by,
        host_steal_pct=steal * 100,
    )


# --- Python clients -------------------------------------------------------------------------


async def _client_main(
    address: str, body: bytes, concurrency: int, warmup_s: float, duration_s: float
) -> dict[str, Any]:
    import grpc

    lat: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(INFER_PATH)
        t0 = time.perf_counter()
        t_main, t_end = t0 + warmup_s, t0 + warmup_s + duration_s

        async def caller() -> None:
            nonlocal errors
            while True:
                s = time.perf_counter()
                if s >= t_end:
                    return
                try:
                    await call(body, timeout=30.0)
                except grpc.aio.AioRpcError:
                    if s >= t_main:
                        errors += 1
                    continue
                if s >= t_main:
                    lat.append((time.perf_counter() - s) * 1000.0)

        await asyncio.gather(*(caller() for _ in range(concurrency)))
    return {"latencies_ms": lat, "errors": errors}


def _run_python(
    address: str, body: bytes, load: Load, servers: Mapping[str, int], processes: int
) -> LoadResult:
    processes = max(1, min(processes, load.concurrency))
    shares = [load.concurrency // processes + (i < load.concurrency % processes)
              for i in range(processes)]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="shoal-pyload-") as tmp:
        body_file = Path(tmp) / "body.bin"
        body_file.write_bytes(body)
        procs = []
        for i, share in enumerate(shares):
            out = Path(tmp) / f"client-{i}.json"
            cmd = [sys.executable, "-m", "bench.loadgen", "client", address, str(body_file),
                   str(share), str(load.warmup_s), str(load.duration_s), str(out)]  # fmt: skip
            procs.append((subprocess.Popen(cmd, cwd=Path(__file__).resolve().parent.parent), out))
        t0 = time.monotonic()
        clients = [p.pid for p, _ in procs]
        time.sleep(max(0.0, t0 + load.warmup_s - time.monotonic()))
        start = _cpu_sample(servers, clients)
        time.sleep(max(0.0, t0 + load.warmup_s + load.duration_s - time.monotonic()))
        end = _cpu_sample(servers, clients)
        end[_CLIENT] = 0.0
        lat: list[float] = []
        errors = 0
        for p, out in procs:
            end[_CLIENT] += _reap(p, 120)
            if p.returncode != 0:
                raise RuntimeError(f"load client exited with {p.returncode}")
            doc = json.loads(out.read_text())
            lat.extend(doc["latencies_ms"])
            errors += int(doc["errors"])
    lat_ms = np.asarray(lat, dtype=np.float64)
    return _summarise(f"python x{processes}", load, lat_ms, errors, start, end)


# --- entry point ----------------------------------------------------------------------------


def run_load(
    address: str,
    body: bytes,
    load: Load,
    servers: Mapping[str, int] | None = None,
    tool: str | None = None,
    processes: int = 2,
) -> LoadResult:
    """Drive ``address`` with ``body`` under ``load``; verify gRPC status before and after.

    ``tool`` is ``"h2load"``, ``"python"`` or None (``$BENCH_LOADGEN``, else h2load when it can
    be found or installed). ``servers`` names the server processes (name -> pid) whose CPU
    time (with their children's) is sampled over the main phase. Raises if the verification
    call fails before the run.
    """
    servers = dict(servers or {})
    before = infer_once(address, body)
    tool = tool or os.environ.get("BENCH_LOADGEN") or "h2load"
    h2load = ensure_h2load() if tool == "h2load" else None
    checks: dict[str, Any] = {"response_bytes": before.response_bytes}
    if h2load:
        checks.update(_probe(h2load, address, body, before.response_bytes))
        result = run_h2load(h2load, address, body, load, servers)
    else:
        result = _run_python(address, body, load, servers, processes)
    try:
        infer_once(address, body)
        checks["after_ok"] = True
    except Exception as exc:  # the server died or degraded under load: say so in the results
        checks["after_ok"] = False
        checks["after_error"] = str(exc)[:300]
    result.checks = checks
    return result


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "client":  # one Python client process (internal)
        address, body_file, conc, warm, dur, out = argv[1:7]
        doc = asyncio.run(
            _client_main(address, Path(body_file).read_bytes(), int(conc), float(warm), float(dur))
        )
        Path(out).write_text(json.dumps(doc))
        return 0
    p = argparse.ArgumentParser(description="drive a ModelInfer endpoint with one fixed body")
    p.add_argument("address", help="HOST:PORT")
    p.add_argument("--model", required=True)
    p.add_argument("--features", type=int, default=30)
    p.add_argument("--input-name", default="input__0")
    p.add_argument("-c", "--concurrency", type=int, default=1)
    p.add_argument("-d", "--duration", type=float, default=5.0)
    p.add_argument("-w", "--warmup", type=float, default=1.0)
    p.add_argument("--tool", choices=("h2load", "python"))
    ns = p.parse_args(argv)
    from bench.wire import infer_request

    body = infer_request(ns.model, np.zeros((1, ns.features), np.float32), ns.input_name)
    res = run_load(ns.address, body, Load(ns.concurrency, ns.duration, ns.warmup), tool=ns.tool)
    print(res.line())
    print(json.dumps(res.checks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
