"""Typed records kept in etcd, their keys, and their (JSON) encoding.

Layout (see DESIGN.md, "State"):

* ``/shoal/models/<tenant>/<name>`` -> ``ModelRecord`` (versions, aliases, traffic, shadow);
* ``/shoal/workers/<pool>/<worker_id>`` -> ``WorkerInfo``, under the worker's lease;
* ``/shoal/placement/<pool>`` -> ``PoolSnapshot`` published by the placement leader;
* ``/shoal/tenants/<tenant>`` -> ``TenantConfig`` (shard overrides, key hashes, quotas);
* ``/shoal/cluster`` -> ``ClusterConfig`` (the placement salt);
* ``/shoal/load/<reporter_id>`` -> ``LoadReport`` (per-tenant request rates), under a lease.

Records are small JSON objects: one key per model keeps every write a single compare-and-swap
and every watch event self-contained.

Version resolution (``resolve``) is defined here, once, for the router, the worker and the
simulator: which version of a ``ModelRecord`` answers a request's ``model_version``.
"""

from __future__ import annotations

import bisect
import json
import math
import random
import re
from dataclasses import asdict, dataclass, field, replace
from itertools import accumulate
from typing import Any

from shoal.artifacts import Signature

ROOT = "/shoal/"
MODELS = ROOT + "models/"
WORKERS = ROOT + "workers/"
PLACEMENT = ROOT + "placement/"
TENANTS = ROOT + "tenants/"
CLUSTER = ROOT + "cluster"
ELECTION = ROOT + "election/placement"
LOAD = ROOT + "load/"

_IDENT = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_ALIAS = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
DEFAULT_POOL = "cpu"


class InvalidName(ValueError):
    pass


def check_ident(kind: str, value: str) -> str:
    if not _IDENT.match(value):
        raise InvalidName(f"invalid {kind} {value!r}: expected [a-z0-9][a-z0-9_.-]{{0,62}}")
    return value


def check_alias(value: str) -> str:
    if not _ALIAS.match(value):
        raise InvalidName(f"invalid alias {value!r}: expected [a-z][a-z0-9-]*")
    return value


def split_model_name(model: str) -> tuple[str, str]:
    """``"acme/churn"`` -> ``("acme", "churn")``, validating both parts."""
    tenant, sep, name = model.partition("/")
    if not sep:
        raise InvalidName(f"model name {model!r} must be 'tenant/name'")
    return check_ident("tenant", tenant), check_ident("model name", name)


def model_key(tenant: str, name: str) -> str:
    return f"{MODELS}{tenant}/{name}"


def worker_key(pool: str, worker_id: str) -> str:
    return f"{WORKERS}{pool}/{worker_id}"


def placement_key(pool: str) -> str:
    return f"{PLACEMENT}{pool}"


def tenant_key(tenant: str) -> str:
    return f"{TENANTS}{tenant}"


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True, slots=True)
class ModelVersion:
    version: int
    uri: str
    framework: str
    format: str
    pool: str
    sha256: str
    size: int
    signature: Signature
    created_at: float = 0.0
    labels: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__slots__ if k != "signature"}
        d["signature"] = self.signature.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelVersion:
        d = dict(d)
        d["signature"] = Signature.from_dict(d.get("signature", {}))
        d["labels"] = dict(d.get("labels", {}))
        return cls(**d)


@dataclass(frozen=True, slots=True)
class ShadowConfig:
    version: int
    percent: float


@dataclass(frozen=True, slots=True)
class ModelRecord:
    """One model of one tenant: its versions and how requests choose among them."""

    tenant: str
    name: str
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    aliases: dict[str, int] = field(default_factory=dict)
    traffic: dict[int, int] = field(default_factory=dict)  # version -> percent
    shadow: ShadowConfig | None = None
    next_version: int = 1
    mod_revision: int = 0  # from etcd, not stored

    @property
    def full_name(self) -> str:
        return f"{self.tenant}/{self.name}"

    def referenced_versions(self) -> set[int]:
        """Versions that an alias, the traffic split or the shadow points to."""
        refs = set(self.aliases.values()) | set(self.traffic)
        if self.shadow is not None:
            refs.add(self.shadow.version)
        return refs

    def with_revision(self, mod_revision: int) -> ModelRecord:
        return replace(self, mod_revision=mod_revision)

    def encode(self) -> bytes:
        return _dumps(
            {
                "tenant": self.tenant,
                "name": self.name,
                "versions": [v.to_dict() for v in sorted(self.versions.values(), key=_ver)],
                "aliases": self.aliases,
                "traffic": {str(k): v for k, v in self.traffic.items()},
                "shadow": asdict(self.shadow) if self.shadow else None,
                "next_version": self.next_version,
            }
        )

    @classmethod
    def decode(cls, data: bytes, mod_revision: int = 0) -> ModelRecord:
        d = json.loads(data)
        versions = {int(v["version"]): ModelVersion.from_dict(v) for v in d.get("versions", [])}
        shadow = d.get("shadow")
        return cls(
            tenant=d["tenant"],
            name=d["name"],
            versions=versions,
            aliases={k: int(v) for k, v in d.get("aliases", {}).items()},
            traffic={int(k): int(v) for k, v in d.get("traffic", {}).items()},
            shadow=ShadowConfig(int(shadow["version"]), float(shadow["percent"]))
            if shadow
            else None,
            next_version=int(d.get("next_version", max(versions, default=0) + 1)),
            mod_revision=mod_revision,
        )


def _ver(v: ModelVersion) -> int:
    return v.version


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """What a worker publishes about itself under its lease."""

    worker_id: str
    pool: str
    address: str  # host:port of the inference protocol
    zone: str = ""
    device: str = "cpu"  # cpu | cuda
    host_budget: int = 0
    gpu_budget: int = 0
    disk_budget: int = 0
    started_at: float = 0.0
    ready: bool = False
    draining: bool = False
    metrics_address: str = ""
    leaving: bool = False  # handing its hot models over; a member until the leader drops it
    warmed: int = 0  # id of the last WarmOrder applied (shoal.warmth)

    def encode(self) -> bytes:
        return _dumps(asdict(self))

    @classmethod
    def decode(cls, data: bytes) -> WorkerInfo:
        d = json.loads(data)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True, slots=True)
class Member:
    worker_id: str
    address: str
    zone: str = ""


@dataclass(frozen=True, slots=True)
class PoolSnapshot:
    """A published pool membership: the input of the shard function for routers."""

    pool: str
    epoch: int
    members: tuple[Member, ...]
    shard_size: int
    published_at: float = 0.0

    def encode(self) -> bytes:
        return _dumps(
            {
                "pool": self.pool,
                "epoch": self.epoch,
                "members": [asdict(m) for m in self.members],
                "shard_size": self.shard_size,
                "published_at": self.published_at,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> PoolSnapshot:
        d = json.loads(data)
        return cls(
            pool=d["pool"],
            epoch=int(d["epoch"]),
            members=tuple(Member(**m) for m in d["members"]),
            shard_size=int(d["shard_size"]),
            published_at=float(d.get("published_at", 0.0)),
        )


@dataclass(frozen=True, slots=True)
class TenantConfig:
    """Per-tenant overrides: a larger shard (hot tenants) or explicit members (VIPs)."""

    tenant: str
    shard_size: int = 0  # 0: the pool default
    members: tuple[str, ...] = ()  # explicit worker ids, taking precedence
    hot_until: float = 0.0  # set by the hot-tenant controller
    key_hashes: tuple[str, ...] = ()
    rate_limit: float = 0.0  # requests/s, 0: unlimited
    max_in_flight: int = 0

    def encode(self) -> bytes:
        d = asdict(self)
        d["members"] = list(self.members)
        d["key_hashes"] = list(self.key_hashes)
        return _dumps(d)

    @classmethod
    def decode(cls, data: bytes) -> TenantConfig:
        d = json.loads(data)
        known = set(cls.__dataclass_fields__)
        d = {k: v for k, v in d.items() if k in known}
        d["members"] = tuple(d.get("members", ()))
        d["key_hashes"] = tuple(d.get("key_hashes", ()))
        return cls(**d)


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    salt: str  # hex; secret: keeps anyone from aiming a tenant at a chosen shard
    default_shard_size: int = 2

    def encode(self) -> bytes:
        return _dumps(asdict(self))

    @classmethod
    def decode(cls, data: bytes) -> ClusterConfig:
        d = json.loads(data)
        return cls(salt=d["salt"], default_shard_size=int(d.get("default_shard_size", 2)))


def load_key(reporter_id: str) -> str:
    return f"{LOAD}{reporter_id}"


@dataclass(frozen=True, slots=True)
class LoadReport:
    """Per-tenant request rates one reporter saw, for the hot-tenant controller.

    Stored at ``/shoal/load/<reporter_id>`` under the reporter's lease (so a dead reporter's
    load vanishes with it) as a flat JSON object ``{"<tenant>": requests_per_second, ...}``,
    rewritten every few seconds with the rate over the reporter's recent window. The placement
    leader sums the rates per tenant across reporters, so each request must be counted by one
    kind of reporter only: either every router reports, or every worker does, not both.
    """

    reporter_id: str
    rates: dict[str, float] = field(default_factory=dict)

    def encode(self) -> bytes:
        return _dumps({t: float(r) for t, r in self.rates.items()})

    @classmethod
    def decode(cls, reporter_id: str, data: bytes) -> LoadReport:
        d = json.loads(data)
        if not isinstance(d, dict):
            raise ValueError(f"load report of {reporter_id} is not a JSON object")
        return cls(reporter_id, {str(t): float(r) for t, r in d.items()})


# --- version resolution ---------------------------------------------------------------------

#: The alias a request naming no version follows when the model has no traffic split.
STABLE = "stable"


class UnknownVersion(LookupError):
    """The version, alias or default a request names does not exist (maps to NOT_FOUND)."""


@dataclass(frozen=True, slots=True)
class Resolution:
    version: ModelVersion
    via: str  # "pinned", "alias:<name>", "traffic", "latest"


@dataclass(frozen=True, slots=True)
class DefaultRoute:
    """What a request naming no version follows: ``versions`` (ascending) with the running
    sums of their weights, ``cumulative`` (one version, weight 1, unless a split is set)."""

    via: str  # "traffic", "alias:stable" or "latest"
    versions: tuple[int, ...]
    cumulative: tuple[int, ...]
    source: str  # how a failure names it: "the traffic split", "alias 'stable'", ""


def default_route(record: ModelRecord) -> DefaultRoute | None:
    """The traffic split when one is set, else the ``stable`` alias, else the newest version;
    None for a model without versions."""
    if record.traffic:
        versions = tuple(sorted(record.traffic))
        cumulative = tuple(accumulate(record.traffic[v] for v in versions))
        return DefaultRoute("traffic", versions, cumulative, "the traffic split")
    if STABLE in record.aliases:
        return DefaultRoute(f"alias:{STABLE}", (record.aliases[STABLE],), (1,), f"alias {STABLE!r}")
    if record.versions:
        return DefaultRoute("latest", (max(record.versions),), (1,), "")
    return None


def resolve_draw(record: ModelRecord, requested: str, u: float) -> Resolution:
    """Which version answers ``requested`` (surrounding whitespace ignored), given a draw ``u``
    in [0, 1) that only a traffic split reads:

    * empty: ``default_route``; a split picks ``versions[bisect_right(cumulative, u * total)]``
      (what ``random.choices(versions, weights)`` does with the same draw);
    * digits (``str.isdigit``): that version, pinned;
    * anything else: the alias of that name.

    Pure. Raises ``UnknownVersion`` naming what is missing; and, exactly as the router's
    ``random.choices`` and ``int`` did, ``ValueError`` for a split whose weights do not sum to
    a positive finite total, or for digits ``int`` cannot read (e.g. ``"²"``).
    """
    requested = requested.strip()
    name = record.full_name
    if requested.isdigit():
        v = record.versions.get(int(requested))
        if v is None:
            raise UnknownVersion(f"model {name} has no version {requested}")
        return Resolution(v, "pinned")
    if requested:
        target = record.aliases.get(requested)
        if target is None:
            raise UnknownVersion(f"model {name} has no alias {requested!r}")
        return Resolution(_existing(record, target, f"alias {requested!r}"), f"alias:{requested}")
    route = default_route(record)
    if route is None:
        raise UnknownVersion(f"model {name} has no versions")
    total = _split_total(route)
    hi = len(route.versions) - 1
    chosen = route.versions[bisect.bisect_right(route.cumulative, u * total, 0, hi)]
    if not route.source:  # the newest version: present by construction
        return Resolution(record.versions[chosen], route.via)
    return Resolution(_existing(record, chosen, route.source), route.via)


def resolve(record: ModelRecord, requested: str, rng: random.Random) -> Resolution:
    """``resolve_draw`` with ``u = rng.random()``, drawn only when the traffic split decides
    (so a pinned or aliased request, or a split that cannot be drawn from, leaves ``rng`` where
    it was, as ``random.choices`` did)."""
    route = default_route(record) if not requested.strip() else None
    draws = route is not None and route.via == "traffic" and _split_total(route, check=False) > 0
    return resolve_draw(record, requested, rng.random() if draws else 0.0)


def _split_total(route: DefaultRoute, check: bool = True) -> float:
    """The weights' total as ``random.choices`` takes it (a float), checked as it checks it."""
    total = route.cumulative[-1] + 0.0
    if check and total <= 0.0:
        raise ValueError("Total of weights must be greater than zero")
    if check and not math.isfinite(total):
        raise ValueError("Total of weights must be finite")
    return total if math.isfinite(total) else 0.0


def _existing(record: ModelRecord, version: int, source: str) -> ModelVersion:
    v = record.versions.get(version)
    if v is None:
        raise UnknownVersion(
            f"model {record.full_name}: {source} points to missing version {version}"
        )
    return v
