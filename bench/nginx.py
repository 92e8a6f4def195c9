"""nginx ``grpc_pass`` in front of one worker: the native-hop reference for the gateway.

What a proxy in C costs on this machine, measured in the same run: nginx (Debian's
``nginx-light``, installed with apt-get when missing, like h2load; ``BENCH_INSTALL_NGINX=0``
never tries) listens with HTTP/2 on a free loopback port and passes every gRPC call to the
worker over pooled keep-alive HTTP/2 connections. One worker process, no access log, and
``keepalive_requests`` raised on both sides: nginx's default of 1,000 silently ends a long
h2load phase by closing its connection. Started and stopped by PID (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.procutil import ensure_debian_tool
from shoal.procs import free_port

CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    upstream worker {{
        server {upstream};
        keepalive 64;
        keepalive_requests 1000000000;
    }}
    server {{
        listen 127.0.0.1:{port} http2;
        keepalive_requests 1000000000;
        location / {{ grpc_pass grpc://worker; }}
    }}
}}
"""


def ensure_nginx() -> str | None:
    return ensure_debian_tool("nginx", "nginx-light", "BENCH_INSTALL_NGINX")


def nginx_version() -> str:
    path = ensure_nginx()
    if not path:
        return ""
    return subprocess.run([path, "-v"], capture_output=True, text=True).stderr.strip()


@dataclass
class NginxProxy:
    """nginx proxying gRPC from ``address`` to ``upstream`` (HOST:PORT)."""

    data_dir: Path
    upstream: str
    address: str = ""
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 10.0) -> NginxProxy:
        binary = ensure_nginx()
        if binary is None:
            raise RuntimeError("nginx is not installed and could not be installed")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        conf = self.data_dir / "nginx.conf"
        conf.write_text(CONF.format(dir=self.data_dir, upstream=self.upstream, port=port))
        err = self.data_dir / "error.log"
        self.proc = subprocess.Popen([binary, "-c", str(conf), "-e", str(err)])
        self.address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while not _listening(port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = err.read_text() if err.exists() else ""
                self.stop()
                raise RuntimeError(f"nginx did not start: {log[-500:]}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
