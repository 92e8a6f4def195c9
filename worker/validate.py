"""Requests checked against a model version's signature before any runtime sees them.

A mismatch is ``InvalidArgument`` naming the model, the input, the expected datatype and shape
(``-1`` for a variable dimension) and what was received, e.g.
``input 'input__0' of acme/churn:3: expected FP32 [-1, 12], received FP64 [1, 12]``.
A single-input model accepts its one tensor under any name (clients often call it ``input``);
with several inputs, names must match.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shoal.artifacts import Signature, TensorSpec
from worker.errors import InvalidArgument
from worker.types import Tensor


def _fmt(datatype: str, shape: Sequence[int]) -> str:
    return f"{datatype} [{', '.join(str(int(d)) for d in shape)}]"


def _matches(spec: TensorSpec, t: Tensor) -> bool:
    if t.datatype != spec.datatype:
        return False
    if not spec.shape:  # the model does not declare a shape
        return True
    shape = t.array.shape
    if len(shape) != len(spec.shape):
        return False
    return all(e < 0 or e == r for e, r in zip(spec.shape, shape, strict=True))


def check_inputs(model: str, sig: Signature, inputs: Sequence[Tensor]) -> list[np.ndarray]:
    """The input arrays in the signature's order, or ``InvalidArgument`` explaining why not."""
    specs = sig.inputs
    if len(inputs) != len(specs):
        names = ", ".join(f"{s.name!r} {_fmt(s.datatype, s.shape)}" for s in specs)
        raise InvalidArgument(f"{model} expects {len(specs)} input(s) ({names}), got {len(inputs)}")
    # Names must match, a single input's too (as Triton checks them): a tensor sent under
    # another name is refused, naming what the model expects.
    by_name = {t.name: t for t in inputs}
    pairs = []
    for s in specs:
        if s.name not in by_name:
            raise InvalidArgument(
                f"{model}: missing input {s.name!r} {_fmt(s.datatype, s.shape)}; "
                f"received {sorted(by_name)}"
            )
        pairs.append((s, by_name[s.name]))
    out = []
    for spec, t in pairs:
        if not _matches(spec, t):
            raise InvalidArgument(
                f"input {spec.name!r} of {model}: expected {_fmt(spec.datatype, spec.shape)}, "
                f"received {_fmt(t.datatype, t.array.shape)}"
            )
        if t.array.ndim and t.array.shape[0] == 0:
            raise InvalidArgument(f"input {spec.name!r} of {model}: empty batch (0 rows)")
        out.append(t.array)
    return out


def select_outputs(sig: Signature, requested: Sequence[str]) -> list[int]:
    """Indexes of the requested outputs in the signature's order (all when none is named)."""
    names = [s.name for s in sig.outputs]
    if not requested:
        return list(range(len(names)))
    idx = []
    for r in requested:
        if r not in names:
            raise InvalidArgument(f"unknown output {r!r}; the model has {names}")
        idx.append(names.index(r))
    return idx
