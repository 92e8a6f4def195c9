"""Fault injection — FOR TESTS AND CHAOS DRILLS ONLY; off unless ``SHOAL_FAULT_INJECT`` is set.

It exists so the worker's poison containment (quarantine, abandoned calls, stuck threads)
can be exercised with real processes and real runtimes: a test or a drill names the models
whose runtime calls should misbehave, and everything else about the worker is unchanged.
Production deployments leave the setting empty; a worker started with faults logs a warning
naming them.

Spec: comma-separated ``KIND:TENANT/NAME[:SECONDS]`` (every version of that model):

* ``hang-predict`` / ``hang-load``: the call blocks its thread for SECONDS (default 3600) —
  a runtime that never returns;
* ``slow-predict``: the call sleeps SECONDS (default 1) and then predicts normally;
* ``fail-predict`` / ``fail-load``: the call raises ``RuntimeError('injected fault ...')``.

Example: ``SHOAL_FAULT_INJECT="hang-predict:acme/churn,fail-predict:acme/fraud"``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from shoal.records import InvalidName, split_model_name

T = TypeVar("T")

KINDS = ("hang-predict", "slow-predict", "fail-predict", "hang-load", "fail-load")
_DEFAULT_SECONDS = {"hang": 3600.0, "slow": 1.0, "fail": 0.0}


@dataclass(frozen=True, slots=True)
class Fault:
    action: str  # hang | slow | fail
    call: str  # predict | load
    model: str  # tenant/name
    seconds: float


class Faults:
    """The parsed spec; ``wrap`` returns the call unchanged for models without a fault."""

    def __init__(self, faults: tuple[Fault, ...] = ()) -> None:
        self.faults = faults
        self._by: dict[tuple[str, str], Fault] = {(f.call, f.model): f for f in faults}

    def __bool__(self) -> bool:
        return bool(self.faults)

    @classmethod
    def parse(cls, spec: str) -> Faults:
        """Faults from a spec string; ``ValueError`` naming the bad entry."""
        out = []
        for entry in (e.strip() for e in spec.split(",")):
            if not entry:
                continue
            parts = entry.split(":")
            if len(parts) not in (2, 3) or parts[0] not in KINDS:
                raise ValueError(
                    f"fault {entry!r}: expected KIND:TENANT/NAME[:SECONDS], KIND one of "
                    f"{', '.join(KINDS)}"
                )
            action, call = parts[0].split("-")
            try:
                split_model_name(parts[1])
            except InvalidName as exc:
                raise ValueError(f"fault {entry!r}: {exc}") from None
            seconds = float(parts[2]) if len(parts) == 3 else _DEFAULT_SECONDS[action]
            out.append(Fault(action, call, parts[1], seconds))
        return cls(tuple(out))

    def affects(self, call: str, model: str) -> bool:
        """Whether a fault is configured for ``(call, model)``."""
        return (call, model) in self._by

    def wrap(self, call: str, model: str, fn: Callable[[], T]) -> Callable[[], T]:
        """``fn``, or ``fn`` with the fault configured for ``(call, model)``."""
        if not self._by:
            return fn
        f = self._by.get((call, model))
        if f is None:
            return fn

        def faulty() -> T:
            if f.action == "fail":
                raise RuntimeError(f"injected fault {f.action}-{f.call} for {f.model}")
            time.sleep(f.seconds)
            return fn()

        return faulty
