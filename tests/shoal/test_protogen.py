"""`make proto` output is checked: an edited .proto without regeneration fails the check."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _check(proto_dir: Path, out_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shoal.protogen", "--check", "--proto-dir", str(proto_dir),
         "--out-dir", str(out_dir)],
        capture_output=True, text=True, cwd=ROOT, check=False,
    )  # fmt: skip


def test_committed_stubs_are_fresh_and_edits_are_caught(tmp_path: Path) -> None:
    proto, out = tmp_path / "proto", tmp_path / "pb"
    shutil.copytree(ROOT / "proto", proto)
    shutil.copytree(ROOT / "shoal" / "pb", out)
    fresh = _check(proto, out)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    src = proto / "shoal_control.proto"
    src.write_text(
        src.read_text().replace(
            "message WorkerStatsRequest {}", "message WorkerStatsRequest { bool verbose = 1; }"
        )
    )
    stale = _check(proto, out)
    assert stale.returncode == 1
    assert "shoal_control_pb2.py" in stale.stdout
