"""The control plane end to end through the ``shoal`` CLI: a real ``shoal placement`` process,
real etcd, a file:// store, and fake worker processes that serve WorkerAdmin."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from shoal.cli import main
from shoal.pb import shoal_control_pb2 as pb
from shoal.pb import shoal_control_pb2_grpc as pb_grpc
from shoal.procs import wait_until
from tests.placement.procs import Procs, wait_banner


@pytest.fixture
def control(
    tmp_path: Path, etcd_url: str, file_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Procs]:
    procs = Procs(tmp_path, etcd_url, file_store_url)
    try:
        wait_banner(procs.worker("w1"), "ready ")
        # w2 cannot load version 3: a promotion of 3 with --wait-loaded must fail.
        wait_banner(procs.worker("w2", "--fail-versions", "3"), "ready ")
        address = wait_banner(
            procs.placement("p1", shard_size="2", max_artifact_bytes="300000"), "control: "
        )
        monkeypatch.setenv("SHOAL_CONTROL", address)
        channel = grpc.insecure_channel(address)
        stub = pb_grpc.ControlStub(channel)

        def published() -> bool:
            try:
                resp = stub.GetPlacement(pb.PlacementRequest(tenant="acme"), timeout=5)
            except grpc.RpcError:
                return False
            return any(len(p.members) == 2 for p in resp.pools)

        wait_until(published, 30, 0.1, "a snapshot with both workers")
        channel.close()
        yield procs
    finally:
        procs.stop_all()


def shoal(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def ok_json(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    code, out, err = shoal(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def fails(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code, out, err = shoal(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("shoal: "), (code, out, err)
    return lines[0]


def test_register_models_alias_traffic_shadow(
    control: Procs, capsys: pytest.CaptureFixture[str], tmp_path: Path, model_bytes: dict[str, Any]
) -> None:
    files = []
    for i, fmt in enumerate(("xgboost-json", "lightgbm-text", "xgboost-ubj")):
        f = tmp_path / f"model{i}"
        f.write_bytes(model_bytes[fmt])
        files.append(f)
    for expected, f in enumerate(files, start=1):
        code, out, err = shoal(capsys, "register", "--tenant", "acme", "--name", "churn", str(f))
        assert code == 0, err
        assert out.strip() == str(expected)
    # Idempotent: the same bytes again give the same version, and say so.
    code, out, err = shoal(capsys, "register", "--tenant", "acme", "--name", "churn", str(files[0]))
    assert (code, out.strip()) == (0, "1") and "already registered" in err

    (model,) = ok_json(capsys, "models", "--tenant", "acme")
    assert [v["version"] for v in model["versions"]] == [1, 2, 3]
    assert model["versions"][1]["framework"] == "lightgbm"

    # Promotion warms the tenant's shard first (both workers are in it with k=2) ...
    code, out, err = shoal(capsys, "alias", "set", "acme/churn", "stable", "2", "--wait-loaded")
    assert code == 0, err
    workers = ok_json(capsys, "workers")
    assert [(w["worker_id"], w["models_resident"]) for w in workers] == [("w1", 1), ("w2", 1)]
    # ... and a failed warm-up leaves the alias where it was, saying why.
    line = fails(capsys, "alias", "set", "acme/churn", "stable", "3", "--wait-loaded")
    assert "warm-up" in line and "w2" in line and "cannot load version 3" in line
    (model,) = ok_json(capsys, "models", "--tenant", "acme")
    assert model["aliases"] == {"stable": 2}

    assert shoal(capsys, "traffic", "set", "acme/churn", "2=90", "3=10")[0] == 0
    assert "sum to 95" in fails(capsys, "traffic", "set", "acme/churn", "2=90", "3=5")
    assert "no version 9" in fails(capsys, "shadow", "set", "acme/churn", "9", "--percent", "5")
    assert shoal(capsys, "shadow", "set", "acme/churn", "3", "--percent", "5")[0] == 0
    (model,) = ok_json(capsys, "models", "--tenant", "acme")
    assert model["traffic"] == {"2": 90, "3": 10}
    assert model["shadow"] == {"version": 3, "percent": 5.0}
    assert shoal(capsys, "traffic", "clear", "acme/churn")[0] == 0
    assert shoal(capsys, "shadow", "clear", "acme/churn")[0] == 0
    (model,) = ok_json(capsys, "models")
    assert model["traffic"] == {} and model["shadow"] is None

    assert "acme/nope not found" in fails(capsys, "alias", "set", "acme/nope", "stable", "1")
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"\x80\x04\x95" + b"\x00" * 16)
    assert "pickle" in fails(capsys, "register", "--tenant", "acme", "--name", "x", str(bad))
    huge = tmp_path / "huge.json"
    huge.write_bytes(b"{" + b" " * 400_000)
    assert "limit of 300000" in fails(
        capsys, "register", "--tenant", "acme", "--name", "x", str(huge)
    )


def test_placement_show_bulk_register_and_unreachable_control(
    control: Procs,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    model_bytes: dict[str, Any],
) -> None:
    view = ok_json(capsys, "placement", "show", "acme")
    (pool,) = view["pools"]
    assert pool["pool"] == "cpu" and pool["shard_size"] == 2
    assert [m["rank"] for m in pool["members"]] == [0, 1]
    assert all(m["in_shard"] and m["up"] for m in pool["members"])
    code, out, _ = shoal(capsys, "placement", "show", "acme")
    assert code == 0 and "k=2" in out

    # BulkRegister over gRPC: one result per item, failures named, the rest registered.
    good = model_bytes["lightgbm-text"]
    items = [
        pb.BulkRegisterItem(seq=i, header=pb.RegisterHeader(tenant="bulk", name=f"m{i}"), data=good)
        for i in range(5)
    ]
    items.append(
        pb.BulkRegisterItem(seq=99, header=pb.RegisterHeader(tenant="bulk", name="bad"), data=b"")
    )
    with grpc.insecure_channel(os.environ["SHOAL_CONTROL"]) as channel:
        stub = pb_grpc.ControlStub(channel)
        results = {r.seq: r for r in stub.BulkRegister(iter(items), timeout=60)}
    assert all(results[i].ok and results[i].result.version == 1 for i in range(5))
    assert not results[99].ok and results[99].code == "INVALID_ARGUMENT"
    assert "empty" in results[99].error

    monkeypatch.setenv("SHOAL_CONTROL", "127.0.0.1:1")
    assert "unavailable" in fails(capsys, "models")


def test_wait_loaded_warms_a_real_worker(
    tmp_path: Path,
    etcd_url: str,
    file_store_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    model_bytes: dict[str, Any],
) -> None:
    """Register through the control plane, promote with --wait-loaded: `shoal worker` loads
    the version from the object store before the alias moves."""
    procs = Procs(tmp_path, etcd_url, file_store_url)
    try:
        wait_banner(procs.real_worker("rw1"), "worker: ")
        address = wait_banner(procs.placement("p1", shard_size="1"), "control: ")
        monkeypatch.setenv("SHOAL_CONTROL", address)
        f = tmp_path / "m.ubj"
        f.write_bytes(model_bytes["xgboost-ubj"])
        code, out, err = shoal(capsys, "register", "--tenant", "acme", "--name", "fraud", str(f))
        assert (code, out.strip()) == (0, "1"), err

        def promoted() -> bool:
            # Retried until the first snapshot with the worker is out (debounced).
            code = main(["alias", "set", "acme/fraud", "stable", "1", "--wait-loaded"])
            capsys.readouterr()
            return code == 0

        wait_until(promoted, 30, 0.2, "a promotion with --wait-loaded")
        (worker,) = ok_json(capsys, "workers")
        assert worker["worker_id"] == "rw1" and worker["models_resident"] >= 1
    finally:
        procs.stop_all()
