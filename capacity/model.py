"""The values of a capacity simulation: its configuration and its report.

``SimConfig`` and ``HotRule`` are what ``shoal simulate`` asks for (the fleet and the traffic
come from ``capacity.inputs``); ``Report`` and the figures in it are what ``capacity.run``
returns and ``capacity.report`` renders.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from capacity.stats import BlastRadius, Spread, Versus
from shoal.records import Member

#: ``progress(stage, fraction_done)``: fraction_done in [0, 1] over the whole simulation.
Progress = Callable[[str, float], None]

_GiB = 1 << 30


@dataclass(frozen=True, slots=True)
class HotRule:
    """The ``top`` most requested tenants get shard size ``shard_size`` (a larger k)."""

    top: int
    shard_size: int


@dataclass(frozen=True)
class SimConfig:
    """Knobs of one simulation; the fleet and traffic come separately (``capacity.inputs``)."""

    workers: int = 64
    shard_size: int = 4
    zones: int = 1
    hot: tuple[HotRule, ...] = ()
    budget_bytes: int = 32 * _GiB
    seed: int = 0
    #: Leading share of the request stream that only warms the caches (not counted).
    warmup: float = 0.25
    targets: tuple[float, ...] = (0.9, 0.95, 0.99)
    #: The placement salt; None: derived from the seed (shards are then those of a cluster
    #: with that salt; any salt gives the same statistics).
    salt: bytes | None = None
    #: Explicit members (e.g. the live snapshot's); None: ``workers`` synthetic members.
    members: tuple[Member, ...] | None = None
    pairs: int = 1_000_000
    victims: int = 32
    curve_points: int = 41
    #: The workers' cache policy replayed: "tinylfu" (the worker's default) or "lru".
    policy: str = "tinylfu"
    #: Budgets replayed for the W-TinyLFU curve (each is one replay of every stream).
    tinylfu_curve_points: int = 9

    def pool_salt(self) -> bytes:
        if self.salt is not None:
            return self.salt
        return hashlib.sha256(f"shoal-simulate-{self.seed}".encode()).digest()


@dataclass(frozen=True)
class Shards:
    """Every tenant's shard: ``rows[t, :k[t]]`` are member indices in selection order
    (``-1`` pads rows shorter than the longest shard)."""

    rows: np.ndarray
    k: np.ndarray
    pinned: np.ndarray  # bool [T]: explicit member list (VIP override)


@dataclass(frozen=True)
class WorkerRow:
    worker_id: str
    zone: str
    models: int
    bytes: int
    primary_models: int
    primary_bytes: int
    load_rps: float
    hit_rate: float  # NaN when no measured request reached the worker
    misses_per_s: float


@dataclass(frozen=True)
class WorkerFigures:
    models: Spread
    bytes: Spread
    primary_models: Spread
    primary_bytes: Spread
    load_rps: Spread
    hit_rate: Spread
    misses_per_s: Spread
    over_budget: int  # workers whose assigned bytes exceed the cache budget


@dataclass(frozen=True)
class Movement:
    """What changes when ``worker_id`` joins or leaves (every other worker stays).

    ``tenants``: share of tenants whose shard changes, beside ``k/(N+1)`` (join) or the expected
    ``k/N`` (leave; the simulated leaver is the worker holding the most bytes, so its share is
    its own tenants' share). ``bytes``: bytes that must be loaded on new members, and their
    share of all placed bytes (every model counted once per shard member). ``traffic``: share of
    requests whose primary worker changes (their cache entries go cold).
    """

    event: str
    worker_id: str
    tenants: Versus
    bytes_moved: int
    bytes_share: Versus
    traffic: float


@dataclass(frozen=True)
class BudgetFor:
    """Per-worker budget reaching ``target``: ``overall`` (pool-wide hit rate) and
    ``every_worker`` (each worker's own hit rate); None when unreachable within the trace
    (first requests always miss)."""

    target: float
    overall: int | None
    every_worker: int | None


@dataclass(frozen=True)
class CurvePoint:
    budget_bytes: int
    hit_rate: float


@dataclass(frozen=True)
class SteadyState:
    """Long-run LRU figures under independent requests with the simulated popularity (Che's
    approximation, ``capacity.steady.CheTable``): what a long-running fleet converges to, free
    of the first-request misses that cap a finite trace. Same curve budgets as the replay."""

    hit_rate: float
    worker_hit_rate: Spread
    curve: list[CurvePoint]
    budget_for: list[BudgetFor]
    method: str = "Che's approximation, independent requests"


@dataclass(frozen=True)
class CacheFigures:
    """LRU results: ``hit_rate``, ``curve`` and ``budget_for`` are the exact replay of the
    request stream (``method``, see ``capacity.cache``); ``steady_state`` the long-run view."""

    budget_bytes: int
    requests: int
    measured: int
    warmup: float
    hit_rate: float
    max_hit_rate: float  # with an unbounded budget: only first requests miss
    curve: list[CurvePoint]
    budget_for: list[BudgetFor]
    steady_state: SteadyState
    method: str = "exact LRU replay per worker via byte stack distances"


@dataclass(frozen=True)
class Inputs:
    """What was simulated, echoed in the report."""

    fleet: str
    models: int
    tenants: int
    model_bytes_total: int
    workers: int
    zones: int
    shard_size: int
    hot_tenants: int  # tenants with a shard size other than the pool's (hot rules, overrides)
    pinned_tenants: int  # tenants with an explicit member list
    traffic: str
    requests: int
    rps: float
    budget_bytes: int
    seed: int
    routing: str
    policy: str = "tinylfu"


@dataclass(frozen=True)
class Report:
    inputs: Inputs
    workers: WorkerFigures
    blast_radius: BlastRadius | None
    movement: list[Movement]
    cache: CacheFigures
    per_worker: list[WorkerRow]
    timings_s: dict[str, float] = field(default_factory=dict)
