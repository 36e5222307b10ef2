"""What machine the worker runs on, reported at registration and with every result.

CPU and memory come from the OS; GPUs from `nvidia-smi` when it exists, else from torch only when
the caller already runs a GPU engine (importing torch just to describe the box would cost seconds).
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
from pathlib import Path

from ml.devices import cuda_devices
from shared.protocol import HardwareInfo

GIB = 1024**3


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def memory_gb() -> float:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, 1)
    except (ValueError, OSError, AttributeError):
        return 0.0


def gpus_from_nvidia_smi() -> list[tuple[str, float]] | None:
    """(name, memory GiB) per GPU, or None when nvidia-smi is absent or fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    query = [exe, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"]
    try:
        out = subprocess.run(query, capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    gpus = []
    for line in out.strip().splitlines():
        name, _, mib = line.rpartition(",")
        with contextlib.suppress(ValueError):
            gpus.append((name.strip(), round(float(mib) / 1024, 1)))
    return gpus


def detect_hardware(use_torch: bool = False) -> HardwareInfo:
    gpus = gpus_from_nvidia_smi()
    if gpus is None:
        gpus = cuda_devices() if use_torch else []
    return HardwareInfo(
        cpu=cpu_name()[:256],
        cpu_count=os.cpu_count() or 0,
        memory_gb=memory_gb(),
        gpus=[name[:256] for name, _ in gpus[:64]],
        gpu_memory_gb=[mem for _, mem in gpus[:64]],
        os=f"{platform.system()} {platform.release()}"[:256],
    )
