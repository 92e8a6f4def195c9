"""Debounced membership (pure logic, injected clock): flaps, readiness, draining."""

from __future__ import annotations

from placement.membership import MembershipTracker, desired_members
from shoal.records import Member, PoolSnapshot, WorkerInfo, worker_key
from shoal.state import WatchEvent


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def put(info: WorkerInfo) -> WatchEvent:
    return WatchEvent("put", worker_key(info.pool, info.worker_id), info.encode(), 0)


def gone(info: WorkerInfo) -> WatchEvent:
    return WatchEvent("delete", worker_key(info.pool, info.worker_id), b"", 0)


def worker(wid: str, **kw: object) -> WorkerInfo:
    return WorkerInfo(worker_id=wid, pool="cpu", address=f"h:{wid}", **kw)  # type: ignore[arg-type]


def test_only_ready_and_not_draining_workers_are_members() -> None:
    infos = [
        worker("a", ready=True),
        worker("b", ready=False),
        worker("c", ready=True, draining=True),
        WorkerInfo("d", "gpu", "h:d", zone="z1", ready=True),
    ]
    assert desired_members(infos) == {
        "cpu": (Member("a", "h:a"),),
        "gpu": (Member("d", "h:d", "z1"),),
    }


def test_a_flap_within_the_window_causes_at_most_one_epoch() -> None:
    clock = Clock()
    t = MembershipTracker(debounce_s=2.0, clock=clock)
    a, b = worker("a", ready=True), worker("b", ready=True)
    t.reset({})
    assert t.take_due() is False  # the window is open
    t.apply(put(a))
    t.apply(put(b))
    clock.t += 2.0
    assert t.take_due()
    snaps = t.changed_snapshots({}, 2, clock())
    assert [(s.epoch, [m.worker_id for m in s.members]) for s in snaps] == [(1, ["a", "b"])]
    published = {"cpu": snaps[0]}

    # b flaps five times and ends up present: no new epoch at all.
    for _ in range(5):
        t.apply(gone(b))
        clock.t += 0.1
        t.apply(put(b))
    assert t.due_in() is not None and t.take_due() is False
    clock.t += 2.0
    assert t.take_due()
    assert t.changed_snapshots(published, 2, clock()) == []

    # b flaps and ends up gone: exactly one new epoch, without it.
    for _ in range(3):
        t.apply(gone(b))
        t.apply(put(b))
    t.apply(gone(b))
    clock.t += 2.0
    assert t.take_due() and not t.take_due()
    snaps = t.changed_snapshots(published, 2, clock())
    assert [(s.epoch, [m.worker_id for m in s.members]) for s in snaps] == [(2, ["a"])]


def test_ready_admits_and_draining_removes() -> None:
    clock = Clock()
    t = MembershipTracker(debounce_s=1.0, clock=clock)
    a = worker("a", ready=True)
    t.reset({worker_key("cpu", "a"): a.encode()})
    published = {"cpu": PoolSnapshot("cpu", 7, (Member("a", "h:a"),), 2)}
    c = worker("c", ready=False)
    t.apply(put(c))
    clock.t += 1.0
    assert t.take_due() and t.changed_snapshots(published, 2, clock()) == []  # not ready yet
    t.apply(put(worker("c", ready=True)))
    clock.t += 1.0
    assert t.take_due()
    (snap,) = t.changed_snapshots(published, 2, clock())
    assert snap.epoch == 8 and [m.worker_id for m in snap.members] == ["a", "c"]
    published = {"cpu": snap}
    t.apply(put(worker("a", ready=True, draining=True)))  # still registered, but leaving
    clock.t += 1.0
    assert t.take_due()
    (snap,) = t.changed_snapshots(published, 2, clock())
    assert snap.epoch == 9 and [m.worker_id for m in snap.members] == ["c"]


def test_the_last_member_leaving_publishes_an_empty_snapshot() -> None:
    clock = Clock()
    t = MembershipTracker(debounce_s=0.0, clock=clock)
    t.reset({})
    assert t.take_due()
    published = {"cpu": PoolSnapshot("cpu", 3, (Member("a", "h:a"),), 2)}
    (snap,) = t.changed_snapshots(published, 2, clock())
    assert snap.epoch == 4 and snap.members == ()
