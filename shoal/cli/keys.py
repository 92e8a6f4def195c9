"""``shoal keys``: create, list and revoke API keys (an operator command: it talks to etcd).

Keys are printed once, at creation; only their salted hashes are stored.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from shoal.auth import ADMIN, create_key, list_keys, revoke_key
from shoal.cli.errors import CliError
from shoal.cli.etcd import with_store


def register(sub: Any) -> None:
    p = sub.add_parser("keys", help="create, list or revoke API keys (needs etcd access)")
    p.add_argument("--etcd", default=None, help="etcd endpoint (default $SHOAL_ETCD)")
    ks = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    c = ks.add_parser("create", help="create a key for a tenant (printed once)")
    c.add_argument("tenant", nargs="?", default="", help="tenant id (omit with --admin)")
    c.add_argument("--admin", action="store_true", help="an admin key for the control plane")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=_create)
    ls = ks.add_parser("list", help="list a tenant's key ids")
    ls.add_argument("tenant", nargs="?", default="")
    ls.add_argument("--admin", action="store_true")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_list)
    r = ks.add_parser("revoke", help="revoke a key by its id")
    r.add_argument("tenant", help=f"tenant id ({ADMIN} for admin keys)")
    r.add_argument("key_id")
    r.set_defaults(func=_revoke)


def _tenant(ns: argparse.Namespace) -> str:
    if getattr(ns, "admin", False):
        return ADMIN
    if not ns.tenant:
        raise CliError("give a tenant id, or --admin")
    return str(ns.tenant)


def _create(ns: argparse.Namespace) -> int:
    tenant = _tenant(ns)
    key, key_id = asyncio.run(with_store(ns, lambda s: create_key(s, tenant)))
    if ns.json:
        print(json.dumps({"tenant": tenant, "key_id": key_id, "key": key}))
    else:
        print(key)
    return 0


def _list(ns: argparse.Namespace) -> int:
    tenant = _tenant(ns)
    ids = asyncio.run(with_store(ns, lambda s: list_keys(s, tenant)))
    if ns.json:
        print(json.dumps({"tenant": tenant, "key_ids": ids}))
    else:
        for kid in ids:
            print(kid)
    return 0


def _revoke(ns: argparse.Namespace) -> int:
    found = asyncio.run(with_store(ns, lambda s: revoke_key(s, ns.tenant, ns.key_id)))
    if not found:
        raise CliError(f"tenant {ns.tenant} has no key {ns.key_id}")
    print(f"revoked {ns.key_id}")
    return 0
