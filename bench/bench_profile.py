"""Profiles (issue 8, item 6): py-spy on the router and on a worker under the warm-path load.

What is recorded: a one-worker Shoal cluster (as in ``bench_warm``) serving the 100-tree
XGBoost model (``BENCH_PROFILE_MODEL``) is driven by h2load at concurrency 32
(``BENCH_PROFILE_CONCURRENCY``) through the router; after one second of warm-up, ``py-spy
record --nonblocking`` samples the router and the worker at 100 Hz for
``BENCH_PROFILE_DURATION`` seconds. For each process it saves a flame graph (``.svg``) and a
speedscope profile (``.speedscope.json``) beside the results, named
``<date>-<commit>-profile-<process>.*``, and summarises the top frames (self time, and
inclusive time of Shoal's own functions) in the results' markdown.

The req/s printed here was measured *while profiling* and is context, not a benchmark figure.
Run alone: ``.venv/bin/python -m bench.bench_profile``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
from functools import partial
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python bench/bench_profile.py
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.common import figure, write_results
from bench.config import BenchConfig, scratch, wait_for
from bench.loadgen import Load, LoadResult, run_load
from bench.models import bench_models
from bench.pyspy import Recorder, ensure_pyspy, summarise, summary_markdown
from bench.shoal_harness import ShoalBench
from bench.wire import infer_once, infer_request

TENANT = "bench"
WORKER_ENV = {"SHOAL_DEVICE": "cpu", "SHOAL_HOST_BUDGET": "1GiB"}
WARMUP_S = 1.0


def record(
    cfg: BenchConfig, key: str, conc: int, tmp: Path
) -> tuple[LoadResult | None, dict[str, Recorder], dict[str, bool]]:
    """Run the cluster under load and py-spy both processes; profiles land in ``tmp``."""
    m = bench_models()[key]
    sb = ShoalBench(tmp / "shoal", workers=1, shard_size=1, worker_env=WORKER_ENV).start()
    try:
        sb.register(TENANT, key, m.data)
        body = infer_request(f"{TENANT}/{key}", m.row, m.input_name)
        wait_for("model through the router", partial(infer_once, sb.router_address, body))
        pids = {"router": sb.router_pid, "worker": sb.worker_pid()}
        load = Load(conc, cfg.profile_duration_s + 2.0, WARMUP_S)
        result: list[LoadResult] = []
        driver = threading.Thread(
            target=lambda: result.append(run_load(sb.router_address, body, load, pids))
        )
        driver.start()
        # run_load makes a verification call and a short probe first; start sampling once
        # the measured phase is under way.
        threading.Event().wait(WARMUP_S + 1.5)
        recorders = {
            name: Recorder(pid, tmp / "profiles" / name, cfg.profile_duration_s).start()
            for name, pid in pids.items()
        }
        ok = {name: r.wait(cfg.profile_duration_s + 60) for name, r in recorders.items()}
        driver.join()
    finally:
        sb.stop()
    return (result[0] if result else None), recorders, ok


def main() -> int:
    cfg = BenchConfig.from_env()
    key = os.environ.get("BENCH_PROFILE_MODEL", "xgb")
    conc = int(os.environ.get("BENCH_PROFILE_CONCURRENCY", "32"))
    ensure_pyspy()  # before any load starts: a first install takes a while
    figs: list[dict[str, Any]] = []
    extra: dict[str, Any] = {"config": cfg.as_dict(), "model": key, "concurrency": conc}
    with scratch("profile", cfg.keep) as tmp:
        res, recorders, ok = record(cfg, key, conc, tmp)
        if res is not None:
            print(f"  under profiling: {res.line()}", flush=True)
            figs += [
                figure(f"router {key} c={conc} while profiled: req/s", res.rps, "req/s"),
                figure(f"router {key} c={conc} while profiled: p50", res.p50_ms, "ms"),
                figure(f"router {key} c={conc} while profiled: p99", res.p99_ms, "ms"),
            ]
            for name, cpu in res.server_cpu_by.items():
                per = cpu * 1e6 / max(res.requests, 1)
                figs.append(figure(f"{name} CPU per request while profiled", per, "µs"))
            extra["load"] = res.as_dict()
        summaries = {name: summarise(r.speedscope) for name, r in recorders.items() if ok[name]}
        for name, s in summaries.items():
            figs.append(figure(f"{name}: py-spy samples", s["samples"], "samples"))
            print(f"  {name}: {s['samples']} samples; top self frames:", flush=True)
            for row in s["self"][:6]:
                print(f"    {row['share'] * 100:5.1f}%  {row['frame']}", flush=True)
        extra["profiles"] = summaries
        path = write_results("profile", figs, extra)
        # The profiles take the results' own stem, so they sort and travel with them.
        md = ["", "## Top frames", ""]
        for name, r in recorders.items():
            if name not in summaries:
                md.append(f"py-spy failed on {name}: {r.log.read_text(errors='replace')[-500:]}\n")
                continue
            svg = path.with_name(f"{path.stem}-{name}.svg")
            speedscope = path.with_name(f"{path.stem}-{name}.speedscope.json")
            shutil.move(r.svg, svg)
            shutil.move(r.speedscope, speedscope)
            summaries[name].update(svg=svg.name, speedscope=speedscope.name)
            md.append(summary_markdown(name, summaries[name]))
            md.append(f"Flame graph: [{svg.name}]({svg.name}); speedscope (open at "
                      f"speedscope.app): [{speedscope.name}]({speedscope.name})\n")  # fmt: skip
        doc = json.loads(path.read_text())
        doc["extra"]["profiles"] = summaries
        path.write_text(json.dumps(doc, indent=2) + "\n")
        with path.with_suffix(".md").open("a") as f:
            f.write("\n".join(md))
    print(f"wrote {path} and {path.with_suffix('.md').name} (+ profiles)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
