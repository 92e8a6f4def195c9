"""The disk tier: artifact bytes on local disk, content-addressed, LRU within a byte budget.

Files live at ``<root>/<sha[:2]>/<sha>``; a write goes to a temporary name and is renamed into
place, so a crash never leaves a half-written artifact under its final name (and the loader
checks the digest of every file it reads anyway). The LRU bookkeeping is a
``cachetools.LRUCache`` sized in bytes whose evictions unlink the file. On start the index is
rebuilt from the folder, oldest modification time first.

Methods block (file I/O): call them from a worker thread. A lock makes them safe to call from
several threads; ``__contains__`` and the byte counters are cheap enough for the event loop.
An artifact larger than the whole budget is simply not kept.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

import cachetools

log = logging.getLogger(__name__)


class _Index(cachetools.LRUCache[str, int]):
    """sha256 -> size; evicting an item calls ``on_evict`` (which unlinks the file)."""

    def __init__(self, budget: int, on_evict: Callable[[str], None]) -> None:
        super().__init__(maxsize=budget, getsizeof=lambda size: size)
        self._on_evict = on_evict

    def popitem(self) -> tuple[str, int]:
        sha, size = super().popitem()
        self._on_evict(sha)
        return sha, size


class DiskCache:
    def __init__(self, root: Path, budget: int) -> None:
        self.root = root
        self.budget = budget
        self._lock = threading.Lock()
        self._index = _Index(max(budget, 1), self._unlink)
        self.evictions = 0

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def scan(self) -> None:
        """Rebuild the index from the files already on disk (oldest first)."""
        if self.budget <= 0:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        found: list[tuple[float, str, int]] = []
        for p in self.root.glob("??/*"):
            if p.name.startswith(".") or len(p.name) != 64:
                with contextlib.suppress(OSError):
                    p.unlink()  # a temporary file left by a crash
                continue
            with contextlib.suppress(OSError):
                st = p.stat()
                found.append((st.st_mtime, p.name, st.st_size))
        with self._lock:
            for _mtime, sha, size in sorted(found):
                self._put_index(sha, size)

    def __contains__(self, sha256: object) -> bool:
        return sha256 in self._index

    @property
    def used(self) -> int:
        return int(self._index.currsize)

    def __len__(self) -> int:
        return len(self._index)

    def read(self, sha256: str) -> bytes | None:
        """The bytes stored for ``sha256`` (unverified: the caller checks them), or None."""
        with self._lock:
            if sha256 not in self._index:
                return None
            self._index[sha256]  # touch: most recently used
        try:
            return self.path(sha256).read_bytes()
        except OSError:
            self.remove(sha256)
            return None

    def write(self, sha256: str, data: bytes) -> bool:
        """Keep ``data`` under its digest; False when it does not fit or the write failed."""
        if self.budget <= 0 or len(data) > self.budget:
            return False
        final = self.path(sha256)
        tmp = final.parent / f".{sha256}.{os.getpid()}.{threading.get_ident()}"
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, final)
        except OSError as exc:
            log.warning("disk cache: cannot write %s: %s", final, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()
            return False
        with self._lock:
            self._put_index(sha256, len(data))
        return True

    def remove(self, sha256: str) -> None:
        with self._lock:
            self._index.pop(sha256, None)
        with contextlib.suppress(OSError):
            self.path(sha256).unlink()

    def _put_index(self, sha: str, size: int) -> None:
        try:
            self._index[sha] = size
        except ValueError:  # larger than the budget
            self._unlink(sha)

    def _unlink(self, sha: str) -> None:
        self.evictions += 1
        with contextlib.suppress(OSError):
            self.path(sha).unlink()
