"""``shoal placement show T`` (a tenant's ranked shard members, per pool) and ``shoal workers``
(each worker's cache use and load): views of the cluster through the control plane.

``placement show`` is an action of the ``shoal placement`` command, whose parser the placement
role builds (``placement/cli.py`` calls ``register_placement_actions``).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from shoal.cli.control import ControlClient, client_args
from shoal.cli.pins import register_drain_actions
from shoal.pb import shoal_control_pb2 as pb


def register(sub: Any) -> None:
    p = sub.add_parser("workers", help="list workers with their cache use and load")
    client_args(p)
    p.add_argument("--pool", default="", help="only this pool")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_workers)
    register_drain_actions(p.add_subparsers(dest="action", metavar="ACTION"))


def register_placement_actions(actions: Any) -> None:
    """The client actions of ``shoal placement`` (its subparsers)."""
    a = actions.add_parser("show", help="members of a tenant's shard, ranked, per pool")
    client_args(a)
    a.add_argument("tenant")
    a.add_argument("--pool", default="", help="only this pool")
    a.add_argument("--model", default="", help="a model name, to report warm members if known")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    a.set_defaults(func=_show)


def _show(ns: argparse.Namespace) -> int:
    req = pb.PlacementRequest(tenant=ns.tenant, pool=ns.pool, model=ns.model)
    resp = ControlClient.from_args(ns).call(lambda s: s.GetPlacement(req, timeout=10))
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
    req = pb.ListWorkersRequest(pool=ns.pool)
    resp = ControlClient.from_args(ns).call(lambda s: s.ListWorkers(req, timeout=10))
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
