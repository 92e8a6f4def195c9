"""Density (issue 8, item 4): resident bytes per loaded model, in a worker and in a bare process.

What is measured, per framework (the ``bench.models`` artifacts: XGBoost 100 trees, LightGBM
100 trees, ONNX MLP), with ``N = BENCH_DENSITY_MODELS`` (1,000) models each:

* **worker**: a one-worker ``LocalCluster`` (host budget large enough for all of them); the
  artifact is registered under N + 1 names (one ``BulkRegister`` stream; the bytes are stored
  once, content-addressed). One model is loaded first (``WorkerAdmin/LoadModel``) to pay the
  runtime's one-time initialisation; then the worker's RSS (``/proc/<pid>/status`` VmRSS) and
  its own accounting (``WorkerAdmin/Stats`` host bytes) are read, the N models are loaded,
  and both are read again. Per model: RSS delta / N (what the process really grew) and
  accounted delta / N (what the cache believes; its accuracy is reported too).
* **floor**: a bare Python process (``python -m bench.bench_density floor``) with only the
  runtime libraries, which loads one model, reads its RSS, loads N more with the same
  one-thread settings as the worker, keeping references, and reads its RSS again.

Frameworks are loaded in the same order (xgb, lgbm, onnx) in both processes. Target (issue):
worker RSS per model <= 1.3x the floor. Written with ``write_results("density", ...)``.
Run alone: ``.venv/bin/python -m bench.bench_density``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python bench/bench_density.py
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.common import figure, write_results
from bench.config import BenchConfig, scratch
from bench.models import bench_models
from bench.procutil import rss_bytes
from bench.shoal_harness import ShoalBench
from shoal.objstore import artifact_key

TENANT = "dense"
WORKER_ENV = {"SHOAL_DEVICE": "cpu", "SHOAL_HOST_BUDGET": "8GiB", "SHOAL_DISK_BUDGET": "2GiB"}
ORDER = ("xgb", "lgbm", "onnx")


def _settle() -> None:
    time.sleep(0.5)  # let freed load buffers go back before reading RSS


# --- floor (a bare process) -----------------------------------------------------------------


def _load(framework: str, data: bytes) -> Any:
    if framework == "xgboost":
        import xgboost as xgb

        booster = xgb.Booster(params={"nthread": 1})
        booster.load_model(bytearray(data))
        return booster
    if framework == "lightgbm":
        import lightgbm as lgb

        return lgb.Booster(model_str=data.decode())
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])


def floor_main(n: int, artifact_dir: Path) -> int:
    """Runs in the bare process: print one JSON line of RSS before/after per framework."""
    import os

    out: dict[str, Any] = {}
    keep: list[Any] = []
    for key in ORDER:
        meta = json.loads((artifact_dir / f"{key}.json").read_text())
        data = (artifact_dir / f"{key}.bin").read_bytes()
        keep.append(_load(meta["framework"], data))
        _settle()
        before = rss_bytes(os.getpid())
        keep.extend(_load(meta["framework"], data) for _ in range(n))
        _settle()
        after = rss_bytes(os.getpid())
        out[key] = {"rss_before": before, "rss_after": after, "n": n}
    print(json.dumps(out), flush=True)
    return 0


def run_floor(n: int, tmp: Path) -> dict[str, Any]:
    models = bench_models()
    d = tmp / "floor"
    d.mkdir(parents=True, exist_ok=True)
    for key in ORDER:
        (d / f"{key}.bin").write_bytes(models[key].data)
        (d / f"{key}.json").write_text(json.dumps({"framework": models[key].framework}))
    root = Path(__file__).resolve().parent.parent
    res = subprocess.run(
        [sys.executable, "-m", "bench.bench_density", "floor", str(n), str(d)],
        capture_output=True, text=True, check=True, cwd=root,
    )  # fmt: skip
    doc: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return doc


# --- worker ---------------------------------------------------------------------------------


def run_worker(n: int, tmp: Path) -> dict[str, Any]:
    models = bench_models()
    sb = ShoalBench(tmp / "shoal", workers=1, shard_size=1, worker_env=WORKER_ENV).start()
    out: dict[str, Any] = {}
    try:
        # The artifacts first (one batch stores them), then N names per artifact by key.
        t0 = time.perf_counter()
        sb.bulk_register([(TENANT, f"{key}-warmup", models[key].data) for key in ORDER])
        items: list[tuple[str, str, bytes | str]] = []
        for key in ORDER:
            uri = artifact_key(models[key].sha256)
            items += [(TENANT, f"{key}-{i}", uri) for i in range(n)]
        sb.bulk_register(items)
        out["register_seconds"] = time.perf_counter() - t0
        pid = sb.worker_pid()
        for key in ORDER:
            sb.load_model(TENANT, f"{key}-warmup")
            _settle()
            rss0, host0 = rss_bytes(pid), int(sb.worker_stats().host_bytes)
            t0 = time.perf_counter()
            for i in range(n):
                sb.load_model(TENANT, f"{key}-{i}")
            load_s = time.perf_counter() - t0
            _settle()
            st = sb.worker_stats()
            out[key] = {
                "rss_before": rss0,
                "rss_after": rss_bytes(pid),
                "host_before": host0,
                "host_after": int(st.host_bytes),
                "models_resident": int(st.models_resident),
                "load_seconds": load_s,
                "n": n,
            }
    finally:
        sb.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "floor":
        return floor_main(int(argv[1]), Path(argv[2]))
    cfg = BenchConfig.from_env()
    n = cfg.density_models
    with scratch("density", cfg.keep) as tmp:
        print(f"== floor: {n} models per framework in a bare process", flush=True)
        floor = run_floor(n, tmp)
        print(f"== worker: {n} models per framework", flush=True)
        worker = run_worker(n, tmp)
    models = bench_models()
    figs: list[dict[str, Any]] = []
    for key in ORDER:
        w, f = worker[key], floor[key]
        w_rss = (w["rss_after"] - w["rss_before"]) / n
        w_acc = (w["host_after"] - w["host_before"]) / n
        f_rss = (f["rss_after"] - f["rss_before"]) / n
        ratio = w_rss / f_rss if f_rss > 0 else float("nan")
        figs += [
            figure(f"{key}: worker RSS per model / floor", ratio, "x", "<= 1.3", ratio <= 1.3),
            figure(f"{key}: worker RSS per model", w_rss / 1024, "KiB"),
            figure(f"{key}: floor RSS per model (bare process)", f_rss / 1024, "KiB"),
            figure(f"{key}: worker-accounted bytes per model", w_acc / 1024, "KiB"),
            figure(f"{key}: worker accounting / worker RSS", w_acc / w_rss if w_rss else 0, "x"),
            figure(f"{key}: artifact size", models[key].size / 1024, "KiB"),
            figure(f"{key}: worker loads/s (sequential)", n / w["load_seconds"], "models/s"),
        ]
        print(f"  {key}: worker {w_rss / 1024:.0f} KiB/model (accounted {w_acc / 1024:.0f}), "
              f"floor {f_rss / 1024:.0f} KiB/model, ratio {ratio:.2f}", flush=True)  # fmt: skip
    extra = {"config": cfg.as_dict(), "worker_env": WORKER_ENV, "worker": worker, "floor": floor}
    path = write_results("density", figs, extra)
    print(f"wrote {path} and {path.with_suffix('.md').name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
