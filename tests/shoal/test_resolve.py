"""Version resolution (``shoal.records.resolve``), the one rule of the router, the worker
and the simulator: examples, and properties that pin it to ``random.choices`` draw by draw."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.artifacts import Signature
from shoal.records import (
    ModelRecord,
    ModelVersion,
    Resolution,
    UnknownVersion,
    default_route,
    resolve,
    resolve_draw,
)

SIG = Signature((), ())


def _record(versions: list[int], **kw: object) -> ModelRecord:
    vs = {
        v: ModelVersion(v, f"artifacts/{v}", "xgboost", "xgboost-json", "cpu", "0" * 64, 1, SIG)
        for v in versions
    }
    return ModelRecord("acme", "churn", vs, **kw)  # type: ignore[arg-type]


def test_pinned_alias_stable_latest() -> None:
    rng = random.Random(0)
    rec = _record([1, 2, 3], aliases={"stable": 2, "canary": 3})
    assert resolve(rec, "1", rng).version.version == 1
    assert resolve(rec, "canary", rng).version.version == 3
    assert resolve(rec, "", rng).version.version == 2
    assert resolve(_record([1, 4]), "", rng).version.version == 4  # no alias: newest
    with pytest.raises(UnknownVersion, match="no version 9"):
        resolve(rec, "9", rng)
    with pytest.raises(UnknownVersion, match="no alias 'beta'"):
        resolve(rec, "beta", rng)
    broken = _record([1], aliases={"stable": 7})
    with pytest.raises(UnknownVersion, match="missing version 7"):
        resolve(broken, "", rng)


def test_traffic_split_overrides_stable_and_follows_weights() -> None:
    rng = random.Random(42)
    rec = _record([3, 4], aliases={"stable": 3}, traffic={3: 90, 4: 10})
    n = 20000
    share = sum(resolve(rec, "", rng).version.version == 4 for _ in range(n)) / n
    assert abs(share - 0.10) < 4 * (0.1 * 0.9 / n) ** 0.5
    assert resolve(rec, "stable", rng).version.version == 3  # an explicit alias still pins


@st.composite
def records(draw: st.DrawFn) -> ModelRecord:
    """Records with versions 1..n, maybe a stable and a canary alias, maybe a split; aliases
    and split entries may point to versions the record lacks."""
    versions = draw(st.lists(st.integers(1, 9), unique=True, max_size=5))
    refs = st.integers(1, 11)
    aliases = draw(st.dictionaries(st.sampled_from(["stable", "canary"]), refs, max_size=2))
    traffic = draw(st.dictionaries(refs, st.integers(0, 100), max_size=4))
    return _record(versions, aliases=aliases, traffic=traffic)


def _outcome(fn: Callable[[], Resolution]) -> object:
    try:
        res = fn()
    except (UnknownVersion, ValueError) as exc:
        return type(exc).__name__, str(exc)
    return res.version.version, res.via


@given(records(), st.integers(0, 2**32))
def test_a_split_draws_once_and_picks_what_random_choices_picks(
    rec: ModelRecord, seed: int
) -> None:
    mine, theirs = random.Random(seed), random.Random(seed)
    got = _outcome(lambda: resolve(rec, "", mine))
    if rec.traffic:
        versions = sorted(rec.traffic)
        try:
            want = theirs.choices(versions, weights=[rec.traffic[v] for v in versions])[0]
        except ValueError as exc:  # weights summing to 0: no draw, the same error
            assert got == ("ValueError", str(exc))
        else:
            assert got == (
                (want, "traffic")
                if want in rec.versions
                else (
                    "UnknownVersion",
                    f"model acme/churn: the traffic split points to missing version {want}",
                )
            )
    assert mine.getstate() == theirs.getstate()  # one draw with a split, none without


@given(records(), st.sampled_from(["", " ", "1", "02", "9", "stable", "canary", "beta", "²", "٣"]),
       st.floats(0.0, 1.0, exclude_max=True))  # fmt: skip
def test_digits_pin_a_name_is_an_alias_empty_follows_the_default_route(
    rec: ModelRecord, requested: str, u: float
) -> None:
    got = _outcome(lambda: resolve_draw(rec, requested, u))
    want = requested.strip()
    expected: tuple[int | None, str] | tuple[str, str]
    if want.isdigit():
        try:
            expected = (int(want), "pinned")
        except ValueError as exc:  # "²" is a digit that int() cannot read
            expected = ("ValueError", str(exc))
    elif want:
        expected = (rec.aliases.get(want), f"alias:{want}")
    else:
        route = default_route(rec)
        if route is None or route.cumulative[-1] <= 0:
            assert got[0] in ("UnknownVersion", "ValueError")  # type: ignore[index]
            return
        i = next(i for i, c in enumerate(route.cumulative) if u * route.cumulative[-1] < c)
        expected = (route.versions[i], route.via)
    missing = expected[0] is None or (
        isinstance(expected[0], int) and expected[0] not in rec.versions
    )
    if missing:
        assert got[0] == "UnknownVersion"  # type: ignore[index]
    else:
        assert got == expected


def test_default_route_prefers_the_split_then_stable_then_the_newest() -> None:
    split = default_route(_record([1, 2, 3], aliases={"stable": 1}, traffic={3: 25, 2: 75}))
    assert split is not None and (split.via, split.versions, split.cumulative) == (
        "traffic",
        (2, 3),
        (75, 100),
    )
    stable = default_route(_record([1, 2], aliases={"stable": 1}))
    assert stable is not None and (stable.via, stable.versions) == ("alias:stable", (1,))
    latest = default_route(_record([1, 5, 2]))
    assert latest is not None and (latest.via, latest.versions) == ("latest", (5,))
    assert default_route(_record([])) is None
    with pytest.raises(UnknownVersion, match="model acme/churn has no versions"):
        resolve_draw(_record([]), "", 0.5)
