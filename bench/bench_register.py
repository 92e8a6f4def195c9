"""Registration throughput: ``shoal register --manifest`` for 100K small models, file:// store.

Setup (all local, real processes): an etcd (``LocalEtcd``), one ``shoal placement`` process
with a ``file://`` object store, and the ``shoal register --manifest`` CLI as the client, each
its own process, as in production. The models are generated here, fast:

* one tiny XGBoost booster (2 trees, depth 2, saved as JSON) and one tiny LightGBM booster
  (2 trees, 4 leaves, text) are trained once;
* ``variants`` derives N distinct *valid* artifacts from them by rewriting a value the model
  owns: the XGBoost ``base_score`` (a different intercept per tenant) or the first LightGBM
  leaf value (a different tree output). Every variant still loads, so registration validates
  each one fully (no shortcut), and every sha256 differs, so each is uploaded and recorded;
* half the tenants get XGBoost, half LightGBM; one model per tenant (``t000123/churn``).

Figures: registration throughput of the first run (everything new: hash, validate, upload,
batched etcd writes), of a second run of the same manifest (everything unchanged: nothing is
written), and the CPU seconds each process spent per model (where the time goes); the
placement figure includes its validation worker processes, also shown on their own. Target:
>= 500 models/s for the first run on the 2-core reference machine.

``python -m bench.bench_register [--models N]``; ``BENCH_SMOKE=1`` runs 2,000 models.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python bench/bench_register.py
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.common import figure, write_results

ROOT = Path(__file__).resolve().parent.parent
TARGET = 500.0  # models/s

_XGB_BASE = re.compile(rb'"base_score":"\[?[^"\]]*\]?"')
_LGB_LEAF = re.compile(rb"^leaf_value=(\S+)", re.M)


def tiny_models() -> dict[str, bytes]:
    """One tiny XGBoost JSON and one tiny LightGBM text model (trained in well under 1 s)."""
    from shoal import modelgen

    x, y = modelgen.dataset(n_rows=200, n_features=8, seed=7)
    return {
        "xgboost": modelgen.train_xgboost(x, y, n_trees=2, depth=2),
        "lightgbm": modelgen.train_lightgbm(x, y, n_trees=2, leaves=4),
    }


def variant(base: bytes, framework: str, i: int, n: int) -> bytes:
    """The ``i``-th of ``n`` distinct, valid artifacts derived from ``base``.

    XGBoost: ``base_score`` set to a distinct value in (0.1, 0.9) (kept inside (0, 1), as
    ``binary:logistic`` requires). LightGBM: the first leaf value of tree 0 shifted by
    ``i * 1e-9``. Deterministic, so a manifest regenerated with the same N is byte-identical.
    """
    if framework == "xgboost":
        value = 0.1 + 0.8 * i / max(n, 1)
        out, count = _XGB_BASE.subn(f'"base_score":"[{value:.12E}]"'.encode(), base, count=1)
    else:
        match = _LGB_LEAF.search(base)
        if match is None:
            raise ValueError("no leaf_value line in the LightGBM model")
        first, *rest = match.group(1).split(b" ")
        shifted = f"{float(first) + i * 1e-9:.17g}".encode()
        line = b"leaf_value=" + b" ".join([shifted, *rest])
        out = base[: match.start()] + line + base[match.end() :]
        count = 1
    if count != 1:
        raise ValueError(f"cannot derive a {framework} variant: the pattern was not found")
    return out


def write_manifest(folder: Path, n: int, models: dict[str, bytes]) -> Path:
    """N model files under ``folder/models`` and ``folder/models.jsonl`` naming them."""
    files = folder / "models"
    files.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        framework = "xgboost" if i % 2 == 0 else "lightgbm"
        name = f"m{i:06d}.{'json' if framework == 'xgboost' else 'txt'}"
        (files / name).write_bytes(variant(models[framework], framework, i, n))
        lines.append(json.dumps({"tenant": f"t{i:06d}", "name": "churn", "path": f"models/{name}"}))
    manifest = folder / "models.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each live child of ``pid`` (the placement's validation workers)."""
    out: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            with contextlib.suppress(OSError):  # exited in between
                out[int(child)] = _cpu_seconds(int(child))
    return out


def _spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds the children spent between two ``_children_cpu`` readings (children that
    exited in between are lost: the placement's workers live as long as it does)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def _register(control: str, manifest: Path, streams: int) -> tuple[dict[str, Any], float, float]:
    """Run the CLI; (summary, wall seconds, CLI CPU seconds)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    args = [sys.executable, "-m", "shoal.cli", "register", "--manifest", str(manifest)]
    args += ["--json", "--streams", str(streams), "--control", control]
    start = time.perf_counter()
    before = os.times()
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    wall = time.perf_counter() - start
    after = os.times()
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    try:
        summary: dict[str, Any] = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"register failed ({proc.returncode}):\n{proc.stderr[-3000:]}") from None
    if proc.returncode != 0:
        raise RuntimeError(
            f"register failed: {summary['failed']} lines, e.g. {summary['errors'][:5]}"
        )
    return summary, wall, cpu


def main(argv: list[str] | None = None) -> int:
    from shoal.devservers import LocalEtcd
    from shoal.procs import ManagedProcess, wait_until

    smoke = os.environ.get("BENCH_SMOKE", "0") not in ("", "0", "false", "no")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=2000 if smoke else 100_000)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--keep", action="store_true", help="keep the temp folder")
    ns = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="shoal-bench-register-"))
    etcd = placement = None
    try:
        t0 = time.perf_counter()
        manifest = write_manifest(tmp, ns.models, tiny_models())
        gen_s = time.perf_counter() - t0
        print(f"generated {ns.models} models in {gen_s:.1f} s", flush=True)

        # etcd's default backend quota (2 GiB) fits 100K records with room to spare.
        etcd = LocalEtcd(tmp / "etcd").start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
        env.update(
            SHOAL_ETCD=etcd.url,
            SHOAL_STORE=(tmp / "objects").as_uri(),
            SHOAL_CONTROL_PORT="0",
            SHOAL_DATA_DIR=str(tmp / "placement"),
            PYTHONUNBUFFERED="1",
        )
        placement = ManagedProcess(
            [sys.executable, "-m", "shoal.cli", "placement"], tmp / "placement.log", env=env
        ).start()
        found: list[str] = []

        def banner() -> bool:
            for line in placement.log_path.read_text(errors="replace").splitlines():
                if line.startswith("control: "):
                    found.append(line.split(": ", 1)[1].strip())
                    return True
            if not placement.alive():
                raise RuntimeError(f"placement exited:\n{placement.log_tail()}")
            return False

        wait_until(banner, 60, 0.05, "the placement banner")
        control = found[0]
        assert etcd.proc is not None

        runs: dict[str, dict[str, Any]] = {}
        for run in ("first", "second"):
            p0, e0 = _cpu_seconds(placement.pid), _cpu_seconds(etcd.proc.pid)
            w0 = _children_cpu(placement.pid)
            summary, wall, cli_cpu = _register(control, manifest, ns.streams)
            p1, e1 = _cpu_seconds(placement.pid), _cpu_seconds(etcd.proc.pid)
            workers = _spent(w0, _children_cpu(placement.pid))
            runs[run] = {
                "summary": {k: v for k, v in summary.items() if k != "errors"},
                "wall_s": wall,
                "models_per_s": ns.models / wall,
                "cpu_ms_per_model": {
                    # The placement process and its validation workers together.
                    "placement": 1000 * (p1 - p0 + workers) / ns.models,
                    "placement_workers": 1000 * workers / ns.models,
                    "etcd": 1000 * (e1 - e0) / ns.models,
                    "cli": 1000 * cli_cpu / ns.models,
                },
            }
            print(f"{run}: {json.dumps(runs[run])}", flush=True)
        first, second = runs["first"], runs["second"]
        if first["summary"]["registered"] != ns.models or second["summary"]["unchanged"] != (
            ns.models
        ):
            raise RuntimeError(f"unexpected outcome: {runs}")
        figures = [
            figure(
                f"register {ns.models} new models (manifest, {ns.streams} streams)",
                first["models_per_s"],
                "models/s",
                f">= {TARGET:.0f}",
                first["models_per_s"] >= TARGET,
            ),
            figure(
                "re-register the same manifest (all unchanged)", second["models_per_s"], "models/s"
            ),
            figure(
                "placement CPU per new model (with its validation workers)",
                first["cpu_ms_per_model"]["placement"],
                "ms",
            ),
            figure(
                "of which validation workers",
                first["cpu_ms_per_model"]["placement_workers"],
                "ms",
            ),
            figure("etcd CPU per new model", first["cpu_ms_per_model"]["etcd"], "ms"),
            figure("CLI CPU per new model", first["cpu_ms_per_model"]["cli"], "ms"),
        ]
        extra = {
            "models": ns.models,
            "streams": ns.streams,
            "store": "file://",
            "artifacts": "tiny XGBoost JSON (2 trees, depth 2) and LightGBM text (2 trees, "
            "4 leaves), alternating; distinct valid variants (base_score / first leaf value)",
            "generate_s": gen_s,
            "runs": runs,
        }
        path = write_results("register", figures, extra)
        print(f"results: {path}")
    finally:
        if placement is not None:
            placement.stop(10)
        if etcd is not None:
            etcd.stop()
        if ns.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
