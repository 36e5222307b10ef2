"""Devices, dtypes and training precisions: what `auto` means, and the GPU memory a process may take."""

from __future__ import annotations

import contextlib
from typing import Any

from ml.errors import DeviceUnavailable


def pick_device(device: str) -> str:
    """`auto` is CUDA where torch sees it, else the CPU; any other name is checked and kept."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable("device cuda was asked for, but torch sees no CUDA device")
    return device


def cuda_devices() -> list[tuple[str, float]]:
    """Name and memory (GiB) of each GPU torch sees."""
    import torch

    if not torch.cuda.is_available():
        return []
    props = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
    return [(p.name, round(p.total_memory / 1024**3, 1)) for p in props]


def pick_dtype(dtype: str, device: str) -> Any:
    """The torch dtype named `dtype`; `auto` is bfloat16 on CUDA and float32 elsewhere."""
    import torch

    if dtype == "auto":
        # fp32 on CPU: bf16 matmuls there are slow and far from what a GPU validator computes.
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def pick_precision(precision: str, device: str) -> str:
    """A training precision: `auto` is `bf16-mixed` on CUDA and `float32` elsewhere.

    `bf16-mixed` keeps float32 master weights and optimizer moments and runs the forward pass
    under bfloat16 autocast: about four times float32's speed on a Hopper GPU, and updates as
    small as lr 1e-5 still land, which they do not in pure bfloat16 weights. A CPU has no fast
    bfloat16 matmuls, hence float32 there."""
    if precision == "auto":
        return "bf16-mixed" if device.startswith("cuda") else "float32"
    if precision not in ("float32", "bf16-mixed"):
        raise ValueError(f"unknown training precision {precision!r}")
    return precision


def autocast(precision: str, device: str) -> contextlib.AbstractContextManager[Any]:
    """The context a forward pass in `precision` (a picked one: see pick_precision) runs in."""
    import torch

    if precision == "bf16-mixed":
        return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cap_gpu_memory(fraction: float | None) -> dict[int, int] | None:
    """Cap this process's share of each visible GPU; the per-GPU byte limits, for device_map."""
    import torch

    if fraction is None:
        return None
    limits = {}
    for index in range(torch.cuda.device_count()):
        torch.cuda.set_per_process_memory_fraction(fraction, index)
        limits[index] = int(fraction * torch.cuda.get_device_properties(index).total_memory)
    return limits
