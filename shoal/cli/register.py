"""``shoal register``: one model file as a new version, or every line of a JSONL manifest
(``shoal.manifest``: concurrent bulk streams, progress bar, one error line per failed line)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shoal.cli.control import ControlClient, client_args
from shoal.cli.errors import CliError
from shoal.manifest import run_manifest
from shoal.pb import shoal_control_pb2 as pb

CHUNK = 1 << 20  # artifact bytes per Register message
#: Failed manifest lines listed one by one on stderr before "... and N more" (--json: all).
SHOWN_ERRORS = 100


def register(sub: Any) -> None:
    p = sub.add_parser(
        "register",
        help="register a model file as a new version, or a JSONL manifest of many",
        description="Register FILE as a new version of --tenant/--name (prints the version), "
        "or every line of --manifest (one JSON object per line: tenant, name, path or uri, "
        "and optionally framework, alias, pool, labels, sha256). A manifest run prints a "
        "summary (registered, unchanged, failed) and one error line per failed manifest "
        "line; it exits with status 1 when any line failed. Re-running a manifest is safe: "
        "identical artifacts are reported unchanged and nothing is written.",
    )
    client_args(p)
    p.add_argument("--tenant", help="tenant (with FILE)")
    p.add_argument("--name", help="model name within the tenant (with FILE)")
    p.add_argument("--framework", default="", help="xgboost, lightgbm or onnx (default: detect)")
    p.add_argument("--pool", default="", help="worker pool (default: the framework's pool)")
    p.add_argument("--alias", default="", help="point this alias at the new version")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("file", type=Path, nargs="?", help="one model file")
    what.add_argument("--manifest", type=Path, help="a JSONL manifest of models to register")
    p.add_argument(
        "--streams", type=int, default=4, help="concurrent upload streams (with --manifest)"
    )
    p.add_argument(
        "--progress",
        action="store_true",
        help="draw the progress bar on stderr even when it is not a terminal",
    )
    p.set_defaults(func=_register)


def _register(ns: argparse.Namespace) -> int:
    if ns.manifest is not None:
        if ns.tenant or ns.name:
            raise CliError("--tenant/--name go with FILE; a manifest names models per line")
        return _register_manifest(ns)
    if not ns.tenant or not ns.name:
        raise CliError("registering FILE needs --tenant and --name")
    try:
        data = ns.file.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {ns.file}: {exc.strerror}") from None
    labels = {}
    for item in ns.label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"--label {item!r}: expected KEY=VALUE")
        labels[key] = value
    header = pb.RegisterHeader(
        tenant=ns.tenant,
        name=ns.name,
        framework=ns.framework,
        pool=ns.pool,
        alias=ns.alias,
        labels=labels,
    )

    def chunks() -> Iterator[pb.RegisterChunk]:
        yield pb.RegisterChunk(header=header)
        for i in range(0, len(data), CHUNK):
            yield pb.RegisterChunk(data=data[i : i + CHUNK])

    resp = ControlClient.from_args(ns).call(lambda s: s.Register(chunks(), timeout=300))
    if ns.json:
        out = {
            "tenant": resp.tenant,
            "name": resp.name,
            "version": resp.version,
            "created": resp.created,
            "sha256": resp.sha256,
            "pruned": list(resp.pruned),
        }
        print(json.dumps(out))
    else:
        print(resp.version)
        if not resp.created:
            print(
                f"{resp.tenant}/{resp.name}: identical artifact already registered as version "
                f"{resp.version}; nothing changed",
                file=sys.stderr,
            )
    return 0


def _register_manifest(ns: argparse.Namespace) -> int:
    """``register --manifest``: summary on stdout, one line per failure on stderr, exit 1 if
    any line failed (the last stderr line then says how many)."""
    if ns.framework or ns.pool or ns.alias or ns.label:
        raise CliError("--framework/--pool/--alias/--label go with FILE; set them per line")
    if ns.streams < 1:
        raise CliError(f"--streams {ns.streams}: expected at least 1")
    if not ns.manifest.is_file():
        raise CliError(f"cannot read manifest {ns.manifest}: no such file")
    client = ControlClient.from_args(ns)
    try:
        summary = asyncio.run(
            run_manifest(
                client.target,
                ns.manifest,
                streams=ns.streams,
                progress=ns.progress,
                metadata=client.metadata or None,
                credentials=client.credentials,
            )
        )
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read manifest {ns.manifest}: {exc}") from None
    if ns.json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        rate = summary.total / summary.seconds if summary.seconds > 0 else 0.0
        pruned = f", {summary.pruned} old versions pruned" if summary.pruned else ""
        print(
            f"registered {summary.registered}, unchanged {summary.unchanged}, "
            f"failed {summary.failed}{pruned} ({summary.total} lines in "
            f"{summary.seconds:.1f} s, {rate:,.0f}/s)"
        )
        for e in summary.errors[:SHOWN_ERRORS]:
            model = f" ({e.model})" if e.model else ""
            print(f"line {e.line}{model}: {e.error}", file=sys.stderr)
        if len(summary.errors) > SHOWN_ERRORS:
            more = len(summary.errors) - SHOWN_ERRORS
            print(f"... and {more} more failed lines (--json lists all)", file=sys.stderr)
    if summary.failed:
        raise CliError(f"{summary.failed} of {summary.total} manifest lines failed")
    return 0
