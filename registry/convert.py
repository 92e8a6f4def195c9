"""``shoal.v1`` protobuf <-> the control plane core's plain objects: the only place they meet
(records and versions: ``shoal.records_pb``, which the CLI reads them with too)."""

from __future__ import annotations

from collections.abc import Sequence

from registry.errors import InvalidArgument
from registry.lookup import PoolPlacement
from registry.registration import Registered, RegisterSpec
from registry.workers import WorkerView
from shoal.pb import shoal_control_pb2 as pb


def spec_from_proto(h: pb.RegisterHeader) -> RegisterSpec:
    return RegisterSpec(
        tenant=h.tenant,
        name=h.name,
        framework=h.framework,
        pool=h.pool,
        alias=h.alias,
        labels=dict(h.labels),
        sha256=h.sha256,
    )


def spec_to_proto(spec: RegisterSpec, uri: str = "") -> pb.RegisterHeader:
    return pb.RegisterHeader(
        tenant=spec.tenant,
        name=spec.name,
        framework=spec.framework,
        pool=spec.pool,
        alias=spec.alias,
        labels=dict(spec.labels),
        uri=uri,
        sha256=spec.sha256,
    )


def registered_to_proto(r: Registered) -> pb.RegisterResponse:
    return pb.RegisterResponse(
        tenant=r.tenant,
        name=r.name,
        version=r.version,
        created=r.created,
        sha256=r.sha256,
        pruned=list(r.pruned),
    )


def shadow_from_proto(req: pb.SetShadowRequest) -> tuple[int | None, float]:
    if req.version < 0:
        raise InvalidArgument(f"shadow version {req.version} is negative")
    return (req.version or None), req.percent


def placement_to_proto(tenant: str, pools: Sequence[PoolPlacement]) -> pb.PlacementResponse:
    return pb.PlacementResponse(
        tenant=tenant,
        pools=[
            pb.PoolPlacement(
                pool=p.pool,
                epoch=p.epoch,
                shard_size=p.shard_size,
                override=p.override,
                members=[
                    pb.ShardMember(
                        worker_id=m.worker_id,
                        address=m.address,
                        zone=m.zone,
                        rank=m.rank,
                        in_shard=m.in_shard,
                        warm=m.warm,
                        up=m.up,
                    )
                    for m in p.members
                ],
            )
            for p in pools
        ],
    )


def worker_to_proto(w: WorkerView) -> pb.WorkerStatus:
    i = w.info
    msg = pb.WorkerStatus(
        worker_id=i.worker_id,
        pool=i.pool,
        address=i.address,
        zone=i.zone,
        device=i.device,
        ready=i.ready,
        draining=i.draining,
        started_at=i.started_at,
        host_budget=i.host_budget,
        gpu_budget=i.gpu_budget,
        disk_budget=i.disk_budget,
        metrics_address=i.metrics_address,
    )
    if w.load is not None:
        msg.host_bytes = w.load.host_bytes
        msg.gpu_bytes = w.load.gpu_bytes
        msg.disk_bytes = w.load.disk_bytes
        msg.models_resident = w.load.models_resident
        msg.requests_per_s = w.load.requests_per_s
        msg.in_flight = w.load.in_flight
    return msg
