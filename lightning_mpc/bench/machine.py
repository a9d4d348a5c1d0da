"""What a benchmark says about the machine it ran on: processor, cores, device, versions, threads and load."""

from __future__ import annotations

import contextlib
import os
import platform

import torch

__all__ = ["load_average", "machine_line"]


def load_average() -> float | None:
    """The one-minute load average (``None`` where the system has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _processor() -> str:
    processor = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
        processor = names[0] if names else processor
    return processor


def machine_line(device: torch.device | str | None = None) -> str:
    """Processor, logical cores, device, Python/torch/Lightning versions, torch threads and the load average.

    Args:
        device: the measured device; a CUDA device adds its name.
    """
    import lightning

    device = torch.device(device) if device is not None else torch.device("cpu")
    accelerator = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU only"
    load = load_average()
    cores = os.cpu_count() or 0
    loaded = "" if load is None else f"; load average {load:.1f} on {cores} cores at the start"
    return (
        f"{_processor()}, {cores} logical cores, {accelerator}; Python {platform.python_version()}, "
        f"torch {torch.__version__}, lightning {lightning.__version__}; {torch.get_num_threads()} torch thread(s)"
        f"{loaded}"
    )
