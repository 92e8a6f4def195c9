"""The installed ``shoal`` console script: one-line errors and non-zero exits."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
from pathlib import Path
from typing import Any


def _shoal(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("shoal") or str(Path(__file__).resolve().parents[2] / ".venv/bin/shoal")
    return subprocess.run([exe, *args], capture_output=True, text=True, check=False, timeout=120)


def test_inspect_accepts_a_model_and_rejects_a_pickle(
    tmp_path: Path, model_bytes: dict[str, Any]
) -> None:
    good = tmp_path / "m.json"
    good.write_bytes(model_bytes["xgboost-json"])
    out = _shoal("inspect", str(good), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["format"] == "xgboost-json"
    bad = tmp_path / "m.pkl"
    bad.write_bytes(pickle.dumps([1, 2, 3]))
    out = _shoal("inspect", str(bad))
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shoal: ") and "pickle" in lines[0]


def test_module_entry_points_give_one_line_errors(tmp_path: Path) -> None:
    """``python -m shoal.cli`` (what LocalCluster runs) and ``python -m shoal`` fail as cleanly
    as the console script: one ``shoal:`` line, status 1, no traceback."""
    import sys

    for module in ("shoal.cli", "shoal"):
        out = subprocess.run(
            [sys.executable, "-m", module, "inspect", str(tmp_path / "missing.json")],
            capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
        assert out.returncode == 1, (module, out.stderr)
        assert out.stderr.strip().splitlines() == [
            f"shoal: cannot read {tmp_path / 'missing.json'}: No such file or directory"
        ]
