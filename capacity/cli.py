"""``shoal simulate``: capacity planning on the production shard function (no cluster needed).

The fleet is synthetic (``--models``), a replayed trace's (``--trace``), or the live registry's
(``--from-registry``, read from etcd); see ``capacity.run`` for what is reported and
``capacity.inputs`` for the inputs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from capacity.inputs import (
    Fleet,
    InputError,
    Registry,
    SizeModel,
    Traffic,
    add_scans,
    read_registry,
    read_trace,
    synthetic_fleet,
    trace_traffic,
    zipf_traffic,
)
from capacity.model import HotRule, SimConfig
from capacity.report import dumps, render_table, write_plot
from capacity.run import simulate
from shoal.cli.errors import CliError
from shoal.etcd import EtcdStore
from shoal.settings import CommonSettings, from_env, parse_bytes
from shoal.state import StateUnavailable

#: Synthetic streams get this many requests per model, within these bounds ("a few million").
REQUESTS_PER_MODEL = 3
MIN_REQUESTS, MAX_REQUESTS = 100_000, 5_000_000
DEFAULT_WORKERS, DEFAULT_SHARD_SIZE, DEFAULT_MODELS = 64, 4, 100_000


def register(sub: Any) -> None:
    p = sub.add_parser(
        "simulate",
        help="capacity planning: memory, load spread, hit rate, blast radius, movement",
        description="Simulate a fleet on the production shard function and report per-worker "
        "memory and load, LRU hit rates, blast radius and movement beside their closed forms.",
    )
    fleet = p.add_argument_group("fleet")
    fleet.add_argument("--models", type=int, help=f"synthetic models (default {DEFAULT_MODELS})")
    fleet.add_argument("--models-per-tenant", type=int, default=1, help="default 1")
    fleet.add_argument(
        "--model-bytes",
        default="1MiB",
        help="resident bytes per model, or their median with --model-bytes-sigma (default 1MiB)",
    )
    fleet.add_argument(
        "--model-bytes-sigma", type=float, default=0.0, help="lognormal sigma (0: all equal)"
    )
    fleet.add_argument(
        "--from-registry",
        action="store_true",
        help="models, sizes, overrides, salt and pool members from etcd",
    )
    fleet.add_argument("--etcd", help="etcd endpoint(s) (default $SHOAL_ETCD)")
    fleet.add_argument("--pool", default="cpu", help="pool to read from the registry")
    fleet.add_argument(
        "--resident-factor",
        action="append",
        default=[],
        metavar="FW=X",
        help="scale registry artifact sizes of a framework to resident bytes (e.g. onnx=1.5)",
    )
    pool = p.add_argument_group("pool")
    pool.add_argument(
        "--workers",
        type=int,
        help=f"workers (default {DEFAULT_WORKERS}, or the registry's published pool)",
    )
    pool.add_argument("--shard-size", type=int, help=f"k (default {DEFAULT_SHARD_SIZE})")
    pool.add_argument("--zones", type=int, default=1, help="zones, workers round-robin")
    pool.add_argument(
        "--hot",
        action="append",
        default=[],
        metavar="TOP:K",
        help="the TOP most requested tenants get shard size K (repeatable)",
    )
    pool.add_argument("--salt", help="placement salt (hex; default: from --seed)")
    traffic = p.add_argument_group("traffic and cache")
    traffic.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent over tenants")
    traffic.add_argument("--trace", type=Path, help="replay CSV/JSONL: timestamp,tenant[,model]")
    traffic.add_argument(
        "--requests",
        type=int,
        help=f"synthetic requests (default {REQUESTS_PER_MODEL} per model, "
        f"{MIN_REQUESTS:,} to {MAX_REQUESTS:,})",
    )
    traffic.add_argument(
        "--rps", type=float, help="total requests/s (default 10000, or the trace's own rate)"
    )
    traffic.add_argument("--budget-bytes", default="8GiB", help="cache budget per worker")
    traffic.add_argument(
        "--policy",
        choices=("tinylfu", "lru"),
        default="tinylfu",
        help="the workers' cache policy replayed (default tinylfu, the worker's default)",
    )
    traffic.add_argument(
        "--scan-every", type=int, help="a batch job every N requests (with --scan-models)"
    )
    traffic.add_argument(
        "--scan-models", type=int, help="models the batch job touches once each (M)"
    )
    traffic.add_argument(
        "--target",
        type=float,
        action="append",
        default=[],
        help="hit rate to size the budget for (repeatable; default 0.9, 0.95, 0.99)",
    )
    traffic.add_argument(
        "--warmup", type=float, default=0.25, help="leading share of requests that only warm"
    )
    out = p.add_argument_group("output")
    out.add_argument("--seed", type=int, default=0)
    out.add_argument("--pairs", type=int, default=1_000_000, help="tenant pairs sampled")
    out.add_argument("--json", action="store_true", help="machine-readable output")
    out.add_argument("--plot", type=Path, metavar="OUT.png", help="write a PNG plot")
    out.add_argument("--progress", action="store_true", help="progress bar even without a TTY")
    p.set_defaults(func=run)


class ProgressBar:
    """A one-line bar on ``stream``, redrawn at most every ``interval`` seconds."""

    def __init__(self, stream: TextIO, interval: float = 0.1, width: int = 30) -> None:
        self.stream = stream
        self.interval = interval
        self.width = width
        self._last = 0.0

    def __call__(self, stage: str, fraction: float) -> None:
        now = time.monotonic()
        done = stage == "done"
        if not done and now - self._last < self.interval:
            return
        self._last = now
        filled = int(self.width * min(1.0, fraction))
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\rsimulate [{bar}] {fraction:4.0%} {stage:<8}")
        if done:
            self.stream.write("\n")
        self.stream.flush()


def run(ns: argparse.Namespace) -> int:
    try:
        return _run(ns)
    except (InputError, ValueError, RuntimeError) as exc:
        raise CliError(str(exc)) from None


def _hot_rules(specs: list[str]) -> tuple[HotRule, ...]:
    rules = []
    for spec in specs:
        top, sep, k = spec.partition(":")
        if not sep or not top.isdigit() or not k.isdigit():
            raise InputError(f"--hot {spec!r}: expected TOP:K, e.g. 100:8")
        rules.append(HotRule(int(top), int(k)))
    return tuple(rules)


def _factors(specs: list[str]) -> dict[str, float]:
    out = {}
    for spec in specs:
        fw, sep, x = spec.partition("=")
        if not sep:
            raise InputError(f"--resident-factor {spec!r}: expected FRAMEWORK=X")
        out[fw.strip()] = float(x)
    return out


def _registry(ns: argparse.Namespace) -> Registry:
    settings = from_env(CommonSettings, etcd=ns.etcd)

    async def read() -> Registry:
        async with EtcdStore.of(settings) as store:
            return await read_registry(store, ns.pool, _factors(ns.resident_factor))

    try:
        return asyncio.run(read())
    except StateUnavailable as exc:
        raise InputError(f"cannot read the registry at {settings.etcd}: {exc}") from None


def build(ns: argparse.Namespace) -> tuple[Fleet, Traffic, SimConfig]:
    """The simulation the command line asks for (inputs read, nothing simulated yet)."""
    if ns.models is not None and (ns.trace or ns.from_registry):
        raise InputError("--models is for synthetic fleets: drop it with --trace/--from-registry")
    rng = np.random.default_rng(ns.seed)
    sizes = SizeModel(parse_bytes(ns.model_bytes), ns.model_bytes_sigma)
    registry = _registry(ns) if ns.from_registry else None
    if ns.trace is not None:
        fleet, traffic = trace_traffic(
            read_trace(ns.trace), sizes, rng, ns.rps, registry.fleet if registry else None
        )
    else:
        if registry is not None:
            fleet = registry.fleet
        else:
            fleet = synthetic_fleet(ns.models or DEFAULT_MODELS, sizes, rng, ns.models_per_tenant)
        n_req = ns.requests
        if n_req is None:
            n_req = min(MAX_REQUESTS, max(MIN_REQUESTS, REQUESTS_PER_MODEL * fleet.n_models))
        traffic = zipf_traffic(fleet, ns.zipf, n_req, ns.rps or 10_000.0, rng)
    if ns.scan_every is not None or ns.scan_models is not None:
        traffic = add_scans(traffic, fleet.n_models, ns.scan_every or 0, ns.scan_models or 0, rng)
    snapshot = registry.snapshot if registry is not None else None
    members = snapshot.members if snapshot is not None and ns.workers is None else None
    shard_size = ns.shard_size or (
        snapshot.shard_size if snapshot is not None else DEFAULT_SHARD_SIZE
    )
    salt = bytes.fromhex(ns.salt) if ns.salt else (registry.salt if registry else None)
    config = SimConfig(
        workers=ns.workers or DEFAULT_WORKERS,
        shard_size=shard_size,
        zones=ns.zones,
        hot=_hot_rules(ns.hot),
        budget_bytes=parse_bytes(ns.budget_bytes),
        seed=ns.seed,
        warmup=ns.warmup,
        targets=tuple(ns.target) or (0.9, 0.95, 0.99),
        salt=salt,
        members=members,
        pairs=ns.pairs,
        policy=ns.policy,
    )
    return fleet, traffic, config


def _run(ns: argparse.Namespace) -> int:
    show = ns.progress or sys.stderr.isatty()
    bar = ProgressBar(sys.stderr) if show else None
    if bar is not None:
        bar("inputs", 0.0)
    fleet, traffic, config = build(ns)
    report = simulate(fleet, traffic, config, bar)
    if ns.plot is not None:
        write_plot(report, ns.plot)
    print(dumps(report) if ns.json else render_table(report))
    return 0
