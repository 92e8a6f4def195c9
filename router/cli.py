"""``shoal router`` (run the router) and ``shoal predict`` (one prediction through it)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from typing import Any

import grpc
import numpy as np

from shoal.artifacts import DTYPES
from shoal.settings import describe, from_env


def register(sub: Any) -> None:
    from router.settings import RouterSettings

    p = sub.add_parser(
        "router",
        help="run the router (the inference endpoint clients talk to)",
        epilog="settings: "
        + "; ".join(f"{env}: {text}" for env, text, _ in describe(RouterSettings)),
    )
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--metrics-port", type=int)
    p.add_argument("--etcd")
    p.add_argument("--data-dir")
    p.set_defaults(func=_run_router)

    q = sub.add_parser("predict", help="send one prediction through the router")
    q.add_argument("model", help="tenant/name")
    q.add_argument("--input", required=True, help="rows as JSON, e.g. '[[1.0, 2.0, ...]]'")
    q.add_argument(
        "--version", default="", help="version number or alias (default: routing policy)"
    )
    q.add_argument("--router", default=None, help="router HOST:PORT (default $SHOAL_ROUTER)")
    q.add_argument("--key", default=None, help="API key (default $SHOAL_KEY)")
    q.add_argument("--timeout", type=float, default=30.0)
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=_predict)


def _run_router(ns: argparse.Namespace) -> int:
    from router.app import RouterApp
    from router.settings import RouterSettings
    from shoal.runner import serve

    settings = from_env(
        RouterSettings,
        host=ns.host,
        port=ns.port,
        metrics_port=ns.metrics_port,
        etcd=ns.etcd,
        data_dir=ns.data_dir,
    )
    app = RouterApp(settings)
    banner = lambda: f"router: {app.address}\nmetrics: {app.metrics_address}"  # noqa: E731
    return asyncio.run(serve(app, banner, grace=settings.drain_grace_s))


def _predict(ns: argparse.Namespace) -> int:
    from shoal.cli import CliError

    address = ns.router or os.environ.get("SHOAL_ROUTER", "127.0.0.1:8001")
    try:
        rows = np.asarray(json.loads(ns.input), dtype=np.float64)
    except (json.JSONDecodeError, ValueError) as exc:
        raise CliError(f"--input is not a JSON array of numbers: {exc}") from None
    if rows.ndim == 1:
        rows = rows[None, :]
    try:
        key = ns.key or os.environ.get("SHOAL_KEY", "")
        result = asyncio.run(_predict_async(address, ns.model, ns.version, rows, ns.timeout, key))
    except grpc.aio.AioRpcError as exc:
        raise CliError(f"{exc.code().name}: {exc.details()}") from None
    if ns.json:
        print(json.dumps(result))
    else:
        print(f"model: {result['model']}  version: {result['version']}")
        for name, values in result["outputs"].items():
            print(f"{name}: {json.dumps(values)}")
    return 0


async def _predict_async(
    address: str, model: str, version: str, rows: np.ndarray, timeout: float, key: str = ""
) -> dict[str, Any]:
    from router.shadow import outputs
    from shoal.cli import CliError
    from shoal.oip import InferenceStub
    from shoal.pb import shoal_inference_pb2 as pb

    async with grpc.aio.insecure_channel(address) as channel:
        stub = InferenceStub(channel)
        md = (("authorization", f"Bearer {key}"),) if key else None
        meta = await stub.ModelMetadata(
            pb.ModelMetadataRequest(name=model, version=version), timeout=timeout, metadata=md
        )
        if not meta.inputs:
            raise CliError(f"model {model} declares no inputs")
        spec = meta.inputs[0]
        dtype = DTYPES.get(spec.datatype)
        if dtype is None:
            raise CliError(f"input {spec.name} has unsupported datatype {spec.datatype}")
        arr = np.ascontiguousarray(rows.astype(dtype))
        req = pb.ModelInferRequest(model_name=model, model_version=version)
        req.inputs.add(name=spec.name, datatype=spec.datatype, shape=list(arr.shape))
        req.raw_input_contents.append(arr.tobytes())
        resp = await stub.ModelInfer(req, timeout=timeout, metadata=md)
    return {
        "model": resp.model_name,
        "version": resp.model_version,
        "outputs": {k: v.tolist() for k, v in outputs(resp).items()},
    }
