"""``shoal router``: run the router (the inference endpoint clients talk to)."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from router.app import RouterApp
from router.settings import RouterSettings
from shoal.runner import Runner
from shoal.settings import describe, from_env


def register(sub: Any) -> None:
    p = sub.add_parser(
        "router",
        help="run the router (the inference endpoint clients talk to)",
        epilog="settings: "
        + "; ".join(f"{env}: {text}" for env, text, _ in describe(RouterSettings)),
    )
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--rest-port", type=int, help="KServe V2 REST port (-1: off)")
    p.add_argument("--metrics-port", type=int)
    p.add_argument("--etcd")
    p.add_argument("--data-dir")
    p.add_argument("--advertise-address")
    p.set_defaults(func=_run_router)


def _run_router(ns: argparse.Namespace) -> int:
    settings = from_env(
        RouterSettings,
        host=ns.host,
        port=ns.port,
        rest_port=ns.rest_port,
        metrics_port=ns.metrics_port,
        etcd=ns.etcd,
        data_dir=ns.data_dir,
        advertise_address=ns.advertise_address,
    )
    return asyncio.run(Runner(RouterApp(settings), settings.drain_grace_s).serve())
