"""``shoal alias``, ``shoal traffic``, ``shoal shadow``: how requests choose among a model's
versions (each one compare-and-swap write of the model's record on the control plane)."""

from __future__ import annotations

import argparse
from typing import Any

from shoal.cli.control import ControlClient, client_args, model_arg
from shoal.cli.errors import CliError
from shoal.pb import shoal_control_pb2 as pb


def register(sub: Any) -> None:
    p = sub.add_parser("alias", help="point an alias at a version, or delete it")
    acts = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = acts.add_parser("set", help="set ALIAS of T/M to VERSION")
    client_args(a)
    a.add_argument("model", metavar="T/M")
    a.add_argument("alias")
    a.add_argument("version", type=int)
    a.add_argument("--wait-loaded", action="store_true", help="warm the shard members first")
    a.add_argument("--timeout", type=float, default=0.0, help="warm-up deadline in seconds")
    a.set_defaults(func=_alias_set)
    a = acts.add_parser("delete", help="delete ALIAS of T/M")
    client_args(a)
    a.add_argument("model", metavar="T/M")
    a.add_argument("alias")
    a.set_defaults(func=_alias_delete)

    p = sub.add_parser("traffic", help="split requests between versions, or clear the split")
    acts = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = acts.add_parser("set", help="e.g. `shoal traffic set acme/churn 3=90 4=10`")
    client_args(a)
    a.add_argument("model", metavar="T/M")
    a.add_argument("split", nargs="+", metavar="VERSION=PERCENT")
    a.set_defaults(func=_traffic_set)
    a = acts.add_parser("clear", help="remove the split")
    client_args(a)
    a.add_argument("model", metavar="T/M")
    a.set_defaults(func=_traffic_clear)

    p = sub.add_parser("shadow", help="copy a share of requests to a version, or stop")
    acts = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = acts.add_parser("set", help="shadow P percent of requests to VERSION")
    client_args(a)
    a.add_argument("model", metavar="T/M")
    a.add_argument("version", type=int)
    a.add_argument("--percent", type=float, required=True)
    a.set_defaults(func=_shadow_set)
    a = acts.add_parser("clear", help="remove the shadow")
    client_args(a)
    a.add_argument("model", metavar="T/M")
    a.set_defaults(func=_shadow_clear)


def _alias_set(ns: argparse.Namespace) -> int:
    tenant, name = model_arg(ns)
    req = pb.SetAliasRequest(
        tenant=tenant,
        name=name,
        alias=ns.alias,
        version=ns.version,
        wait_loaded=ns.wait_loaded,
        warm_timeout_s=ns.timeout,
    )
    deadline = (ns.timeout or 60.0) + 30.0 if ns.wait_loaded else 30.0
    ControlClient.from_args(ns).call(lambda s: s.SetAlias(req, timeout=deadline))
    print(f"{tenant}/{name}: {ns.alias} -> {ns.version}")
    return 0


def _alias_delete(ns: argparse.Namespace) -> int:
    tenant, name = model_arg(ns)
    req = pb.DeleteAliasRequest(tenant=tenant, name=name, alias=ns.alias)
    ControlClient.from_args(ns).call(lambda s: s.DeleteAlias(req, timeout=30))
    print(f"{tenant}/{name}: alias {ns.alias} deleted")
    return 0


def _traffic_set(ns: argparse.Namespace) -> int:
    tenant, name = model_arg(ns)
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
    ControlClient.from_args(ns).call(lambda s: s.SetTraffic(req, timeout=30))
    shown = " ".join(f"{v}={p}%" for v, p in sorted(split.items()))
    print(f"{tenant}/{name}: traffic {shown}")
    return 0


def _traffic_clear(ns: argparse.Namespace) -> int:
    tenant, name = model_arg(ns)
    req = pb.SetTrafficRequest(tenant=tenant, name=name)
    ControlClient.from_args(ns).call(lambda s: s.SetTraffic(req, timeout=30))
    print(f"{tenant}/{name}: traffic split cleared")
    return 0


def _shadow_set(ns: argparse.Namespace) -> int:
    tenant, name = model_arg(ns)
    if ns.version <= 0:
        raise CliError(f"version {ns.version}: expected a positive version number")
    req = pb.SetShadowRequest(tenant=tenant, name=name, version=ns.version, percent=ns.percent)
    ControlClient.from_args(ns).call(lambda s: s.SetShadow(req, timeout=30))
    print(f"{tenant}/{name}: shadow {ns.percent:g}% to version {ns.version}")
    return 0


def _shadow_clear(ns: argparse.Namespace) -> int:
    tenant, name = model_arg(ns)
    req = pb.SetShadowRequest(tenant=tenant, name=name, version=0)
    ControlClient.from_args(ns).call(lambda s: s.SetShadow(req, timeout=30))
    print(f"{tenant}/{name}: shadow cleared")
    return 0
