"""The wire protocol between the registry and its validation workers, both ends of it.

Every integer is a 4-byte big-endian length (``frame``):

* worker -> parent, once, when the runtimes are imported: a frame holding ``{"ready":true}``;
* parent -> worker, a request: a frame holding a JSON list of ``[framework, size]`` per item,
  followed by the items' bytes back to back (``size`` bytes each);
* worker -> parent, the answer: a frame holding a JSON list with one entry per item, in
  order (``encode``): ``["ok", framework, format, sha256, size, signature, details]``
  (``sha256`` and ``size`` of the bytes the worker received), ``["invalid", message]`` for an
  ``ArtifactError``, or ``["error", exception type name, message]`` for any other exception.

Nothing that crosses the process boundary is ever unpickled. A worker has just parsed
attacker-supplied bytes with native loaders; if one of them is exploited, what it writes back
must not be able to run code in the parent. So an answer is read with ``json`` only, at most
``ANSWER_LIMIT`` bytes, and checked field by field (``parse_answer``: a known framework and
format, the framework asked for, a 64-hex digest, the size sent, a well-formed signature,
details a JSON object) before an ``ArtifactInfo`` is built from it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from shoal.artifacts import DTYPES, ArtifactError, ArtifactInfo, Signature, TensorSpec
from shoal.frameworks import FORMATS

#: (artifact bytes, framework asked for or "").
Item = tuple[bytes, str]
#: One item's answer, as a JSON list.
Wire = list[Any]
#: What a worker runs per request: answers to items, in order.
Task = Callable[[list[Item]], list[Wire]]
#: One item's outcome as the parent sees it.
Outcome = ArtifactInfo | Exception

READY = {"ready": True}
#: Largest answer frame read from a worker (a chunk's answers are a few KiB).
ANSWER_LIMIT = 16 << 20
MALFORMED = "the validator returned a malformed answer"


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


def encode(outcome: Outcome) -> Wire:
    """One item's answer (worker side): an ``ArtifactInfo`` or the exception it raised."""
    if isinstance(outcome, ArtifactInfo):
        info = outcome
        sig = info.signature.to_dict()
        return ["ok", info.framework, info.format, info.sha256, info.size, sig, info.details]
    if isinstance(outcome, ArtifactError):
        return ["invalid", str(outcome)]
    return ["error", type(outcome).__name__, str(outcome)]


class MalformedAnswer(Exception):
    """A worker's answer is not exactly what the protocol allows (nothing of it is used)."""


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _tensors(side: Any) -> tuple[TensorSpec, ...]:
    if not isinstance(side, list):
        raise MalformedAnswer("a signature side is not a list")
    out = []
    for t in side:
        match t:
            case [str() as name, str() as dtype, list() as shape] if dtype in DTYPES and all(
                type(d) is int and d >= -1 for d in shape
            ):
                out.append(TensorSpec(name, dtype, tuple(shape)))
            case _:
                raise MalformedAnswer("a malformed tensor in a signature")
    return tuple(out)


def _signature(sig: dict[str, Any]) -> Signature:
    if sig.keys() != {"inputs", "outputs"}:
        raise MalformedAnswer("a signature has other keys than inputs and outputs")
    return Signature(_tensors(sig["inputs"]), _tensors(sig["outputs"]))


def _outcome(answer: Any, item: Item) -> Outcome:
    data, asked = item
    match answer:
        case ["invalid", str() as message]:
            return ArtifactError(message)
        case ["error", str() as kind, str() as message]:
            return RuntimeError(f"artifact validation failed: {kind}: {message}")
        case ["ok", str() as fw, str() as fmt, str() as sha, int() as size, dict() as sig, dict()]:
            details: dict[str, Any] = answer[6]
            if FORMATS.get(fmt) != fw or (asked and asked != fw):
                raise MalformedAnswer(f"format {fmt[:40]!r} / framework {fw[:40]!r}")
            if not _SHA256.fullmatch(sha):
                raise MalformedAnswer("not a sha256")
            if type(size) is not int or size != len(data):
                raise MalformedAnswer(f"the worker saw {size} bytes, not the {len(data)} sent")
            return ArtifactInfo(fw, fmt, sha, size, _signature(sig), details)
    raise MalformedAnswer("an answer of an unknown shape")


def parse_answer(raw: bytes, items: Sequence[Item]) -> list[Outcome]:
    """The outcomes in a worker's answer ``raw`` to ``items`` (read with ``json`` only).

    Raises ``MalformedAnswer`` unless ``raw`` is a JSON list with one well-formed answer per
    item (see ``validation_worker``); an ``ArtifactInfo`` is built only from checked fields.
    """
    try:
        answers = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, nested too deeply
        raise MalformedAnswer(f"not JSON: {str(exc)[:100]}") from None
    if not isinstance(answers, list) or len(answers) != len(items):
        raise MalformedAnswer("not a list of one answer per item")
    return [_outcome(a, item) for a, item in zip(answers, items, strict=True)]
