"""What every benchmark result carries: date, commit, machine and package versions.

``write_results(name, figures)`` writes ``bench/results/<date>-<commit>-<name>.json`` and a
markdown table beside it (smoke runs, ``BENCH_SMOKE=1``, write under ``bench/.peers/``
instead). A figure is ``{"name", "value", "unit", "target", "met"}``; a figure without
context is not a result.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
PACKAGES = (
    "grpcio", "protobuf", "numpy", "xgboost", "lightgbm", "onnxruntime-gpu", "aetcd", "obstore",
)  # fmt: skip


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, check=True, cwd=RESULTS.parent,
        )  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True, cwd=RESULTS.parent,
        ).stdout.strip()  # fmt: skip
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def context() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": commit(),
        "machine": {
            "cores": os.cpu_count(),
            "memory_bytes": _mem_bytes(),
            "cpu": _cpu_model(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "versions": versions,
    }


def figure(
    name: str, value: float, unit: str, target: str = "", met: bool | None = None
) -> dict[str, Any]:
    return {"name": name, "value": value, "unit": unit, "target": target, "met": met}


def results_dir() -> Path:
    """``$BENCH_RESULTS`` if set, else ``bench/.peers/results-smoke`` for smoke runs (kept out
    of git), else ``bench/results``."""
    if os.environ.get("BENCH_RESULTS"):
        return Path(os.environ["BENCH_RESULTS"])
    if os.environ.get("BENCH_SMOKE", "0") not in ("", "0", "false", "no"):
        return RESULTS.parent / ".peers" / "results-smoke"
    return RESULTS


def write_results(name: str, figures: list[dict[str, Any]], extra: Any = None) -> Path:
    ctx = context()
    out = results_dir()
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{ctx['date'][:10]}-{ctx['commit']}-{name}"
    doc = {**ctx, "bench": name, "figures": figures, "extra": extra}
    path = out / f"{stem}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    m = ctx["machine"]
    lines = [
        f"# {name} — {ctx['date']} — commit {ctx['commit']}",
        "",
        f"Machine: {m['cores']} cores, {m['memory_bytes'] / 2**30:.1f} GiB, {m['cpu']}",
        "",
        "| figure | value | unit | target | met |",
        "|---|---|---|---|---|",
    ]
    for f in figures:
        met = {True: "yes", False: "**no**", None: ""}[f["met"]]
        lines.append(f"| {f['name']} | {f['value']:.4g} | {f['unit']} | {f['target']} | {met} |")
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return path
