"""``shoal models pin|unpin|pins`` and ``shoal workers drain|undrain``: operator commands that
talk to etcd (``--etcd``, else ``$SHOAL_ETCD``).

* ``models pin T/M`` keeps the model's default-route versions resident on every member of its
  tenant's shard (``shoal.pins``: refused, with the figures, when the pinned bytes would pass
  ``--max-fraction`` of a member's host budget); ``unpin`` lets them go; ``pins`` lists them.
* ``workers drain W`` asks worker W to hand its hot models over and leave its pool (it keeps
  running, out of the pool, restarts included); with ``--wait`` the command returns once the
  pool's snapshot no longer lists it. ``workers undrain W`` lets it join again (warm).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from shoal.cli.errors import CliError
from shoal.cli.etcd import with_store
from shoal.pins import ModelNotFound, PinRefused, list_pins, pin, unpin
from shoal.records import WORKERS, PoolSnapshot, WorkerInfo, placement_key, split_model_name
from shoal.state import StateStore, read_prefix
from shoal.warmth import DRAIN, drain_key


def _etcd(p: Any) -> None:
    p.add_argument("--etcd", default=None, help="etcd endpoint (default $SHOAL_ETCD)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def register_pin_actions(acts: Any) -> None:
    a = acts.add_parser("pin", help="keep T/M resident on its shard's workers (needs etcd access)")
    a.add_argument("model", metavar="T/M")
    a.add_argument("--max-fraction", type=float, default=0.8,
                   help="refuse when pins would take more of a member's host budget")  # fmt: skip
    _etcd(a)
    a.set_defaults(func=_pin)
    a = acts.add_parser("unpin", help="let T/M be evicted again (needs etcd access)")
    a.add_argument("model", metavar="T/M")
    _etcd(a)
    a.set_defaults(func=_unpin)
    a = acts.add_parser("pins", help="list pinned models (needs etcd access)")
    _etcd(a)
    a.set_defaults(func=_pins)


def register_drain_actions(acts: Any) -> None:
    a = acts.add_parser("drain", help="hand worker W's hot models over; W leaves its pool")
    a.add_argument("worker_id", metavar="W")
    a.add_argument("--wait", type=float, default=0.0, metavar="S",
                   help="wait up to S seconds until the pool's snapshot drops W")  # fmt: skip
    _etcd(a)
    a.set_defaults(func=_drain)
    a = acts.add_parser("undrain", help="let a drained worker W join its pool again")
    a.add_argument("worker_id", metavar="W")
    _etcd(a)
    a.set_defaults(func=_undrain)


def _model(ns: argparse.Namespace) -> tuple[str, str]:
    try:
        return split_model_name(ns.model)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _run(ns: argparse.Namespace, fn: Any) -> Any:
    try:
        return asyncio.run(with_store(ns, fn))
    except (PinRefused, ModelNotFound) as exc:
        raise CliError(str(exc)) from None


def _pin(ns: argparse.Namespace) -> int:
    if not 0 < ns.max_fraction <= 1:
        raise CliError("--max-fraction must be in (0, 1]")
    tenant, name = _model(ns)
    report = _run(ns, lambda s: pin(s, tenant, name, ns.max_fraction))
    members = {w: {"pinned_bytes": u, "host_budget": b} for w, (u, b) in report.members.items()}
    if ns.json:
        print(json.dumps({"model": f"{tenant}/{name}", "pool": report.pin.pool,
                          "bytes": report.pin.nbytes, "members": members}))  # fmt: skip
        return 0
    print(f"pinned {tenant}/{name} ({report.pin.nbytes} B, pool {report.pin.pool})")
    for w, (used, budget) in sorted(report.members.items()):
        print(f"  {w:<20} pinned {used} B of host budget {budget} B")
    return 0


def _unpin(ns: argparse.Namespace) -> int:
    tenant, name = _model(ns)
    removed = _run(ns, lambda s: unpin(s, tenant, name))
    if ns.json:
        print(json.dumps({"model": f"{tenant}/{name}", "unpinned": removed}))
    else:
        print(f"{tenant}/{name}: " + ("unpinned" if removed else "was not pinned"))
    return 0


def _pins(ns: argparse.Namespace) -> int:
    pins = _run(ns, list_pins)
    if ns.json:
        print(json.dumps([{"model": f"{p.tenant}/{p.name}", "pool": p.pool, "bytes": p.nbytes}
                          for p in pins]))  # fmt: skip
        return 0
    if not pins:
        print("no models pinned")
    for p in pins:
        print(f"{p.tenant}/{p.name:<30} pool={p.pool:<8} {p.nbytes} B")
    return 0


async def _pool_of(store: StateStore, worker_id: str) -> str:
    kvs, _ = await read_prefix(store, WORKERS)
    for kv in kvs:
        info = WorkerInfo.decode(kv.value)
        if info.worker_id == worker_id:
            return info.pool
    raise CliError(f"worker {worker_id} is not registered (no /shoal/workers/*/{worker_id})")


async def _drain_async(store: StateStore, worker_id: str, wait: float) -> dict[str, Any]:
    pool = await _pool_of(store, worker_id)
    await store.put(drain_key(pool, worker_id), b"")
    deadline = time.monotonic() + wait
    left = False
    while True:
        kv = await store.get(placement_key(pool))
        snap = PoolSnapshot.decode(kv.value) if kv is not None else None
        left = snap is None or all(m.worker_id != worker_id for m in snap.members)
        if left or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.2)
    return {"worker_id": worker_id, "pool": pool, "drained": True, "left_pool": left}


def _drain(ns: argparse.Namespace) -> int:
    out = _run(ns, lambda s: _drain_async(s, ns.worker_id, max(0.0, ns.wait)))
    if ns.json:
        print(json.dumps(out))
    else:
        state = "has left the pool" if out["left_pool"] else "is handing over"
        print(f"{out['worker_id']} (pool {out['pool']}): drain requested; it {state}")
    if ns.wait > 0 and not out["left_pool"]:
        raise CliError(f"{ns.worker_id} is still in pool {out['pool']}'s snapshot after {ns.wait}s")
    return 0


async def _undrain_async(store: StateStore, worker_id: str) -> dict[str, Any]:
    kvs, _ = await read_prefix(store, DRAIN)
    hits = [kv.key for kv in kvs if kv.key.endswith(f"/{worker_id}")]
    for key in hits:
        await store.delete(key)
    return {"worker_id": worker_id, "undrained": bool(hits)}


def _undrain(ns: argparse.Namespace) -> int:
    out = _run(ns, lambda s: _undrain_async(s, ns.worker_id))
    if ns.json:
        print(json.dumps(out))
    else:
        print(f"{ns.worker_id}: " + ("may join again" if out["undrained"] else "was not drained"))
    return 0
