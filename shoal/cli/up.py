"""``shoal up``: a whole local cluster in one command (etcd, placement, workers, router)."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import threading
from pathlib import Path
from typing import Any

from shoal import demo
from shoal.cli.errors import CliError
from shoal.cluster import LocalCluster, add_key
from shoal.manifest import run_manifest
from shoal.procs import port_open


def register(sub: Any) -> None:
    p = sub.add_parser(
        "up",
        help="start a local cluster on embedded defaults (Ctrl-C stops it)",
        description="Starts a local etcd, a file:// object store under the data dir, one "
        "placement service, N workers and one router; prints their endpoints when ready.",
    )
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--data-dir", type=Path, default=Path(".shoal"), help="state and logs")
    p.add_argument("--router-port", type=int, default=8001, help="gRPC (default 8001)")
    p.add_argument("--rest-port", type=int, default=8000, help="KServe V2 REST (default 8000)")
    p.add_argument("--control-port", type=int, default=8002)
    p.add_argument("--shard-size", type=int, default=2)
    p.add_argument("--demo", action="store_true", help="register demo tenants' models")
    p.add_argument("--demo-tenants", type=int, default=300)
    p.add_argument(
        "--no-auth", action="store_true", help="run open: no API keys (never outside a laptop)"
    )
    p.set_defaults(func=_up)


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


def _up(ns: argparse.Namespace) -> int:
    for port, what in (
        (ns.router_port, "--router-port"),
        (ns.rest_port, "--rest-port"),
        (ns.control_port, "--control-port"),
    ):
        if port and port_open("127.0.0.1", port):
            raise CliError(
                f"port {port} is already in use ({what}); is another `shoal up` running?"
            )
    cluster = LocalCluster(
        ns.data_dir,
        workers=ns.workers,
        router_port=ns.router_port,
        rest_port=ns.rest_port,
        control_port=ns.control_port,
        shard_size=ns.shard_size,
        auth=not ns.no_auth,
    )
    try:
        cluster.start()
    except (TimeoutError, RuntimeError, OSError) as exc:
        raise CliError(f"cluster did not start: {exc}".splitlines()[0]) from None
    try:
        info = cluster.info()
        example = ""
        if ns.demo:
            example = _demo(cluster, ns.data_dir, ns.demo_tenants)
        print(f"router: {info['router']}")
        print(f"rest: {info['rest']}")
        print(f"control: {info['control']}")
        print(f"etcd: {info['etcd']}")
        print(f"cluster: {cluster.write_info()}")
        if cluster.auth:
            print(f"admin key: {cluster.admin_key}")
            print("  (export SHOAL_KEY=<admin key> for register/alias/traffic/shadow/models)")
        else:
            print("auth: off (--no-auth): anyone who reaches the router can use any model")
        if example:
            print(example)
        print("Ctrl-C stops the cluster.", flush=True)
        _wait_for_signal()
    finally:
        cluster.stop()
    return 0


def _demo(cluster: Any, data_dir: Path, tenants: int) -> str:
    out = data_dir / "demo"
    stamp = out / "built.json"
    want = {"tenants": tenants, "version": 1}
    if not (stamp.exists() and json.loads(stamp.read_text()) == want):
        print(f"training {tenants} demo models ...", flush=True)
        demo.build(out, tenants)
        stamp.write_text(json.dumps(want))
    md = (("authorization", f"Bearer {cluster.admin_key}"),) if cluster.auth else None
    summary = asyncio.run(
        run_manifest(cluster.placement.address, out / "manifest.jsonl", metadata=md)
    )
    print(
        f"demo: {summary.registered} registered, {summary.unchanged} unchanged, "
        f"{summary.failed} failed",
        flush=True,
    )
    if summary.failed:
        first = summary.errors[0]
        raise CliError(f"demo registration failed at line {first.line}: {first.error}")
    row = json.dumps(demo.sample_row())
    router = cluster.router.address
    lines = ["", "Try it (tenants rotate XGBoost, LightGBM, ONNX):"]
    keys = {}
    for i in range(3):
        tenant = demo.demo_tenant(i)
        key = ""
        if cluster.auth:
            key = keys[tenant] = add_key(cluster.etcd_url, tenant)
            lines.append(f"  demo key ({tenant}): {key}")
        lines.append(
            f"  .venv/bin/shoal predict {tenant}/churn --router {router}"
            + (f" --key {key}" if key else "")
            + f" --input '[{row}]'"
        )
    # The same over REST (tenant-0000's model is XGBoost: its input is input__0).
    tenant = demo.demo_tenant(0)
    body = json.dumps(
        {"inputs": [{"name": "input__0", "shape": [1, 30], "datatype": "FP32",
                     "data": [demo.sample_row()]}]}
    )  # fmt: skip
    auth = f"-H 'Authorization: Bearer {keys[tenant]}' " if keys else ""
    rest = cluster.router.extra.get("rest", "")
    if rest:
        lines.append(f"  curl -s {auth}-d '{body}' http://{rest}/v2/models/{tenant}/churn/infer")
    if keys:
        path = data_dir / "demo" / "keys.json"
        path.write_text(json.dumps(keys, indent=2) + "\n")
        path.chmod(0o600)
    return "\n".join(lines)
