"""Artifact garbage collection: deleting artifacts that no version references any more.

Retention changes records first and queues the artifacts of the versions it dropped
(``queue``); ``flush`` deletes them afterwards, so a failure in between leaves garbage in the
store, never a record without its artifact. Artifacts are content-addressed and so may be
shared by several models; the ``mode`` decides how sure a deletion must be:

* ``"cluster"`` (the default): an artifact is deleted only when no model record anywhere still
  names its sha256 (one paged scan of ``/shoal/models/`` per flush, reading digests out of the
  raw JSON without decoding records);
* ``"model"``: only the model being trimmed is checked (cheap, unsafe when models share bytes);
* ``"off"``: artifacts are never deleted.

Registration queues as it goes and flushes once per ``batch`` candidates (or when ``flush`` is
called, e.g. at the end of a bulk stream), so 100K registrations do not mean 100K scans. An
artifact that a registration in this process holds (``hold``, from upload to commit), or that
is held while a scan runs, is never deleted. Limit: a registration through *another*
placement instance that commits the same bytes during the scan can still lose its artifact;
re-registering it restores it.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from typing import Literal

from shoal.objstore import ObjectStore, artifact_key
from shoal.records import MODELS, ModelRecord, ModelVersion
from shoal.state import StateStore, iter_prefix

log = logging.getLogger(__name__)

ArtifactGC = Literal["off", "model", "cluster"]

#: ``"sha256":"<hex>"`` as ``ModelRecord.encode`` writes it (compact JSON): the scan finds
#: digests in raw values without decoding. A label that happens to look the same only keeps an
#: artifact alive, never deletes one.
_SHA_FIELD = re.compile(rb'"sha256":"([0-9a-f]{64})"')


class ArtifactCollector:
    """Queues and deletes unreferenced artifacts (see the module docstring)."""

    def __init__(
        self, state: StateStore, objects: ObjectStore, mode: ArtifactGC, batch: int = 4096
    ) -> None:
        self._state = state
        self._objects = objects
        self.mode: ArtifactGC = mode
        self.batch = max(1, batch)
        #: sha256 -> registrations between upload and commit (never collected).
        self._held: Counter[str] = Counter()
        #: One set per running scan: digests held while it runs (never collected).
        self._watches: list[set[str]] = []
        self._pending: set[str] = set()
        #: Artifacts deleted since start.
        self.deleted = 0

    @property
    def due(self) -> bool:
        """Whether a batch of candidates has queued up."""
        return len(self._pending) >= self.batch

    def hold(self, digest: str) -> None:
        """Keep ``digest`` from collection until ``release`` (upload to commit)."""
        self._held[digest] += 1
        for watch in self._watches:
            watch.add(digest)

    def release(self, digest: str) -> None:
        self._held[digest] -= 1
        if self._held[digest] <= 0:
            del self._held[digest]

    def queue(self, record: ModelRecord, doomed: Sequence[ModelVersion]) -> None:
        """Queue the artifacts of ``doomed`` versions that ``record`` itself no longer names."""
        if self.mode == "off" or not doomed:
            return
        still = {mv.sha256 for mv in record.versions.values()}
        self._pending |= {mv.sha256 for mv in doomed} - still

    async def flush(self) -> int:
        """Delete the queued artifacts no record names any more; return how many were deleted.

        ``"model"`` mode trusts the queue (built from the trimmed model alone); ``"cluster"``
        first scans every record once for the whole queue. Digests held by registrations in
        flight, or held while the scan ran, stay queued for the next flush. A store error
        leaves the rest queued and is raised.
        """
        if self.mode == "off" or not self._pending:
            self._pending.clear()
            return 0
        candidates, self._pending = self._pending, set()
        watch: set[str] = set()
        self._watches.append(watch)
        try:
            if self.mode == "cluster":
                async for kv, _ in iter_prefix(self._state, MODELS):
                    candidates.difference_update(m.decode() for m in _SHA_FIELD.findall(kv.value))
                    if not candidates:
                        break
        except BaseException:
            self._pending |= candidates
            raise
        finally:
            self._watches.remove(watch)
        busy = {sha for sha in candidates if sha in watch or sha in self._held}
        self._pending |= busy
        deleted = 0
        todo = sorted(candidates - busy)
        for n, sha in enumerate(todo):
            try:
                await self._objects.delete(artifact_key(sha))
            except BaseException:
                self._pending.update(todo[n:])
                raise
            deleted += 1
            log.info("deleted artifact %s (no version references it)", sha)
        self.deleted += deleted
        return deleted
