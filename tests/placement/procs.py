"""Starting the processes placement tests need: ``shoal placement`` and fake workers.

Every process is a ``ManagedProcess`` (own process group, output in a log file); ``Procs``
stops whatever it started, so a failing test leaks nothing. Readiness is read from the
processes' banner lines (``control: HOST:PORT``, ``ready HOST:PORT``).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import urllib.request
from pathlib import Path

from shoal.procs import ManagedProcess

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def banner(proc: ManagedProcess, prefix: str) -> str | None:
    """The rest of the first output line starting with ``prefix``, if printed yet."""
    try:
        text = proc.log_path.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
    return None


def wait_banner(proc: ManagedProcess, prefix: str, timeout: float = 60.0) -> str:
    """Block until ``proc`` prints ``prefix``; fail with its log if it exits or times out."""
    deadline = time.monotonic() + timeout
    while True:
        found = banner(proc, prefix)
        if found is not None:
            return found
        if not proc.alive():
            raise RuntimeError(f"{proc.args[:4]} exited:\n{proc.log_tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {prefix!r} from {proc.args[:4]}:\n{proc.log_tail()}")
        time.sleep(0.05)


async def await_banner(proc: ManagedProcess, prefix: str, timeout: float = 60.0) -> str:
    """``wait_banner`` without blocking the event loop."""
    deadline = time.monotonic() + timeout
    while True:
        found = banner(proc, prefix)
        if found is not None:
            return found
        if not proc.alive():
            raise RuntimeError(f"{proc.args[:4]} exited:\n{proc.log_tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {prefix!r} from {proc.args[:4]}:\n{proc.log_tail()}")
        await asyncio.sleep(0.05)


def metric(address: str, name: str) -> float:
    """The value of an unlabelled sample (0 when absent) from a Prometheus endpoint."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


class Procs:
    """Starts placement services and fake workers under ``tmp``; ``stop_all()`` ends them."""

    def __init__(self, tmp: Path, etcd_url: str, store_url: str) -> None:
        self.tmp = tmp
        self.etcd_url = etcd_url
        self.store_url = store_url
        self.started: list[ManagedProcess] = []

    def _env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
        env.update(extra)
        return env

    def placement(self, instance_id: str, **settings: str) -> ManagedProcess:
        env = self._env(
            SHOAL_ETCD=self.etcd_url,
            SHOAL_STORE=self.store_url,
            SHOAL_CONTROL_PORT="0",
            SHOAL_METRICS_PORT="0",
            SHOAL_INSTANCE_ID=instance_id,
            SHOAL_LEASE_TTL="2",
            SHOAL_DEBOUNCE_S="0.5",
            SHOAL_HOT_INTERVAL_S="0.2",
            SHOAL_DATA_DIR=str(self.tmp / instance_id),
            **{f"SHOAL_{k.upper()}": v for k, v in settings.items()},
        )
        args = [sys.executable, "-m", "shoal.cli", "placement"]
        proc = ManagedProcess(args, self.tmp / f"{instance_id}.log", env=env, cwd=ROOT)
        self.started.append(proc.start())
        return proc

    def worker(self, worker_id: str, *extra: str) -> ManagedProcess:
        args = [
            sys.executable,
            str(HERE / "fakeworker.py"),
            "--etcd",
            self.etcd_url,
            "--id",
            worker_id,
            *extra,
        ]
        proc = ManagedProcess(args, self.tmp / f"{worker_id}.log", env=self._env(), cwd=ROOT)
        self.started.append(proc.start())
        return proc

    def real_worker(self, worker_id: str) -> ManagedProcess:
        """``shoal worker`` on CPU (prints ``worker: HOST:PORT`` when registered)."""
        env = self._env(
            SHOAL_ETCD=self.etcd_url,
            SHOAL_STORE=self.store_url,
            SHOAL_WORKER_ID=worker_id,
            SHOAL_DEVICE="cpu",
            SHOAL_LEASE_TTL="2",
            SHOAL_METRICS_PORT="-1",
            SHOAL_DATA_DIR=str(self.tmp / worker_id),
        )
        args = [sys.executable, "-m", "shoal.cli", "worker"]
        proc = ManagedProcess(args, self.tmp / f"{worker_id}.log", env=env, cwd=ROOT)
        self.started.append(proc.start())
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop(grace=5)
        for proc in self.started:
            assert not proc.alive()
