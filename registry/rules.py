"""Pure rules over a ``ModelRecord``: what an alias, a traffic split, a shadow or a retention
pass may do.

Each function takes the current record and returns the new one (or the victims), raising
``InvalidArgument`` / ``NotFound`` with a user-facing reason; nothing here touches etcd, so the
registry can apply them inside its compare-and-swap loop and tests can call them directly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace

from registry.errors import InvalidArgument, NotFound
from shoal.records import ModelRecord, ModelVersion, ShadowConfig, check_alias


def require_version(record: ModelRecord, version: int) -> None:
    if version not in record.versions:
        known = ", ".join(str(v) for v in sorted(record.versions)) or "none"
        raise NotFound(f"model {record.full_name} has no version {version} (versions: {known})")


def with_alias(record: ModelRecord, alias: str, version: int) -> ModelRecord:
    check_alias(alias)
    require_version(record, version)
    return replace(record, aliases={**record.aliases, alias: version})


def without_alias(record: ModelRecord, alias: str) -> ModelRecord:
    if alias not in record.aliases:
        raise NotFound(f"model {record.full_name} has no alias {alias!r}")
    return replace(record, aliases={a: v for a, v in record.aliases.items() if a != alias})


def with_traffic(record: ModelRecord, percent: Mapping[int, int]) -> ModelRecord:
    """A split over existing versions, each 1..100 percent, summing to exactly 100.

    An empty mapping clears the split (requests then follow the aliases).
    """
    for version, p in percent.items():
        require_version(record, version)
        if not 0 < p <= 100:
            raise InvalidArgument(
                f"traffic for version {version} is {p}%: each share must be 1..100"
            )
    total = sum(percent.values())
    if percent and total != 100:
        raise InvalidArgument(f"traffic percentages sum to {total}, not 100")
    return replace(record, traffic=dict(percent))


def with_shadow(record: ModelRecord, version: int | None, percent: float) -> ModelRecord:
    """Copy ``percent`` (0 < p <= 100) of requests to ``version``; None clears the shadow."""
    if version is None:
        return replace(record, shadow=None)
    require_version(record, version)
    if not (math.isfinite(percent) and 0 < percent <= 100):
        raise InvalidArgument(f"shadow percent {percent} is out of range: expected 0 < p <= 100")
    return replace(record, shadow=ShadowConfig(version, float(percent)))


def retention_victims(record: ModelRecord, keep_last: int) -> list[int]:
    """Versions a retention pass deletes: all but the newest ``keep_last``, oldest first.

    Never a version an alias, the traffic split or the shadow points to, whatever its age.
    ``keep_last`` must be at least 1, so a forgotten argument cannot empty a model.
    """
    if keep_last < 1:
        raise InvalidArgument(f"keep_last must be at least 1, got {keep_last}")
    newest_first = sorted(record.versions, reverse=True)
    referenced = record.referenced_versions()
    return sorted(v for v in newest_first[keep_last:] if v not in referenced)


def retain(record: ModelRecord, keep_last: int) -> tuple[ModelRecord, list[ModelVersion]]:
    """One retention pass: (the record without its ``retention_victims``, the versions it
    dropped, oldest first). The record is returned as it was when nothing goes."""
    victims = retention_victims(record, keep_last)
    if not victims:
        return record, []
    gone = set(victims)
    kept = {v: mv for v, mv in record.versions.items() if v not in gone}
    return replace(record, versions=kept), [record.versions[v] for v in victims]
