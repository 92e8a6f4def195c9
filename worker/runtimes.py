"""Model runtimes: XGBoost (JSON/UBJ), LightGBM (text), ONNX (onnxruntime).

``load_model`` turns verified artifact bytes into a ``Model`` (blocking: call it from a worker
thread). Every runtime is pinned to one thread per call (the worker parallelises across
requests instead: library default threading burns every core on 1-row calls). Nothing here
unpickles: the bytes are parsed by each library's own model format reader only.

Sizes. ``estimate_bytes`` guesses the resident size from the artifact size before a load (the
cache reserves that much). After the load, ``Model.nbytes`` is the *measured* growth of the C
heap across the deserialisation (glibc ``mallinfo2``; loads run one at a time so other loads do
not pollute it), falling back to the estimate where the heap cannot be read or the delta is not
positive (another thread freed memory meanwhile). Prediction threads allocating or freeing
during a load still pollute single measurements, so the cache charges each model the median
measured ratio of its framework's recent loads times its artifact size (``SizeEstimator``).
GPU-resident bytes cannot be measured this way; they are estimated. The first load of each
framework in a process is done twice and the first result thrown away: it pays the runtime's
one-time initialisation (thread pools, registries: up to a few MiB), which would otherwise be
charged to that one model.

Failures: bytes the library rejects raise ``CorruptArtifact`` (the caller reports
FAILED_PRECONDITION with the library's first line); anything else propagates (INTERNAL).
"""

from __future__ import annotations

import importlib
import logging
import re
import statistics
import threading
import time
from collections import defaultdict, deque
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from shoal.artifacts import FORMATS, ArtifactError, detect_format
from worker.device import heap_in_use, onnx_cuda_available

log = logging.getLogger(__name__)

_LOG_PREFIX = re.compile(r"^\[[\d:]+\] [^ ]+:\d+: ")


class CorruptArtifact(Exception):
    """The artifact's bytes are not a model this runtime can load."""


class Model(Protocol):
    framework: str
    device: str  # where it runs: cpu | cuda
    nbytes: int
    #: Its prediction time is bounded by the input's size (no data-dependent loops) and it
    #: runs on the CPU: a fast one may run on the event loop (worker/inline.py).
    bounded: bool
    #: CPU seconds of a 1-row prediction made at load (tree models), else None.
    warm_s: float | None

    def predict(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Outputs in the order of the signature's outputs. Thread-safe."""
        ...

    def to_host(self) -> Model | None:
        """The same model on the CPU (a GPU model being demoted), or None if it cannot move."""
        ...


def estimate_bytes(framework: str, artifact_size: int) -> int:
    """Resident size guessed from the artifact size (calibrated on small tree/MLP models)."""
    if framework == "onnx":
        return int(artifact_size * 1.5) + (128 << 10)
    if framework == "lightgbm":
        return int(artifact_size * 1.25) + (32 << 10)
    return int(artifact_size * 1.25) + (16 << 10)


class SizeEstimator:
    """Resident-size guesses before a load and charges after it, from measured sizes.

    A single measurement (the process-wide heap's growth across one load) is noisy: request
    buffers allocated or freed by prediction threads during the load land in it, in both
    directions, and a non-positive growth falls back to the static estimate. So each model is
    charged the *median* bytes-per-artifact-byte ratio of the last ``window`` loads of its
    framework times its artifact size, once ``min_samples`` loads have been measured (before
    that, its own measurement). The median ignores the polluted minority; the ratio scales
    with the artifact, so models of one framework but different sizes are charged fairly.

    Guesses before a load follow an exponential moving average (weight ``alpha``) of the same
    ratios with a ``margin`` (10%), so a reservation rarely falls short; until the first
    measurement the static ``estimate_bytes`` applies. Event loop only.
    """

    def __init__(
        self, alpha: float = 0.2, margin: float = 1.1, window: int = 64, min_samples: int = 8
    ) -> None:
        self.alpha = alpha
        self.margin = margin
        self.min_samples = min_samples
        self._ratio: dict[str, float] = {}
        self._recent: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=window))

    def estimate(self, framework: str, artifact_size: int) -> int:
        r = self._ratio.get(framework)
        if r is None:
            return estimate_bytes(framework, artifact_size)
        return int(artifact_size * r * self.margin) + 1

    def observe(self, framework: str, artifact_size: int, measured: int) -> None:
        if artifact_size <= 0 or measured <= 0:
            return
        r = min(max(measured / artifact_size, 0.05), 500.0)
        prev = self._ratio.get(framework)
        self._ratio[framework] = r if prev is None else prev + self.alpha * (r - prev)
        self._recent[framework].append(r)

    def charge(self, framework: str, artifact_size: int, measured: int) -> int:
        """Record ``measured`` and return the bytes to charge the model (see class doc)."""
        self.observe(framework, artifact_size, measured)
        recent = self._recent.get(framework)
        if artifact_size <= 0 or recent is None or len(recent) < self.min_samples:
            return measured
        return max(1, int(artifact_size * statistics.median(recent)))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return _LOG_PREFIX.sub("", line)[:300]


class XGBoostModel:
    framework = "xgboost"

    def __init__(self, booster: Any, device: str, nbytes: int) -> None:
        self._booster = booster
        self.device = device
        self.nbytes = nbytes
        self.bounded = device == "cpu"
        self._direct = _DirectPredict.verified(booster) if device == "cpu" else None
        self.warm_s = self._direct.probe_s if self._direct is not None else None

    def predict(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        x = inputs[0]
        direct = self._direct
        if direct is not None and x.ndim == 2 and x.dtype == np.float32 and x.flags.c_contiguous:
            return [direct(x)]
        return [np.asarray(self._booster.inplace_predict(x, validate_features=False))]

    def to_host(self) -> XGBoostModel | None:
        if self.device == "cpu":
            return self
        booster = self._booster.copy()
        booster.set_param({"device": "cpu"})
        return XGBoostModel(booster, "cpu", self.nbytes)


class _DirectPredict:
    """XGBoost's in-place dense prediction called through its C API with fixed arguments.

    ``Booster.inplace_predict`` spends ~2/3 of a 1-row call in Python: it re-encodes its
    arguments and the array's description as JSON, creates ctypes types and wraps the output
    through ``__array_interface__`` on every call (~360 µs against ~120 µs here for the bench's
    100-tree model). This makes the same C call (``XGBoosterPredictFromDense``, the one
    ``inplace_predict`` makes for a NumPy array) with the arguments encoded once, for
    C-contiguous float32 matrices. It relies on xgboost's ``_LIB`` handle, so it is used only
    when it gives exactly ``inplace_predict``'s answer on probe rows at load time (``verified``);
    otherwise, and for any other input, the model uses ``inplace_predict``.
    """

    _ARGS = (
        b'{"type": 0, "training": false, "iteration_begin": 0, "iteration_end": 0, '
        b'"missing": NaN, "strict_shape": false, "cache_id": 0}'
    )

    def __init__(self, booster: Any) -> None:
        import ctypes

        from xgboost.core import _LIB, _check_call

        self._ctypes = ctypes
        self._booster = booster
        self._fn = _LIB.XGBoosterPredictFromDense
        self._check = _check_call
        self._ulong = ctypes.c_uint64  # xgboost's bst_ulong
        self._shape_ptr = ctypes.POINTER(ctypes.c_uint64)
        self._float_ptr = ctypes.POINTER(ctypes.c_float)
        self.probe_s: float | None = None  # CPU seconds of a 1-row call, set by ``verified``

    @classmethod
    def verified(cls, booster: Any) -> _DirectPredict | None:
        try:
            direct = cls(booster)
            n = int(booster.num_features())
            rng = np.random.default_rng(0)
            probe = rng.normal(0.0, 10.0, size=(5, max(n, 1))).astype(np.float32)
            probe[1, ::2] = np.nan
            probe[2, :] = 0.0
            want = np.asarray(booster.inplace_predict(probe, validate_features=False))
            got = direct(probe)
            one = np.ascontiguousarray(probe[:1])
            started = time.thread_time()
            single = direct(one)
            direct.probe_s = time.thread_time() - started
        except Exception as exc:  # a private API changed: the public one still works
            log.info("xgboost direct prediction unavailable: %s", _first_line(exc))
            return None
        if got.shape != want.shape or not np.array_equal(got, want, equal_nan=True):
            log.warning("xgboost direct prediction differs from inplace_predict; not used")
            return None
        if not np.array_equal(single, want[:1], equal_nan=True):
            log.warning("xgboost direct prediction of one row differs; not used")
            return None
        return direct

    def __call__(self, x: np.ndarray) -> np.ndarray:
        ct = self._ctypes
        shape = self._shape_ptr()
        dims = self._ulong()
        preds = self._float_ptr()
        iface = (
            b'{"data": [%d, true], "shape": [%d, %d], "strides": null, "typestr": "<f4", '
            b'"version": 3}' % (x.ctypes.data, x.shape[0], x.shape[1])
        )
        self._check(
            self._fn(
                self._booster.handle,
                iface,
                self._ARGS,
                None,
                ct.byref(shape),
                ct.byref(dims),
                ct.byref(preds),
            )
        )
        out_shape = tuple(int(shape[i]) for i in range(dims.value))
        out = np.empty(out_shape, dtype=np.float32)
        if out.size:
            ct.memmove(out.ctypes.data, preds, out.nbytes)
        return out


class LightGBMModel:
    framework = "lightgbm"
    device = "cpu"
    bounded = True

    def __init__(self, booster: Any, nbytes: int) -> None:
        self._booster = booster
        self.nbytes = nbytes
        self.warm_s = self._warm_up()

    def _warm_up(self) -> float | None:
        """One 1-row prediction at load: its CPU time (worker/inline.py), or None."""
        try:
            row = np.zeros((1, int(self._booster.num_feature())), dtype=np.float32)
            started = time.thread_time()
            self._booster.predict(row, num_threads=1)
            return time.thread_time() - started
        except Exception as exc:  # the first request will tell; the load itself succeeded
            log.info("LightGBM warm-up prediction failed: %s", _first_line(exc))
            return None

    def predict(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        # num_threads=1 per call (not a booster parameter: LightGBM ignores parameters given
        # with a model string).
        return [np.asarray(self._booster.predict(inputs[0], num_threads=1))]

    def to_host(self) -> LightGBMModel | None:
        return self


class OnnxModel:
    framework = "onnx"

    def __init__(
        self,
        session: Any,
        device: str,
        nbytes: int,
        artifact: bytes | None = None,
        artifact_bounded: bool = False,
    ) -> None:
        self._session = session
        self._inputs = [i.name for i in session.get_inputs()]
        self._outputs = [o.name for o in session.get_outputs()]
        self.device = device
        self.nbytes = nbytes
        self.bounded = device == "cpu" and artifact_bounded is True
        self.warm_s: float | None = None
        # A GPU session keeps its artifact so demotion can build the CPU session without a
        # fetch; a few KiB to a few MiB of host memory per GPU-resident model.
        self._artifact = artifact

    def predict(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        feed = dict(zip(self._inputs, inputs, strict=True))
        return [np.asarray(a) for a in self._session.run(self._outputs, feed)]

    def to_host(self) -> OnnxModel | None:
        if self.device == "cpu":
            return self
        if self._artifact is None:
            return None
        return _onnx_load(self._artifact, "cpu")


def _xgboost_load(data: bytes, device: str) -> Any:
    import xgboost as xgb

    params: dict[str, Any] = {"nthread": 1}
    if device == "cuda":
        # verbosity 0: a CPU input to a CUDA booster logs a device-mismatch warning per call.
        params.update(device="cuda", verbosity=0)
    booster = xgb.Booster(params=params)
    buf = bytearray(data)
    try:
        booster.load_model(buf)
    except xgb.core.XGBoostError as exc:
        raise CorruptArtifact(f"invalid XGBoost model: {_first_line(exc)}") from None
    finally:
        del buf
    return booster


def _lightgbm_load(data: bytes) -> Any:
    import lightgbm as lgb

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptArtifact("LightGBM model is not UTF-8 text") from None
    if "end of trees" not in text:
        raise CorruptArtifact("LightGBM model is truncated (no 'end of trees' marker)")
    try:
        return lgb.Booster(model_str=text)
    except lgb.basic.LightGBMError as exc:
        raise CorruptArtifact(f"invalid LightGBM model: {_first_line(exc)}") from None


def _onnx_session(data: bytes, device: str) -> Any:
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
        raise CorruptArtifact(f"invalid ONNX model: {_first_line(exc)}") from None


def _onnx_load(data: bytes, device: str) -> OnnxModel:
    before = heap_in_use()
    session = _onnx_session(data, device)
    after = heap_in_use()
    on_cuda = device == "cuda" and "CUDAExecutionProvider" in session.get_providers()
    estimate = estimate_bytes("onnx", len(data))
    if on_cuda:
        return OnnxModel(session, "cuda", estimate, artifact=data)
    return OnnxModel(
        session, "cpu", _measured(before, after, estimate), artifact_bounded=onnx_bounded(data)
    )


#: ONNX operators whose running time depends on the data's values rather than its size:
#: loops and subgraphs, and operators whose output size is read from a tensor (a crafted
#: input could make them build a huge output).
_ONNX_CONTROL_FLOW = frozenset(
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
_ONNX_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})


def _pb_fields(buf: memoryview) -> Any:
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


def onnx_bounded(data: bytes) -> bool:
    """Whether an ONNX model's time is bounded by its input's size (see ``_ONNX_CONTROL_FLOW``).

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
            if op in _ONNX_CONTROL_FLOW or domain not in _ONNX_DOMAINS:
                return False
        return True
    except ValueError:
        return False


def _measured(before: int | None, after: int | None, estimate: int) -> int:
    if before is None or after is None or after - before <= 0:
        return estimate
    return after - before


def gpu_capable(framework: str) -> bool:
    """Whether this framework's models can be placed in GPU memory here."""
    if framework == "onnx":
        return onnx_cuda_available()
    return framework == "xgboost"


_warmed: set[tuple[str, str]] = set()
_warm_lock = threading.Lock()

#: framework -> the module its loader imports.
_MODULES = {"xgboost": "xgboost", "lightgbm": "lightgbm", "onnx": "onnxruntime"}


def import_runtime(framework: str) -> None:
    """Import ``framework``'s library (blocking; seconds on a busy machine, once per process).

    The loader calls this before the timed deserialization, so a model's load timeout
    measures the model, not the one-time library import.
    """
    module = _MODULES.get(framework)
    if module is not None:
        importlib.import_module(module)


def load_model(data: bytes, framework: str, device: str) -> Model:
    """Deserialize ``data`` (already sha256-verified) for ``device`` (cpu | cuda). Blocking.

    The format is re-detected from the bytes and must belong to ``framework``; pickles and
    archives are refused before any runtime sees them.
    """
    try:
        fmt = detect_format(data)
    except ArtifactError as exc:
        raise CorruptArtifact(str(exc)) from None
    if FORMATS[fmt] != framework:
        raise CorruptArtifact(f"model is registered as {framework} but the artifact is {fmt}")
    with _warm_lock:
        if (framework, device) not in _warmed:
            _load(data, framework, device)
            _warmed.add((framework, device))
    return _load(data, framework, device)


def _load(data: bytes, framework: str, device: str) -> Model:
    estimate = estimate_bytes(framework, len(data))
    if framework == "onnx":
        return _onnx_load(data, device if gpu_capable("onnx") else "cpu")
    before = heap_in_use()
    if framework == "xgboost":
        booster = _xgboost_load(data, device)
        after = heap_in_use()
        nbytes = estimate if device == "cuda" else _measured(before, after, estimate)
        return XGBoostModel(booster, device, nbytes)
    booster = _lightgbm_load(data)
    return LightGBMModel(booster, _measured(before, heap_in_use(), estimate))
