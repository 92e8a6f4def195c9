"""Plain typed values the worker core works on (no protobuf past ``worker.convert``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, slots=True, order=True)
class ModelId:
    """One immutable model version: the unit of loading and caching."""

    tenant: str
    name: str
    version: int

    def __str__(self) -> str:
        return f"{self.tenant}/{self.name}:{self.version}"


@dataclass(frozen=True, slots=True)
class Tensor:
    """A named tensor: ``array`` already has the shape and dtype of ``datatype``."""

    name: str
    datatype: str
    array: np.ndarray


@dataclass(frozen=True, slots=True)
class InferRequest:
    model: str  # "tenant/name"
    version: str  # "" (split, stable or newest: shoal.records.resolve), a number, or an alias
    inputs: tuple[Tensor, ...]
    outputs: tuple[str, ...] = ()  # requested output names; empty: all
    id: str = ""


@dataclass(frozen=True, slots=True)
class InferResult:
    model: str
    version: int
    outputs: tuple[Tensor, ...]
    id: str = ""


@dataclass(frozen=True, slots=True)
class TensorMeta:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ModelMeta:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorMeta, ...]
    outputs: tuple[TensorMeta, ...]


@dataclass(frozen=True, slots=True)
class LoadOutcome:
    """What ``LoadModel`` reports."""

    loaded: bool
    was_resident: bool
    tier: str
    load_seconds: float


@dataclass(frozen=True, slots=True)
class Stats:
    """A worker's status for ``WorkerAdmin.Stats``; byte and model counts are per tier."""

    worker_id: str
    pool: str
    address: str
    zone: str
    device: str
    ready: bool
    draining: bool
    started_at: float
    budgets: dict[str, int] = field(default_factory=dict)
    resident_bytes: dict[str, int] = field(default_factory=dict)
    models_resident: int = 0
    requests_per_s: float = 0.0
    in_flight: int = 0
    metrics_address: str = ""
