"""Steady tritonclient load for the multi-host test, run on the client host.

``python load.py CONFIG.json``: CONFIG names the router, the models (``tenant/name``, each
with its tenant's key and one input row), the request rate, the output JSONL and a stop file.
Four threads send 1-row requests round-robin over the models (3 s deadline each) until the
stop file exists; every answer is one line: ``{"t": unix time, "model": ..., "code": "OK" |
grpc status name}``.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException


def main(config_path: str) -> int:
    cfg = json.loads(Path(config_path).read_text())
    models: list[dict[str, Any]] = cfg["models"]
    stop = Path(cfg["stop"])
    lock = threading.Lock()
    period = 4.0 / float(cfg["rate"])  # per thread
    counter = iter(range(1 << 62))

    def worker(out: TextIO) -> None:
        client = tc.InferenceServerClient(cfg["router"])
        while not stop.exists():
            started = time.time()
            with lock:
                m = models[next(counter) % len(models)]
            x = np.asarray(m["row"], dtype=np.float32).reshape(1, -1)
            inp = tc.InferInput(m["input"], list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            try:
                client.infer(
                    m["model"],
                    [inp],
                    headers={"authorization": f"Bearer {m['key']}"},
                    client_timeout=3.0,
                )
                code, why = "OK", ""
            except InferenceServerException as exc:
                code = str(exc.status()).removeprefix("StatusCode.")
                why = str(exc.message())[:200]
            rec = {"t": started, "model": m["model"], "code": code}
            if why:
                rec["why"] = why
            with lock:
                out.write(json.dumps(rec) + "\n")
            time.sleep(max(0.0, period - (time.time() - started)))

    with Path(cfg["out"]).open("a", buffering=1) as out:
        threads = [threading.Thread(target=worker, args=(out,), daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
