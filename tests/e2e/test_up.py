"""`shoal up --demo` as a newcomer runs it: the real command, then a tritonclient prediction."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton

from shoal import demo
from shoal.procs import free_port, wait_until


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it has exited for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_shoal_up_demo_then_predict(tmp_path: Path) -> None:
    router_port, control_port, rest_port = free_port(), free_port(), free_port()
    out = tmp_path / "up.out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    with open(out, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shoal.cli", "up", "--demo", "--demo-tenants", "9",
             "--data-dir", str(tmp_path / "data"), "--router-port", str(router_port),
             "--control-port", str(control_port), "--rest-port", str(rest_port)],
            stdout=f, stderr=subprocess.STDOUT, cwd=tmp_path, env=env, start_new_session=True,
        )  # fmt: skip
    try:
        wait_until(
            lambda: "Ctrl-C stops" in out.read_text() or proc.poll() is not None,
            240,
            what="shoal up",
        )
        text = out.read_text()
        assert proc.poll() is None, text
        assert f"router: 127.0.0.1:{router_port}" in text
        assert f"control: 127.0.0.1:{control_port}" in text
        assert f"rest: 127.0.0.1:{rest_port}" in text
        assert "etcd: http://127.0.0.1:" in text
        assert "demo: 9 registered, 0 unchanged, 0 failed" in text
        info = json.loads((tmp_path / "data" / "cluster.json").read_text())
        assert info["rest"] == f"127.0.0.1:{rest_port}"
        pids = list(info["pids"].values())
        assert len(pids) == 1 + 1 + 2 + 1  # etcd, placement, 2 workers, router
        assert "admin key: shoal._admin." in text
        keys = {
            line.split("(")[1].split(")")[0]: line.rsplit(": ", 1)[1]
            for line in text.splitlines()
            if line.strip().startswith("demo key (")
        }
        assert len(keys) == 3
        client = triton.InferenceServerClient(f"127.0.0.1:{router_port}")
        row = np.asarray([demo.sample_row()], dtype=np.float32)
        for i in range(3):  # XGBoost, LightGBM, ONNX tenants
            tenant = demo.demo_tenant(i)
            model = f"{tenant}/churn"
            auth = {"authorization": f"Bearer {keys[tenant]}"}
            name = client.get_model_metadata(model, headers=auth).inputs[0].name
            inp = triton.InferInput(name, [1, 30], "FP32")
            inp.set_data_from_numpy(row)
            result = client.infer(model, [inp], headers=auth)
            out = result.get_response()
            assert out.model_version == "1"
            value = float(np.asarray(result.as_numpy(out.outputs[0].name)).reshape(-1)[0])
            assert 0.0 <= value <= 1.0  # a probability from a real model
        # The printed REST example answers as printed.
        (curl,) = [line.strip() for line in text.splitlines() if line.strip().startswith("curl")]
        assert f"http://127.0.0.1:{rest_port}/v2/models/tenant-0000/churn/infer" in curl
        done = subprocess.run(["bash", "-c", curl.replace("curl -s", "curl -s --fail-with-body")],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.returncode == 0, (curl, done.stdout, done.stderr)
        answer = json.loads(done.stdout)
        assert answer["model_name"] == "tenant-0000/churn" and answer["model_version"] == "1"
        assert 0.0 <= answer["outputs"][0]["data"][0] <= 1.0
        # Auth is on by default: no key is refused, another tenant's key sees nothing.
        inp = triton.InferInput("input__0", [1, 30], "FP32")
        inp.set_data_from_numpy(row)
        with pytest.raises(triton.InferenceServerException, match="UNAUTHENTICATED"):
            client.infer(f"{demo.demo_tenant(0)}/churn", [inp])
        other = {"authorization": f"Bearer {keys[demo.demo_tenant(1)]}"}
        with pytest.raises(triton.InferenceServerException, match="unknown model tenant-0000"):
            client.infer(f"{demo.demo_tenant(0)}/churn", [inp], headers=other)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert proc.returncode == 0
    wait_until(lambda: not any(_alive(p) for p in pids), 30, what="every cluster process to exit")
