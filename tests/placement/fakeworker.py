"""A stand-in worker process for placement tests: a lease, a WorkerInfo, a WorkerAdmin server.

It holds its etcd lease like a real worker (so SIGKILL makes its record expire after the TTL),
serves ``shoal.v1.WorkerAdmin`` (LoadModel remembers what it loaded; versions listed in
``--fail-versions`` fail), and prints ``ready HOST:PORT`` once registered.

Signals: SIGUSR1 flaps the record (delete and re-put it ``--flaps`` times); SIGTERM drains
(``draining=True``), revokes the lease and exits.

Run: ``python tests/placement/fakeworker.py --etcd URL --id w1 [--pool cpu] [--zone z]``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
import time
from typing import Any

import grpc

from shoal.etcd import EtcdStore
from shoal.pb import shoal_control_pb2 as pb
from shoal.pb import shoal_control_pb2_grpc as pb_grpc
from shoal.records import WorkerInfo, worker_key


class Admin(pb_grpc.WorkerAdminServicer):
    def __init__(self, info: WorkerInfo, fail_versions: set[int]) -> None:
        self.info = info
        self.fail_versions = fail_versions
        self.loaded: set[tuple[str, str, int]] = set()

    async def LoadModel(self, request: Any, context: Any) -> pb.LoadModelResponse:
        if request.version in self.fail_versions:
            await context.abort(grpc.StatusCode.INTERNAL, f"cannot load version {request.version}")
        key = (request.tenant, request.name, request.version)
        was = key in self.loaded
        self.loaded.add(key)
        return pb.LoadModelResponse(loaded=True, was_resident=was, tier="host")

    async def Stats(self, request: Any, context: Any) -> pb.WorkerStatus:
        i = self.info
        return pb.WorkerStatus(
            worker_id=i.worker_id,
            pool=i.pool,
            address=i.address,
            ready=True,
            models_resident=len(self.loaded),
            host_bytes=1000 * len(self.loaded),
        )


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--etcd", required=True)
    ap.add_argument("--id", required=True)
    ap.add_argument("--pool", default="cpu")
    ap.add_argument("--zone", default="")
    ap.add_argument("--ttl", type=int, default=2)
    ap.add_argument("--flaps", type=int, default=3)
    ap.add_argument("--fail-versions", default="")
    args = ap.parse_args()

    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    address = f"127.0.0.1:{port}"
    info = WorkerInfo(
        args.id, args.pool, address, zone=args.zone, started_at=time.time(), ready=True
    )
    fails = {int(v) for v in args.fail_versions.split(",") if v}
    pb_grpc.add_WorkerAdminServicer_to_server(Admin(info, fails), server)
    await server.start()

    store = await EtcdStore(args.etcd).connect()
    lease = await store.grant_lease(args.ttl)
    key = worker_key(args.pool, args.id)
    await store.put(key, info.encode(), lease.id)
    print(f"ready {address}", flush=True)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    flap = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, flap.set)
    while not stop.is_set():
        waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(flap.wait())]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for w in waiters:
            w.cancel()
        if flap.is_set():
            flap.clear()
            for _ in range(args.flaps):
                await store.delete(key)
                await store.put(key, info.encode(), lease.id)
            print("flapped", flush=True)
    # Leave cleanly: drain first, then go.
    await store.put(key, dataclasses.replace(info, draining=True).encode(), lease.id)
    await lease.revoke()
    await server.stop(1)
    await store.close()


if __name__ == "__main__":
    asyncio.run(main())
