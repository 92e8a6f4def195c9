"""``shoal simulate`` end to end, in process (no cluster needed)."""

from __future__ import annotations

import asyncio
import json
import math
import sys
from pathlib import Path

import pytest

from shoal.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_simulate_json(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["simulate", "--models", "20000", "--workers", "16", "--shard-size", "4", "--json"]
    assert main(args) == 0
    out = capsys.readouterr()
    doc = json.loads(out.out)
    assert doc["inputs"]["models"] == 20000 and doc["inputs"]["workers"] == 16
    assert len(doc["per_worker"]) == 16
    assert sum(w["models"] for w in doc["per_worker"]) == 4 * 20000
    bins = doc["blast_radius"]["overlap"]
    assert [b["shared_workers"] for b in bins] == [0, 1, 2, 3, 4]
    assert math.isclose(sum(b["closed_form"] for b in bins), 1.0)
    assert {m["event"] for m in doc["movement"]} == {"join", "leave"}
    assert 0 < doc["cache"]["hit_rate"] <= doc["cache"]["max_hit_rate"] <= 1
    assert out.err == ""  # no progress bar without a TTY or --progress


def test_simulate_policies_under_batch_scans(capsys: pytest.CaptureFixture[str]) -> None:
    """Scans through a Zipf load: the default policy (the worker's W-TinyLFU) keeps more hits
    than LRU in the simulator, as it does in the worker."""
    rates = {}
    for policy in ("tinylfu", "lru"):
        args = ["simulate", "--models", "4000", "--workers", "4", "--shard-size", "2",
                "--requests", "60000", "--budget-bytes", "20MiB", "--model-bytes", "100KiB",
                "--zipf", "1.1", "--scan-every", "300", "--scan-models", "400",
                "--policy", policy, "--json"]  # fmt: skip
        assert main(args) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["inputs"]["policy"] == policy
        assert "scans of 400 models every 300 requests" in doc["inputs"]["traffic"]
        assert doc["inputs"]["requests"] == 60000 + 400 * (60000 // 300)
        rates[policy] = doc["cache"]["hit_rate"]
    assert rates["tinylfu"] > rates["lru"] + 0.05, rates


def test_simulate_table_plot_and_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "out.png"
    args = ["simulate", "--models", "5000", "--workers", "8", "--shard-size", "3",
            "--zones", "2", "--hot", "20:6", "--model-bytes", "256KiB",
            "--model-bytes-sigma", "0.7", "--budget-bytes", "64MiB", "--requests", "20000",
            "--plot", str(png), "--progress"]  # fmt: skip
    assert main(args) == 0
    assert png.read_bytes()[:8] == PNG_MAGIC
    out = capsys.readouterr()
    assert "Per worker" in out.out and "Blast radius" in out.out and "Movement" in out.out
    assert "20 hot" in out.out
    assert "simulate [" in out.err and "100%" in out.err


def test_simulate_replays_a_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "trace.jsonl"
    trace.write_text(
        "\n".join(
            json.dumps({"ts": i / 100, "tenant": f"t{(i * 7) % 50}", "model": f"m{i % 3}"})
            for i in range(3000)
        )
    )
    assert main(["simulate", "--trace", str(trace), "--workers", "6", "--shard-size", "2",
                 "--json"]) == 0  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    assert doc["inputs"]["requests"] == 3000
    assert doc["inputs"]["rps"] == pytest.approx(3000 / 29.99)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--models", "100", "--workers", "3", "--shard-size", "4"], "shard size"),
        (["--models", "100", "--hot", "ten:8"], "TOP:K"),
        (["--trace", "/nonexistent.csv"], "cannot read trace"),
        (["--models", "10", "--trace", "x.csv"], "--models"),
        (["--models", "100", "--budget-bytes", "lots"], "lots"),
        (["--models", "100", "--scan-every", "100"], "--scan-models"),
    ],
)
def test_simulate_fails_with_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", *args]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("shoal: ") and message in err and "\n" not in err


async def test_simulate_from_the_registry_in_etcd(etcd_url: str) -> None:
    """Wiring: a real etcd holds the models, overrides, salt and published pool; the command
    (a separate process, as users run it) simulates exactly that pool."""
    from shoal.artifacts import Signature
    from shoal.etcd import EtcdStore
    from shoal.records import (
        CLUSTER,
        ClusterConfig,
        Member,
        ModelRecord,
        ModelVersion,
        PoolSnapshot,
        TenantConfig,
        model_key,
        placement_key,
        tenant_key,
    )

    async with EtcdStore(etcd_url) as store:
        for i in range(200):
            v = ModelVersion(1, f"file:///{i}", "lightgbm", "text", "cpu", "0" * 64,
                             1000 + i, Signature((), ()))  # fmt: skip
            rec = ModelRecord(f"t{i}", "churn", {1: v})
            await store.put(model_key(rec.tenant, rec.name), rec.encode())
        await store.put(tenant_key("t0"), TenantConfig("t0", shard_size=4).encode())
        await store.put(CLUSTER, ClusterConfig(salt="cd" * 16).encode())
        members = tuple(Member(f"w{i}", f"127.0.0.1:{9000 + i}") for i in range(6))
        await store.put(placement_key("cpu"), PoolSnapshot("cpu", 1, members, 2).encode())
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shoal.cli", "simulate", "--from-registry", "--etcd", etcd_url,
        "--resident-factor", "lightgbm=2", "--requests", "5000", "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    doc = json.loads(out)
    assert doc["inputs"]["models"] == 200 and doc["inputs"]["workers"] == 6
    assert doc["inputs"]["shard_size"] == 2 and doc["inputs"]["hot_tenants"] == 1
    assert doc["inputs"]["model_bytes_total"] == 2 * sum(1000 + i for i in range(200))
    assert {w["worker_id"] for w in doc["per_worker"]} == {m.worker_id for m in members}
