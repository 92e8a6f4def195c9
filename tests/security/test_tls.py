"""TLS on every listener and mutual TLS between router and workers, with real processes."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton

from shoal import modelgen
from shoal.cluster import LocalCluster
from shoal.pb import shoal_control_pb2 as cpb
from shoal.pb import shoal_control_pb2_grpc as cgrpc
from tests.e2e.conftest import FAST
from tests.security.certs import make_certs


def test_tls_everywhere_and_mtls_to_workers(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    tls_env = {
        **FAST,
        "SHOAL_TLS_CERT": str(certs.server_cert),
        "SHOAL_TLS_KEY": str(certs.server_key),
        "SHOAL_TLS_CA": str(certs.ca),
    }
    cluster = LocalCluster(
        tmp_path / "c", workers=2, env=tls_env, worker_env={"SHOAL_TLS_CLIENT_AUTH": "1"}
    )
    try:
        cluster.start()
        assert cluster.placement is not None and cluster.router is not None
        x, y = modelgen.dataset(n_rows=200, n_features=8)
        data = modelgen.train_xgboost(x, y, n_trees=3)
        ca = certs.ca.read_bytes()
        control_creds = grpc.ssl_channel_credentials(root_certificates=ca)
        with grpc.secure_channel(cluster.placement.address, control_creds) as ch:
            stub = cgrpc.ControlStub(ch)
            chunks = [
                cpb.RegisterChunk(
                    header=cpb.RegisterHeader(tenant="tls", name="m", alias="stable")
                ),
                cpb.RegisterChunk(data=data),
            ]
            assert stub.Register(iter(chunks), timeout=30).version == 1
        # Plaintext to the control plane is refused.
        with grpc.insecure_channel(cluster.placement.address) as ch, pytest.raises(grpc.RpcError):
            cgrpc.ControlStub(ch).ListModels(cpb.ListModelsRequest(), timeout=5)

        inp = triton.InferInput("input__0", [1, 8], "FP32")
        inp.set_data_from_numpy(x[:1].astype(np.float32))
        client = triton.InferenceServerClient(
            cluster.router.address, ssl=True, root_certificates=str(certs.ca)
        )
        out = client.infer("tls/m", [inp])  # client -> router TLS, router -> worker mTLS
        assert out.get_response().model_version == "1"
        plain = triton.InferenceServerClient(cluster.router.address)
        with pytest.raises(triton.InferenceServerException):
            plain.infer("tls/m", [inp])

        # Workers demand a client certificate from our CA: none, or a rogue one, is refused.
        worker = cluster.workers[0].address
        no_cert = triton.InferenceServerClient(worker, ssl=True, root_certificates=str(certs.ca))
        with pytest.raises(triton.InferenceServerException):
            no_cert.is_server_live()
        rogue = triton.InferenceServerClient(
            worker,
            ssl=True,
            root_certificates=str(certs.ca),
            private_key=str(certs.rogue_key),
            certificate_chain=str(certs.rogue_cert),
        )
        with pytest.raises(triton.InferenceServerException):
            rogue.is_server_live()
        ours = triton.InferenceServerClient(
            worker,
            ssl=True,
            root_certificates=str(certs.ca),
            private_key=str(certs.client_key),
            certificate_chain=str(certs.client_cert),
        )
        assert ours.is_server_live()
    finally:
        cluster.stop()
