"""ONNX: serialized ``ModelProto``s (``onnx``), served by ONNX Runtime (onnxruntime-gpu).

One loader (``load``) for registration and the GPU: an ``InferenceSession`` with one intra-
and one inter-op thread, on the CUDA execution provider when asked and present, else the CPU.
The worker serves CPU models with a native session (``shoal.frameworks.native``: the same
options on the C API library the wheel ships, run from Rust without the GIL, same bits), or
with the Python session where that library cannot be opened.
The signature is the graph's inputs and outputs (tensor types mapped to V2 datatypes, unknown
dimensions as -1). ``bounded`` reads the graph's operators off the wire format to tell whether
a model's running time is bounded by its input's size (``worker/inline.py`` runs only those on
the event loop).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from shoal._native import OnnxSession
from shoal.artifacts import ArtifactError, Signature, TensorSpec
from shoal.device import cuda_devices, heap_in_use
from shoal.frameworks import native
from shoal.frameworks.base import first_line, guess, measured

NAME = "onnx"
ACCEPTS = "ONNX"
PLATFORM = "onnxruntime_onnx"  # in ModelMetadata, as Triton names it

_DTYPES = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(int8)": "INT8",
}


FORMATS = ("onnx",)


def detect(data: bytes) -> str | None:
    return "onnx" if data[:1] == b"\x08" else None  # ModelProto field 1 (ir_version), varint


LIBRARY = "onnxruntime"


def load(data: bytes, device: str) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    # Warnings and info (e.g. about the CUDA provider on a CPU host) would be logged per load.
    opts.log_severity_level = 3
    providers = (
        ["CUDAExecutionProvider", "CPUExecutionProvider"]
        if device == "cuda"
        else ["CPUExecutionProvider"]
    )
    try:
        return ort.InferenceSession(data, sess_options=opts, providers=providers)
    except MemoryError:
        raise
    except Exception as exc:  # onnxruntime raises pybind classes outside any hierarchy
        raise ArtifactError(f"invalid ONNX model: {first_line(exc)}") from None


def describe(data: bytes, fmt: str) -> tuple[Signature, dict[str, Any]]:
    session = load(data, "cpu")

    def spec(arg: Any) -> TensorSpec:
        dt = _DTYPES.get(arg.type)
        if dt is None:
            raise ArtifactError(f"ONNX tensor {arg.name!r} has unsupported type {arg.type}")
        shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
        return TensorSpec(arg.name, dt, shape)

    sig = Signature(
        tuple(spec(a) for a in session.get_inputs()),
        tuple(spec(a) for a in session.get_outputs()),
    )
    meta = session.get_modelmeta()
    return sig, {"producer": meta.producer_name, "graph": meta.graph_name}


#: Resident bytes guessed before a load: artifact size x 1.5 + 128 KiB (calibrated on
#: small MLPs).
RESIDENT = (1.5, 128 << 10)


def model(data: bytes, device: str) -> OnnxModel:
    if device == "cuda" and not gpu_capable():
        device = "cpu"
    estimate = guess(RESIDENT, len(data))
    before = heap_in_use()
    if device == "cpu" and native.available(NAME):
        served: Any = native.load_onnx(data)
    else:
        served = load(data, device)
        if device == "cuda" and "CUDAExecutionProvider" in served.get_providers():
            return OnnxModel(served, "cuda", estimate, artifact=data)
    after = heap_in_use()
    return OnnxModel(served, "cpu", measured(before, after, estimate), bounded=bounded(data))


def gpu_capable() -> bool:
    """The CUDA execution provider is built in *and* a device is present."""
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers() and cuda_devices().count > 0


class OnnxModel:
    """A loaded model: on the CPU a native session (``native``, what the native worker front
    runs) where the runtime library could be opened, else an ``InferenceSession``."""

    framework = NAME

    def __init__(
        self,
        session: Any,
        device: str,
        nbytes: int,
        artifact: bytes | None = None,
        bounded: bool = False,
    ) -> None:
        self._session = session
        self.native: OnnxSession | None = session if isinstance(session, OnnxSession) else None
        if self.native is not None:
            self._inputs = list(self.native.inputs)
            self._outputs = list(self.native.outputs)
        else:
            self._inputs = [i.name for i in session.get_inputs()]
            self._outputs = [o.name for o in session.get_outputs()]
        self.device = device
        self.nbytes = nbytes
        self.bounded = device == "cpu" and bounded is True
        self.warm_s: float | None = None
        # A GPU session keeps its artifact so demotion can build the CPU session without a
        # fetch; a few KiB to a few MiB of host memory per GPU-resident model.
        self._artifact = artifact

    def predict(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        if self.native is not None:
            return native.run_onnx(self.native, inputs)
        feed = dict(zip(self._inputs, inputs, strict=True))
        return [np.asarray(a) for a in self._session.run(self._outputs, feed)]

    def to_host(self) -> OnnxModel | None:
        if self.device == "cpu":
            return self
        if self._artifact is None:
            return None
        return model(self._artifact, "cpu")


#: Operators whose running time depends on the data's values rather than its size: loops and
#: subgraphs, and operators whose output size is read from a tensor (a crafted input could
#: make them build a huge output).
_CONTROL_FLOW = frozenset(
    {
        "Loop",
        "Scan",
        "If",
        "SequenceMap",
        "ConstantOfShape",
        "Expand",
        "Tile",
        "Range",
        "Resize",
        "Upsample",
        "Pad",
        "OneHot",
        "CenterCropPad",
        "Col2Im",
    }
)
#: Operator domains whose kernels are onnxruntime's own (standard, ML, Microsoft contrib).
_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})


def _pb_fields(buf: memoryview) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of one protobuf message: ints, or memoryviews."""
    i, n = 0, len(buf)

    def varint() -> int:
        nonlocal i
        out = shift = 0
        while True:
            if i >= n or shift > 63:
                raise ValueError("truncated varint")
            b = buf[i]
            i += 1
            out |= (b & 0x7F) << shift
            if b < 0x80:
                return out
            shift += 7

    while i < n:
        key = varint()
        field, wire = key >> 3, key & 7
        if wire == 0:
            yield field, wire, varint()
        elif wire == 1:
            i += 8
            yield field, wire, None
        elif wire == 2:
            size = varint()
            if i + size > n:
                raise ValueError("truncated field")
            yield field, wire, buf[i : i + size]
            i += size
        elif wire == 5:
            i += 4
            yield field, wire, None
        else:
            raise ValueError(f"unsupported wire type {wire}")


def bounded(data: bytes) -> bool:
    """Whether an ONNX model's time is bounded by its input's size (see ``_CONTROL_FLOW``).

    Reads ModelProto.graph (7) -> GraphProto.node (1) -> NodeProto.op_type (4) and domain (7)
    from the wire format; a model with local functions (25), an operator outside the standard
    domains, or bytes that do not parse count as unbounded (they stay on prediction threads).
    """
    try:
        graph = None
        for field, wire, value in _pb_fields(memoryview(data)):
            if field == 25:
                return False
            if field == 7 and wire == 2:
                graph = value
        if graph is None:
            return False
        for field, wire, node in _pb_fields(graph):
            if field != 1 or wire != 2:
                continue
            op, domain = "", ""
            for f, w, v in _pb_fields(node):
                if w != 2:
                    continue
                if f == 4:
                    op = bytes(v).decode("utf-8", "replace")
                elif f == 7:
                    domain = bytes(v).decode("utf-8", "replace")
            if op in _CONTROL_FLOW or domain not in _DOMAINS:
                return False
        return True
    except ValueError:
        return False
