"""MLServer, the Python peer, installed and run the way a user would, serving our artifacts.

* ``ensure_mlserver()`` creates ``bench/.peers/mlserver`` (a virtual environment of its own,
  from the same base Python as the project, never touching ``.venv``) on first use and
  installs the pinned ``MLSERVER_PINS`` into it from PyPI; later calls reuse it (a stamp file
  records what was installed). XGBoost and LightGBM are pinned to the versions in the
  project's environment when they are installed there, so both servers run the same
  runtime libraries.
* ``write_repository(dir, models)`` writes a model repository: ``settings.json`` (loopback,
  free ports, one process: ``parallel_workers=0``, metrics and access logs off) and one
  ``model-settings.json`` folder per model, pointing at a *copy of the same artifact bytes*
  that Shoal serves (XGBoost JSON/UBJ as ``model.json``/``model.ubj``, LightGBM text as
  ``model.bst``, the well-known names of ``mlserver-xgboost`` and ``mlserver-lightgbm``).
  MLServer's peer set has no ONNX runtime, so ONNX models are not served here.
* ``MLServerProcess`` starts ``mlserver start <repo>`` as one process in its own process
  group, waits until every model answers ready over HTTP (``/v2/models/<m>/ready``), and
  stops it by PID: SIGTERM, then SIGKILL after a grace period.

Run alone: ``python -m bench.peers [--install-only]`` installs, serves a small XGBoost model,
makes one gRPC call and stops.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from shoal.procs import ManagedProcess, free_port, wait_until

PEERS = Path(__file__).resolve().parent / ".peers"
MLSERVER_VENV = PEERS / "mlserver"
MLSERVER_VERSION = "1.7.1"
MLSERVER_PINS = (
    f"mlserver=={MLSERVER_VERSION}",
    f"mlserver-xgboost=={MLSERVER_VERSION}",
    f"mlserver-lightgbm=={MLSERVER_VERSION}",
)
#: Runtime libraries pinned to the project's versions (same trees, same predict code).
SHARED_RUNTIMES = ("xgboost", "lightgbm")

#: Shoal format -> (MLServer implementation, file name the runtime looks for).
IMPLEMENTATIONS = {
    "xgboost-json": ("mlserver_xgboost.XGBoostModel", "model.json"),
    "xgboost-ubj": ("mlserver_xgboost.XGBoostModel", "model.ubj"),
    "lightgbm-text": ("mlserver_lightgbm.LightGBMModel", "model.bst"),
}


def pins() -> list[str]:
    out = list(MLSERVER_PINS)
    for pkg in SHARED_RUNTIMES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out.append(f"{pkg}=={importlib.metadata.version(pkg)}")
    return out


def _base_python() -> str:
    """The interpreter the project's venv was made from (``python -m venv`` of a venv
    python also resolves to it; this just makes the choice explicit)."""
    return getattr(sys, "_base_executable", sys.executable) or sys.executable


def ensure_mlserver(venv: Path = MLSERVER_VENV, quiet: bool = True) -> Path:
    """Create/reuse the MLServer venv; return the path of its ``mlserver`` executable."""
    stamp = venv / ".bench-installed"
    wanted = "\n".join(pins()) + "\n"
    exe = venv / "bin" / "mlserver"
    if stamp.exists() and stamp.read_text() == wanted and exe.exists():
        return exe
    if venv.exists() and not (venv / "bin" / "python").exists():
        shutil.rmtree(venv)
    if not (venv / "bin" / "python").exists():
        subprocess.run([_base_python(), "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip"]
    q = ["-q"] if quiet else []
    print(f"installing {' '.join(pins())} into {venv} ...", flush=True)
    subprocess.run([*pip, "install", *q, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "install", *q, *pins()], check=True)
    stamp.write_text(wanted)
    return exe


def installed_versions(venv: Path = MLSERVER_VENV) -> dict[str, str]:
    """Versions of the peer's key packages, read from its venv (for the results)."""
    names = ("mlserver", "mlserver-xgboost", "mlserver-lightgbm", "xgboost", "lightgbm",
             "grpcio", "protobuf", "numpy", "pandas", "fastapi", "uvicorn")  # fmt: skip
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for n in sys.argv[1:]:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: out[n] = None\n"
        "print(json.dumps(out))\n"
    )
    py = venv / "bin" / "python"
    res = subprocess.run([str(py), "-c", code, *names], capture_output=True, text=True, check=True)
    versions: dict[str, str] = json.loads(res.stdout)
    return versions


@dataclass(frozen=True)
class PeerModel:
    """One model for the peer: its name there, Shoal's format name and the artifact bytes."""

    name: str
    format: str
    data: bytes


def write_repository(
    root: Path, models: list[PeerModel], http_port: int, grpc_port: int
) -> list[str]:
    """Write an MLServer repository under ``root``; return the names of the models served.

    Models whose format MLServer cannot serve (ONNX) are skipped.
    """
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    settings = {
        "host": "127.0.0.1",
        "http_port": http_port,
        "grpc_port": grpc_port,
        "parallel_workers": 0,  # one process: inference on the server's own event loop
        "metrics_endpoint": None,  # no Prometheus interceptor, no metrics server
        "debug": False,  # no access-log interceptor
        "load_models_at_startup": True,
        "gzip_enabled": False,
    }
    (root / "settings.json").write_text(json.dumps(settings, indent=2))
    served = []
    for m in models:
        if m.format not in IMPLEMENTATIONS:
            continue
        impl, filename = IMPLEMENTATIONS[m.format]
        d = root / m.name
        d.mkdir()
        (d / filename).write_bytes(m.data)
        doc = {
            "name": m.name,
            "implementation": impl,
            "parameters": {"uri": f"./{filename}", "version": "1"},
        }
        (d / "model-settings.json").write_text(json.dumps(doc, indent=2))
        served.append(m.name)
    return served


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as r:
            return bool(200 <= r.status < 300)
    except OSError:
        return False


class MLServerProcess:
    """``mlserver start`` on a repository, as one process on free loopback ports.

    ``env`` adds to the child's environment (e.g. ``OMP_NUM_THREADS``). ``grpc_address`` is
    ``127.0.0.1:PORT`` once started.
    """

    def __init__(
        self,
        root: Path,
        models: list[PeerModel],
        env: dict[str, str] | None = None,
        venv: Path = MLSERVER_VENV,
    ) -> None:
        self.root = root
        self.models = models
        self.extra_env = dict(env or {})
        self.venv = venv
        self.http_port = 0
        self.grpc_port = 0
        self.served: list[str] = []
        self.proc: ManagedProcess | None = None

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 120.0) -> MLServerProcess:
        exe = ensure_mlserver(self.venv)
        self.http_port, self.grpc_port = free_port(), free_port()
        repo = self.root / "repository"
        self.served = write_repository(repo, self.models, self.http_port, self.grpc_port)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLSERVER", "VIRTUAL"))}
        env.update(self.extra_env)
        env["PATH"] = f"{self.venv / 'bin'}:{env.get('PATH', '')}"
        self.proc = ManagedProcess(
            [str(exe), "start", str(repo)], self.root / "mlserver.log", env=env, cwd=self.root
        ).start()
        base = f"http://127.0.0.1:{self.http_port}"

        def ready() -> bool:
            assert self.proc is not None
            if not self.proc.alive():
                raise RuntimeError(f"mlserver exited:\n{self.proc.log_tail()}")
            return _http_ok(f"{base}/v2/health/ready") and all(
                _http_ok(f"{base}/v2/models/{m}/ready") for m in self.served
            )

        try:
            wait_until(ready, timeout, 0.2, f"mlserver on {base}")
        except BaseException:
            tail = self.proc.log_tail()
            self.stop()
            raise RuntimeError(f"mlserver did not become ready:\n{tail}") from None
        return self

    def stop(self, grace: float = 10.0) -> None:
        if self.proc is not None:
            self.proc.stop(grace)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import tempfile

    from bench.models import bench_models
    from bench.wire import infer_once, infer_request

    p = argparse.ArgumentParser(description="install MLServer and serve one model (smoke)")
    p.add_argument("--install-only", action="store_true")
    ns = p.parse_args(argv)
    ensure_mlserver(quiet=False)
    print(json.dumps(installed_versions(), indent=2))
    if ns.install_only:
        return 0
    arts = bench_models()
    models = [PeerModel("xgb", arts["xgb"].format, arts["xgb"].data)]
    with tempfile.TemporaryDirectory(prefix="shoal-mlserver-") as tmp:
        server = MLServerProcess(Path(tmp), models, env={"OMP_NUM_THREADS": "1"}).start()
        try:
            resp = infer_once(server.grpc_address, infer_request("xgb", arts["xgb"].row))
            print(f"mlserver {server.grpc_address}: {resp}")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
