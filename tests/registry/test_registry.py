"""The registry core against a real etcd and a file:// object store."""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Sequence
from typing import Any

import grpc
import pytest

from registry.errors import Aborted, InvalidArgument, NotFound, TooLarge, grpc_status
from registry.facade import Registry
from registry.registration import Registered, RegisterSpec
from shoal.artifacts import ArtifactError
from shoal.etcd import EtcdStore
from shoal.objstore import ObjectNotFound, ObjectStore, artifact_key
from shoal.records import InvalidName, ModelRecord, model_key
from shoal.state import Compare, Op, TxnResult


def _registry(store: EtcdStore, file_store_url: str, **kw: Any) -> Registry:
    return Registry(store, ObjectStore(file_store_url), **kw)


def _variants(model_bytes: dict[str, Any]) -> list[bytes]:
    """Distinct valid artifacts (different sha256) of the session's tiny models."""
    return [
        model_bytes["xgboost-json"],
        model_bytes["xgboost-ubj"],
        model_bytes["lightgbm-text"],
        model_bytes["onnx"],
    ]


async def test_register_is_idempotent_and_numbers_versions(
    etcd_url: str, file_store_url: str, model_bytes: dict[str, Any]
) -> None:
    async with EtcdStore(etcd_url) as store:
        reg = _registry(store, file_store_url, default_pools={"onnx": "gpu"})
        spec = RegisterSpec("acme", "churn", alias="stable")
        first = await reg.register(spec, model_bytes["xgboost-json"])
        assert (first.version, first.created) == (1, True)
        kv = await store.get(model_key("acme", "churn"))
        assert kv is not None
        again = await reg.register(spec, model_bytes["xgboost-json"])
        assert (again.version, again.created) == (1, False)
        after = await store.get(model_key("acme", "churn"))
        assert after is not None and after.mod_revision == kv.mod_revision  # nothing written

        second = await reg.register(RegisterSpec("acme", "churn"), model_bytes["onnx"])
        assert (second.version, second.created) == (2, True)
        record = await reg.get("acme", "churn")
        assert record.aliases == {"stable": 1}
        assert record.versions[2].pool == "gpu" and record.versions[1].pool == "cpu"
        assert record.versions[1].uri == artifact_key(first.sha256)
        assert await ObjectStore(file_store_url).get(record.versions[2].uri) == model_bytes["onnx"]

        # By URI: an object already in the store registers like an upload.
        by_uri = await reg.register_uri(RegisterSpec("other", "m"), record.versions[2].uri)
        assert (by_uri.version, by_uri.created) == (1, True)


async def test_register_rejects_bad_input(
    etcd_url: str, file_store_url: str, model_bytes: dict[str, Any]
) -> None:
    async with EtcdStore(etcd_url) as store:
        reg = _registry(store, file_store_url, max_artifact_bytes=1 << 20)
        with pytest.raises(ArtifactError, match="pickle"):
            await reg.register(RegisterSpec("acme", "m"), pickle.dumps({"a": 1}))
        with pytest.raises(InvalidName):
            await reg.register(RegisterSpec("Acme!", "m"), model_bytes["onnx"])
        with pytest.raises(ArtifactError, match="framework"):
            await reg.register(RegisterSpec("acme", "m", framework="xgboost"), model_bytes["onnx"])
        with pytest.raises(ArtifactError, match="empty"):
            await reg.register(RegisterSpec("acme", "m"), b"")
        with pytest.raises(InvalidArgument, match="sha256"):
            await reg.register(RegisterSpec("acme", "m", sha256="0" * 64), model_bytes["onnx"])
        with pytest.raises(TooLarge):
            await reg.register(RegisterSpec("acme", "m"), b"x" * ((1 << 20) + 1))
        with pytest.raises(NotFound):
            await reg.get("acme", "m")  # nothing was half-written


async def test_traffic_and_shadow_validation(
    etcd_url: str, file_store_url: str, model_bytes: dict[str, Any]
) -> None:
    async with EtcdStore(etcd_url) as store:
        reg = _registry(store, file_store_url)
        for data in _variants(model_bytes)[:2]:
            await reg.register(RegisterSpec("acme", "churn"), data)
        rec = await reg.set_traffic("acme", "churn", {1: 90, 2: 10})
        assert rec.traffic == {1: 90, 2: 10}
        with pytest.raises(InvalidArgument, match="sum to 95"):
            await reg.set_traffic("acme", "churn", {1: 90, 2: 5})
        with pytest.raises(NotFound, match="no version 7"):
            await reg.set_traffic("acme", "churn", {1: 50, 7: 50})
        with pytest.raises(InvalidArgument, match=r"1\.\.100"):
            await reg.set_traffic("acme", "churn", {1: 110, 2: -10})
        assert (await reg.set_traffic("acme", "churn", {})).traffic == {}

        rec = await reg.set_shadow("acme", "churn", 2, 5.0)
        assert rec.shadow is not None and (rec.shadow.version, rec.shadow.percent) == (2, 5.0)
        for bad in (0.0, -1.0, 100.5, float("nan")):
            with pytest.raises(InvalidArgument):
                await reg.set_shadow("acme", "churn", 2, bad)
        with pytest.raises(NotFound):
            await reg.set_shadow("acme", "churn", 9, 5.0)
        assert (await reg.set_shadow("acme", "churn", None)).shadow is None

        with pytest.raises(NotFound, match="no version 3"):
            await reg.set_alias("acme", "churn", "stable", 3)
        with pytest.raises(InvalidName):
            await reg.set_alias("acme", "churn", "Bad Alias", 1)
        with pytest.raises(NotFound, match="nosuch/model"):
            await reg.set_alias("nosuch", "model", "stable", 1)


async def test_retention_never_deletes_referenced_versions(
    etcd_url: str, file_store_url: str, model_bytes: dict[str, Any]
) -> None:
    async with EtcdStore(etcd_url) as store:
        reg = _registry(store, file_store_url)
        shas = []
        for data in _variants(model_bytes):  # versions 1..4
            shas.append((await reg.register(RegisterSpec("acme", "churn"), data)).sha256)
        # The same bytes as version 2 under another model: its artifact must survive.
        await reg.register(RegisterSpec("beta", "churn"), model_bytes["xgboost-ubj"])
        await reg.set_alias("acme", "churn", "stable", 1)
        await reg.set_shadow("acme", "churn", 3, 1.0)

        deleted, record = await reg.delete_versions("acme", "churn", keep_last=1)
        assert deleted == [2]  # 1 aliased, 3 shadowed, 4 the newest
        assert sorted(record.versions) == [1, 3, 4]
        objects = ObjectStore(file_store_url)
        assert await objects.head(artifact_key(shas[1])) is not None  # shared with beta/churn

        await reg.set_traffic("acme", "churn", {3: 50, 4: 50})
        await reg.set_shadow("acme", "churn", None)
        await reg.register(RegisterSpec("acme", "churn"), _retrain(model_bytes))
        deleted, record = await reg.delete_versions("acme", "churn", keep_last=1)
        assert deleted == [] and sorted(record.versions) == [1, 3, 4, 5]  # 1 alias, 3/4 split

        await reg.delete_alias("acme", "churn", "stable")
        await reg.set_traffic("acme", "churn", {})
        deleted, record = await reg.delete_versions("acme", "churn", keep_last=2)
        assert deleted == [1, 3] and sorted(record.versions) == [4, 5]
        assert await objects.head(artifact_key(shas[0])) is None  # referenced by nobody now
        assert record.next_version == 6  # numbers are never reused
        with pytest.raises(InvalidArgument):
            await reg.delete_versions("acme", "churn", keep_last=0)


def _retrain(model_bytes: dict[str, Any]) -> bytes:
    from shoal import modelgen

    return modelgen.train_xgboost(model_bytes["x"], model_bytes["y"], n_trees=3)


async def test_list_models_pages(
    etcd_url: str, file_store_url: str, model_bytes: dict[str, Any]
) -> None:
    async with EtcdStore(etcd_url) as store:
        reg = _registry(store, file_store_url)
        data = model_bytes["lightgbm-text"]
        names = [f"m{i:02d}" for i in range(7)]
        for n in names:
            await reg.register(RegisterSpec("acme", n), data)
        await reg.register(RegisterSpec("zeta", "only"), data)
        seen: list[str] = []
        token = ""
        while True:
            page = await reg.list_models("acme", page_size=3, page_token=token)
            seen += [m.name for m in page.models]
            token = page.next_page_token
            if not token:
                break
        assert seen == names
        everything = await reg.list_models(page_size=100)
        assert [m.full_name for m in everything.models][-1] == "zeta/only"
        with pytest.raises(InvalidArgument):
            await reg.list_models("zeta", page_token=model_key("acme", "m01"))


async def test_concurrent_alias_updates_never_lose_one(
    etcd_url: str, file_store_url: str, model_bytes: dict[str, Any]
) -> None:
    """Many writers, each on its own etcd connection, each setting a different alias."""
    async with EtcdStore(etcd_url) as first:
        await _registry(first, file_store_url).register(
            RegisterSpec("acme", "churn"), model_bytes["onnx"]
        )
    stores = [await EtcdStore(etcd_url).connect() for _ in range(8)]
    try:
        regs = [_registry(s, file_store_url, cas_retries=50) for s in stores]
        results = await asyncio.gather(
            *(r.set_alias("acme", "churn", f"a{i}", 1) for i, r in enumerate(regs)),
            return_exceptions=True,
        )
        assert all(isinstance(r, ModelRecord) for r in results), results
        final = await regs[0].get("acme", "churn")
        assert set(final.aliases) == {f"a{i}" for i in range(8)}
    finally:
        for s in stores:
            await s.close()


class Interleaved(EtcdStore):
    """The real etcd store, with another writer's change landing on a model record between
    the registry's read of it and its compare-and-swap, for the first ``times`` writes."""

    def __init__(self, endpoints: str, other: Registry, times: int) -> None:
        super().__init__(endpoints)
        self.other = other
        self.times = times
        self.interleaved: list[str] = []

    async def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        if self.times > 0 and any(c.key == model_key("acme", "churn") for c in compares):
            self.times -= 1
            alias = f"other{len(self.interleaved)}"
            await self.other.set_alias("acme", "churn", alias, 1)
            self.interleaved.append(alias)
        return await super().txn(compares, ops)


async def test_a_lost_compare_and_swap_without_retries_is_aborted(
    etcd_url: str, file_store_url: str, model_bytes: dict[str, Any]
) -> None:
    """A write slipped in between the read and the compare-and-swap, deterministically: with
    one attempt the change is refused as ABORTED and nothing of it is written; the other
    writer's change is kept. With two attempts the same interleaving is absorbed."""
    async with EtcdStore(etcd_url) as plain:
        other = _registry(plain, file_store_url)
        await other.register(RegisterSpec("acme", "churn"), model_bytes["onnx"])
        async with Interleaved(etcd_url, other, times=1) as store:
            once = _registry(store, file_store_url, cas_retries=1)
            with pytest.raises(Aborted) as err:
                await once.set_alias("acme", "churn", "mine", 1)
            message = (
                "model acme/churn was changed concurrently 1 times in a row; retry the request"
            )
            assert grpc_status(err.value) == (grpc.StatusCode.ABORTED, message)
            assert store.interleaved == ["other0"]
            assert once.records.conflicts == 1
            assert (await other.get("acme", "churn")).aliases == {"other0": 1}

            store.times = 1
            twice = _registry(store, file_store_url, cas_retries=2)
            record = await twice.set_alias("acme", "churn", "mine", 1)
            assert record.aliases == {"other0": 1, "other1": 1, "mine": 1}
            assert (await other.get("acme", "churn")).aliases == record.aliases


async def test_register_many_batches_and_reports_per_item(
    etcd_url: str, file_store_url: str, model_bytes: dict[str, Any]
) -> None:
    async with EtcdStore(etcd_url) as store:
        reg = _registry(store, file_store_url)
        await reg.register(RegisterSpec("acme", "m0"), model_bytes["onnx"])
        lgb, xgb = model_bytes["lightgbm-text"], model_bytes["xgboost-json"]
        items: list[tuple[RegisterSpec, bytes | str]] = [
            (RegisterSpec("acme", "m0"), model_bytes["onnx"]),  # already there
            (RegisterSpec("acme", "m0"), lgb),
            (RegisterSpec("acme", "m0", alias="stable"), xgb),
            (RegisterSpec("acme", "m0"), lgb),  # same bytes twice in one batch: one version
            (RegisterSpec("acme", "bad"), pickle.dumps([1])),
            (RegisterSpec("BAD", "x"), lgb),
            (RegisterSpec("acme", "uri"), "artifacts/sha256/00/" + "0" * 64),  # no such object
        ] + [(RegisterSpec(f"t{i:03d}", "m"), lgb) for i in range(150)]  # > one transaction
        out = await reg.register_many(items)
        assert isinstance(out[0], Registered) and (out[0].version, out[0].created) == (1, False)
        assert isinstance(out[1], Registered) and (out[1].version, out[1].created) == (2, True)
        assert isinstance(out[2], Registered) and (out[2].version, out[2].created) == (3, True)
        assert isinstance(out[3], Registered) and (out[3].version, out[3].created) == (2, False)
        assert isinstance(out[4], ArtifactError)
        assert isinstance(out[5], InvalidName)
        assert isinstance(out[6], ObjectNotFound)
        assert all(isinstance(o, Registered) and o.version == 1 for o in out[7:])
        m0 = await reg.get("acme", "m0")
        assert sorted(m0.versions) == [1, 2, 3] and m0.aliases == {"stable": 3}
        again = await reg.register_many(items[7:])
        assert all(isinstance(o, Registered) and not o.created for o in again)
