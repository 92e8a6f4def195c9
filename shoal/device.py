"""What the machine has: CUDA devices (through the driver library, no CUDA toolkit needed)
and the process's heap usage (for measuring what a model load allocated). Shared by the
frameworks (device support, measured sizes) and the worker (device choice, budgets).

``cuda_devices()`` asks ``libcuda`` directly (``cuInit`` + ``cuDeviceGetCount``): a wheel that
*ships* the CUDA execution provider (onnxruntime-gpu) says nothing about whether a device is
there, and creating a CUDA session on a machine without one logs errors on every load.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class CudaInfo:
    count: int
    total_memory: int  # bytes on device 0


@functools.cache
def cuda_devices() -> CudaInfo:
    """CUDA devices visible to this process (count 0 when no driver or no device)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return CudaInfo(0, 0)
    for name in ("libcuda.so.1", "libcuda.so", ctypes.util.find_library("cuda")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        try:
            if lib.cuInit(0) != 0:
                return CudaInfo(0, 0)
            count = ctypes.c_int(0)
            if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value <= 0:
                return CudaInfo(0, 0)
            dev = ctypes.c_int(0)
            total = ctypes.c_size_t(0)
            if lib.cuDeviceGet(ctypes.byref(dev), 0) == 0:
                lib.cuDeviceTotalMem_v2(ctypes.byref(total), dev)
            return CudaInfo(int(count.value), int(total.value))
        except AttributeError:
            return CudaInfo(0, 0)
    return CudaInfo(0, 0)


def resolve_device(setting: str) -> str:
    """``auto`` -> ``cuda`` when a CUDA device exists, else ``cpu``; ``cuda`` requires one."""
    s = setting.lower()
    if s not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device {setting!r}: expected auto, cpu or cuda")
    if s == "cpu":
        return "cpu"
    present = cuda_devices().count > 0
    if s == "cuda" and not present:
        raise ValueError("device cuda requested but no CUDA device is present")
    return "cuda" if present else "cpu"


# --- heap measurement -----------------------------------------------------------------------


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


@functools.cache
def _mallinfo2() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    fn.argtypes = []
    return fn


def heap_in_use() -> int | None:
    """Bytes the C heap has handed out (glibc ``mallinfo2``: arenas + mmapped chunks).

    Unlike RSS, it falls when memory is freed and is not hidden by the allocator reusing
    freed pages, so a delta around a load is close to what the model keeps. Process-wide:
    concurrent allocations by other threads add noise. None where glibc is not the allocator.
    """
    fn = _mallinfo2()
    if fn is None:
        return None
    m = fn()
    return int(m.uordblks + m.hblkhd)
