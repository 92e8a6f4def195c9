"""``shoal models``: the listing streamed page by page (``--page-size``, ``--limit``,
``--tenant``, ``--json``), and ``shoal models prune``; models registered with the manifest
client in-process (``run_manifest``), against a real control plane, etcd and S3."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from shoal.cli import main
from shoal.manifest import run_manifest
from tests.registry.conftest import Control
from tests.registry.helpers import model_variant, write_manifest


async def test_listing_pages_limits_and_prune(
    control: Control,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = tmp_path / "m"
    write_manifest(folder, 120, tenant="a{i:04d}")  # 120 tenants a0000..a0119
    lines = (folder / "models.jsonl").read_text()
    write_manifest(folder, 30, tenant="zeta", start=120, name="n{i}")
    for i in range(120, 150):  # 30 models of one tenant
        lines += (
            json.dumps({"tenant": "zeta", "name": f"n{i}", "path": f"models/m{i:05d}.{_ext(i)}"})
            + "\n"
        )
    manifest = folder / "all.jsonl"
    manifest.write_text(lines)

    bar = io.StringIO()
    summary = await run_manifest(control.address, manifest, streams=3, progress=True, out=bar)
    assert (summary.registered, summary.failed) == (150, 0)
    assert "150/150" in bar.getvalue() and bar.getvalue().endswith("\n")

    monkeypatch.setenv("SHOAL_CONTROL", control.address)

    def shoal(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out = capsys.readouterr()
        return code, out.out, out.err

    code, out, err = shoal("models", "--json", "--page-size", "40")
    assert code == 0, err
    listed = json.loads(out)
    names = [f"{m['tenant']}/{m['name']}" for m in listed]
    assert len(names) == 150 and names == sorted(names)
    assert all(m["versions"][0]["size"] > 0 for m in listed)

    code, out, _ = shoal("models", "--tenant", "zeta", "--json", "--page-size", "7")
    assert code == 0 and len(json.loads(out)) == 30
    code, out, _ = shoal("models", "--json", "--limit", "75", "--page-size", "40")
    assert code == 0 and len(json.loads(out)) == 75
    code, out, _ = shoal("models", "--tenant", "zeta", "--limit", "2")
    assert code == 0 and out.count("zeta/") == 2 and "aliases:" in out
    code, out, _ = shoal("models", "--tenant", "nobody", "--json")
    assert (code, json.loads(out)) == (0, [])

    # Prune: three more versions of a0000/churn, one of them aliased.
    for i in range(3):
        f = tmp_path / f"extra{i}.json"
        f.write_bytes(model_variant(1000 + 2 * i)[1])
        code, out, err = shoal("register", "--tenant", "a0000", "--name", "churn", str(f))
        assert (code, out.strip()) == (0, str(i + 2)), err
    assert shoal("alias", "set", "a0000/churn", "stable", "2")[0] == 0
    code, out, err = shoal("models", "prune", "a0000/churn", "--keep", "1", "--json")
    assert code == 0, err
    assert json.loads(out) == {"model": "a0000/churn", "deleted": [1, 3], "kept": [2, 4]}
    code, _, err = shoal("models", "prune", "a0000/churn", "--keep", "0")
    assert code == 1 and "keep at least 1" in err


def _ext(i: int) -> str:
    return "json" if model_variant(i)[0] == "xgboost" else "txt"
