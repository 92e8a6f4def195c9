"""The demo's manifest (``shoal up --demo``) resolves from any data dir and working directory."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from shoal import demo
from shoal.manifest import _load, _read_files


def test_demo_manifest_paths_resolve_with_a_relative_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    out = Path(".shoal") / "demo"  # `make run`'s default: relative to the current directory
    models = demo.build(out, tenants=3, trees=2)
    items, bad, base = _load(out / "manifest.jsonl")
    assert not bad and len(items) == 3
    read = _read_files(items, base)
    assert all(isinstance(r, bytes) for r in read), read
    assert [bytes(r) for r in read if isinstance(r, bytes)] == [m.path.read_bytes() for m in models]
    # The same manifest still resolves after moving to another directory.
    os.chdir("/")
    assert all(isinstance(r, bytes) for r in _read_files(items, (tmp_path / out).resolve()))
    for line in (tmp_path / out / "manifest.jsonl").read_text().splitlines():
        assert not Path(json.loads(line)["path"]).is_absolute()
