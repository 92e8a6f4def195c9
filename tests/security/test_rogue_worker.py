"""The router trusts only workers whose certificate comes from the configured CA, with real
processes (etcd, placement, workers, router; TLS everywhere, mutual TLS to workers).

A rogue worker joins the pool: it registers in etcd like any worker (so placement puts it in
every shard of a 2-member shard size) and serves TLS with a certificate for the right address
from another CA; it would answer anyone who trusts that CA. Through the router:

* while a legitimate worker is in the pool, every request is answered correctly and none by
  the rogue (its request counter stays at zero);
* with the rogue alone in the pool, every request gets UNAVAILABLE: the router refuses the
  handshake rather than send tenants' rows to a worker it cannot authenticate.
"""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc as triton
import xgboost as xgb
from prometheus_client.parser import text_string_to_metric_families

from shoal import modelgen
from shoal.cluster import LocalCluster, etcd_get
from shoal.pb import shoal_control_pb2 as cpb
from shoal.pb import shoal_control_pb2_grpc as cgrpc
from shoal.records import WorkerInfo, worker_key
from tests.e2e.conftest import FAST
from tests.security.certs import make_certs

TENANTS = [f"t{i}" for i in range(8)]


def _openssl(d: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)


def rogue_server_cert(d: Path) -> tuple[Path, Path, Path]:
    """(CA, certificate, key): a server certificate for 127.0.0.1 from a CA of its own."""
    d.mkdir(parents=True, exist_ok=True)
    _openssl(d, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=rogue-root", "-keyout", "root.key", "-out", "root.pem")  # fmt: skip
    (d / "leaf.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    _openssl(d, "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=node",
             "-keyout", "leaf.key", "-out", "leaf.csr")  # fmt: skip
    _openssl(d, "x509", "-req", "-in", "leaf.csr", "-CA", "root.pem", "-CAkey", "root.key",
             "-CAcreateserial", "-days", "2", "-extfile", "leaf.ext",
             "-out", "leaf.pem")  # fmt: skip
    return d / "root.pem", d / "leaf.pem", d / "leaf.key"


def _infer_count(c: LocalCluster, worker_id: str) -> float:
    raw = etcd_get(c.etcd_url, worker_key("cpu", worker_id))
    assert raw is not None
    addr = WorkerInfo.decode(raw).metrics_address
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "shoal_worker_requests_total" and s.labels.get("method") == "ModelInfer"
    )


def test_no_answer_ever_comes_from_a_worker_with_a_rogue_certificate(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    rogue_ca, rogue_cert, rogue_key = rogue_server_cert(tmp_path / "rogue")
    cluster = LocalCluster(
        tmp_path / "c",
        workers=1,
        shard_size=2,
        env={
            **FAST,
            "SHOAL_TLS_CERT": str(certs.server_cert),
            "SHOAL_TLS_KEY": str(certs.server_key),
            "SHOAL_TLS_CA": str(certs.ca),
        },
        worker_env={"SHOAL_TLS_CLIENT_AUTH": "1"},
    )
    try:
        cluster.start()
        assert cluster.placement is not None and cluster.router is not None
        x, y = modelgen.dataset(n_rows=200, n_features=8)
        model = modelgen.train_xgboost(x, y, n_trees=3)
        creds = grpc.ssl_channel_credentials(root_certificates=certs.ca.read_bytes())
        with grpc.secure_channel(cluster.placement.address, creds) as ch:
            stub = cgrpc.ControlStub(ch)
            for tenant in TENANTS:
                chunks = [
                    cpb.RegisterChunk(
                        header=cpb.RegisterHeader(tenant=tenant, name="m", alias="stable")
                    ),
                    cpb.RegisterChunk(data=model),
                ]
                assert stub.Register(iter(chunks), timeout=30).version == 1
        rows = x[:2].astype(np.float32)
        booster = xgb.Booster()
        booster.load_model(bytearray(model))
        want = np.asarray(booster.inplace_predict(rows)).reshape(-1)
        inp = triton.InferInput("input__0", list(rows.shape), "FP32")
        inp.set_data_from_numpy(rows)
        client = triton.InferenceServerClient(
            cluster.router.address, ssl=True, root_certificates=str(certs.ca)
        )

        def answer(tenant: str) -> None:
            result = client.infer(f"{tenant}/m", [inp])
            got = np.asarray(result.as_numpy("output__0")).reshape(-1)
            np.testing.assert_allclose(got, want, rtol=1e-6)

        # The rogue: a worker like the others, but its certificate is from another CA, and it
        # asks callers for no client certificate (it would serve the router if trusted).
        legit = cluster.workers[0]
        cluster.worker_env = {
            "SHOAL_TLS_CERT": str(rogue_cert),
            "SHOAL_TLS_KEY": str(rogue_key),
            "SHOAL_TLS_CA": str(rogue_ca),
            "SHOAL_TLS_CLIENT_AUTH": "0",
        }
        rogue = cluster.add_worker()  # in the published snapshot: in every tenant's shard
        rogue_id = rogue.extra["worker_id"]

        for _ in range(5):
            for tenant in TENANTS:
                answer(tenant)
        assert _infer_count(cluster, rogue_id) == 0

        legit.proc.stop()
        cluster.wait_snapshot({rogue_id})
        for tenant in TENANTS:
            for _ in range(3):
                try:
                    client.infer(f"{tenant}/m", [inp])
                except triton.InferenceServerException as exc:
                    assert exc.status() == "StatusCode.UNAVAILABLE", exc
                    # Refused at the handshake: the rogue's certificate has an unknown issuer.
                    assert "invalid peer certificate: UnknownIssuer" in str(exc), exc
                else:
                    raise AssertionError(f"{tenant}/m answered with only the rogue in the pool")
        assert _infer_count(cluster, rogue_id) == 0

        # The rogue does answer whoever trusts its CA: only the router's check kept it out.
        trusting = triton.InferenceServerClient(
            rogue.address, ssl=True, root_certificates=str(rogue_ca)
        )
        np.testing.assert_allclose(
            np.asarray(trusting.infer("t0/m", [inp]).as_numpy("output__0")).reshape(-1),
            want,
            rtol=1e-6,
        )
        assert _infer_count(cluster, rogue_id) == 1
    finally:
        cluster.stop()
