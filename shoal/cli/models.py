"""``shoal models``: list models page by page, and ``shoal models prune T/M --keep N``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from shoal.cli.control import ControlClient, client_args, model_arg
from shoal.cli.errors import CliError
from shoal.cli.pins import register_pin_actions
from shoal.pb import shoal_control_pb2 as pb
from shoal.pb import shoal_control_pb2_grpc as pb_grpc
from shoal.records import ModelRecord
from shoal.records_pb import record_from_proto


def register(sub: Any) -> None:
    p = sub.add_parser(
        "models",
        help="list models, their versions, aliases, splits, shadows; prune old versions",
        description="List models page by page (printed as each page arrives, so 100K+ "
        "models never sit in memory at once), or `models prune T/M --keep N`.",
    )
    client_args(p)
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
    client_args(a)
    a.add_argument("model", metavar="T/M")
    a.add_argument("--keep", type=int, required=True, metavar="N", help="versions to keep (>= 1)")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    a.set_defaults(func=_prune)
    register_pin_actions(acts)


def _record_dict(msg: pb.ModelRecord) -> dict[str, Any]:
    rec = record_from_proto(msg)
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


def _models(ns: argparse.Namespace) -> int:
    """Stream the listing: each page is printed as it arrives, then dropped.

    JSON output is one array written element by element, so it stays valid for any number
    of models; ``--limit`` stops early (and asks for no more than it still needs).
    """
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
                    _print_record(record_from_proto(m))
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

    ControlClient.from_args(ns).call(run)
    return 0


def _prune(ns: argparse.Namespace) -> int:
    tenant, name = model_arg(ns)
    if ns.keep < 1:
        raise CliError(f"--keep {ns.keep}: keep at least 1 version")
    req = pb.DeleteVersionsRequest(tenant=tenant, name=name, keep_last=ns.keep)
    resp = ControlClient.from_args(ns).call(lambda s: s.DeleteVersions(req, timeout=120))
    kept = sorted(v.version for v in resp.model.versions)
    if ns.json:
        print(
            json.dumps({"model": f"{tenant}/{name}", "deleted": list(resp.deleted), "kept": kept})
        )
        return 0
    deleted = ", ".join(str(v) for v in resp.deleted) or "none"
    print(f"{tenant}/{name}: deleted versions {deleted}; kept {', '.join(map(str, kept))}")
    return 0
