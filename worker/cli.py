"""``shoal worker``: run one worker process (inference protocol, admin, metrics).

Flags override ``SHOAL_*`` variables, which override defaults; ``--help`` lists them all.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from shoal.cli.errors import CliError
from shoal.runner import Runner
from shoal.settings import describe, from_env
from worker.server import WorkerServer
from worker.settings import WorkerSettings

#: flag -> settings field (flags left unset fall through to the environment).
_FLAGS: dict[str, tuple[str, type]] = {
    "--host": ("host", str),
    "--port": ("port", int),
    "--metrics-port": ("metrics_port", int),
    "--etcd": ("etcd", str),
    "--store": ("store", str),
    "--data-dir": ("data_dir", Path),
    "--pool": ("pool", str),
    "--zone": ("zone", str),
    "--worker-id": ("worker_id", str),
    "--device": ("device", str),
    "--host-budget": ("host_budget", str),
    "--gpu-budget": ("gpu_budget", str),
    "--disk-budget": ("disk_budget", str),
    "--lease-ttl": ("lease_ttl", int),
    "--advertise-address": ("advertise_address", str),
    "--batching": ("batching", str),
    "--max-request-bytes": ("max_request_bytes", int),
    "--max-request-rows": ("max_request_rows", int),
    "--model-max-concurrency": ("model_max_concurrency", int),
}


def register(sub: Any) -> None:
    env_help = "\n".join(
        f"  {var:<28} {text} (default: {default})"
        for var, text, default in describe(WorkerSettings)
    )
    p = sub.add_parser(
        "worker",
        help="run one worker process",
        description="Serve models lazily loaded from the object store (Open Inference Protocol). "
        "Prints `worker: HOST:PORT` when ready; SIGTERM drains and exits 0.",
        epilog="environment:\n" + env_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for flag, (field, kind) in _FLAGS.items():
        p.add_argument(flag, dest=field, type=kind, default=None, help=f"see SHOAL_{field.upper()}")
    p.set_defaults(func=_run)


def _run(ns: argparse.Namespace) -> int:
    overrides = {field: getattr(ns, field) for field, _kind in _FLAGS.values()}
    try:
        settings = from_env(WorkerSettings, **overrides)
    except (ValueError, TypeError) as exc:
        raise CliError(str(exc)) from None
    # Runtimes run one thread per call and the worker parallelises across requests; OpenMP
    # reads this when the runtime libraries load (at the first model load), so LightGBM's
    # default is one thread.
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        rc = asyncio.run(Runner(WorkerServer(settings), settings.drain_grace_s).serve())
    except (ValueError, OSError) as exc:
        raise CliError(f"worker: {exc}") from None
    _exit_past_stuck_threads(rc)
    return rc


def _exit_past_stuck_threads(rc: int, grace_s: float = 2.0) -> None:
    """Exit now if runtime threads are still busy after the drain.

    A runtime call abandoned as stuck (worker/calls.py) keeps its pool thread, and Python
    joins every pool thread at interpreter exit, so one hung model would otherwise keep the
    process from ever exiting. Idle pool threads get ``grace_s`` to finish; if any is still
    running after that, logs and streams are flushed and the process leaves with ``os._exit``.
    """
    deadline = time.monotonic() + grace_s
    pool = [t for t in threading.enumerate() if t.name.startswith(("shoal-predict", "shoal-load"))]
    for t in pool:
        t.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in pool if t.is_alive()]
    if not stuck:
        return
    logging.getLogger(__name__).error(
        "exiting past %d stuck runtime threads: %s", len(stuck), ", ".join(stuck)
    )
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)
