"""Rendering a ``capacity.model.Report``: a readable table, JSON, and a PNG plot."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from capacity.model import Report
from capacity.stats import Spread, Versus


def to_jsonable(report: Report) -> dict[str, Any]:
    """The report as plain JSON types; NaN (no data, e.g. an idle worker's hit rate) -> null."""
    doc: dict[str, Any] = _clean(dataclasses.asdict(report))
    return doc


def _clean(x: Any) -> Any:
    if isinstance(x, float):
        return None if math.isnan(x) or math.isinf(x) else x
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if hasattr(x, "item"):  # numpy scalars
        return _clean(x.item())
    return x


def dumps(report: Report) -> str:
    return json.dumps(to_jsonable(report), indent=2)


def human_bytes(n: float | None) -> str:
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "-"
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def _num(x: float) -> str:
    if math.isnan(x):
        return "-"
    if abs(x) >= 100 or x == int(x):
        return f"{x:,.0f}"
    return f"{x:.3g}" if abs(x) < 1 else f"{x:,.1f}"


def _pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:.2f}%"


def _spread_row(label: str, s: Spread, fmt: Any = _num) -> str:
    cells = [fmt(s.min), fmt(s.mean), fmt(s.p99), fmt(s.max)]
    ratio = "-" if math.isnan(s.max_over_mean) else f"{s.max_over_mean:.3f}"
    return f"  {label:<22}" + "".join(f"{c:>12}" for c in cells) + f"{ratio:>10}"


def _versus(v: Versus, fmt: Any) -> str:
    err = f" ± {fmt(v.stderr)}" if v.stderr else ""
    return f"{fmt(v.simulated)}{err}   (closed form {fmt(v.closed_form)})"


def render_table(report: Report) -> str:
    """The default output: one screen, figures beside their closed forms."""
    i = report.inputs
    w = report.workers
    lines = [
        f"Fleet: {i.models:,} models of {i.tenants:,} tenants ({i.fleet}), "
        f"{human_bytes(i.model_bytes_total)} in all",
        f"Pool: {i.workers} workers, {i.zones} zone(s), shard size {i.shard_size} "
        f"({i.hot_tenants} hot, {i.pinned_tenants} pinned tenants)",
        f"Traffic: {i.traffic}, {i.requests:,} requests, {i.rps:,.0f} req/s; cache budget "
        f"{human_bytes(i.budget_bytes)} per worker",
        f"Routing: {i.routing}",
        "",
        "Per worker"
        + " " * 14
        + "".join(f"{h:>12}" for h in ("min", "mean", "p99", "max"))
        + f"{'max/mean':>10}",
        _spread_row("models assigned", w.models),
        _spread_row("bytes to hold them", w.bytes, human_bytes),
        _spread_row("models (primary)", w.primary_models),
        _spread_row("bytes (primary)", w.primary_bytes, human_bytes),
        _spread_row("load (req/s)", w.load_rps),
        _spread_row(f"{i.policy} hit rate", w.hit_rate, _pct),
        _spread_row("misses (loads/s)", w.misses_per_s),
        f"  workers whose assigned models exceed the budget: {w.over_budget} of {i.workers}",
    ]
    b = report.blast_radius
    if b is not None:
        zone_note = " (zoned pool: closed forms are the unzoned reference)" if b.zoned else ""
        lines += [
            "",
            f"Blast radius over {b.tenants:,} tenants with k={b.shard_size}{zone_note}",
            f"  workers shared with another tenant ({b.pairs:,} random pairs):",
            f"    {'shared':>6}{'simulated':>14}{'± 1 s.e.':>12}{'closed form':>14}",
        ]
        lines += [
            f"    {o.shared_workers:>6}{o.simulated:>14.6g}{o.stderr:>12.2g}{o.closed_form:>14.6g}"
            for o in b.overlap
        ]
        g = _fmt_g
        lines += [
            "  another tenant has the same whole shard: " + _versus(b.full_overlap_probability, g),
            "  tenants sharing a tenant's whole shard (mean): "
            + _versus(b.expected_full_overlap_tenants, g),
            "  tenants whose whole shard another tenant shares: "
            + _versus(b.tenants_with_full_overlap, _pct),
            f"  tenants losing >= 1 worker when one tenant's shard is out ({b.victims} victims): "
            + _versus(b.losing_a_worker, _pct)
            + f", worst {_pct(b.losing_a_worker_max)}",
        ]
    lines += ["", "Movement (one worker at a time)"]
    for m in report.movement:
        lines.append(
            f"  {m.event} {m.worker_id}: tenants {_versus(m.tenants, _pct)}; "
            f"bytes {human_bytes(m.bytes_moved)} = {_versus(m.bytes_share, _pct)}; "
            f"traffic to a new primary {_pct(m.traffic)}"
        )
    c = report.cache
    lines += [
        "",
        f"Cache ({c.method}; the first {c.warmup:.0%} of the requests warm up, "
        f"{c.measured:,} measured)",
        f"  hit rate {_pct(c.hit_rate)} with {human_bytes(c.budget_bytes)} per worker; "
        f"{_pct(c.max_hit_rate)} with unbounded memory (first requests miss)",
    ]
    for t in c.budget_for:
        lines.append(
            f"  budget per worker for {t.target:.0%} hits: {_budget(t.overall)} pool-wide, "
            f"{_budget(t.every_worker)} on every worker"
        )
    ss = c.steady_state
    lines += [
        f"  LRU steady state ({ss.method}): hit rate {_pct(ss.hit_rate)} with "
        f"{human_bytes(c.budget_bytes)} per worker (worst worker {_pct(ss.worker_hit_rate.min)})",
    ]
    for t in ss.budget_for:
        lines.append(
            f"  steady-state budget per worker for {t.target:.0%} hits: {_budget(t.overall)} "
            f"pool-wide, {_budget(t.every_worker)} on every worker"
        )
    step = max(1, len(c.curve) // 10)
    lines.append(f"  {'budget':>12}{'replay':>10}{'steady':>10}")
    for p, q in list(zip(c.curve, ss.curve, strict=True))[::step]:
        lines.append(
            f"  {human_bytes(p.budget_bytes):>12}{_pct(p.hit_rate):>10}{_pct(q.hit_rate):>10}"
        )
    if report.timings_s:
        total = sum(report.timings_s.values())
        parts = ", ".join(f"{k} {v:.1f}" for k, v in report.timings_s.items())
        lines += ["", f"Simulated in {total:.1f} s ({parts})"]
    return "\n".join(lines)


def _fmt_g(x: float) -> str:
    return f"{x:.4g}"


def _budget(b: int | None) -> str:
    return "unreachable in this trace" if b is None else human_bytes(b)


def write_plot(report: Report, path: Path) -> None:
    """Per-worker load histogram and the hit-rate-vs-budget curve, as a PNG.

    matplotlib is imported here only (a dev extra); raises ``RuntimeError`` when it is missing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError(
            "--plot needs matplotlib: pip install matplotlib (or the shoal[dev] extra)"
        ) from None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    loads = [r.load_rps for r in report.per_worker]
    ax1.hist(loads, bins=max(5, min(50, len(loads) // 2)), color="tab:blue")
    ax1.axvline(report.workers.load_rps.mean, color="k", linestyle="--", label="mean")
    ax1.set_xlabel("requests/s routed to the worker (primary)")
    ax1.set_ylabel("workers")
    ax1.set_title(f"Per-worker load, max/mean {report.workers.load_rps.max_over_mean:.2f}")
    ax1.legend()
    c = report.cache
    ax2.plot([p.budget_bytes for p in c.curve], [p.hit_rate for p in c.curve], marker=".",
             label=f"replay (exact, {report.inputs.policy})")  # fmt: skip
    ss = c.steady_state.curve
    ax2.plot([p.budget_bytes for p in ss], [p.hit_rate for p in ss], linestyle=":",
             label="steady state (Che, LRU)")  # fmt: skip
    ax2.set_xscale("log")
    ax2.axvline(c.budget_bytes, color="tab:red", linestyle="--", label="budget")
    for t in c.budget_for:
        ax2.axhline(t.target, color="0.6", linewidth=0.8)
    ax2.set_xlabel("cache budget per worker (bytes)")
    ax2.set_ylabel("hit rate")
    ax2.set_ylim(0, 1)
    ax2.set_title("Hit rate vs budget per worker")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
