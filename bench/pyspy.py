"""py-spy sampling profiles of running Shoal processes, and a top-frames summary of them.

``ensure_pyspy()`` installs ``py-spy`` (pinned) into its own venv, ``bench/.peers/tools``, on
first use, so the project's ``.venv`` never gets it. ``Recorder`` attaches two ``py-spy record``
processes to one PID for a fixed duration, both ``--nonblocking`` (the target is never
paused, so the profile costs the server little): one writes a flame graph (SVG), the other a
speedscope JSON (open it at speedscope.app) that ``summarise`` reads. Attaching needs
ptrace rights over the target: root, or ``kernel.yama.ptrace_scope = 0``.

``summarise`` reports, per process, the samples that py-spy saw running (idle threads are not
sampled), the functions with the most *self* samples (the leaf of the stack) and the Shoal
functions (under ``router/``, ``worker/``, ``placement/``, ``shoal/``) with the most
*inclusive* samples (anywhere on the stack), both as a share of all samples.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PEERS = Path(__file__).resolve().parent / ".peers"
TOOLS_VENV = PEERS / "tools"
PYSPY_VERSION = "0.4.3"
OURS = ("router/", "worker/", "placement/", "shoal/")


def ensure_pyspy(venv: Path = TOOLS_VENV) -> Path:
    """Path of the ``py-spy`` binary; creates the tools venv and installs it if needed."""
    exe = venv / "bin" / "py-spy"
    stamp = venv / ".bench-installed"
    if exe.exists() and stamp.exists() and stamp.read_text().strip() == PYSPY_VERSION:
        return exe
    if not (venv / "bin" / "python").exists():
        base = getattr(sys, "_base_executable", sys.executable) or sys.executable
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
    print(f"installing py-spy=={PYSPY_VERSION} into {venv} ...", flush=True)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"py-spy=={PYSPY_VERSION}"],
        check=True,
    )
    stamp.write_text(PYSPY_VERSION + "\n")
    return exe


@dataclass
class Recorder:
    """``py-spy record`` on ``pid`` for ``duration_s``; writes ``<stem>.svg`` and
    ``<stem>.speedscope.json`` (and py-spy's own output in ``<stem>.py-spy.log``)."""

    pid: int
    stem: Path
    duration_s: float
    rate: int = 100
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def svg(self) -> Path:
        return self.stem.with_name(self.stem.name + ".svg")

    @property
    def log(self) -> Path:
        return self.stem.with_name(self.stem.name + ".py-spy.log")

    @property
    def speedscope(self) -> Path:
        return self.stem.with_name(self.stem.name + ".speedscope.json")

    def start(self) -> Recorder:
        exe = ensure_pyspy()
        self.stem.parent.mkdir(parents=True, exist_ok=True)
        secs = str(max(1, round(self.duration_s)))
        common = ["record", "--pid", str(self.pid), "--duration", secs,
                  "--rate", str(self.rate), "--nonblocking"]  # fmt: skip
        with self.log.open("wb") as out:
            for fmt, path in (("flamegraph", self.svg), ("speedscope", self.speedscope)):
                cmd = [str(exe), *common, "--format", fmt, "-o", str(path)]
                self.procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT))
        return self

    def wait(self, timeout: float = 120.0) -> bool:
        """Wait for both recorders; True when both wrote their file."""
        ok = True
        for p in self.procs:
            try:
                ok &= p.wait(timeout) == 0
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                ok = False
        return ok and self.svg.exists() and self.speedscope.exists()


def _frame_name(frame: dict[str, Any], root: str) -> str:
    file = str(frame.get("file", ""))
    if root and file.startswith(root):
        file = file[len(root) :]
    else:
        for marker in ("site-packages/", "lib/python3."):
            if marker in file:
                file = file.split(marker, 1)[1]
                if marker == "lib/python3.":
                    file = "stdlib:" + file.split("/", 1)[-1]
                break
    return f"{frame.get('name', '?')} ({file})"


def summarise(speedscope: Path, top: int = 12, root: str | None = None) -> dict[str, Any]:
    """Top frames of one speedscope profile (all threads together)."""
    root = root if root is not None else str(Path(__file__).resolve().parent.parent) + os.sep
    doc = json.loads(speedscope.read_text())
    frames = [_frame_name(f, root) for f in doc["shared"]["frames"]]
    files = [str(f.get("file", "")) for f in doc["shared"]["frames"]]
    self_n: Counter[str] = Counter()
    incl_ours: Counter[str] = Counter()
    total = 0
    threads: Counter[str] = Counter()
    for prof in doc.get("profiles", []):
        # py-spy writes one stack per sample (root first), weighted by the sampling interval
        # in seconds: at a fixed rate, counting stacks counts samples.
        for stack in prof.get("samples", []):
            if not stack:
                continue
            n = 1
            total += n
            threads[str(prof.get("name", "?"))] += n
            self_n[frames[stack[-1]]] += n
            seen = set()
            for i in stack:
                rel = files[i][len(root) :] if files[i].startswith(root) else ""
                if rel.startswith(OURS) and frames[i] not in seen:
                    seen.add(frames[i])
                    incl_ours[frames[i]] += n

    def share(c: Counter[str]) -> list[dict[str, Any]]:
        return [{"frame": k, "samples": v, "share": v / total if total else 0.0}
                for k, v in c.most_common(top)]  # fmt: skip

    return {
        "samples": total,
        "threads": share(threads),
        "self": share(self_n),
        "inclusive_shoal": share(incl_ours),
    }


def summary_markdown(name: str, s: dict[str, Any]) -> str:
    lines = [f"### {name}: {s['samples']} samples (running, all threads)", ""]
    for title, key in (("threads", "threads"), ("self time (leaf frames)", "self"),
                       ("inclusive, Shoal code", "inclusive_shoal")):  # fmt: skip
        lines += [f"**{title}**", "", "| share | frame |", "|---|---|"]
        lines += [f"| {r['share'] * 100:.1f}% | `{r['frame']}` |" for r in s[key]]
        lines.append("")
    lines.append(NATIVE_NOTE)
    return "\n".join(lines) + "\n"


NATIVE_NOTE = (
    "Self time in `Handle._run`, `Thread.run`, `_worker` or `EpollSelector.select` is native "
    "code called from there (gRPC's Cython core and its poller thread, the runtimes' C++), "
    "which py-spy attributes to the calling Python frame without `--native`.\n"
)
