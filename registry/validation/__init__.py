"""Artifact validation off the event loop, shaped like MLServer's ``parallel/``: the wire
``protocol`` between the registry and its workers, the ``pool`` that runs validations (worker
processes, or threads), and the ``worker`` process itself.

``inspect_artifact`` loads each artifact with its runtime (XGBoost, LightGBM, ONNX Runtime).
Much of a small model's load is Python (the runtimes' ctypes wrappers, JSON parsing), so on
threads it holds the placement process's GIL and stalls the event loop that serves the
control plane, etcd and the object store. ``ProcessValidator`` therefore runs it in worker
processes; ``ThreadValidator`` keeps it in-process, for small deployments where more
interpreters with the runtimes imported (~200 MiB each) cost more than they save.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from registry.validation.protocol import Item, Outcome


class Validator(Protocol):
    """Validates batches of artifacts off the event loop: one ``Outcome`` per item, in order.
    ``start`` starts its workers ahead of the first batch; ``close`` stops them."""

    async def validate(self, items: Sequence[Item]) -> list[Outcome]: ...

    def start(self) -> None: ...

    def close(self) -> None: ...
