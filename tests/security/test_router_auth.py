"""API keys at the router, as ``shoal up`` runs it (auth on), with real processes: etcd,
placement, a worker and the router; keys made and revoked with the ``shoal keys`` command.

* another tenant's model answers exactly like a missing one, on ModelReady (false),
  ModelMetadata and ModelInfer (the same NOT_FOUND ``unknown model <name>``, even for a
  version the model lacks), so a key cannot probe which models exist;
* a missing key and every kind of bad key get UNAUTHENTICATED with the router's exact texts,
  on each method that needs a key;
* ServerLive, ServerReady and ServerMetadata answer without a key, and the same to everyone;
* ``shoal keys create/list/revoke`` work as commands, and a revoked key is refused by the
  running router once the change reaches its watch, while the tenant's other key still works.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from shoal import modelgen
from shoal.cluster import LocalCluster
from shoal.oip import METHODS, path
from shoal.pb import shoal_control_pb2 as cpb
from shoal.pb import shoal_control_pb2_grpc as cgrpc
from shoal.pb import shoal_inference_pb2 as pb
from shoal.procs import wait_until
from tests.e2e.conftest import FAST

FEATURES = 6
SHOAL = str(Path(sys.executable).parent / "shoal")

MISSING = "missing API key: send 'authorization: Bearer <key>'"
INVALID = "invalid or revoked API key"
MALFORMED = "malformed API key"
NOT_A_KEY = "not a Shoal API key"


def shoal(c: LocalCluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The ``shoal`` command, as an operator runs it (etcd from ``SHOAL_ETCD``)."""
    return subprocess.run(
        [SHOAL, *args],
        env={"SHOAL_ETCD": c.etcd_url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
    )


def new_key(c: LocalCluster, tenant: str) -> tuple[str, str]:
    """(key, key_id) from ``shoal keys create TENANT --json``."""
    doc = json.loads(shoal(c, "keys", "create", tenant, "--json").stdout)
    assert doc["tenant"] == tenant
    return str(doc["key"]), str(doc["key_id"])


class Calls:
    """The inference protocol's methods on one channel; each returns (code, details, reply)."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)

    def call(self, method: str, request: Any, key: str | None) -> tuple[str, str, Any]:
        stub = self.channel.unary_unary(
            path(method),
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=METHODS[method][1].FromString,
        )
        md = (("authorization", f"Bearer {key}"),) if key is not None else None
        try:
            return "OK", "", stub(request, metadata=md, timeout=30)
        except grpc.RpcError as exc:
            return exc.code().name, str(exc.details()), None  # type: ignore[attr-defined]

    def ready(self, model: str, key: str | None, version: str = "") -> tuple[str, str, Any]:
        return self.call("ModelReady", pb.ModelReadyRequest(name=model, version=version), key)

    def metadata(self, model: str, key: str | None, version: str = "") -> tuple[str, str, Any]:
        return self.call("ModelMetadata", pb.ModelMetadataRequest(name=model, version=version), key)

    def infer(self, model: str, key: str | None, version: str = "") -> tuple[str, str, Any]:
        req = pb.ModelInferRequest(model_name=model, model_version=version)
        req.inputs.add(name="input__0", datatype="FP32", shape=[1, FEATURES])
        req.raw_input_contents.append(np.ones((1, FEATURES), np.float32).tobytes())
        return self.call("ModelInfer", req, key)

    def close(self) -> None:
        self.channel.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("auth"), workers=1, shard_size=1, env=FAST, auth=True)
    c.start()
    assert c.placement is not None
    x, y = modelgen.dataset(n_rows=100, n_features=FEATURES)
    admin = (("authorization", f"Bearer {c.admin_key}"),)
    with grpc.insecure_channel(c.placement.address) as ch:
        stub = cgrpc.ControlStub(ch)
        for tenant in ("acme", "rival"):
            chunks = [
                cpb.RegisterChunk(
                    header=cpb.RegisterHeader(tenant=tenant, name="churn", alias="stable")
                ),
                cpb.RegisterChunk(data=modelgen.train_xgboost(x, y, n_trees=2)),
            ]
            assert stub.Register(iter(chunks), metadata=admin, timeout=60).version == 1
    yield c
    c.stop()


@pytest.fixture(scope="module")
def calls(cluster: LocalCluster) -> Iterator[Calls]:
    assert cluster.router is not None
    calls = Calls(cluster.router.address)
    yield calls
    calls.close()


@pytest.fixture(scope="module")
def keys(cluster: LocalCluster, calls: Calls) -> dict[str, str]:
    """A key of each tenant, once the router has seen them (ModelReady true)."""
    got = {tenant: new_key(cluster, tenant)[0] for tenant in ("acme", "rival")}
    for tenant, key in got.items():
        accepted(calls, f"{tenant}/churn", key)
    return got


def accepted(calls: Calls, model: str, key: str) -> None:
    """Wait until the router has seen ``key`` (a new key reaches it through its etcd watch)."""
    wait_until(
        lambda: calls.infer(model, key)[0] == "OK",
        20,
        what=f"the router to accept a key for {model}",
    )


def test_another_tenants_model_answers_like_a_missing_one(
    calls: Calls, keys: dict[str, str]
) -> None:
    rival = keys["rival"]
    # The tenant's own model is there, ready, described, and answers.
    assert calls.ready("acme/churn", keys["acme"])[2].ready
    own = calls.metadata("acme/churn", keys["acme"])
    assert own[0] == "OK" and own[2].name == "acme/churn" and own[2].inputs
    assert calls.infer("acme/churn", keys["acme"])[:2] == ("OK", "")
    # To rival's key, acme/churn (which exists) and acme/ghost (which does not) are alike.
    for version in ("", "1", "stable", "99"):
        for model in ("acme/churn", "acme/ghost"):
            code, details, reply = calls.ready(model, rival, version)
            assert (code, details, reply.ready) == ("OK", "", False), (model, version)
            want = ("NOT_FOUND", f"unknown model {model}", None)
            assert calls.metadata(model, rival, version) == want, (model, version)
            assert calls.infer(model, rival, version) == want, (model, version)
    # The same name, asked by its owner with a version it lacks, is a different answer: the
    # foreign one above did not come from version resolution.
    assert calls.metadata("acme/churn", keys["acme"], "99")[1] != "unknown model acme/churn"


@pytest.mark.parametrize("method", ["ModelReady", "ModelMetadata", "ModelInfer"])
def test_missing_and_bad_keys_are_unauthenticated_with_the_exact_text(
    calls: Calls, keys: dict[str, str], method: str
) -> None:
    good = keys["acme"]
    kid = good.rsplit(".", 2)[1]
    wrong_secret = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    cases = {
        None: MISSING,
        wrong_secret: INVALID,
        f"shoal.acme.000000000000.{good.rsplit('.', 1)[1]}": INVALID,  # an unknown key id
        good.replace("shoal.acme.", "shoal.ghost.", 1): INVALID,  # a tenant with no keys
        "shoal.acme": MALFORMED,
        f"shoal.{kid}.secret": MALFORMED,
        f"shoal.acme.{kid}.": MALFORMED,
        "sk-live-0123456789abcdef": NOT_A_KEY,
        good.removeprefix("shoal."): NOT_A_KEY,
    }
    call = {"ModelReady": calls.ready, "ModelMetadata": calls.metadata}.get(method, calls.infer)
    for key, text in cases.items():
        assert call("acme/churn", key) == ("UNAUTHENTICATED", text, None), key
    # Another scheme than Bearer is no key at all.
    stub = calls.channel.unary_unary(path("ModelReady"))
    req = pb.ModelReadyRequest(name="acme/churn").SerializeToString()
    with pytest.raises(grpc.RpcError) as info:
        stub(req, metadata=(("authorization", f"Basic {good}"),), timeout=30)
    assert (info.value.code(), info.value.details()) == (  # type: ignore[attr-defined]
        grpc.StatusCode.UNAUTHENTICATED,
        MISSING,
    )


def test_server_methods_are_open_and_the_same_for_everyone(
    calls: Calls, keys: dict[str, str]
) -> None:
    answers: dict[str, set[bytes]] = {}
    for key in (None, keys["acme"], keys["rival"], "not-a-key"):
        for method, req in (
            ("ServerLive", pb.ServerLiveRequest()),
            ("ServerReady", pb.ServerReadyRequest()),
            ("ServerMetadata", pb.ServerMetadataRequest()),
        ):
            code, details, reply = calls.call(method, req, key)
            assert (code, details) == ("OK", ""), (method, key)
            answers.setdefault(method, set()).add(reply.SerializeToString())
    # One answer per method whoever asks (or nobody), and nothing names a tenant or model.
    assert {m: len(a) for m, a in answers.items()} == {
        "ServerLive": 1,
        "ServerReady": 1,
        "ServerMetadata": 1,
    }
    live, ready, meta = (
        pb.ServerLiveResponse.FromString(next(iter(answers["ServerLive"]))),
        pb.ServerReadyResponse.FromString(next(iter(answers["ServerReady"]))),
        pb.ServerMetadataResponse.FromString(next(iter(answers["ServerMetadata"]))),
    )
    assert live.live and ready.ready
    assert meta.name == "shoal-router"
    assert list(meta.extensions) == ["model_configuration", "statistics"]
    for raw in answers["ServerMetadata"]:
        assert b"acme" not in raw and b"rival" not in raw and b"churn" not in raw


def test_a_revoked_key_is_refused_by_the_running_router_and_the_other_key_works(
    cluster: LocalCluster, calls: Calls
) -> None:
    first, first_id = new_key(cluster, "acme")
    second, second_id = new_key(cluster, "acme")
    listed = json.loads(shoal(cluster, "keys", "list", "acme", "--json").stdout)
    assert listed["tenant"] == "acme" and {first_id, second_id} <= set(listed["key_ids"])
    assert shoal(cluster, "keys", "list", "acme").stdout.split() == listed["key_ids"]
    for key in (first, second):  # verified (and so cached) by the router before the revoke
        accepted(calls, "acme/churn", key)

    out = shoal(cluster, "keys", "revoke", "acme", first_id)
    assert out.stdout.strip() == f"revoked {first_id}"
    listed = json.loads(shoal(cluster, "keys", "list", "acme", "--json").stdout)
    assert first_id not in listed["key_ids"] and second_id in listed["key_ids"]
    wait_until(
        lambda: calls.infer("acme/churn", first)[0] != "OK",
        20,
        what="the router to refuse the revoked key",
    )
    for _ in range(5):  # refused for good, with the same text on every method
        assert calls.infer("acme/churn", first) == ("UNAUTHENTICATED", INVALID, None)
        assert calls.ready("acme/churn", first) == ("UNAUTHENTICATED", INVALID, None)
        assert calls.metadata("acme/churn", first) == ("UNAUTHENTICATED", INVALID, None)
        assert calls.infer("acme/churn", second)[:2] == ("OK", "")

    again = shoal(cluster, "keys", "revoke", "acme", first_id, check=False)
    assert again.returncode != 0
    assert again.stderr.strip().splitlines()[-1].endswith(f"tenant acme has no key {first_id}")
