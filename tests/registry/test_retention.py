"""Retention: keep the newest N versions per model, never one that an alias, the traffic split
or the shadow points to, and delete the artifacts nothing names any more. Against the real
etcd and the S3 fixture; the rule itself also as a property over arbitrary records."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from registry import rules
from registry.facade import Registry
from registry.registration import Registered, RegisterSpec
from shoal.artifacts import Signature, sha256_hex
from shoal.etcd import EtcdStore
from shoal.objstore import ObjectStore, artifact_key
from shoal.records import ModelRecord, ModelVersion, ShadowConfig
from shoal.settings import CommonSettings
from tests.registry.helpers import model_variant


def _data(i: int) -> bytes:
    return model_variant(i)[1]


async def test_keep_versions_after_registration_spares_referenced_versions(
    etcd_url: str, s3_store_url: str, s3_settings: CommonSettings
) -> None:
    objects = ObjectStore(s3_store_url, s3_settings)
    async with EtcdStore(etcd_url) as store:
        reg = Registry(store, objects, keep_versions=2)
        try:
            shas = {}
            for v in range(1, 5):  # versions 1..4
                r = await reg.register(RegisterSpec("acme", "churn"), _data(v))
                shas[r.version] = r.sha256
                if v == 1:
                    await reg.set_alias("acme", "churn", "stable", 1)
                if v == 2:
                    await reg.set_shadow("acme", "churn", 2, 5.0)
            # The newest two are 3 and 4; 1 and 2 are older but referenced: all stay.
            record = await reg.get("acme", "churn")
            assert sorted(record.versions) == [1, 2, 3, 4]

            await reg.set_traffic("acme", "churn", {1: 50, 4: 50})
            # A bulk registration prunes in the same write as it adds.
            churn = RegisterSpec("acme", "churn")
            out = await reg.register_many([(churn, _data(5)), (churn, _data(6))])
            assert all(isinstance(o, Registered) and o.pruned == (3,) for o in out)
            record = await reg.get("acme", "churn")
            # 1: alias and split, 2: shadow, 4: split; 5 and 6 the newest; 3 is gone.
            assert sorted(record.versions) == [1, 2, 4, 5, 6]
            assert record.next_version == 7
            # Bulk retention queues artifacts for one batched scan (the control plane
            # flushes at the end of each BulkRegister stream).
            assert await objects.head(artifact_key(shas[3])) is not None
            assert await reg.flush_gc() == 1
            assert await objects.head(artifact_key(shas[3])) is None

            # Clearing the references lets the next registration collect them.
            await reg.set_traffic("acme", "churn", {})
            await reg.set_shadow("acme", "churn", None)
            seven = await reg.register(RegisterSpec("acme", "churn"), _data(7))
            assert seven.pruned == (2, 4, 5)
            record = await reg.get("acme", "churn")
            assert sorted(record.versions) == [1, 6, 7] and record.aliases == {"stable": 1}
            for v in (1, 6, 7):
                assert await objects.head(record.versions[v].uri) is not None
        finally:
            reg.close()


async def test_shared_artifacts_survive_and_bulk_gc_is_batched(
    etcd_url: str, s3_store_url: str, s3_settings: CommonSettings
) -> None:
    """The same bytes under two models: pruning one model keeps the artifact the other names.
    Bulk retention queues candidates and scans once (``flush_gc``)."""
    objects = ObjectStore(s3_store_url, s3_settings)
    async with EtcdStore(etcd_url) as store:
        reg = Registry(store, objects, keep_versions=1, gc_batch=1000)
        try:
            shared, own = _data(10), _data(11)
            await reg.register(RegisterSpec("beta", "m"), shared)
            await reg.register_many([(RegisterSpec(f"t{i}", "m"), shared) for i in range(3)])
            out = await reg.register_many([(RegisterSpec(f"t{i}", "m"), own) for i in range(3)])
            assert all(isinstance(o, Registered) and o.pruned == (1,) for o in out)
            # Queued, not yet collected (below gc_batch); the shared artifact is named by
            # beta/m, so the flush keeps it.
            assert await reg.flush_gc() == 0
            assert await objects.head(artifact_key(sha256_hex(shared))) is not None

            # Once beta/m moves on too, the last reference is gone and the artifact with it.
            await reg.register(RegisterSpec("beta", "m"), own)
            assert await objects.head(artifact_key(sha256_hex(shared))) is None
            assert await objects.head(artifact_key(sha256_hex(own))) is not None
            assert reg.artifacts_deleted == 1
        finally:
            reg.close()


async def test_explicit_delete_versions_keeps_the_aliased_one(
    etcd_url: str, s3_store_url: str, s3_settings: CommonSettings
) -> None:
    """``delete_versions`` (the DeleteVersions RPC; the CLI's ``models prune`` runs in
    test_listing) with no ``keep_versions`` setting."""
    objects = ObjectStore(s3_store_url, s3_settings)
    async with EtcdStore(etcd_url) as store:
        reg = Registry(store, objects)
        try:
            for v in range(1, 5):
                await reg.register(RegisterSpec("acme", "m"), _data(20 + v))
            await reg.set_alias("acme", "m", "canary", 2)
            deleted, record = await reg.delete_versions("acme", "m", keep_last=1)
            assert deleted == [1, 3] and sorted(record.versions) == [2, 4]
        finally:
            reg.close()


def _record(n: int, aliases: list[int], traffic: list[int], shadow: int | None) -> ModelRecord:
    sig = Signature((), ())
    versions = {
        v: ModelVersion(v, f"k{v}", "xgboost", "xgboost-json", "cpu", f"{v:064x}", 1, sig)
        for v in range(1, n + 1)
    }
    split = {v: 0 for v in traffic if v in versions}
    return ModelRecord(
        "t",
        "m",
        versions,
        aliases={f"a{i}": v for i, v in enumerate(aliases) if v in versions},
        traffic=split,
        shadow=ShadowConfig(shadow, 1.0) if shadow in versions else None,
        next_version=n + 1,
    )


@given(
    n=st.integers(1, 30),
    keep=st.integers(1, 10),
    aliases=st.lists(st.integers(1, 30), max_size=4),
    traffic=st.lists(st.integers(1, 30), max_size=3),
    shadow=st.one_of(st.none(), st.integers(1, 30)),
)
def test_retention_victims_property(
    n: int, keep: int, aliases: list[int], traffic: list[int], shadow: int | None
) -> None:
    record = _record(n, aliases, traffic, shadow)
    victims = rules.retention_victims(record, keep)
    # The expectation comes from what was drawn, not from the record's own bookkeeping:
    # versions run 1..n, the newest ``keep`` stay, and so does every drawn alias, split and
    # shadow target that exists.
    newest = set(range(max(1, n - keep + 1), n + 1))
    referenced = {v for v in [*aliases, *traffic] if v <= n}
    if shadow is not None and shadow <= n:
        referenced.add(shadow)
    assert not set(victims) & referenced  # never an aliased, split or shadowed version
    assert not set(victims) & newest  # never one of the newest N
    # ... and everything else goes, oldest first.
    assert victims == sorted(set(range(1, n + 1)) - newest - referenced)
