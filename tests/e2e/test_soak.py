"""A bounded soak: ~60 s of mixed traffic across 1,000 tenants, one worker killed and brought
back midway, one poison model present. Every well-formed request to a healthy model must be
answered correctly; nothing may leak (processes, ports)."""

from __future__ import annotations

import json
import os
import random
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton
import xgboost as xgb

from shoal import modelgen
from shoal.cluster import LocalCluster
from shoal.manifest import run_manifest
from shoal.procs import port_open, wait_until
from tests.conftest import run
from tests.e2e.conftest import FAST, Control

TENANTS = 1000
DISTINCT = 10
SOAK_S = float(os.environ.get("SHOAL_SOAK_S", "60"))


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_soak(tmp_path: Path) -> None:
    x, y = modelgen.dataset(n_rows=300, n_features=10)
    models = [modelgen.train_xgboost(x, y, n_trees=3 + i, seed=i) for i in range(DISTINCT)]
    rows = x[:4].astype(np.float32)
    expected = []
    for m in models:
        b = xgb.Booster()
        b.load_model(bytearray(m))
        expected.append(b.inplace_predict(rows))
    art = tmp_path / "artifacts"
    art.mkdir()
    for i, m in enumerate(models):
        (art / f"m{i}.json").write_bytes(m)
    with open(tmp_path / "manifest.jsonl", "w") as f:
        for t in range(TENANTS):
            line = {"tenant": f"t{t:04d}", "name": "m", "path": str(art / f"m{t % DISTINCT}.json")}
            f.write(json.dumps({**line, "alias": "stable"}) + "\n")

    cluster = LocalCluster(
        tmp_path / "c",
        workers=3,
        env=FAST,
        worker_env={"SHOAL_HOST_BUDGET": "64MiB", "SHOAL_DRAIN_GRACE_S": "5"},
    )
    pids: list[int] = []
    try:
        cluster.start()
        assert cluster.placement is not None and cluster.router is not None
        summary = run(run_manifest(cluster.placement.address, tmp_path / "manifest.jsonl"))
        assert (summary.registered, summary.failed) == (TENANTS, 0), summary.errors[:3]
        # The poison model: registered valid, then its artifact is corrupted in the store.
        ctl = Control(cluster.placement.address)
        poison = modelgen.train_xgboost(x, y, n_trees=2, seed=99)
        ctl.register("poison", "m", poison, alias="stable")
        sha = ctl.model("poison", "m").versions[0].sha256
        ctl.close()
        obj = cluster.data_dir / "objects" / "artifacts" / "sha256" / sha[:2] / sha
        obj.write_bytes(b'{"learner": broken')

        failures: list[str] = []
        answered = [0]
        poison_errors = [0]
        stop = threading.Event()
        router = cluster.router.address

        def client_loop(seed: int) -> None:
            rng = random.Random(seed)
            c = triton.InferenceServerClient(router)
            inp = triton.InferInput("input__0", list(rows.shape), "FP32")
            inp.set_data_from_numpy(rows)
            while not stop.is_set():
                if rng.random() < 0.02:
                    try:
                        c.infer("poison/m", [inp])
                        failures.append("the poison model answered")
                    except triton.InferenceServerException:
                        poison_errors[0] += 1
                    continue
                t = min(int(rng.paretovariate(1.2)) - 1, TENANTS - 1)  # heavy-tailed tenants
                try:
                    got = c.infer(f"t{t:04d}/m", [inp]).as_numpy("output__0")
                except triton.InferenceServerException as exc:
                    failures.append(f"t{t:04d}: {exc}")
                    continue
                if not np.allclose(got, expected[t % DISTINCT], rtol=1e-6):
                    failures.append(f"t{t:04d}: wrong answer")
                answered[0] += 1

        threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(4)]
        for th in threads:
            th.start()
        start = time.monotonic()
        wait_until(lambda: time.monotonic() - start > SOAK_S / 3, SOAK_S, 0.5, "first third")
        victim = cluster.workers[1]
        victim.proc.kill()
        wait_until(lambda: time.monotonic() - start > SOAK_S / 2, SOAK_S, 0.5, "half time")
        cluster.add_worker(worker_id=victim.extra["worker_id"])
        wait_until(lambda: time.monotonic() - start > SOAK_S, SOAK_S * 2, 0.5, "the end")
        stop.set()
        for th in threads:
            th.join(60)
        assert failures == [], failures[:5]
        assert answered[0] > 500 and poison_errors[0] > 0
        pids = list(cluster.info()["pids"].values())  # type: ignore[union-attr]
        ports = [cluster.router.address, cluster.placement.address]
    finally:
        cluster.stop()
    wait_until(lambda: not any(_alive(p) for p in pids), 30, 0.2, "every process to exit")
    for addr in ports:
        host, port = addr.rsplit(":", 1)
        assert not port_open(host, int(port))
