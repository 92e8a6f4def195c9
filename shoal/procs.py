"""Child processes that Shoal starts and must stop: free loopback ports, start, wait, stop.

``stop()`` sends SIGTERM, waits up to ``grace`` seconds, then SIGKILLs the process group, so a
server that ignores SIGTERM still goes away and nothing it forked is left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def wait_until(
    predicate: Callable[[], bool], timeout: float, interval: float = 0.05, what: str = ""
) -> None:
    """Poll ``predicate`` until true; raise ``TimeoutError`` naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what or predicate}")
        time.sleep(interval)


def wait_for_banner(proc: ManagedProcess, prefix: str, timeout: float) -> str:
    """Wait for a ``<prefix>: VALUE`` line in ``proc``'s log and return VALUE.

    Shoal's processes announce their addresses this way (``worker: HOST:PORT``). Raises
    ``RuntimeError`` with the log's tail if the process exits first, ``TimeoutError`` after
    ``timeout`` seconds.
    """
    found: list[str] = []

    def seen() -> bool:
        if not proc.alive():
            raise RuntimeError(f"{prefix} process exited:\n{proc.log_tail()}")
        for line in proc.log_path.read_text(errors="replace").splitlines():
            if line.startswith(f"{prefix}: "):
                found.append(line.split(": ", 1)[1].strip())
                return True
        return False

    try:
        wait_until(seen, timeout, 0.05, f"'{prefix}: ' from {proc.args}")
    except TimeoutError:
        raise TimeoutError(f"{prefix} did not start:\n{proc.log_tail()}") from None
    return found[0]


class ManagedProcess:
    """A child process in its own process group, its output appended to ``log_path``."""

    def __init__(
        self,
        args: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.args = list(args)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("process not started")
        return self.proc.pid

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole process group at once (fault tests)."""
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait()
        # Reap anything left in the group (children that outlived their parent).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.returncode
