"""What the multi-host test prints when it fails: etcd's view of the cluster and each
process's last log lines, so a failure on a CI machine can be read from its output alone."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Mapping

from shoal.etcd import EtcdStore
from shoal.procs import ManagedProcess
from shoal.records import ELECTION, PLACEMENT, WORKERS, PoolSnapshot, WorkerInfo


async def _etcd_view(endpoints: str) -> list[str]:
    lines: list[str] = []
    async with EtcdStore(endpoints, timeout=3) as store:
        status = await store.status()
        lines.append(f"etcd status: {status}")
        for kv in (await store.range(WORKERS)).kvs:
            info = WorkerInfo.decode(kv.value)
            ttl = await store.lease_ttl(kv.lease) if kv.lease else None
            lines.append(f"worker record {kv.key}: {info.address} lease ttl {ttl}")
        for kv in (await store.range(ELECTION)).kvs:
            lines.append(f"election: {kv.value.decode()} (revision {kv.mod_revision})")
        for kv in (await store.range(PLACEMENT)).kvs:
            snap = PoolSnapshot.decode(kv.value)
            members = ", ".join(m.worker_id for m in snap.members)
            lines.append(f"snapshot {snap.pool} epoch {snap.epoch}: {members}")
    return lines


def report(endpoints: str, procs: Mapping[str, ManagedProcess], lines: int = 25) -> str:
    out = ["[multihost] the test failed; the cluster as it stood:"]
    try:
        out += asyncio.run(asyncio.wait_for(_etcd_view(endpoints), 15))
    except Exception as exc:  # the report must not hide the failure it reports
        out.append(f"etcd could not be read: {exc!r}")
    for name, proc in procs.items():
        state = "running" if proc.alive() else "exited"
        out.append(f"--- {name} ({state}), last {lines} lines of {proc.log_path}:")
        out.append(proc.log_tail(lines))
    return "\n".join(out)


@contextlib.contextmanager
def reporting(
    endpoints: str, procs: Mapping[str, ManagedProcess], write: Callable[[str], None]
) -> Iterator[None]:
    """Write ``report`` when the block raises (the failure itself propagates)."""
    try:
        yield
    except BaseException:
        write(report(endpoints, procs))
        raise
