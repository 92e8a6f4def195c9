"""Pure logic of the router: member choice, ejection, shadow log (version resolution is
shoal.records', tested in tests/shoal/test_resolve.py)."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from router.choose import Ejector, WarmPrimaryPolicy
from router.shadow import RotatingJsonl
from shoal.records import Member

members = st.lists(
    st.integers(0, 50).map(lambda i: Member(f"w{i}", f"a{i}")), min_size=1, max_size=12, unique=True
)


@given(members, st.integers(1, 6), st.text(min_size=1, max_size=12))
def test_policy_returns_a_permutation_with_a_stable_primary(
    ranked: list[Member], k: int, model: str
) -> None:
    policy = WarmPrimaryPolicy(spill_at=4)
    a = policy.choose(ranked, k, model, {}, set())
    assert sorted(m.worker_id for m in a) == sorted(m.worker_id for m in ranked)
    assert a[0] in ranked[: min(k, len(ranked))]
    assert policy.choose(ranked, k, model, {}, set())[0] == a[0]  # every router agrees


def test_policy_spills_and_skips_unhealthy() -> None:
    ranked = [Member(f"w{i}", "") for i in range(6)]
    policy = WarmPrimaryPolicy(spill_at=2)
    primary = policy.choose(ranked, 3, "acme/churn:1", {}, set())[0]
    busy = {primary.worker_id: 5}
    spilled = policy.choose(ranked, 3, "acme/churn:1", busy, set())
    assert spilled[0] != primary and spilled[0] in ranked[:3]
    down = policy.choose(ranked, 3, "acme/churn:1", {}, {primary.worker_id})
    assert down[0] != primary and down[-1] == primary  # tried last, not dropped


def test_ejector_expires() -> None:
    clock = [0.0]
    ej = Ejector(lambda: clock[0], eject_s=5.0)
    ej.failure("w1")
    assert "w1" in ej and "w2" not in ej
    clock[0] = 5.1
    assert "w1" not in ej
    ej.failure("w1")
    ej.success("w1")
    assert "w1" not in ej


def test_shadow_log_rotates_by_size(tmp_path: Path) -> None:
    log = RotatingJsonl(tmp_path / "shadow.jsonl", max_bytes=200, keep=2)
    for i in range(30):
        log.write({"i": i, "pad": "x" * 20})
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["shadow.jsonl", "shadow.jsonl.1", "shadow.jsonl.2"]
    assert all(p.stat().st_size <= 200 for p in tmp_path.iterdir())
    last = [json.loads(line)["i"] for line in (tmp_path / "shadow.jsonl").read_text().splitlines()]
    assert last[-1] == 29
