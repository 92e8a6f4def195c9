"""``shoal`` sub-commands of the placement service and its control plane.

* ``shoal placement`` runs the service; ``shoal placement show T`` prints a tenant's shard;
* ``shoal workers``, ``shoal models``: listings (``--json`` for machines);
* ``shoal register``, ``shoal alias``, ``shoal traffic``, ``shoal shadow``: registry writes.

Client commands talk to the control plane at ``--control`` (default ``$SHOAL_CONTROL``, then
127.0.0.1:8002) over blocking gRPC; any failure becomes one ``shoal: reason`` line and exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc

from placement.settings import PlacementSettings
from registry import convert
from shoal.pb import shoal_control_pb2 as pb
from shoal.pb import shoal_control_pb2_grpc as pb_grpc
from shoal.records import ModelRecord, split_model_name
from shoal.settings import describe, from_env

DEFAULT_CONTROL = "127.0.0.1:8002"
CHUNK = 1 << 20  # artifact bytes per Register message

T = TypeVar("T")


def register(sub: Any) -> None:
    _placement_parser(sub)

    p = sub.add_parser("workers", help="list workers with their cache use and load")
    _client_args(p)
    p.add_argument("--pool", default="", help="only this pool")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_workers)

    p = sub.add_parser(
        "models",
        help="list models, their versions, aliases, splits, shadows; prune old versions",
        description="List models page by page (printed as each page arrives, so 100K+ "
        "models never sit in memory at once), or `models prune T/M --keep N`.",
    )
    _client_args(p)
    p.add_argument("--tenant", default="", help="only this tenant's models")
    p.add_argument("--page-size", type=int, default=500, help="models per control-plane call")
    p.add_argument("--limit", type=int, default=0, help="stop after this many models (0: all)")
    p.add_argument("--json", action="store_true", help="machine-readable output (a JSON array)")
    p.set_defaults(func=_models)
    acts = p.add_subparsers(dest="action", metavar="ACTION")
    a = acts.add_parser(
        "prune",
        help="delete all but the newest N versions of T/M (never an aliased, split or "
        "shadowed one) and their artifacts",
    )
    _client_args(a)
    a.add_argument("model", metavar="T/M")
    a.add_argument("--keep", type=int, required=True, metavar="N", help="versions to keep (>= 1)")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    a.set_defaults(func=_prune)

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
    _client_args(p)
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

    p = sub.add_parser("alias", help="point an alias at a version, or delete it")
    acts = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = acts.add_parser("set", help="set ALIAS of T/M to VERSION")
    _client_args(a)
    a.add_argument("model", metavar="T/M")
    a.add_argument("alias")
    a.add_argument("version", type=int)
    a.add_argument("--wait-loaded", action="store_true", help="warm the shard members first")
    a.add_argument("--timeout", type=float, default=0.0, help="warm-up deadline in seconds")
    a.set_defaults(func=_alias_set)
    a = acts.add_parser("delete", help="delete ALIAS of T/M")
    _client_args(a)
    a.add_argument("model", metavar="T/M")
    a.add_argument("alias")
    a.set_defaults(func=_alias_delete)

    p = sub.add_parser("traffic", help="split requests between versions, or clear the split")
    acts = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = acts.add_parser("set", help="e.g. `shoal traffic set acme/churn 3=90 4=10`")
    _client_args(a)
    a.add_argument("model", metavar="T/M")
    a.add_argument("split", nargs="+", metavar="VERSION=PERCENT")
    a.set_defaults(func=_traffic_set)
    a = acts.add_parser("clear", help="remove the split")
    _client_args(a)
    a.add_argument("model", metavar="T/M")
    a.set_defaults(func=_traffic_clear)

    p = sub.add_parser("shadow", help="copy a share of requests to a version, or stop")
    acts = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = acts.add_parser("set", help="shadow P percent of requests to VERSION")
    _client_args(a)
    a.add_argument("model", metavar="T/M")
    a.add_argument("version", type=int)
    a.add_argument("--percent", type=float, required=True)
    a.set_defaults(func=_shadow_set)
    a = acts.add_parser("clear", help="remove the shadow")
    _client_args(a)
    a.add_argument("model", metavar="T/M")
    a.set_defaults(func=_shadow_clear)


def _placement_parser(sub: Any) -> None:
    env_help = "\n".join(f"  {var:<28} {text}" for var, text, _ in describe(PlacementSettings))
    p = sub.add_parser(
        "placement",
        help="run the placement service, or show a tenant's placement",
        description="Without an action: run the placement service. Settings:\n" + env_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--etcd", help="etcd endpoint(s) ($SHOAL_ETCD)")
    p.add_argument("--store", help="object store URL ($SHOAL_STORE)")
    p.add_argument("--host", help="control-plane listen address ($SHOAL_HOST)")
    p.add_argument("--port", type=int, dest="control_port", help="control-plane port")
    p.add_argument("--metrics-port", type=int, help="metrics port (0: free, -1: off)")
    p.add_argument("--instance-id", help="id in leader election")
    p.set_defaults(func=_run_service)
    acts = p.add_subparsers(dest="action", metavar="ACTION")
    a = acts.add_parser("show", help="members of a tenant's shard, ranked, per pool")
    _client_args(a)
    a.add_argument("tenant")
    a.add_argument("--pool", default="", help="only this pool")
    a.add_argument("--model", default="", help="a model name, to report warm members if known")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    a.set_defaults(func=_show)


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--control", help=f"control plane host:port ($SHOAL_CONTROL, {DEFAULT_CONTROL})")
    p.add_argument("--key", help="admin API key, sent as a bearer token ($SHOAL_KEY)")


# --- the service ----------------------------------------------------------------------------


def _run_service(ns: argparse.Namespace) -> int:
    from shoal.cli import CliError

    overrides = {
        k: getattr(ns, k)
        for k in ("etcd", "store", "host", "control_port", "metrics_port", "instance_id")
    }
    try:
        settings = from_env(PlacementSettings, **overrides)
    except (ValueError, TypeError) as exc:
        raise CliError(str(exc)) from None
    from placement.service import PlacementService
    from shoal.runner import Runner

    try:
        return asyncio.run(Runner(PlacementService(settings)).serve())
    except OSError as exc:
        raise CliError(f"placement service: {exc}") from None


# --- client plumbing ------------------------------------------------------------------------


def _target(ns: argparse.Namespace) -> str:
    return str(ns.control or os.environ.get("SHOAL_CONTROL") or DEFAULT_CONTROL)


def _metadata(ns: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    """``authorization: Bearer <key>`` from --key or $SHOAL_KEY; nothing without a key."""
    key = ns.key or os.environ.get("SHOAL_KEY", "")
    return (("authorization", f"Bearer {key}"),) if key else ()


def _credentials() -> grpc.ChannelCredentials | None:
    """TLS credentials when $SHOAL_TLS_CA is set (plus our certificate for mutual TLS)."""
    from shoal.cli import CliError

    ca = os.environ.get("SHOAL_TLS_CA", "")
    if not ca:
        return None
    cert, key = os.environ.get("SHOAL_TLS_CERT", ""), os.environ.get("SHOAL_TLS_KEY", "")
    try:
        return grpc.ssl_channel_credentials(
            root_certificates=Path(ca).read_bytes(),
            private_key=Path(key).read_bytes() if key and cert else None,
            certificate_chain=Path(cert).read_bytes() if key and cert else None,
        )
    except OSError as exc:
        raise CliError(f"cannot read TLS file: {exc}") from None


class _AddMetadata(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Adds fixed metadata (the bearer key) to every call of a blocking channel."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def _details(self, details: Any) -> Any:
        return details._replace(metadata=(*(details.metadata or ()), *self._metadata))

    def intercept_unary_unary(self, cont: Any, details: Any, request: Any) -> Any:
        return cont(self._details(details), request)

    def intercept_stream_unary(self, cont: Any, details: Any, requests: Any) -> Any:
        return cont(self._details(details), requests)

    def intercept_unary_stream(self, cont: Any, details: Any, request: Any) -> Any:
        return cont(self._details(details), request)

    def intercept_stream_stream(self, cont: Any, details: Any, requests: Any) -> Any:
        return cont(self._details(details), requests)


def _stub(ns: argparse.Namespace) -> tuple[pb_grpc.ControlStub, str]:
    target = _target(ns)
    creds = _credentials()
    options = [("grpc.max_send_message_length", 64 << 20)]
    channel = (
        grpc.secure_channel(target, creds, options=options)
        if creds is not None
        else grpc.insecure_channel(target, options=options)
    )
    metadata = _metadata(ns)
    if metadata:
        channel = grpc.intercept_channel(channel, _AddMetadata(metadata))
    return pb_grpc.ControlStub(channel), target


def _call(ns: argparse.Namespace, fn: Callable[[pb_grpc.ControlStub], T]) -> T:
    """Run ``fn(stub)``; any RPC failure becomes a one-line ``CliError``."""
    from shoal.cli import CliError

    stub, target = _stub(ns)
    try:
        return fn(stub)
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        if code == grpc.StatusCode.UNAVAILABLE and "etcd" not in (details or ""):
            raise CliError(f"control plane at {target} is unavailable: {details}") from None
        raise CliError(details or str(code)) from None


def _model(ns: argparse.Namespace) -> tuple[str, str]:
    from shoal.cli import CliError

    try:
        return split_model_name(ns.model)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _record_dict(msg: pb.ModelRecord) -> dict[str, Any]:
    rec = convert.record_from_proto(msg)
    d: dict[str, Any] = json.loads(rec.encode())
    d["mod_revision"] = rec.mod_revision
    return d


def _print_record(rec: ModelRecord) -> None:
    aliases = ", ".join(f"{a}={v}" for a, v in sorted(rec.aliases.items())) or "-"
    traffic = ", ".join(f"{v}={p}%" for v, p in sorted(rec.traffic.items())) or "-"
    shadow = f"{rec.shadow.version} ({rec.shadow.percent:g}%)" if rec.shadow else "-"
    print(f"{rec.full_name}")
    print(f"  aliases: {aliases}   traffic: {traffic}   shadow: {shadow}")
    for v in sorted(rec.versions.values(), key=lambda v: v.version):
        print(f"  v{v.version:<4} {v.format:<14} pool={v.pool:<6} {v.size:>10} B  {v.sha256[:12]}")


# --- listings -------------------------------------------------------------------------------


def _show(ns: argparse.Namespace) -> int:
    req = pb.PlacementRequest(tenant=ns.tenant, pool=ns.pool, model=ns.model)
    resp = _call(ns, lambda s: s.GetPlacement(req, timeout=10))
    pools = [
        {
            "pool": p.pool,
            "epoch": p.epoch,
            "shard_size": p.shard_size,
            "override": p.override,
            "members": [
                {
                    "worker_id": m.worker_id,
                    "address": m.address,
                    "zone": m.zone,
                    "rank": m.rank,
                    "in_shard": m.in_shard,
                    "up": m.up,
                    "warm": m.warm,
                }
                for m in p.members
            ],
        }
        for p in resp.pools
    ]
    if ns.json:
        print(json.dumps({"tenant": resp.tenant, "pools": pools}, indent=2))
        return 0
    if not pools:
        print(f"{ns.tenant}: no pool has a published placement yet")
    for p in pools:
        override = f", override: {p['override']}" if p["override"] else ""
        print(
            f"{ns.tenant} in pool {p['pool']} (epoch {p['epoch']}, k={p['shard_size']}{override})"
        )
        for m in p["members"]:
            flags = " ".join(
                f
                for f, on in (("shard", m["in_shard"]), ("down", not m["up"]), ("warm", m["warm"]))
                if on
            )
            zone = m["zone"] or "-"
            print(f"  {m['rank']:>3}  {m['worker_id']:<20} {m['address']:<22} {zone:<8} {flags}")
    return 0


_WORKER_FIELDS = (
    "worker_id", "pool", "address", "zone", "device", "ready", "draining", "started_at",
    "host_budget", "gpu_budget", "disk_budget", "host_bytes", "gpu_bytes", "disk_bytes",
    "models_resident", "requests_per_s", "in_flight", "metrics_address",
)  # fmt: skip


def _workers(ns: argparse.Namespace) -> int:
    resp = _call(ns, lambda s: s.ListWorkers(pb.ListWorkersRequest(pool=ns.pool), timeout=10))
    rows = [{f: getattr(w, f) for f in _WORKER_FIELDS} for w in resp.workers]
    if ns.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no workers registered")
    for r in rows:
        state = "draining" if r["draining"] else ("ready" if r["ready"] else "starting")
        print(
            f"{r['worker_id']:<20} {r['pool']:<6} {r['address']:<22} {r['zone'] or '-':<8} "
            f"{state:<9} models={r['models_resident']} host={_mib(r['host_bytes'])}/"
            f"{_mib(r['host_budget'])} req/s={r['requests_per_s']:.1f} in_flight={r['in_flight']}"
        )
    return 0


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.0f}MiB"


def _models(ns: argparse.Namespace) -> int:
    """Stream the listing: each page is printed as it arrives, then dropped.

    JSON output is one array written element by element, so it stays valid for any number
    of models; ``--limit`` stops early (and asks for no more than it still needs).
    """
    from shoal.cli import CliError

    if ns.page_size < 1 or ns.limit < 0:
        raise CliError("--page-size must be >= 1 and --limit >= 0")

    def run(stub: pb_grpc.ControlStub) -> int:
        token, shown = "", 0
        if ns.json:
            sys.stdout.write("[")
        while True:
            size = ns.page_size if not ns.limit else min(ns.page_size, ns.limit - shown)
            req = pb.ListModelsRequest(tenant=ns.tenant, page_size=size, page_token=token)
            resp = stub.ListModels(req, timeout=30)
            for m in resp.models:
                if ns.json:
                    sep = "\n  " if shown == 0 else ",\n  "
                    sys.stdout.write(sep + json.dumps(_record_dict(m), separators=(",", ":")))
                else:
                    _print_record(convert.record_from_proto(m))
                shown += 1
            sys.stdout.flush()
            token = resp.next_page_token
            if not token or (ns.limit and shown >= ns.limit):
                break
        if ns.json:
            sys.stdout.write("\n]\n" if shown else "]\n")
        elif not shown:
            print("no models registered" + (f" for tenant {ns.tenant}" if ns.tenant else ""))
        return shown

    _call(ns, run)
    return 0


def _prune(ns: argparse.Namespace) -> int:
    from shoal.cli import CliError

    tenant, name = _model(ns)
    if ns.keep < 1:
        raise CliError(f"--keep {ns.keep}: keep at least 1 version")
    req = pb.DeleteVersionsRequest(tenant=tenant, name=name, keep_last=ns.keep)
    resp = _call(ns, lambda s: s.DeleteVersions(req, timeout=120))
    kept = sorted(v.version for v in resp.model.versions)
    if ns.json:
        print(
            json.dumps({"model": f"{tenant}/{name}", "deleted": list(resp.deleted), "kept": kept})
        )
        return 0
    deleted = ", ".join(str(v) for v in resp.deleted) or "none"
    print(f"{tenant}/{name}: deleted versions {deleted}; kept {', '.join(map(str, kept))}")
    return 0


# --- writes ---------------------------------------------------------------------------------


def _register(ns: argparse.Namespace) -> int:
    from shoal.cli import CliError

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

    resp = _call(ns, lambda s: s.Register(chunks(), timeout=300))
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


#: Failed manifest lines listed one by one on stderr before "... and N more" (--json: all).
SHOWN_ERRORS = 100


def _register_manifest(ns: argparse.Namespace) -> int:
    """``register --manifest``: summary on stdout, one line per failure on stderr, exit 1 if
    any line failed (the last stderr line then says how many)."""
    from shoal.cli import CliError
    from shoal.manifest import run_manifest

    if ns.framework or ns.pool or ns.alias or ns.label:
        raise CliError("--framework/--pool/--alias/--label go with FILE; set them per line")
    if ns.streams < 1:
        raise CliError(f"--streams {ns.streams}: expected at least 1")
    if not ns.manifest.is_file():
        raise CliError(f"cannot read manifest {ns.manifest}: no such file")
    target = _target(ns)
    try:
        summary = asyncio.run(
            run_manifest(
                target,
                ns.manifest,
                streams=ns.streams,
                progress=ns.progress,
                metadata=_metadata(ns) or None,
                credentials=_credentials(),
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


def _alias_set(ns: argparse.Namespace) -> int:
    tenant, name = _model(ns)
    req = pb.SetAliasRequest(
        tenant=tenant,
        name=name,
        alias=ns.alias,
        version=ns.version,
        wait_loaded=ns.wait_loaded,
        warm_timeout_s=ns.timeout,
    )
    deadline = (ns.timeout or 60.0) + 30.0 if ns.wait_loaded else 30.0
    _call(ns, lambda s: s.SetAlias(req, timeout=deadline))
    print(f"{tenant}/{name}: {ns.alias} -> {ns.version}")
    return 0


def _alias_delete(ns: argparse.Namespace) -> int:
    tenant, name = _model(ns)
    req = pb.DeleteAliasRequest(tenant=tenant, name=name, alias=ns.alias)
    _call(ns, lambda s: s.DeleteAlias(req, timeout=30))
    print(f"{tenant}/{name}: alias {ns.alias} deleted")
    return 0


def _traffic_set(ns: argparse.Namespace) -> int:
    from shoal.cli import CliError

    tenant, name = _model(ns)
    split: dict[int, int] = {}
    for item in ns.split:
        version, sep, percent = item.partition("=")
        try:
            if not sep:
                raise ValueError
            split[int(version)] = int(percent)
        except ValueError:
            raise CliError(f"{item!r}: expected VERSION=PERCENT, e.g. 3=90") from None
    req = pb.SetTrafficRequest(tenant=tenant, name=name, percent=split)
    _call(ns, lambda s: s.SetTraffic(req, timeout=30))
    shown = " ".join(f"{v}={p}%" for v, p in sorted(split.items()))
    print(f"{tenant}/{name}: traffic {shown}")
    return 0


def _traffic_clear(ns: argparse.Namespace) -> int:
    tenant, name = _model(ns)
    req = pb.SetTrafficRequest(tenant=tenant, name=name)
    _call(ns, lambda s: s.SetTraffic(req, timeout=30))
    print(f"{tenant}/{name}: traffic split cleared")
    return 0


def _shadow_set(ns: argparse.Namespace) -> int:
    from shoal.cli import CliError

    tenant, name = _model(ns)
    if ns.version <= 0:
        raise CliError(f"version {ns.version}: expected a positive version number")
    req = pb.SetShadowRequest(tenant=tenant, name=name, version=ns.version, percent=ns.percent)
    _call(ns, lambda s: s.SetShadow(req, timeout=30))
    print(f"{tenant}/{name}: shadow {ns.percent:g}% to version {ns.version}")
    return 0


def _shadow_clear(ns: argparse.Namespace) -> int:
    tenant, name = _model(ns)
    req = pb.SetShadowRequest(tenant=tenant, name=name, version=0)
    _call(ns, lambda s: s.SetShadow(req, timeout=30))
    print(f"{tenant}/{name}: shadow cleared")
    return 0
