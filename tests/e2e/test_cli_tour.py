"""The README tour as a newcomer runs it: the real ``shoal`` commands, as subprocesses.

* ``shoal up --demo`` prints a ``shoal predict`` command per demo tenant, with that tenant's
  key; each one, run as printed (and the README's form, ``SHOAL_ROUTER`` plus ``--key``),
  prints the model, the version and outputs equal to the model's own prediction; without the
  key it fails with the router's one-line reason;
* ``shoal up --no-auth`` runs open: a model registered without a key is described and
  answered without a key.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import lightgbm as lgb
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
import xgboost as xgb

from shoal import demo, modelgen
from shoal.procs import free_port, wait_until

SHOAL = str(Path(sys.executable).parent / "shoal")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    env.update(extra)
    return env


class Up:
    """``shoal up ARGS`` in the background; ``text`` is what it printed once ready."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.router_port, self.control_port = free_port(), free_port()
        self.rest_port = free_port()
        self.data_dir = tmp_path / "data"
        self.out = tmp_path / "up.out"
        with open(self.out, "w") as f:
            self.proc = subprocess.Popen(
                [SHOAL, "up", *args, "--workers", "1", "--data-dir", str(self.data_dir),
                 "--router-port", str(self.router_port), "--rest-port", str(self.rest_port),
                 "--control-port", str(self.control_port)],
                stdout=f, stderr=subprocess.STDOUT, cwd=tmp_path, env=_env(),
                start_new_session=True,
            )  # fmt: skip
        wait_until(
            lambda: "Ctrl-C stops" in self.out.read_text() or self.proc.poll() is not None,
            240,
            what="shoal up",
        )
        self.text = self.out.read_text()
        assert self.proc.poll() is None, self.text

    @property
    def router(self) -> str:
        return f"127.0.0.1:{self.router_port}"

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        assert self.proc.returncode == 0, self.out.read_text()


@pytest.fixture
def demo_up(tmp_path: Path) -> Iterator[Up]:
    up = Up(tmp_path, "--demo", "--demo-tenants", "3")
    try:
        yield up
    finally:
        up.stop()


@pytest.fixture
def open_up(tmp_path: Path) -> Iterator[Up]:
    up = Up(tmp_path, "--no-auth")
    try:
        yield up
    finally:
        up.stop()


def _own_prediction(artifact: Path, rows: np.ndarray) -> np.ndarray:
    """What the model file itself predicts, with its own runtime."""
    if artifact.suffix == ".json":
        booster = xgb.Booster()
        booster.load_model(str(artifact))
        return np.asarray(booster.inplace_predict(rows))
    if artifact.suffix == ".txt":
        return np.asarray(lgb.Booster(model_file=str(artifact)).predict(rows))
    session = ort.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {session.get_inputs()[0].name: rows})[0])


def _printed_prediction(stdout: str) -> tuple[str, str, dict[str, list[float]]]:
    """(model, version, outputs) from ``shoal predict``'s plain output."""
    head, *lines = stdout.strip().splitlines()
    model_part, version_part = head.split("  ")
    assert model_part.startswith("model: ") and version_part.startswith("version: "), head
    outputs = {}
    for line in lines:
        name, _, values = line.partition(": ")
        outputs[name] = list(np.asarray(json.loads(values), dtype=np.float64).reshape(-1))
    return model_part.removeprefix("model: "), version_part.removeprefix("version: "), outputs


def test_the_printed_predict_commands_answer_like_the_models(demo_up: Up) -> None:
    commands = [
        shlex.split(line)
        for line in demo_up.text.splitlines()
        if line.strip().startswith(".venv/bin/shoal predict ")
    ]
    assert [argv[2] for argv in commands] == [f"{demo.demo_tenant(i)}/churn" for i in range(3)]
    keys = {
        line.split("(")[1].split(")")[0]: line.rsplit(": ", 1)[1]
        for line in demo_up.text.splitlines()
        if line.strip().startswith("demo key (")
    }
    for argv in commands:
        model = argv[2]
        tenant = model.split("/")[0]
        assert argv[argv.index("--key") + 1] == keys[tenant]
        assert argv[argv.index("--router") + 1] == demo_up.router
        row = json.loads(argv[argv.index("--input") + 1])
        assert row == [demo.sample_row()]
        artifact = next((demo_up.data_dir / "demo").glob(f"{tenant}-churn.*"))
        want = _own_prediction(artifact, np.asarray(row, dtype=np.float32)).reshape(-1)
        out = subprocess.run(
            [SHOAL, *argv[1:]], capture_output=True, text=True, timeout=60, env=_env()
        )
        assert out.returncode == 0, out.stderr
        got_model, version, outputs = _printed_prediction(out.stdout)
        assert (got_model, version) == (model, "1")
        assert len(outputs) == 1, outputs
        np.testing.assert_allclose(next(iter(outputs.values())), want, rtol=1e-6)

    # The README's form: the router from SHOAL_ROUTER, the key and the row as arguments.
    tenant = demo.demo_tenant(0)
    row = json.dumps([demo.sample_row()])
    readme = [SHOAL, "predict", f"{tenant}/churn", "--key", keys[tenant], "--input", row]
    out = subprocess.run(
        readme, capture_output=True, text=True, timeout=60, env=_env(SHOAL_ROUTER=demo_up.router)
    )
    assert out.returncode == 0, out.stderr
    assert _printed_prediction(out.stdout)[:2] == (f"{tenant}/churn", "1")
    # Without the key: one line, the router's reason, a non-zero exit.
    no_key = readme[:3] + readme[5:]
    out = subprocess.run(
        no_key, capture_output=True, text=True, timeout=60, env=_env(SHOAL_ROUTER=demo_up.router)
    )
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr == (
        "shoal: UNAUTHENTICATED: missing API key: send 'authorization: Bearer <key>'\n"
    )


def test_no_auth_answers_without_a_key(open_up: Up, tmp_path: Path) -> None:
    assert "auth: off (--no-auth)" in open_up.text and "admin key:" not in open_up.text
    x, y = modelgen.dataset(n_rows=200, n_features=8)
    artifact = tmp_path / "open.json"
    artifact.write_bytes(modelgen.train_xgboost(x, y, n_trees=4))
    control = f"127.0.0.1:{open_up.control_port}"
    reg = subprocess.run(
        [SHOAL, "register", "--tenant", "open", "--name", "m", "--alias", "stable",
         str(artifact)],
        capture_output=True, text=True, timeout=60, env=_env(SHOAL_CONTROL=control),
    )  # fmt: skip
    assert reg.returncode == 0, reg.stderr
    assert reg.stdout == "1\n"

    rows = x[:4].astype(np.float32)
    client = triton.InferenceServerClient(open_up.router)
    wait_until(lambda: client.is_model_ready("open/m"), 20, what="open/m ready at the router")
    assert client.get_model_metadata("open/m").inputs[0].name == "input__0"
    inp = triton.InferInput("input__0", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows)
    result = client.infer("open/m", [inp])  # no authorization header at all
    assert result.get_response().model_version == "1"
    np.testing.assert_allclose(
        np.asarray(result.as_numpy("output__0")).reshape(-1),
        _own_prediction(artifact, rows).reshape(-1),
        rtol=1e-6,
    )
