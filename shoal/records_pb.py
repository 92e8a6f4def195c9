"""Model records and versions <-> their ``shoal.v1`` protobuf messages, both ways: the control
plane writes them (``registry.control``), the CLI reads them (``shoal models``)."""

from __future__ import annotations

from collections.abc import Sequence

from shoal.artifacts import Signature, TensorSpec
from shoal.pb import shoal_control_pb2 as pb
from shoal.records import ModelRecord, ModelVersion, ShadowConfig


def _tensors_to_proto(specs: Sequence[TensorSpec]) -> list[pb.TensorSpec]:
    return [pb.TensorSpec(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in specs]


def _tensors_from_proto(specs: Sequence[pb.TensorSpec]) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in specs)


def version_to_proto(v: ModelVersion) -> pb.ModelVersion:
    return pb.ModelVersion(
        version=v.version,
        uri=v.uri,
        framework=v.framework,
        format=v.format,
        pool=v.pool,
        sha256=v.sha256,
        size=v.size,
        signature=pb.Signature(
            inputs=_tensors_to_proto(v.signature.inputs),
            outputs=_tensors_to_proto(v.signature.outputs),
        ),
        created_at=v.created_at,
        labels=dict(v.labels),
    )


def version_from_proto(v: pb.ModelVersion) -> ModelVersion:
    return ModelVersion(
        version=v.version,
        uri=v.uri,
        framework=v.framework,
        format=v.format,
        pool=v.pool,
        sha256=v.sha256,
        size=v.size,
        signature=Signature(
            _tensors_from_proto(v.signature.inputs), _tensors_from_proto(v.signature.outputs)
        ),
        created_at=v.created_at,
        labels=dict(v.labels),
    )


def record_to_proto(r: ModelRecord) -> pb.ModelRecord:
    msg = pb.ModelRecord(
        tenant=r.tenant,
        name=r.name,
        versions=[version_to_proto(v) for _, v in sorted(r.versions.items())],
        aliases=dict(r.aliases),
        traffic=pb.TrafficSplit(percent=dict(r.traffic)),
        mod_revision=r.mod_revision,
    )
    if r.shadow is not None:
        msg.shadow.CopyFrom(pb.Shadow(version=r.shadow.version, percent=r.shadow.percent))
    return msg


def record_from_proto(m: pb.ModelRecord) -> ModelRecord:
    versions = {v.version: version_from_proto(v) for v in m.versions}
    return ModelRecord(
        tenant=m.tenant,
        name=m.name,
        versions=versions,
        aliases=dict(m.aliases),
        traffic=dict(m.traffic.percent),
        shadow=ShadowConfig(m.shadow.version, m.shadow.percent) if m.HasField("shadow") else None,
        next_version=max(versions, default=0) + 1,
        mod_revision=m.mod_revision,
    )
