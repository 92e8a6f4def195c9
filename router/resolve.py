"""Version resolution: which version of ``tenant/name`` answers a request.

``model_version`` from the request:

* empty: the traffic split when one is set (weighted random over its versions), else the
  ``stable`` alias, else (a model with no alias) the newest version;
* digits: that version, pinned;
* a name: that alias.

Failures raise ``NotFound`` with a message naming what is missing; nothing else can fail.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from shoal.records import ModelRecord, ModelVersion

STABLE = "stable"


class NotFound(LookupError):
    """The model, version or alias does not exist (maps to NOT_FOUND)."""


@dataclass(frozen=True, slots=True)
class Resolution:
    version: ModelVersion
    via: str  # "pinned", "alias:<name>", "traffic", "latest"


def resolve(record: ModelRecord, requested: str, rng: random.Random) -> Resolution:
    requested = requested.strip()
    name = record.full_name
    if requested.isdigit():
        v = record.versions.get(int(requested))
        if v is None:
            raise NotFound(f"model {name} has no version {requested}")
        return Resolution(v, "pinned")
    if requested:
        target = record.aliases.get(requested)
        if target is None:
            raise NotFound(f"model {name} has no alias {requested!r}")
        return Resolution(_version(record, target, f"alias {requested!r}"), f"alias:{requested}")
    if record.traffic:
        versions = sorted(record.traffic)
        weights = [record.traffic[v] for v in versions]
        chosen = rng.choices(versions, weights=weights)[0]
        return Resolution(_version(record, chosen, "the traffic split"), "traffic")
    if STABLE in record.aliases:
        return Resolution(
            _version(record, record.aliases[STABLE], "alias 'stable'"), "alias:stable"
        )
    if record.versions:
        return Resolution(record.versions[max(record.versions)], "latest")
    raise NotFound(f"model {name} has no versions")


def _version(record: ModelRecord, version: int, via: str) -> ModelVersion:
    v = record.versions.get(version)
    if v is None:
        raise NotFound(f"model {record.full_name}: {via} points to missing version {version}")
    return v
