"""Sub-commands that need no cluster: ``shoal inspect FILE`` validates an artifact locally."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from shoal.artifacts import ArtifactError
from shoal.cli.errors import CliError
from shoal.frameworks import inspect_artifact


def register(sub: Any) -> None:
    p = sub.add_parser("inspect", help="validate a model file and print its format and signature")
    p.add_argument("file", type=Path)
    p.add_argument("--framework", help="expected framework: xgboost, lightgbm or onnx")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_inspect)


def _inspect(ns: argparse.Namespace) -> int:
    try:
        data = ns.file.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {ns.file}: {exc.strerror}") from None
    try:
        info = inspect_artifact(data, ns.framework)
    except ArtifactError as exc:
        raise CliError(f"{ns.file}: {exc}") from None
    out = {
        "framework": info.framework,
        "format": info.format,
        "sha256": info.sha256,
        "size": info.size,
        "signature": info.signature.to_dict(),
        **info.details,
    }
    if ns.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"{k:>12}: {v}")
    return 0
