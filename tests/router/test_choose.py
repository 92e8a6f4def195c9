"""The gateway's member choice (native/src/gateway/policy.rs, through ``shoal.shard
.member_order``) and the shadow log. Ejection is unit-tested beside the policy in Rust
(``a_failure_ejects_for_a_while_and_a_success_clears``), on a paused clock."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from router.shadow import RotatingJsonl
from shoal.shard import member_order, primary_index

rankings = st.integers(1, 12).flatmap(lambda n: st.permutations(list(range(n))))


@given(rankings, st.integers(1, 6), st.text(min_size=1, max_size=12))
def test_policy_returns_a_permutation_starting_at_the_primary(
    ranked: list[int], k: int, model: str
) -> None:
    n = len(ranked)
    order = member_order(ranked, k, model, 4, [0] * n, [False] * n)
    assert sorted(order) == sorted(ranked)
    shard = min(k, n)
    # The primary is the shard member at blake2b(key) mod k, independent of anything a
    # router observes: every router picks the same one.
    assert order[0] == ranked[primary_index(model, shard)]
    assert order[shard:] == ranked[shard:]  # fallbacks keep their rank order


def test_policy_spills_and_skips_unhealthy() -> None:
    ranked = list(range(6))
    idle, well = [0] * 6, [False] * 6
    primary = member_order(ranked, 3, "acme/churn:1", 2, idle, well)[0]
    busy = [5 if m == primary else 0 for m in range(6)]
    spilled = member_order(ranked, 3, "acme/churn:1", 2, busy, well)
    assert spilled[0] != primary and spilled[0] in ranked[:3]
    assert spilled.index(primary) == 2  # the busiest shard member, still tried before fallbacks
    down = [m == primary for m in range(6)]
    order = member_order(ranked, 3, "acme/churn:1", 2, idle, down)
    assert order[0] != primary and order[-1] == primary  # tried last, not dropped


def test_shadow_log_rotates_by_size(tmp_path: Path) -> None:
    log = RotatingJsonl(tmp_path / "shadow.jsonl", max_bytes=200, keep=2)
    for i in range(30):
        log.write({"i": i, "pad": "x" * 20})
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["shadow.jsonl", "shadow.jsonl.1", "shadow.jsonl.2"]
    assert all(p.stat().st_size <= 200 for p in tmp_path.iterdir())
    last = [json.loads(line)["i"] for line in (tmp_path / "shadow.jsonl").read_text().splitlines()]
    assert last[-1] == 29
