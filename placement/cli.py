"""``shoal placement``: run the placement service (the leader's loops, and the control plane).

``shoal placement show T`` is a client command (``shoal.cli.cluster``); it is an action of
this command's parser, added here.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from placement.service import PlacementService
from placement.settings import PlacementSettings
from shoal.cli.cluster import register_placement_actions
from shoal.cli.errors import CliError
from shoal.runner import Runner
from shoal.settings import describe, from_env


def register(sub: Any) -> None:
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
    p.add_argument(
        "--advertise-address", help="host:port others reach it at ($SHOAL_ADVERTISE_ADDRESS)"
    )
    p.set_defaults(func=_run)
    register_placement_actions(p.add_subparsers(dest="action", metavar="ACTION"))


def _run(ns: argparse.Namespace) -> int:
    overrides = {
        k: getattr(ns, k)
        for k in (
            "etcd",
            "store",
            "host",
            "control_port",
            "metrics_port",
            "instance_id",
            "advertise_address",
        )
    }
    try:
        settings = from_env(PlacementSettings, **overrides)
    except (ValueError, TypeError) as exc:
        raise CliError(str(exc)) from None
    try:
        return asyncio.run(Runner(PlacementService(settings)).serve())
    except OSError as exc:
        raise CliError(f"placement service: {exc}") from None
