"""Loading a model version into the cache: single flight, verified bytes, remembered failures.

A load is: reserve the estimated bytes in the target tier (displacing LRU models; the estimate
is calibrated by the sizes measured in earlier loads, ``SizeEstimator``), read the
artifact from the disk tier — or fetch it from the object store and keep it on disk — check
its sha256 against the record (for disk bytes too: a flipped bit on disk is a miss, not a
model), deserialize it on the load thread, then admit it with its measured size.

* **Single flight**: the first miss for a ``ModelId`` starts one task; later misses await the
  same task (shielded: a caller giving up does not cancel the load for the others). N
  concurrent misses cost one fetch and one deserialization.
* **One load at a time** deserializes (``RuntimeCalls`` with capacity 1 on the load pool):
  the heap measurement around a deserialization is only meaningful when no other load
  allocates meanwhile, and loads of small models take milliseconds. Fetches and hashing run
  concurrently on other threads, and predictions never wait for loads (they use their own pool).
* **Failures are remembered** per ``ModelId`` (``worker.quarantine.FailureMemory``, owned by
  the caller): until the backoff elapses (the version is quarantined) requests get the same
  error, saying until when, without touching the store; each further failure doubles the
  delay up to a cap; a success forgets. Other models are unaffected.
* **Hangs are bounded**: a deserialization running longer than ``load_timeout_s`` is abandoned
  (the waiting callers get DEADLINE_EXCEEDED), its version is quarantined at once and stays so
  while the thread is stuck; a spare thread of the load pool takes over, so other models keep
  loading. The stuck thread itself cannot be killed (``shoal_worker_stuck_calls{kind="load"}``).

Error mapping: object missing -> NotFound; checksum mismatch or bytes the runtime rejects ->
FailedPrecondition; object store unreachable -> Unavailable; hang -> DeadlineExceeded, then the
quarantine answers FailedPrecondition; anything unexpected -> Internal.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from functools import partial

from shoal.artifacts import ArtifactError, sha256_hex
from shoal.frameworks import Model, gpu_capable, import_runtime, load_model
from shoal.objstore import ObjectNotFound, ObjectStore, ObjectStoreUnavailable, artifact_key
from shoal.records import ModelVersion
from worker.cache import Tier, TieredCache
from worker.calls import Abandoned, RuntimeCalls
from worker.diskcache import DiskCache
from worker.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    NotFound,
    StoreUnavailable,
    WorkerError,
)
from worker.faults import Faults
from worker.metrics import WorkerMetrics
from worker.quarantine import FailureMemory
from worker.sizes import SizeEstimator
from worker.types import ModelId

log = logging.getLogger(__name__)


def object_key(mv: ModelVersion, store_url: str) -> str:
    """The store key of a version's artifact: its ``uri`` (a key, or a URL inside the store)."""
    uri = mv.uri
    if not uri:
        return artifact_key(mv.sha256)
    if "://" not in uri:
        return uri.lstrip("/")
    base = store_url.rstrip("/") + "/"
    if uri.startswith(base):
        return uri[len(base) :]
    raise FailedPrecondition(f"artifact {uri} is outside this worker's object store {store_url}")


#: Artifacts up to this size are hashed on the event loop (~40 µs), larger ones on a thread.
INLINE_HASH_BYTES = 64 << 10


class Loader:
    def __init__(
        self,
        cache: TieredCache[ModelId, Model],
        disk: DiskCache,
        store: ObjectStore,
        device: str,
        calls: RuntimeCalls,
        metrics: WorkerMetrics,
        failures: FailureMemory,
        digests: dict[ModelId, str] | None = None,
        faults: Faults | None = None,
        fetch_timeout_s: float = 5.0,
    ) -> None:
        self._fetch_timeout_s = fetch_timeout_s
        self._cache = cache
        self._disk = disk
        self._store = store
        self._device = device
        self._calls = calls
        self._faults = faults or Faults()
        self._metrics = metrics
        self._failures = failures
        self._flights: dict[ModelId, asyncio.Task[Model]] = {}
        self._writes: set[asyncio.Task[bool]] = set()  # disk-tier writes under way
        self._imported: set[str] = set()  # frameworks whose library is imported
        self.sizes = SizeEstimator()
        #: artifact digest of every model loaded (the owner prunes it on eviction)
        self.digests = digests if digests is not None else {}

    @property
    def in_flight(self) -> int:
        return len(self._flights)

    async def close(self, timeout: float = 10.0) -> None:
        """Wait (at most ``timeout``) for the disk-tier writes under way."""
        if self._writes:
            await asyncio.wait(set(self._writes), timeout=timeout)

    async def load(self, mid: ModelId, mv: ModelVersion) -> Model:
        """The loaded model for ``mid`` (admitted to the cache), sharing any load under way."""
        task = self._flights.get(mid)
        if task is None:
            err = self._failures.check(mid)
            if err is not None:
                raise err
            task = asyncio.get_running_loop().create_task(self._load(mid, mv))
            self._flights[mid] = task
            task.add_done_callback(self._landed(mid))
        return await asyncio.shield(task)

    def _landed(self, mid: ModelId) -> Callable[[asyncio.Task[Model]], None]:
        def done(task: asyncio.Task[Model]) -> None:
            self._flights.pop(mid, None)
            if not task.cancelled():
                task.exception()  # retrieved here: every waiter may have gone

        return done

    async def _load(self, mid: ModelId, mv: ModelVersion) -> Model:
        resident = self._cache.peek(mid)
        if resident is not None and resident.value is not None:
            return resident.value  # admitted by a flight that just ended
        started = time.perf_counter()
        self.digests[mid] = mv.sha256
        self._metrics.loads_in_flight.inc()
        estimate = self.sizes.estimate(mv.framework, mv.size)
        tier = Tier.HOST
        if (
            self._device == "cuda"
            and gpu_capable(mv.framework)
            and self._cache.fits(Tier.GPU, estimate)
        ):
            tier = Tier.GPU
        self._cache.reserve(mid, tier, estimate)
        admitted = False
        try:
            data = await self._artifact(mid, mv)
            device = "cuda" if tier is Tier.GPU else "cpu"
            fn = self._faults.wrap(
                "load", f"{mid.tenant}/{mid.name}", partial(load_model, data, mv.framework, device)
            )
            del data
            # The library import (once per framework, seconds on a busy machine) goes through
            # the same one-at-a-time gate, untimed: the timeout below is the model's alone.
            if mv.framework not in self._imported:
                fw = mv.framework
                await self._calls.run(fw, partial(import_runtime, fw), timed=False)
                self._imported.add(fw)
            model = await self._calls.run(mid, fn)
            placed = Tier.GPU if model.device == "cuda" else Tier.HOST
            if placed is Tier.HOST:  # GPU sizes are estimates: nothing to learn from them
                model.nbytes = self.sizes.charge(mv.framework, mv.size, model.nbytes)
            self._cache.admit(mid, model, model.nbytes, placed)
            admitted = True
        except Abandoned as exc:
            # A deserialization that never returns: its thread stays stuck (the load pool's
            # headroom stands in for it) and the version is quarantined at once, for as long
            # as the thread is stuck at least.
            self._fail(
                mid,
                FailedPrecondition(f"loading {mid} hung ({exc}; SHOAL_LOAD_TIMEOUT_S)"),
                immediate=True,
                result="DEADLINE_EXCEEDED",
            )
            raise DeadlineExceeded(f"{exc} and was abandoned; {mid} is quarantined") from None
        except WorkerError as exc:
            self._fail(mid, exc)
            raise
        except ArtifactError as exc:
            err: WorkerError = FailedPrecondition(f"cannot load {mid}: corrupt artifact: {exc}")
            self._fail(mid, err)
            raise err from None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("loading %s failed", mid)
            err = Internal(f"loading {mid} failed: {type(exc).__name__}: {exc}")
            self._fail(mid, err)
            raise err from None
        finally:
            if not admitted:
                self._cache.unreserve(mid)
            self._metrics.loads_in_flight.dec()
        self._failures.clear(mid)
        self._metrics.child(self._metrics.loads, "OK").inc()
        self._metrics.child(self._metrics.load_seconds, mv.framework).observe(
            time.perf_counter() - started
        )
        return model

    def _fail(
        self, mid: ModelId, err: WorkerError, immediate: bool = False, result: str = ""
    ) -> None:
        delay = self._failures.record(mid, err, immediate)
        m = self._metrics
        m.child(m.loads, result or err.code.value).inc()
        if delay:
            m.child(m.quarantines, "load").inc()
        log.warning("load of %s failed (%s: %s); retry after %.1fs", mid, err.code, err, delay)

    async def _artifact(self, mid: ModelId, mv: ModelVersion) -> bytes:
        """Verified artifact bytes: disk tier first, then the object store (kept on disk).

        One thread hop for a disk-tier hit (read and hash together), none for a miss (the
        index is in memory); a fetched artifact is
        hashed on the loop when small (a hop costs more than hashing 64 KiB) and written to
        the disk tier in the background: the load does not wait for the copy.
        """
        sha = mv.sha256
        # The index is in memory: a miss costs no thread hop.
        data = await asyncio.to_thread(self._read_verified, sha) if sha in self._disk else None
        if data is not None:
            self._metrics.child(self._metrics.hits, "disk").inc()
            return data
        self._metrics.child(self._metrics.misses, "disk").inc()
        key = object_key(mv, self._store.url)
        try:
            # Bounded by its size (a second per 10 MB beyond the base): a store that stopped
            # answering on a pooled connection is not waited on for the HTTP client's 30 s.
            timeout = self._fetch_timeout_s + mv.size / 10e6
            data = await self._store.get(key, timeout=timeout)
        except ObjectNotFound:
            raise NotFound(f"artifact of {mid} not found in the object store ({key})") from None
        except ObjectStoreUnavailable as exc:
            raise StoreUnavailable(f"object store unreachable loading {mid}: {exc}") from None
        if len(data) <= INLINE_HASH_BYTES:
            got = sha256_hex(data)
        else:
            got = await asyncio.to_thread(sha256_hex, data)
        if got != sha:
            raise FailedPrecondition(
                f"cannot load {mid}: checksum mismatch: the record says sha256 {sha}, "
                f"the artifact at {key} has {got}"
            )
        self._keep_on_disk(sha, data)
        return data

    def _read_verified(self, sha: str) -> bytes | None:
        """On a thread: the disk tier's copy if it matches its digest (else it is dropped)."""
        data = self._disk.read(sha)
        if data is None:
            return None
        if sha256_hex(data) == sha:
            return data
        log.warning("disk cache: %s does not match its digest; fetching it again", sha)
        self._disk.remove(sha)
        return None

    def _keep_on_disk(self, sha: str, data: bytes) -> None:
        task = asyncio.get_running_loop().create_task(
            asyncio.to_thread(self._disk.write, sha, data)
        )
        self._writes.add(task)

        def done(t: asyncio.Task[bool]) -> None:
            self._writes.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.warning("disk cache: keeping %s failed: %s", sha, t.exception())

        task.add_done_callback(done)
