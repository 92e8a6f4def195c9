"""Warm hand-off and pinning: the records the workers and the placement leader exchange.

Keys (beside those of ``shoal.records``):

* ``/shoal/hot/<pool>/<worker_id>`` -> ``HotList``: a worker's hottest resident model
  versions, hottest first, written by the worker under its lease (every ``hot_list_s`` when
  it changed, and once more when it starts draining);
* ``/shoal/warm/<pool>/<worker_id>`` -> ``WarmOrder``: what the placement leader asks a worker
  to load (``preload``: hot models it is about to become primary for) and to keep resident
  (``pinned``: pinned models whose shard includes it). The worker acknowledges an order by
  publishing its id as ``WorkerInfo.warmed``;
* ``/shoal/drain/<pool>/<worker_id>`` -> ``""``: an operator's drain (``shoal workers drain``),
  kept until ``undrain``: the worker hands over and leaves the pool, and stays out, restarts
  included;
* ``/shoal/pins/<tenant>/<name>`` -> ``Pin``: a pinned model (``shoal models pin``).

A model reference is ``(tenant, name, version)``; a pin names a model, and the worker keeps
the versions its default route resolves to (``stable``, or the traffic split) resident.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from shoal.records import ROOT

HOT = ROOT + "hot/"
WARM = ROOT + "warm/"
DRAIN = ROOT + "drain/"
PINS = ROOT + "pins/"

#: (tenant, name, version)
ModelRef = tuple[str, str, int]


def hot_key(pool: str, worker_id: str) -> str:
    return f"{HOT}{pool}/{worker_id}"


def warm_key(pool: str, worker_id: str) -> str:
    return f"{WARM}{pool}/{worker_id}"


def drain_key(pool: str, worker_id: str) -> str:
    return f"{DRAIN}{pool}/{worker_id}"


def pin_key(tenant: str, name: str) -> str:
    return f"{PINS}{tenant}/{name}"


def _dumps(d: dict[str, Any]) -> bytes:
    return json.dumps(d, separators=(",", ":"), sort_keys=True).encode()


def _refs(items: Any) -> tuple[ModelRef, ...]:
    return tuple((str(t), str(n), int(v)) for t, n, v in items)


@dataclass(frozen=True, slots=True)
class HotModel:
    """A resident model version as its worker rates it: ``score`` (requests the policy counted
    recently; 0 under LRU, whose list is in recency order) and its resident bytes."""

    tenant: str
    name: str
    version: int
    nbytes: int
    score: int = 0

    @property
    def ref(self) -> ModelRef:
        return (self.tenant, self.name, self.version)

    @property
    def key(self) -> str:
        """The key of the primary function (``shoal.shard.primary_index``)."""
        return f"{self.tenant}/{self.name}:{self.version}"


@dataclass(frozen=True, slots=True)
class HotList:
    worker_id: str
    models: tuple[HotModel, ...]  # hottest first
    draining: bool = False

    def encode(self) -> bytes:
        return _dumps(
            {
                "worker_id": self.worker_id,
                "draining": self.draining,
                "models": [[m.tenant, m.name, m.version, m.nbytes, m.score] for m in self.models],
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> HotList:
        d = json.loads(data)
        models = tuple(
            HotModel(str(t), str(n), int(v), int(b), int(s)) for t, n, v, b, s in d["models"]
        )
        return cls(str(d["worker_id"]), models, bool(d.get("draining", False)))


@dataclass(frozen=True, slots=True)
class WarmOrder:
    """The leader's order to one worker. ``id`` grows with every order (a new leader starts
    above its predecessor's: ids are milliseconds since the epoch, then +1); ``preload`` is
    hottest first, each with the score its previous primary gave it."""

    id: int
    preload: tuple[HotModel, ...] = ()
    pinned: tuple[tuple[str, str], ...] = ()
    reason: str = ""

    def encode(self) -> bytes:
        return _dumps(
            {
                "id": self.id,
                "reason": self.reason,
                "preload": [[m.tenant, m.name, m.version, m.nbytes, m.score] for m in self.preload],
                "pinned": [list(p) for p in self.pinned],
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> WarmOrder:
        d = json.loads(data)
        preload = tuple(
            HotModel(str(t), str(n), int(v), int(b), int(s)) for t, n, v, b, s in d["preload"]
        )
        pinned = tuple((str(t), str(n)) for t, n in d.get("pinned", []))
        return cls(int(d["id"]), preload, pinned, str(d.get("reason", "")))


@dataclass(frozen=True, slots=True)
class Pin:
    """A pinned model and the pool its versions live in (shards are per pool)."""

    tenant: str
    name: str
    pool: str
    nbytes: int = 0  # the artifact bytes of the pinned versions when pinned (an estimate)

    def encode(self) -> bytes:
        return _dumps({"tenant": self.tenant, "name": self.name, "pool": self.pool,
                       "nbytes": self.nbytes})  # fmt: skip

    @classmethod
    def decode(cls, data: bytes) -> Pin:
        d = json.loads(data)
        return cls(str(d["tenant"]), str(d["name"]), str(d["pool"]), int(d.get("nbytes", 0)))
