"""``shoal tenants``: show and set a tenant's overrides (an operator command: it talks to etcd).

``set`` changes only the fields it is given, with a compare-and-swap on the tenant record
(``/shoal/tenants/<tenant>``), so it never undoes a concurrent key change. Routers and the
placement service watch the record: a new quota applies to the next request, a new shard size
to the next lookup.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import replace
from typing import Any

from shoal.auth import update_tenant
from shoal.cli.errors import CliError
from shoal.cli.etcd import with_store
from shoal.records import TenantConfig, check_ident, tenant_key
from shoal.state import StateStore


def register(sub: Any) -> None:
    p = sub.add_parser(
        "tenants", help="show or set a tenant's quotas and shard size (needs etcd access)"
    )
    p.add_argument("--etcd", default=None, help="etcd endpoint (default $SHOAL_ETCD)")
    ts = p.add_subparsers(dest="tenants_command", metavar="ACTION", required=True)
    show = ts.add_parser("show", help="a tenant's overrides (0: the cluster default)")
    show.add_argument("tenant")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=_show)
    s = ts.add_parser("set", help="change a tenant's overrides (only the ones given)")
    s.add_argument("tenant")
    s.add_argument(
        "--rate-limit", type=float, help="requests/s at each router (0: the router default)"
    )
    s.add_argument(
        "--max-in-flight", type=int, help="requests in flight at each router (0: the default)"
    )
    s.add_argument("--shard-size", type=int, help="workers serving the tenant (0: the default)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_set)


def _view(cfg: TenantConfig) -> dict[str, Any]:
    return {
        "tenant": cfg.tenant,
        "rate_limit": cfg.rate_limit,
        "max_in_flight": cfg.max_in_flight,
        "shard_size": cfg.shard_size,
        "members": list(cfg.members),
        "keys": len(cfg.key_hashes),
    }


def _print(cfg: TenantConfig, as_json: bool) -> None:
    view = _view(cfg)
    if as_json:
        print(json.dumps(view))
        return
    for k, v in view.items():
        print(f"{k:<14} {v}")


async def _get(store: StateStore, tenant: str) -> TenantConfig:
    kv = await store.get(tenant_key(tenant))
    return TenantConfig.decode(kv.value) if kv else TenantConfig(tenant)


def _check(ns: argparse.Namespace) -> None:
    try:
        check_ident("tenant", ns.tenant)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    for flag in ("rate_limit", "max_in_flight", "shard_size"):
        value = getattr(ns, flag, None)
        if value is not None and value < 0:
            raise CliError(f"--{flag.replace('_', '-')} must be >= 0 (0: the default)")


def _show(ns: argparse.Namespace) -> int:
    _check(ns)
    cfg = asyncio.run(with_store(ns, lambda s: _get(s, ns.tenant)))
    _print(cfg, ns.json)
    return 0


def _set(ns: argparse.Namespace) -> int:
    _check(ns)
    changes = {
        k: v
        for k, v in (
            ("rate_limit", ns.rate_limit),
            ("max_in_flight", ns.max_in_flight),
            ("shard_size", ns.shard_size),
        )
        if v is not None
    }
    if not changes:
        raise CliError("nothing to set: give --rate-limit, --max-in-flight or --shard-size")
    cfg = asyncio.run(
        with_store(ns, lambda s: update_tenant(s, ns.tenant, lambda c: replace(c, **changes)))
    )
    _print(cfg, ns.json)
    return 0
