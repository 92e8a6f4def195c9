"""The Python floor: a bare grpc.aio server answering ModelInfer with a fixed response.

What it measures: the cost of one grpc.aio hop in Python (HTTP/2 framing, the completion
queue, one coroutine per call) with no protobuf parsing and no model. The request is taken
as raw bytes and ignored; the response is a pre-encoded ``ModelInferResponse`` holding one
FP32 ``[1, 1]`` output, the same shape a 1-row tree model answers with. Any server that does
real work per request can at best match this figure on the same machine; the issue's target is
Shoal's router at >= 0.5x of it.

Run alone: ``python -m bench.echo_server [--port 0]``; it prints ``echo: HOST:PORT`` once
serving and stops on SIGTERM/SIGINT. ``EchoProcess`` starts it as a child process (stopped by
PID) for the benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

import grpc
import numpy as np

from shoal.procs import ManagedProcess

PATH = "/inference.GRPCInferenceService/ModelInfer"
SERVICE = "inference.GRPCInferenceService"


def fixed_response() -> bytes:
    """A ``ModelInferResponse`` with one FP32 [1, 1] output, encoded once."""
    from shoal.pb import shoal_inference_pb2 as pb

    resp = pb.ModelInferResponse(model_name="echo", model_version="1")
    resp.outputs.add(name="output__0", datatype="FP32", shape=[1, 1])
    resp.raw_output_contents.append(np.array([[0.5]], dtype=np.float32).tobytes())
    return resp.SerializeToString()


async def serve(host: str, port: int) -> None:
    body = fixed_response()

    async def model_infer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return body

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE, {"ModelInfer": grpc.unary_unary_rpc_method_handler(model_infer)}
            ),
        )
    )
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"echo: {host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)


class EchoProcess:
    """The echo server as a child process; ``address`` is ``HOST:PORT`` once started."""

    def __init__(self, log_dir: Path, host: str = "127.0.0.1") -> None:
        self.log = log_dir / "echo.log"
        self.host = host
        self.proc: ManagedProcess | None = None
        self.address = ""

    def start(self, timeout: float = 30.0) -> EchoProcess:
        from bench.procutil import wait_banner

        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.log.write_text("")
        cmd = [sys.executable, "-m", "bench.echo_server", "--host", self.host, "--port", "0"]
        self.proc = ManagedProcess(cmd, self.log, cwd=Path(__file__).resolve().parent.parent)
        self.proc.start()
        self.address = wait_banner(self.proc, "echo", timeout)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(5.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    ns = p.parse_args(argv)
    asyncio.run(serve(ns.host, ns.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
