"""Pool membership from worker records, debounced: the pure half of snapshot publishing.

``MembershipTracker`` holds the latest ``WorkerInfo`` of every worker key and a debounce
deadline. The first change after a publish arms the deadline ``debounce_s`` ahead; later
changes inside the window ride along. When the deadline passes, ``changed_snapshots`` compares
the desired membership with what was last published and returns a new snapshot (epoch + 1)
for each pool that differs, and nothing for the others. Hence:

* a worker that flaps (record deleted and re-created, or ready toggled) within one window
  causes at most one new epoch, and none if it ends the window as it started;
* at most one epoch per pool per window, however many workers change;
* a worker is a member only while its record says ``ready`` and not ``draining``: a new worker
  enters once it reports ready, and a worker that leaves cleanly (drains first) leaves the
  snapshot while it is still serving the requests already routed to it;
* a warm hand-off (``placement.warmth``) may hold a change back: a worker that says
  ``leaving`` stays a member, and a new ready worker stays out, while ``keep`` says so (until
  the members taking over hot models have loaded them).

Time is injected (``clock``, monotonic seconds), so this is unit-tested without sleeping.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from shoal.records import WORKERS, Member, PoolSnapshot, WorkerInfo
from shoal.state import WatchEvent

#: A worker's membership while a warm hand-off holds it (True: in, False: out), else None.
Keep = Callable[[WorkerInfo], "bool | None"]


def _no_hold(_w: WorkerInfo) -> bool | None:
    return None


def desired_members(
    workers: Iterable[WorkerInfo], keep: Keep = _no_hold
) -> dict[str, tuple[Member, ...]]:
    """pool -> members (ready, not draining, not leaving; unless ``keep`` holds a leaver in
    or a joiner out while a hand-off is under way), sorted by worker id."""
    pools: dict[str, list[Member]] = {}
    for w in workers:
        if not w.ready or w.draining:
            continue
        held = keep(w)
        if held if held is not None else not w.leaving:
            pools.setdefault(w.pool, []).append(Member(w.worker_id, w.address, w.zone))
    return {p: tuple(sorted(ms, key=lambda m: m.worker_id)) for p, ms in pools.items()}


class MembershipTracker:
    """Latest worker records plus a debounce deadline (see module docstring)."""

    def __init__(
        self,
        debounce_s: float,
        clock: Callable[[], float],
        keep: Keep = _no_hold,
    ) -> None:
        self.debounce_s = debounce_s
        self._clock = clock
        self.keep = keep
        self.workers: dict[str, WorkerInfo] = {}  # etcd key -> record
        self._due: float | None = None
        self.changes = 0  # records applied so far (a generation for derived views)

    def reset(self, records: Mapping[str, bytes]) -> None:
        """Replace every record (a full re-read) and arm the deadline."""
        self.workers = {}
        for key, value in records.items():
            info = _decode(value)
            if info is not None:
                self.workers[key] = info
        self._arm()

    def apply(self, event: WatchEvent) -> None:
        if not event.key.startswith(WORKERS):
            return
        if event.kind == "delete":
            self.workers.pop(event.key, None)
        else:
            info = _decode(event.value)
            if info is None:
                self.workers.pop(event.key, None)
            else:
                self.workers[event.key] = info
        self._arm()

    def _arm(self) -> None:
        self.changes += 1
        if self._due is None:
            self._due = self._clock() + self.debounce_s

    def wake_at(self, when: float) -> None:
        """Look again at ``when`` (clock time) at the latest: a hand-off's hold lapses then."""
        if self._due is None or when < self._due:
            self._due = when

    def due_in(self) -> float | None:
        """Seconds until the window closes (<= 0: now), or None when nothing is pending."""
        return None if self._due is None else self._due - self._clock()

    def take_due(self) -> bool:
        """True (once) when the window has closed: the caller publishes now."""
        if self._due is not None and self._clock() >= self._due:
            self._due = None
            return True
        return False

    def changed_snapshots(
        self,
        published: Mapping[str, PoolSnapshot],
        shard_size: int,
        published_at: float,
    ) -> list[PoolSnapshot]:
        """New snapshots for the pools whose membership differs from ``published``.

        A pool whose last member left gets an empty snapshot (routers then answer
        UNAVAILABLE instead of sending to workers that are gone).
        """
        desired = desired_members(self.workers.values(), self.keep)
        out = []
        for pool in sorted(set(desired) | set(published)):
            members = desired.get(pool, ())
            old = published.get(pool)
            if old is not None and old.members == members and old.shard_size == shard_size:
                continue
            if old is None and not members:
                continue
            epoch = old.epoch + 1 if old is not None else 1
            out.append(PoolSnapshot(pool, epoch, members, shard_size, published_at))
        return out


def _decode(value: bytes) -> WorkerInfo | None:
    try:
        return WorkerInfo.decode(value)
    except (ValueError, TypeError, KeyError):
        return None  # a malformed record is never a member
