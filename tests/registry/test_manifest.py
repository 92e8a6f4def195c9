"""``shoal register --manifest``: 1,000 models through a real control plane into S3, re-runs
that write nothing, a run killed midway and resumed, and per-line error reports."""

from __future__ import annotations

import asyncio
import json
import pickle
import signal
import subprocess
import time
from pathlib import Path

from shoal.artifacts import sha256_hex
from shoal.objstore import ObjectStore
from shoal.procs import ManagedProcess
from shoal.records import ModelRecord
from tests.registry.conftest import Control
from tests.registry.helpers import (
    ROOT,
    cli_args,
    count_models,
    model_records,
    shoal,
    write_manifest,
)

N = 1000


async def _objects(store: ObjectStore) -> dict[str, int]:
    return {o.key: o.size async for o in store.list("artifacts/")}


async def _check_artifacts(store: ObjectStore, records: list[ModelRecord]) -> None:
    """Every version of every record names an artifact that exists with its sha256."""
    gate = asyncio.Semaphore(32)

    async def one(uri: str, sha: str) -> None:
        async with gate:
            assert sha256_hex(await store.get(uri)) == sha, uri

    await asyncio.gather(*(one(v.uri, v.sha256) for r in records for v in r.versions.values()))


def _summary(proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, object] = json.loads(proc.stdout)
    return doc


async def test_thousand_models_then_a_rerun_that_writes_nothing(
    control: Control, tmp_path: Path
) -> None:
    manifest = write_manifest(tmp_path / "m", N)
    first = _summary(shoal("register", "--manifest", str(manifest), "--json", env=control.env()))
    assert (first["registered"], first["unchanged"], first["failed"]) == (N, 0, 0)

    store = control.objects()
    revision, records = model_records(control.etcd_url)
    assert len(records) == N
    assert all(sorted(r.versions) == [1] for _, r in records.values())
    objects = await _objects(store)
    assert len(objects) == N  # every artifact distinct, each stored once
    await _check_artifacts(store, [r for _, r in records.values()])

    second = shoal("register", "--manifest", str(manifest), env=control.env())
    assert second.returncode == 0, second.stderr
    assert second.stdout.startswith(f"registered 0, unchanged {N}, failed 0")
    # Nothing written: not one etcd revision, not one object.
    revision2, records2 = model_records(control.etcd_url)
    assert revision2 == revision
    assert {k: rev for k, (rev, _) in records2.items()} == {
        k: rev for k, (rev, _) in records.items()
    }
    assert await _objects(store) == objects


async def test_a_run_killed_midway_resumes_without_duplicates(
    control: Control, tmp_path: Path
) -> None:
    manifest = write_manifest(tmp_path / "m", N)
    # One stream: the registrations land in batches over a few seconds, so the kill below
    # finds the run midway.
    args = cli_args("register", "--manifest", str(manifest), "--streams", "1", "--json")
    proc = ManagedProcess(args, tmp_path / "cli.log", env=control.env(), cwd=ROOT).start()
    try:
        deadline = time.monotonic() + 120
        while count_models(control.etcd_url) < N // 5:
            assert proc.alive(), proc.log_tail()
            assert time.monotonic() < deadline, "no progress"
            await asyncio.sleep(0.02)
        proc.signal(signal.SIGKILL)
        proc.stop(grace=5)
    finally:
        proc.stop(grace=1)
    done_before = count_models(control.etcd_url)
    assert N // 5 <= done_before < N, "the run was not killed midway"

    # What a router can see now: only whole records naming uploaded, verified artifacts.
    store = control.objects()
    _, partial = model_records(control.etcd_url)
    await _check_artifacts(store, [r for _, r in partial.values()])

    resumed = _summary(shoal("register", "--manifest", str(manifest), "--json", env=control.env()))
    assert resumed["failed"] == 0
    assert resumed["unchanged"] >= done_before  # a batch in flight at the kill may have landed
    assert resumed["registered"] == N - resumed["unchanged"]

    _, records = model_records(control.etcd_url)
    assert len(records) == N
    for _, record in records.values():
        assert sorted(record.versions) == [1] and record.next_version == 2, record
    await _check_artifacts(store, [r for _, r in records.values()])


def test_bad_lines_are_reported_by_line_number_and_the_rest_registers(
    control: Control, tmp_path: Path
) -> None:
    folder = tmp_path / "m"
    write_manifest(folder, 3)  # writes models/ and a manifest we replace below
    (folder / "evil.pkl").write_bytes(pickle.dumps({"not": "a model"}))
    lines = [
        {"tenant": "good", "name": "a", "path": "models/m00000.json"},  # 1
        {"tenant": "bad", "name": "missing", "path": "models/nope.json"},  # 2
        {"tenant": "bad", "name": "pickle", "path": "evil.pkl"},  # 3
        {"tenant": "good", "name": "b", "path": "models/m00001.txt"},  # 4
        {"tenant": "bad", "name": "fw", "path": "models/m00002.json", "framework": "sklearn"},
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines)
    text += "# a comment, then a blank line\n\n"  # 6, 7: skipped
    text += "{not json\n"  # 8
    text += json.dumps({"tenant": "bad", "path": "models/m00000.json"}) + "\n"  # 9
    manifest = folder / "mixed.jsonl"
    manifest.write_text(text)

    proc = shoal("register", "--manifest", str(manifest), env=control.env())
    assert proc.returncode == 1
    assert proc.stdout.startswith("registered 2, unchanged 0, failed 5")
    err = proc.stderr.splitlines()
    assert err[-1] == "shoal: 5 of 7 manifest lines failed"
    by_line = {int(e.split(" ", 2)[1].rstrip(":")): e for e in err[:-1]}
    assert sorted(by_line) == [2, 3, 5, 8, 9]
    assert "bad/missing" in by_line[2] and "cannot read models/nope.json" in by_line[2]
    assert "bad/pickle" in by_line[3] and "pickle" in by_line[3]
    assert "INVALID_ARGUMENT" in by_line[3]
    assert "unknown framework 'sklearn'" in by_line[5]
    assert "not valid JSON" in by_line[8]
    assert "missing name" in by_line[9]

    # --json: the same report as data; the good lines are now unchanged.
    again = shoal("register", "--manifest", str(manifest), "--json", env=control.env())
    assert again.returncode == 1
    doc = json.loads(again.stdout)
    assert (doc["registered"], doc["unchanged"], doc["failed"]) == (0, 2, 5)
    assert [e["line"] for e in doc["errors"]] == [2, 3, 5, 8, 9]
    _, records = model_records(control.etcd_url)
    assert sorted(r.full_name for _, r in records.values()) == ["good/a", "good/b"]
