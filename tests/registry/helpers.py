"""Helpers of the registration tests: distinct tiny models, manifests, the CLI as a process,
and etcd reads that need no event loop (etcd's JSON gateway)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from bench.bench_register import tiny_models, variant
from shoal.records import MODELS, ModelRecord
from shoal.state import prefix_end

ROOT = Path(__file__).resolve().parents[2]

_MODELS: dict[str, bytes] = {}


def model_variant(i: int, n: int = 100_000) -> tuple[str, bytes]:
    """(framework, bytes): the ``i``-th distinct valid tiny model (XGBoost even, LightGBM odd)."""
    if not _MODELS:
        _MODELS.update(tiny_models())
    framework = "xgboost" if i % 2 == 0 else "lightgbm"
    return framework, variant(_MODELS[framework], framework, i, n)


def write_manifest(
    folder: Path, n: int, tenant: str = "t{i:04d}", start: int = 0, name: str = "churn"
) -> Path:
    """``n`` model files and ``folder/models.jsonl`` (one line per model, relative paths)."""
    (folder / "models").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(start, start + n):
        framework, data = model_variant(i)
        rel = f"models/m{i:05d}.{'json' if framework == 'xgboost' else 'txt'}"
        (folder / rel).write_bytes(data)
        lines.append({"tenant": tenant.format(i=i), "name": name, "path": rel})
    manifest = folder / "models.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    env.update(extra)
    return env


def cli_args(*args: str) -> list[str]:
    """The ``shoal`` command as a process of this interpreter."""
    return [sys.executable, "-m", "shoal.cli", *args]


def shoal(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Any:
    """Run ``shoal ARGS`` in a child process; the ``CompletedProcess`` (text)."""
    return subprocess.run(
        cli_args(*args),
        capture_output=True,
        text=True,
        env=env if env is not None else cli_env(),
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )


def _gateway(url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        doc: dict[str, Any] = json.loads(r.read())
    return doc


def _b64(s: str) -> str:
    return base64.b64encode(s.encode(errors="surrogateescape")).decode()


def count_models(url: str) -> int:
    """How many model records exist (one count-only range, no event loop)."""
    doc = _gateway(
        url,
        "/v3/kv/range",
        {"key": _b64(MODELS), "range_end": _b64(prefix_end(MODELS)), "count_only": True},
    )
    return int(doc.get("count", 0))


def model_records(url: str) -> tuple[int, dict[str, tuple[int, ModelRecord]]]:
    """(store revision, key -> (mod_revision, record)) of every model record."""
    doc = _gateway(
        url, "/v3/kv/range", {"key": _b64(MODELS), "range_end": _b64(prefix_end(MODELS))}
    )
    out = {}
    for kv in doc.get("kvs") or []:
        key = base64.b64decode(kv["key"]).decode()
        out[key] = (int(kv["mod_revision"]), ModelRecord.decode(base64.b64decode(kv["value"])))
    return int(doc["header"]["revision"]), out
