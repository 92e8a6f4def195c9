"""Process helpers for the benchmarks: banners, CPU time and resident memory from ``/proc``.

CPU time is ``utime + stime`` of a process *and its threads* (``/proc/<pid>/stat`` fields 14
and 15, in clock ticks); it is read before and after a load phase to give the CPU that a
server spent per request. Resident memory is ``VmRSS`` from ``/proc/<pid>/status``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from shoal.procs import wait_for_banner

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


#: Banner lines (``router: HOST:PORT``) are read the same way as the cluster launcher does.
wait_banner = wait_for_banner


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all its threads) so far; 0.0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # The command name (field 2) may hold spaces; the fields after it are space-separated.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _TICK


def tree_pids(pid: int) -> list[int]:
    """``pid`` and all its descendants (MLServer forks; a load phase counts them all)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def tree_cpu_seconds(pid: int) -> float:
    return sum(cpu_seconds(p) for p in tree_pids(pid))


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (``VmRSS``); 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def host_cpu_ticks() -> tuple[int, int]:
    """(steal, total) clock ticks of all CPUs since boot, from the ``cpu`` line of /proc/stat.

    Steal is time the hypervisor gave this VM's virtual CPUs to someone else while they had
    work: on a shared host it slows every process here, the measured ones included, and is
    invisible in their own CPU time. ``steal_share(before, after)`` gives its share of a phase.
    """
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return 0, 0
    ticks = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return (ticks[7] if len(ticks) > 7 else 0), sum(ticks)


def steal_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Share (0-1) of the CPU time between two ``host_cpu_ticks`` readings that was stolen."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else 0.0


def ensure_debian_tool(
    binary: str, package: str, env_flag: str, install: bool | None = None
) -> str | None:
    """Path of ``binary``; if missing, install Debian's ``package`` with apt-get when allowed.

    Installing needs root and Debian's archive; ``<env_flag>=0`` means never try. Returns None
    when the tool cannot be had (the caller says what it does instead).
    """
    found = shutil.which(binary)
    if found:
        return found
    if install is None:
        install = os.environ.get(env_flag, "1") != "0"
    if not install or os.geteuid() != 0 or not shutil.which("apt-get"):
        return None
    print(f"{binary} missing: apt-get install {package} ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", package],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"could not install {package} ({exc})", flush=True)
        return None
    return shutil.which(binary)
