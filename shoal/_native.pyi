"""Type stubs of ``shoal._native``, the Rust data path (native/src/py/)."""

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

__version__: str

#: Fallback positions past k that still follow the zone rule in ``NativePool.ranked``.
FALLBACK_ZONED: int

class NativePool:
    """One pool's members with their hashes precomputed (build once per snapshot epoch).

    The shard function of DESIGN.md (rendezvous hashing keyed by ``salt[:64]``, zone-aware
    selection order); ``tests/vectors/shard.json`` (from the Python implementation it
    replaced) pins it. Raises ``ValueError`` for duplicate worker ids or ``len(zones) !=
    len(worker_ids)``; ``zones=None`` means no zones. ``shard_size`` must be >= 0.
    """

    def __new__(
        cls,
        worker_ids: Sequence[str],
        zones: Sequence[str] | None,
        salt: bytes,
        shard_size: int = 2,
    ) -> NativePool: ...
    def __len__(self) -> int: ...
    @property
    def n_zones(self) -> int:
        """Distinct zones, at least 1 (one distinct zone, ``""`` included, is unzoned)."""
    @property
    def shard_size(self) -> int: ...
    @property
    def worker_ids(self) -> list[str]: ...
    def worker_hashes(self) -> NDArray[np.uint64]:
        """Keyed hashes of the worker ids, by member index."""
    def tenant_hash(self, tenant: str) -> int:
        """``blake2b(tenant, digest_size=8, key=salt[:64])`` as a little-endian u64."""
    def selection_order(self, tenant: str, length: int | None = None) -> list[int]:
        """Every member index, best first: the first ``min(length, N)`` by the zone rule
        (``None``: N), then the rest in rank order."""
    def shard_matrix(self, tenant_hashes: NDArray[np.uint64], k: int) -> NDArray[np.int64]:
        """``[T, min(k, N)]``: row t is the first ``min(k, N)`` of the selection order of
        ``tenant_hashes[t]``. Computed without the GIL."""
    def ranked(
        self, tenant: str, shard_size: int = 0, members: Sequence[str] = ()
    ) -> tuple[list[int], int]:
        """``Placement.ranked``: (every member index in order, k). A positive ``shard_size``
        overrides the pool's; non-empty ``members`` (worker ids; unknown ones dropped,
        duplicates kept) come first and are the shard."""

def tenant_hashes(tenants: Sequence[str], salt: bytes) -> NDArray[np.uint64]:
    """Keyed 64-bit hashes of ids (``salt[:64]``; empty salt: unkeyed). Computed without the
    GIL."""

def primary_index(key: str, k: int) -> int:
    """Unkeyed ``blake2b(key, digest_size=8)`` (little-endian) ``% k``: the primary member of a
    model version. ``ZeroDivisionError`` for k = 0."""

def primary_indices(keys: Sequence[str], k: NDArray[np.int64]) -> NDArray[np.int64]:
    """``primary_index(keys[m], k[m])`` for every m (without the GIL); ``ZeroDivisionError``
    when any k is 0, ``ValueError`` when the lengths differ."""

def model_primary_indices(
    tenants: Sequence[str],
    model_tenant: NDArray[np.int64],
    names: Sequence[str],
    versions: NDArray[np.int64],
    k: NDArray[np.int64],
) -> NDArray[np.int64]:
    """``primary_indices(keys, k)`` for the keys ``f"{tenants[model_tenant[m]]}/{names[m]}:"
    f"{versions[m]}"``, built natively, on all cores without the GIL; ``ZeroDivisionError``
    when any k is 0, ``ValueError`` when the lengths differ or a tenant index is out of range."""

def searchsorted_right(
    sorted: NDArray[np.float64], values: NDArray[np.float64]
) -> NDArray[np.int64]:
    """``np.searchsorted(sorted, values, side="right")``, exactly, on all cores without the GIL
    (a bucket table narrows the search for values in [0, 1)); ``ValueError`` when ``sorted``
    is not sorted or either holds NaN."""

def tinylfu_replay(
    items: NDArray[np.uint64],
    sizes: NDArray[np.uint64],
    bounds: NDArray[np.int64],
    budget: int,
    window: float = 0.01,
    protected: float = 0.8,
    width: int = 4096,
) -> NDArray[np.bool_]:
    """Hits of every request replayed through ``worker.policy.TinyLfu`` (one cache of ``budget``
    bytes per stream ``bounds[i]:bounds[i + 1]``), natively and exactly; ``ValueError`` on
    mismatched lengths or bad bounds."""

def tinylfu_hit_counts(
    items: NDArray[np.uint64],
    sizes: NDArray[np.uint64],
    bounds: NDArray[np.int64],
    measured: NDArray[np.bool_],
    budgets: NDArray[np.uint64],
    window: float = 0.01,
    protected: float = 0.8,
    width: int = 4096,
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """The streams of ``tinylfu_replay`` replayed at every budget, on all cores without the
    GIL: ``(hits, repeats)``, ``hits[b, s]`` the ``measured`` requests of stream ``s`` that hit
    under ``budgets[b]`` bytes, ``repeats[s]`` those for an item the stream asked for before
    (the hits of an unbounded cache). ``ValueError`` as ``tinylfu_replay``."""

def lru_stack_distances(
    items: NDArray[np.uint64], sizes: NDArray[np.uint64], bounds: NDArray[np.int64]
) -> NDArray[np.int64]:
    """LRU byte stack distances (``capacity.cache.stack_distances``, the same numbers) of the
    streams of ``tinylfu_replay``, one pass per stream on all cores without the GIL; -1 for a
    stream's first request for an item. ``ValueError`` as ``tinylfu_replay``."""

def member_order(
    ranked: Sequence[int],
    k: int,
    model_key: str,
    spill_at: int,
    in_flight: Sequence[int],
    unhealthy: Sequence[bool],
) -> list[int]:
    """The gateway's member choice: candidate member indices, best first."""

def resolve_version(
    full_name: str,
    versions: Iterable[int],
    aliases: dict[str, int],
    traffic: dict[int, int],
    requested: str,
    u: float,
) -> tuple[int, str]:
    """Version resolution (``router/resolve.py``): (version, via) with via one of
    ``pinned``, ``alias:<name>``, ``traffic``, ``latest``. ``u`` is the traffic split's draw
    in [0, 1), used only when the split decides. Raises ``LookupError`` (the reference's
    ``NotFound``) or ``ValueError`` with the reference's exact message. ``aliases`` and
    ``traffic`` are dicts; versions are u64, weights u32."""

class Gateway:
    """The router's data path (native/src/gateway): see router/app.py for how it is driven."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        rest_port: int | None = None,
        threads: int = 1,
        retries: int = 2,
        default_timeout_s: float = 30.0,
        spill_at: int = 8,
        eject_s: float = 5.0,
        worker_ping_s: float = 0.5,
        shadow_queue: int = 256,
        max_message_bytes: int = 64 << 20,
        seed: int = 0,
        tenant_rate_limit: float = 0.0,
        tenant_max_in_flight: int = 0,
        tenant_queue_s: float = 0.5,
        tenant_max_queued: int = 256,
        auth: bool = False,
        tls_cert: str = "",
        tls_key: str = "",
        tls_ca: str = "",
        tls_client_auth: bool = False,
        name: str = "shoal-router",
        version: str = "",
    ) -> None: ...
    def start(self) -> str:
        """Bind and serve; returns "host:port". Raises OSError when it cannot bind."""
    @property
    def address(self) -> str | None: ...
    @property
    def rest_address(self) -> str | None:
        """The REST listener's "host:port" (None without one, or before start)."""
    def apply(self, changes: Sequence[tuple[str, bytes | None]]) -> list[tuple[str, str]]:
        """Apply etcd changes; returns (key, why) for values that could not be decoded."""
    def set_view(self, ready: bool, stale: bool) -> None: ...
    def stats(self) -> dict[str, Any]: ...
    def take_load(self) -> dict[str, int]: ...
    def take_shadow(
        self, max: int, timeout_s: float
    ) -> list[tuple[float, str, int, int, bytes, bytes | None, str | None]]: ...
    def stop(self, grace_s: float) -> None: ...

class FrontJob:
    """A call the worker front hands to Python: answer it once with ``reply``."""

    @property
    def method(self) -> str: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def time_remaining(self) -> float | None: ...
    @property
    def wants_reply(self) -> bool: ...
    def reply(
        self, code: int, message: str = "", body: bytes | None = None, retry: str = ""
    ) -> None: ...

class WorkerFront:
    """The worker's native inference front (see ``worker/front.py``)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        io_threads: int = 1,
        predict_threads: int = 1,
        stuck_headroom: int = 2,
        predict_timeout_s: float = 10.0,
        max_message_bytes: int = 64 << 20,
        max_rows: int = 4096,
        batching: bool = True,
        max_batch_rows: int = 256,
        max_delay_s: float = 0.002,
        batch_when_idle: bool = True,
        inline_max_s: float = 0.001,
        inline_max_bytes: int = 64 << 10,
        model_concurrency: int = 1,
        model_max_queue: int = 64,
        model_queue_wait_s: float = 1.0,
        delegate_queue: int = 4096,
        tls_cert: str = "",
        tls_key: str = "",
        tls_ca: str = "",
        tls_client_auth: bool = False,
    ) -> None: ...
    def start(self) -> int:
        """Bind and serve; the bound port (OSError when it cannot bind)."""
    def set_ready(self, ready: bool) -> None: ...
    def add_model(
        self,
        model: str,
        version: int,
        runner: TreeBooster | OnnxSession,
        inputs: Sequence[tuple[str, str, Sequence[int]]],
        outputs: Sequence[tuple[str, str, Sequence[int]]],
        warm_s: float | None = None,
        bounded: bool = True,
    ) -> None: ...
    def remove_model(self, model: str, version: int) -> bool: ...
    def set_record(self, model: str, value: bytes | None) -> None: ...
    def clear_records(self) -> None: ...
    def has_model(self, model: str, version: int) -> bool: ...
    def take_touched(self) -> list[tuple[str, int]]: ...
    def next_job(self, timeout_s: float) -> FrontJob | None: ...
    def stats(self) -> dict[str, Any]: ...
    def stuck(self, label: str) -> int: ...
    def stop(self, grace_s: float) -> None: ...

class TreeError(Exception):
    """A tree runtime call failed (native/src/runtime): the library's message, whole."""

class TreeModelError(TreeError):
    """The library refused a model's bytes: the message of the Python loader's
    ``ArtifactError`` (``shoal.frameworks.xgboost.load`` / ``lightgbm.load``)."""

class TreeBooster:
    """An XGBoost or LightGBM model whose library handle Rust owns (CPU only), freed when the
    last holder lets go (this object, a prediction in flight, native code).

    Loading and predicting follow the Python packages call for call: outputs are
    bit-identical to ``Booster.inplace_predict(x, validate_features=False)`` (XGBoost: float32)
    and ``Booster.predict(x, num_threads=1)`` (LightGBM: float64), shaped as they shape them.
    Every call that enters a library releases the GIL.
    """

    @staticmethod
    def open_runtime(framework_name: str, lib_path: str) -> str:
        """Opens ``framework_name``'s (``xgboost`` | ``lightgbm``) shared library, once per
        process: the path in use (the first opened, whatever later calls pass). ``OSError``
        when it cannot be opened or lacks a function; ``ValueError`` for another name."""
    @staticmethod
    def opened_runtime(framework_name: str) -> str | None:
        """The path ``framework_name``'s library was opened from, if it was."""
    @staticmethod
    def load(framework_name: str, data: bytes) -> TreeBooster:
        """``data`` loaded with one thread. ``TreeModelError`` for bytes the library refuses
        (the Python loader's message), ``RuntimeError`` when the library is not open,
        ``TreeError`` when setting the booster up fails."""
    @staticmethod
    def live() -> int:
        """Boosters whose library handle is not freed yet (all frameworks)."""
    @property
    def framework(self) -> str:
        """``xgboost`` or ``lightgbm``."""
    @property
    def num_features(self) -> int:
        """Columns the model was trained on."""
    def output_width(self) -> int:
        """Values per row: 0 for ``[rows]`` outputs, else the second dimension of
        ``[rows, width]``. XGBoost's is read from a 1-row prediction, once. Raises as
        ``predict``."""
    def predict(self, x: NDArray[np.float32] | NDArray[np.float64]) -> NDArray[Any]:
        """Predictions for the 2-D, C-contiguous, aligned matrix ``x`` (float32, or float64
        read as such), computed on a copy without the GIL. ``TreeError`` with the library's
        message when it refuses (a column count the model does not take...), ``ValueError``
        for a layout it cannot take, ``TypeError`` for other arrays."""

# --- the worker front's ModelInfer codec (native/src/worker/codec), bound for tests ---------

#: numpy's limit on dimensions; a longer shape is refused (``worker.convert.MAX_DIMS``).
MAX_DIMS: int

class CodecError(Exception):
    """A request the codec refuses: ``args == (code, message)``, ``code`` a gRPC status name
    (``INVALID_ARGUMENT``, or ``RESOURCE_EXHAUSTED`` for the row limit) and ``message`` the
    Python path's text."""

    args: tuple[str, str]

#: (name, datatype, shape) of a tensor or of a signature's tensor (-1: a variable dimension).
TensorMeta = tuple[str, str, Sequence[int]]

def decode_infer_request(
    raw: bytes, max_rows: int
) -> tuple[str, str, str, list[tuple[str, str, list[int], bytes]], list[str]]:
    """``parse_infer_request`` then ``check_rows``: (model, version, id, inputs as (name,
    datatype, shape, little-endian bytes), requested output names). Raises ``CodecError``."""

def check_inputs(
    label: str,
    signature: tuple[Sequence[TensorMeta], Sequence[TensorMeta]],
    inputs: Sequence[TensorMeta],
) -> list[int]:
    """``validate.check_inputs``: for each of the signature's inputs (``signature`` is
    (inputs, outputs)), the index of the tensor in ``inputs`` that feeds it. Raises
    ``CodecError``; ``ValueError`` for a datatype the decoder would not have produced."""

def select_outputs(
    signature: tuple[Sequence[TensorMeta], Sequence[TensorMeta]], requested: Sequence[str]
) -> list[int]:
    """``validate.select_outputs``: indices of the requested outputs. Raises ``CodecError``."""

def encode_infer_response(
    model: str, version: int, id: str, outputs: Sequence[tuple[str, str, Sequence[int], bytes]]
) -> bytes:
    """The ModelInferResponse's bytes, equal to ``infer_response_to_proto(...)
    .SerializeToString()`` for the same values. ``ValueError`` for an unknown datatype."""

class OnnxError(Exception):
    """An ONNX Runtime call failed: the runtime's first message line."""

class OnnxModelError(OnnxError):
    """The runtime refused a model's bytes: the message of the Python loader's
    ``ArtifactError`` (``invalid ONNX model: ...``)."""

class OnnxSession:
    """An ONNX model (CPU) run by the ONNX Runtime library the onnxruntime wheel ships
    (``onnxruntime/capi/libonnxruntime.so.*``), opened by the native module: a second instance
    of the same release and build as the Python package's, with the options
    ``shoal.frameworks.onnx.load`` sets (one intra- and one inter-op thread, every graph
    optimization, the CPU provider), so outputs are bit-identical to ``InferenceSession.run``.
    Freed when the last holder lets go (this object, a call in flight, native code)."""

    @staticmethod
    def open_runtime(lib_path: str) -> str:
        """Opens the library and builds the process's environment, once per process: the path
        in use (the first opened, whatever later calls pass). ``OSError`` when it fails."""
    @staticmethod
    def opened_runtime() -> str | None:
        """The path the library was opened from, if it was."""
    @staticmethod
    def load(data: bytes) -> OnnxSession:
        """A session of the serialized ``ModelProto`` ``data``. ``OnnxModelError`` for bytes
        the runtime refuses, ``RuntimeError`` when the library is not open."""
    @staticmethod
    def live() -> int:
        """Sessions not freed yet."""
    @property
    def inputs(self) -> list[str]:
        """The graph's input names, in order."""
    @property
    def outputs(self) -> list[str]:
        """The graph's output names, in order."""
    def run(
        self, inputs: Sequence[tuple[str, Sequence[int], bytes]]
    ) -> list[tuple[str, list[int], bytes]]:
        """Every output ``(V2 datatype, shape, little-endian bytes)``, for ``inputs`` in the
        graph's input order, computed without the GIL. ``OnnxError`` with the runtime's
        message when it refuses (a wrong shape or type...), ``ValueError`` for a datatype it
        does not know or bytes that do not fill the shape."""
