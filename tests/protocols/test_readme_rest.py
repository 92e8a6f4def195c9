"""The README's REST examples, run as written (curl) against a real cluster: a model under
the README's name (`tenant-0000/churn`, 30 features, as `make run` registers) and that
tenant's key; only the address line is pointed at this cluster."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import xgboost as xgb

from shoal import modelgen
from shoal.cluster import add_key
from shoal.demo import sample_row
from tests.protocols.conftest import Served, register

README = Path(__file__).resolve().parents[2] / "README.md"


def _commands() -> list[str]:
    text = README.read_text()
    section = text[text.index("### Protocols") :]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    joined = block.group(1).replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip()]


def test_the_readme_curl_examples_answer(served: Served) -> None:
    c = served.cluster
    assert c.placement is not None and c.router is not None
    x, y = modelgen.dataset(real=True)
    data = modelgen.train_xgboost(x, y, n_trees=8)
    register(c.placement.address, c.admin_key, "tenant-0000/churn", data)
    key = add_key(c.etcd_url, "tenant-0000")
    row = [sample_row()]
    env = {**os.environ, "T0": key, "ROW": json.dumps(row)}
    commands = _commands()
    assert commands[0] == "export SHOAL_REST=127.0.0.1:8000"
    env["SHOAL_REST"] = c.router.extra["rest"]
    answers = []
    for cmd in commands[1:]:
        assert cmd.startswith("curl -s ")
        out = subprocess.run(
            ["bash", "-c", cmd.replace("curl -s ", "curl -s --fail-with-body ", 1)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, (cmd, out.stdout, out.stderr)
        answers.append(json.loads(out.stdout))
    ready, meta, infer, config, stats, index = answers
    assert ready == {"ready": True}
    assert meta["name"] == "tenant-0000/churn" and meta["inputs"][0]["shape"] == [-1, 30]
    booster = xgb.Booster()
    booster.load_model(bytearray(data))
    want = booster.inplace_predict(np.asarray(row, np.float32))
    np.testing.assert_allclose(infer["outputs"][0]["data"], np.ravel(want), rtol=1e-6)
    assert config["input"][0] == {"name": "input__0", "data_type": "TYPE_FP32", "dims": [-1, 30]}
    assert stats["model_stats"][0]["inference_stats"]["success"]["count"] >= 1
    assert [m["name"] for m in index] == ["tenant-0000/churn"]  # the tenant's own only
