"""deploy/check.py, what `make check` runs on deploy/: the shipped manifests and Dockerfile
pass, and each kind of breakage fails it with the tool's own words (a misspelt field, a
kustomization naming a missing file, YAML lint, a Dockerfile lint)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_check", DEPLOY / "check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CHECK = _checker()


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    dest = tmp_path / "deploy"
    shutil.copytree(DEPLOY, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_the_shipped_deploy_folder_passes_every_check() -> None:
    assert [o.name for o in CHECK.overlays(DEPLOY)] == ["production", "quickstart"]
    assert CHECK.check(DEPLOY) == []


def test_a_misspelt_field_fails_strict_validation(copy: Path) -> None:
    _edit(copy / "base" / "router.yaml", "  minReplicas: 2", "  minReplica: 2")
    failures = CHECK.check(copy)
    # Both overlays render the base: both fail, naming the resource.
    assert len(failures) == 2, failures
    for f in failures:
        assert f.startswith("kubernetes-validate --strict")
        assert "horizontalpodautoscaler/shoal-router" in f


def test_a_kustomization_naming_a_missing_file_fails_to_render(copy: Path) -> None:
    (copy / "overlays" / "quickstart" / "bucket.yaml").unlink()
    failures = CHECK.check(copy)
    assert len(failures) == 1, failures
    assert failures[0].startswith("kustomize quickstart")
    assert "bucket.yaml" in failures[0]


def test_yaml_and_dockerfile_lint_failures_fail(copy: Path) -> None:
    _edit(copy / "base" / "configmap.yaml", 'SHOAL_AUTH: "true"', 'SHOAL_AUTH:  "true"   ')
    _edit(copy / "Dockerfile", "WORKDIR /src", "RUN cd /src")
    failures = CHECK.check(copy)
    assert [f.split(":", 1)[0] for f in failures] == ["yamllint", "hadolint Dockerfile"]
    assert "trailing-spaces" in failures[0]
    assert "DL3003" in failures[1]  # use WORKDIR to switch to a directory
