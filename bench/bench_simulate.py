"""Capacity planning (issue 6): ``shoal simulate`` on a million models, timed end to end.

What is measured: the wall time of the documented command

    shoal simulate --models 1000000 --workers 64 --shard-size 4 --json

run as a fresh process (interpreter start, imports, input generation, the simulation and the
JSON output all included), ``BENCH_SIMULATE_REPEATS`` times (default 1); its inputs are pinned by
the defaults (seed 0, Zipf s=1 over tenants, 3,000,000 requests, 1 MiB per model, 8 GiB per
worker). The stage timings come from the report itself. Target (issue): well under a minute on a
2-core machine; we hold ourselves to <= 30 s. Written with ``write_results("simulate", ...)``.
Run alone: ``.venv/bin/python -m bench.bench_simulate``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python bench/bench_simulate.py
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.common import figure, write_results

ROOT = Path(__file__).resolve().parent.parent
COMMAND = ["simulate", "--models", "1000000", "--workers", "64", "--shard-size", "4", "--json"]
TARGET_S = 30.0


def run_once() -> tuple[float, dict[str, Any]]:
    """One fresh ``shoal simulate`` process: (wall seconds, its JSON report)."""
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "shoal.cli", *COMMAND],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return time.perf_counter() - t0, json.loads(out.stdout)


def main() -> int:
    repeats = int(os.environ.get("BENCH_SIMULATE_REPEATS", "1"))
    runs = [run_once() for _ in range(repeats)]
    walls = sorted(w for w, _ in runs)
    median = walls[len(walls) // 2]
    report = runs[0][1]
    figs = [
        figure("shoal simulate 1M models x 64 workers x k=4, wall (median)", median, "s",
               f"<= {TARGET_S:.0f} s", median <= TARGET_S),
        figure("  simulation proper (sum of stages)", sum(report["timings_s"].values()), "s"),
        figure("requests replayed through exact LRU", report["cache"]["requests"], "requests"),
        figure("per-worker load max/mean", report["workers"]["load_rps"]["max_over_mean"], "x"),
        figure("pool-wide LRU hit rate", report["cache"]["hit_rate"], "fraction"),
    ]  # fmt: skip
    extra = {
        "command": "shoal " + " ".join(COMMAND),
        "walls_s": walls,
        "stages_s": report["timings_s"],
        "inputs": report["inputs"],
    }
    path = write_results("simulate", figs, extra)
    print(path.with_suffix(".md").read_text())
    return 0 if median <= TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
