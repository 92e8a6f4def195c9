"""What ``shoal simulate`` simulates: the fleet of models (and their sizes) and the traffic.

Three sources of models, one shape (``Fleet``):

* synthetic: ``models`` models, ``models_per_tenant`` per tenant (default 1), tenants named
  ``t0000000``..., models ``m0``...; tenant 0 is the most requested under Zipf traffic;
* a trace file: every (tenant, model) it mentions;
* the live registry in etcd (``read_registry``): every model with a version in the pool, its
  size taken from the versions that serve default traffic (see ``read_registry``).

Sizes: ``SizeModel`` (fixed bytes, or lognormal with a median and a sigma) fills in every model
whose size is not known from the registry. Traffic (``Traffic``): a popularity per model and a
request stream, either Zipf over tenants (``zipf_traffic``) or replayed (``trace_traffic``).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shoal._native import model_primary_indices, searchsorted_right
from shoal.records import (
    CLUSTER,
    MODELS,
    TENANTS,
    ClusterConfig,
    Member,
    ModelRecord,
    ModelVersion,
    PoolSnapshot,
    TenantConfig,
    default_route,
    placement_key,
)
from shoal.state import StateStore, read_prefix

#: Model name for trace requests that name no model, when the registry knows no model of the
#: tenant (otherwise such a request goes to the tenant's first registered model).
DEFAULT_MODEL = "default"


class InputError(ValueError):
    """Unusable simulation input (bad trace line, empty registry, impossible sizes)."""


@dataclass(frozen=True)
class SizeModel:
    """Bytes resident per model: ``median`` exactly when ``sigma`` is 0, else lognormal with
    that median (``exp(mu)``) and shape ``sigma``, rounded up to whole bytes (at least 1)."""

    median: int
    sigma: float = 0.0

    def __post_init__(self) -> None:
        if self.median <= 0 or self.sigma < 0:
            raise InputError("model size needs a positive median and a sigma >= 0")

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.sigma == 0:
            return np.full(n, self.median, dtype=np.int64)
        draws = rng.lognormal(math.log(self.median), self.sigma, n)
        return np.maximum(1, np.ceil(draws)).astype(np.int64)

    def describe(self) -> str:
        if self.sigma == 0:
            return f"fixed {self.median} B"
        return f"lognormal(median {self.median} B, sigma {self.sigma:g})"


@dataclass(frozen=True)
class Fleet:
    """Models to place: ``M`` models of ``T`` tenants, as parallel arrays.

    ``model_tenant[m]`` indexes ``tenants``; ``model_names[m]`` and ``versions[m]`` form the key
    the router hashes to choose a model's primary (``tenant/name:version``); ``sizes[m]`` is the
    resident bytes of the model. ``overrides`` are per-tenant shard overrides (the registry's
    ``TenantConfig`` records); hot-tenant rules of a simulation are added on top of them.
    """

    tenants: list[str]
    model_tenant: np.ndarray
    model_names: Sequence[str]
    versions: np.ndarray
    sizes: np.ndarray
    overrides: Mapping[str, TenantConfig] = field(default_factory=dict)
    source: str = "synthetic"

    def __post_init__(self) -> None:
        m = len(self.model_tenant)
        if not (len(self.model_names) == len(self.versions) == len(self.sizes) == m):
            raise InputError("fleet arrays must have one entry per model")
        if m == 0:
            raise InputError("no models to simulate")

    @property
    def n_models(self) -> int:
        return len(self.model_tenant)

    def model_keys(self) -> list[str]:
        """``tenant/name:version`` per model: what the router hashes to pick the primary."""
        t = self.tenants
        return [
            f"{t[ti]}/{name}:{v}"
            for ti, name, v in zip(
                self.model_tenant.tolist(), self.model_names, self.versions.tolist(), strict=True
            )
        ]

    def primary_indices(self, k: np.ndarray) -> np.ndarray:
        """``shoal.shard.primary_indices(self.model_keys(), k)``: each model's primary among
        ``k[m]`` members, the keys built natively (no list of millions of strings)."""
        return model_primary_indices(
            self.tenants,
            np.ascontiguousarray(self.model_tenant, dtype=np.int64),
            self.model_names,
            np.ascontiguousarray(self.versions, dtype=np.int64),
            np.ascontiguousarray(k, dtype=np.int64),
        )

    def tenant_bytes(self) -> np.ndarray:
        """Bytes of all models of each tenant, ``[T]``."""
        return np.bincount(
            self.model_tenant, weights=self.sizes, minlength=len(self.tenants)
        ).astype(np.int64)

    def tenant_models(self) -> np.ndarray:
        return np.bincount(self.model_tenant, minlength=len(self.tenants)).astype(np.int64)


def synthetic_fleet(
    models: int, sizes: SizeModel, rng: np.random.Generator, models_per_tenant: int = 1
) -> Fleet:
    """``models`` models, ``models_per_tenant`` per tenant (the last tenant may have fewer)."""
    if models <= 0 or models_per_tenant <= 0:
        raise InputError("--models and --models-per-tenant must be positive")
    n_tenants = -(-models // models_per_tenant)
    width = max(7, len(str(n_tenants - 1)))
    tenants = list(map(f"t%0{width}d".__mod__, range(n_tenants)))  # faster than an f-string
    ordinal = np.arange(models, dtype=np.int64)
    names_table = [f"m{j}" for j in range(models_per_tenant)]
    return Fleet(
        tenants=tenants,
        model_tenant=ordinal // models_per_tenant,
        model_names=[names_table[j] for j in (ordinal % models_per_tenant).tolist()]
        if models_per_tenant > 1
        else [names_table[0]] * models,
        versions=np.ones(models, dtype=np.int64),
        sizes=sizes.sample(models, rng),
        source=f"synthetic: {models} models, {models_per_tenant} per tenant",
    )


@dataclass(frozen=True)
class Traffic:
    """Per-model popularity (shares summing to 1) and a request stream in time order."""

    popularity: np.ndarray  # float64 [M]
    requests: np.ndarray  # int64 [R], model index per request
    rps: float  # total requests per second across the pool
    source: str


def zipf_traffic(
    fleet: Fleet, s: float, n_requests: int, rps: float, rng: np.random.Generator
) -> Traffic:
    """Independent requests, tenant of rank r (r = index + 1) drawn with weight ``r**-s``
    (s = 0: uniform), then one of the tenant's models uniformly. Exact popularity is returned
    beside the sampled stream, so loads carry no sampling noise."""
    if s < 0 or n_requests < 0 or rps <= 0:
        raise InputError("need zipf s >= 0, requests >= 0 and rps > 0")
    t = len(fleet.tenants)
    tenant_w = np.arange(1, t + 1, dtype=np.float64) ** -s
    tenant_w /= tenant_w.sum()
    per_tenant = fleet.tenant_models()
    pop = tenant_w[fleet.model_tenant] / per_tenant[fleet.model_tenant]
    pop /= pop.sum()
    cdf = np.cumsum(pop)
    cdf[-1] = 1.0  # guard the last bin against rounding below 1
    # np.searchsorted(cdf, ..., side="right"), natively: tens of millions of binary searches
    # over a cdf of millions of models miss the cache at most steps.
    reqs = searchsorted_right(cdf, rng.random(n_requests)).astype(np.int64)
    return Traffic(pop, np.minimum(reqs, fleet.n_models - 1), rps, f"zipf(s={s:g})")


def add_scans(
    traffic: Traffic, n_models: int, every: int, count: int, rng: np.random.Generator
) -> Traffic:
    """A batch job on top of ``traffic``: after every ``every`` requests, ``count`` models
    requested once each, in turn through a random permutation of all models (a job scoring
    every tenant), so each scan touches models the previous ones did not. The popularity (the
    steady state's input) stays the tenants' own."""
    if every <= 0 or count <= 0:
        raise InputError("--scan-every and --scan-models must both be positive")
    base = traffic.requests
    n_scans = len(base) // every
    if n_scans == 0 or n_models == 0:
        return traffic
    order = rng.permutation(n_models)
    scan_items = order[np.arange(n_scans * count) % n_models].astype(np.int64)
    at = np.repeat(np.arange(1, n_scans + 1) * every, count)
    requests = np.insert(base, at, scan_items)
    source = f"{traffic.source} + scans of {count} models every {every} requests"
    return Traffic(traffic.popularity, requests, traffic.rps, source)


# --- traces --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TraceRequest:
    timestamp: float
    tenant: str
    model: str  # the name, or DEFAULT_MODEL when the trace names none


def _parse_model(tenant: str, model: str) -> str:
    if not model:
        return DEFAULT_MODEL
    t, sep, name = model.partition("/")
    if sep:
        if t != tenant:
            raise InputError(f"model {model!r} does not belong to tenant {tenant!r}")
        return name
    return model


def read_trace(path: Path) -> list[TraceRequest]:
    """Requests from a CSV (``timestamp,tenant[,model]``, optional header) or JSONL file
    (``{"timestamp" | "ts": seconds, "tenant": ..., "model": ...}``; ``model`` may be
    ``name`` or ``tenant/name``, or ``model`` alone as ``tenant/name``). Sorted by timestamp
    (stable). Raises ``InputError`` naming the line of the first malformed record."""
    try:
        with path.open(newline="") as f:
            first = f.readline()
            f.seek(0)
            jsonl = first.lstrip().startswith("{")
            reqs = list(_read_jsonl(f) if jsonl else _read_csv(f))
    except OSError as exc:
        raise InputError(f"cannot read trace {path}: {exc.strerror}") from None
    if not reqs:
        raise InputError(f"trace {path} has no requests")
    reqs.sort(key=lambda r: r.timestamp)
    return reqs


def _read_csv(lines: Iterable[str]) -> Iterator[TraceRequest]:
    for lineno, row in enumerate(csv.reader(lines), 1):
        if not row or not "".join(row).strip():
            continue
        try:
            ts = float(row[0])
        except ValueError:
            if lineno == 1:
                continue  # a header
            raise InputError(f"trace line {lineno}: timestamp {row[0]!r} is not a number") from None
        if len(row) < 2 or not row[1].strip():
            raise InputError(f"trace line {lineno}: expected timestamp,tenant[,model]")
        tenant = row[1].strip()
        yield TraceRequest(ts, tenant, _parse_model(tenant, row[2].strip() if len(row) > 2 else ""))


def _read_jsonl(lines: Iterable[str]) -> Iterator[TraceRequest]:
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            ts = float(d["timestamp"] if "timestamp" in d else d["ts"])
            model = str(d.get("model") or "")
            tenant = str(d.get("tenant") or model.partition("/")[0])
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"trace line {lineno}: {exc}") from None
        if not tenant:
            raise InputError(f"trace line {lineno}: no tenant")
        yield TraceRequest(ts, tenant, _parse_model(tenant, model))


def trace_traffic(
    trace: Sequence[TraceRequest],
    sizes: SizeModel,
    rng: np.random.Generator,
    rps: float | None = None,
    registry: Fleet | None = None,
) -> tuple[Fleet, Traffic]:
    """The fleet a trace implies and its replay. With ``registry``, the fleet is the registry's
    models plus any the trace names that the registry lacks (sized by ``sizes``); a request
    naming no model goes to the tenant's first registered model. Popularity is each model's
    share of the trace; ``rps`` defaults to the trace's own rate (requests over its duration)."""
    index: dict[tuple[str, str], int] = {}
    tenants: list[str] = []
    tenant_index: dict[str, int] = {}
    model_tenant: list[int] = []
    names: list[str] = []
    versions: list[int] = []
    known_sizes: list[int] = []
    first_model: dict[str, str] = {}

    def add(tenant: str, name: str, version: int, size: int) -> int:
        ti = tenant_index.get(tenant)
        if ti is None:
            ti = tenant_index[tenant] = len(tenants)
            tenants.append(tenant)
        m = index[(tenant, name)] = len(names)
        model_tenant.append(ti)
        names.append(name)
        versions.append(version)
        known_sizes.append(size)
        return m

    if registry is not None:
        for ti, name, v, sz in zip(
            registry.model_tenant.tolist(),
            registry.model_names,
            registry.versions.tolist(),
            registry.sizes.tolist(),
            strict=True,
        ):
            tenant = registry.tenants[ti]
            add(tenant, name, v, sz)
            if tenant not in first_model or name < first_model[tenant]:
                first_model[tenant] = name
    reqs = np.empty(len(trace), dtype=np.int64)
    for i, r in enumerate(trace):
        name = r.model
        if name == DEFAULT_MODEL:
            name = first_model.get(r.tenant, DEFAULT_MODEL)
        m = index.get((r.tenant, name))
        if m is None:
            m = add(r.tenant, name, 1, -1)
        reqs[i] = m
    size_arr = np.array(known_sizes, dtype=np.int64)
    unknown = size_arr < 0
    size_arr[unknown] = sizes.sample(int(unknown.sum()), rng)
    fleet = Fleet(
        tenants=tenants,
        model_tenant=np.array(model_tenant, dtype=np.int64),
        model_names=names,
        versions=np.array(versions, dtype=np.int64),
        sizes=size_arr,
        overrides=dict(registry.overrides) if registry is not None else {},
        source=(registry.source + " + trace") if registry is not None else "trace",
    )
    counts = np.bincount(reqs, minlength=fleet.n_models).astype(np.float64)
    if rps is None:
        duration = trace[-1].timestamp - trace[0].timestamp
        if duration <= 0:
            raise InputError("the trace spans no time: give --rps")
        rps = len(trace) / duration
    return fleet, Traffic(counts / counts.sum(), reqs, rps, f"trace ({len(trace)} requests)")


# --- the live registry ---------------------------------------------------------------------


@dataclass(frozen=True)
class Registry:
    """What the cluster holds: its models (as a ``Fleet``), the placement salt, and the pool's
    published snapshot (None when no placement service has published one yet)."""

    fleet: Fleet
    salt: bytes | None
    snapshot: PoolSnapshot | None


def serving_versions(record: ModelRecord) -> list[ModelVersion]:
    """Versions that answer requests naming no version (``shoal.records.default_route``, the
    router's rule): the traffic split's versions when set, else the ``stable`` alias, else the
    newest; a version the record lacks answers nothing."""
    route = default_route(record)
    if route is None:
        return []
    return [record.versions[v] for v in route.versions if v in record.versions]


async def read_registry(
    store: StateStore, pool: str, resident_factor: Mapping[str, float] | None = None
) -> Registry:
    """Models of ``pool`` from ``/shoal/models/``, overrides from ``/shoal/tenants/``, the salt
    from ``/shoal/cluster`` and the pool's snapshot from ``/shoal/placement/<pool>``.

    A model's size is the sum of the artifact sizes (``ModelVersion.size``) of its serving
    versions (each must be resident to answer), times ``resident_factor[framework]`` (default
    1.0: artifact bytes stand for resident bytes; DESIGN.md measures resident sizes of ~90 KiB
    XGBoost, ~370 KiB LightGBM, ~1.2 MiB ONNX for 100-tree models, so give factors measured on
    your models). The primary key uses the serving version with the largest share. Raises
    ``InputError`` when the pool has no models; ``StateUnavailable`` from the store passes up.
    """
    factors = dict(resident_factor or {})
    kvs, _ = await read_prefix(store, MODELS)
    tenants: list[str] = []
    tenant_index: dict[str, int] = {}
    model_tenant: list[int] = []
    names: list[str] = []
    versions: list[int] = []
    sizes: list[int] = []
    for kv in kvs:
        rec = ModelRecord.decode(kv.value)
        serving = [v for v in serving_versions(rec) if v.pool == pool]
        if not serving:
            continue
        main = max(serving, key=lambda v: (rec.traffic.get(v.version, 0), v.version))
        size = sum(math.ceil(v.size * factors.get(v.framework, 1.0)) for v in serving)
        ti = tenant_index.get(rec.tenant)
        if ti is None:
            ti = tenant_index[rec.tenant] = len(tenants)
            tenants.append(rec.tenant)
        model_tenant.append(ti)
        names.append(rec.name)
        versions.append(main.version)
        sizes.append(max(1, size))
    if not names:
        raise InputError(f"the registry has no models in pool {pool!r}")
    tkvs, _ = await read_prefix(store, TENANTS)
    overrides = {}
    for kv in tkvs:
        cfg = TenantConfig.decode(kv.value)
        overrides[cfg.tenant] = cfg
    ckv = await store.get(CLUSTER)
    salt = bytes.fromhex(ClusterConfig.decode(ckv.value).salt) if ckv is not None else None
    pkv = await store.get(placement_key(pool))
    snapshot = PoolSnapshot.decode(pkv.value) if pkv is not None else None
    fleet = Fleet(
        tenants=tenants,
        model_tenant=np.array(model_tenant, dtype=np.int64),
        model_names=names,
        versions=np.array(versions, dtype=np.int64),
        sizes=np.array(sizes, dtype=np.int64),
        overrides=overrides,
        source=f"registry: {len(names)} models in pool {pool!r}",
    )
    return Registry(fleet, salt, snapshot)


def synthetic_members(workers: int, zones: int) -> tuple[Member, ...]:
    """``w000``... in zones ``z0``... round-robin (no zone when ``zones`` is 1)."""
    if workers <= 0 or zones <= 0:
        raise InputError("--workers and --zones must be positive")
    width = max(3, len(str(workers - 1)))
    return tuple(
        Member(f"w{i:0{width}d}", "", f"z{i % zones}" if zones > 1 else "") for i in range(workers)
    )
