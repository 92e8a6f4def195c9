"""``make bench``: run every ``bench/bench_*.py``, each in its own process, then one summary.

Each script writes its own ``<date>-<commit>-<name>.json`` / ``.md``; a failing script is
reported and the others still run (exit status 1 at the end). Afterwards the results written
by this run are merged into ``<date>-<commit>.json`` (every figure, its target and whether it
was met, per benchmark) and ``<date>-<commit>.md``, and the markdown is copied to
``latest.md`` so the README can link one stable path.

``python -m bench.run_all [NAME ...]`` runs only the named benchmarks (e.g. ``warm cold``).
Knobs: see ``bench.config`` (``BENCH_SMOKE=1`` for a quick plumbing run).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python bench/run_all.py
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.common import context, results_dir

HERE = Path(__file__).resolve().parent


def merge(paths: list[Path], out_dir: Path) -> Path:
    """Merge per-benchmark results into one JSON + markdown; return the JSON's path."""
    ctx = context()
    docs = [json.loads(p.read_text()) for p in paths]
    summary: dict[str, Any] = {**ctx, "benches": {d["bench"]: d for d in docs}}
    stem = f"{ctx['date'][:10]}-{ctx['commit']}"
    path = out_dir / f"{stem}.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    m = ctx["machine"]
    md = [
        f"# Shoal benchmarks — {ctx['date']} — commit {ctx['commit']}",
        "",
        f"Machine: {m['cores']} cores, {m['memory_bytes'] / 2**30:.1f} GiB, {m['cpu']}; "
        f"Python {m['python']}",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in ctx["versions"].items() if v),
        "",
        "## Targets",
        "",
        "| bench | figure | value | unit | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for d in docs:
        for f in d["figures"]:
            if f["target"]:
                met = {True: "yes", False: "**no**", None: ""}[f["met"]]
                md.append(f"| {d['bench']} | {f['name']} | {f['value']:.4g} | {f['unit']} | "
                          f"{f['target']} | {met} |")  # fmt: skip
    md.append("")
    for p in paths:
        body = p.with_suffix(".md").read_text().splitlines()
        md += ["", "#" + body[0] if body else "", *body[1:]]
    text = "\n".join(md) + "\n"
    path.with_suffix(".md").write_text(text)
    (out_dir / "latest.md").write_text(text)
    return path


def main(argv: list[str] | None = None) -> int:
    wanted = set(sys.argv[1:] if argv is None else argv)
    scripts = sorted(HERE.glob("bench_*.py"))
    if wanted:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in wanted]
    if not scripts:
        print("no benchmarks found under bench/")
        return 1
    out_dir = results_dir()
    started = time.time()
    failed = []
    for script in scripts:
        t0 = time.monotonic()
        print(f"== {script.name}", flush=True)
        rc = subprocess.run(
            [sys.executable, "-m", f"bench.{script.stem}"], cwd=HERE.parent
        ).returncode
        print(f"== {script.name}: exit {rc} after {time.monotonic() - t0:.0f}s", flush=True)
        if rc != 0:
            failed.append(script.name)
    written = sorted(
        (p for p in out_dir.glob("*-*.json")
         if p.stat().st_mtime >= started and p.with_suffix(".md").exists()
         and "bench" in json.loads(p.read_text())),
        key=lambda p: p.stat().st_mtime,
    )  # fmt: skip
    if written:
        path = merge(written, out_dir)
        print(f"summary: {path} and {path.with_suffix('.md').name} (also latest.md)")
    print(f"total {time.time() - started:.0f}s" + (f"; FAILED: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
