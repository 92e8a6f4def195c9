"""Model artifacts, whatever their framework: what they are called, how they are described
(signature, details), how they are hashed, and the files refused before any library sees them.

Format detection, validation by loading, and serving live in ``shoal.frameworks`` (one module
per framework). Pickle and joblib files are recognised here by their first bytes and refused
without being read further: nothing in Shoal ever unpickles.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Tensor names for tree models, as Triton's FIL backend names them.
TREE_INPUT = "input__0"
TREE_OUTPUT = "output__0"

#: V2 datatypes and their numpy equivalents.
DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}


class ArtifactError(ValueError):
    """The bytes are not an acceptable model artifact; the message says why."""


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 marks a variable dimension


@dataclass(frozen=True, slots=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [[t.name, t.datatype, list(t.shape)] for t in self.inputs],
            "outputs": [[t.name, t.datatype, list(t.shape)] for t in self.outputs],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Signature:
        return cls(
            tuple(TensorSpec(n, dt, tuple(s)) for n, dt, s in d.get("inputs", [])),
            tuple(TensorSpec(n, dt, tuple(s)) for n, dt, s in d.get("outputs", [])),
        )


@dataclass(frozen=True, slots=True)
class ArtifactInfo:
    framework: str
    format: str
    sha256: str
    size: int
    signature: Signature
    details: dict[str, Any] = field(default_factory=dict)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def refuse_unsafe(data: bytes, accepted: str) -> None:
    """Raise ``ArtifactError`` (naming ``accepted``) for pickles, compressed files and zip
    archives, judged from their first bytes alone."""
    if len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5:
        raise ArtifactError(
            f"this is a pickle/joblib file, which is never accepted; use {accepted}"
        )
    if data[:2] in (b"\x78\x9c", b"\x78\x01", b"\x78\xda") or data[:3] == b"\x1f\x8b\x08":
        raise ArtifactError(
            f"this is a compressed (zlib/gzip) file, e.g. a joblib dump; use {accepted}"
        )
    if data[:4] == b"PK\x03\x04":
        raise ArtifactError(f"this is a zip archive (e.g. a pickled pipeline); use {accepted}")
