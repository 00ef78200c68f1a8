"""The one peak-memory meter of training logs, benchmarks and exports.

On CUDA it reads ``torch.cuda.max_memory_allocated``. On CPU it reads the process's resident-set
high-water mark (``VmHWM``), which :meth:`PeakMemoryMeter.reset` lowers to the current RSS by
writing ``5`` to ``/proc/self/clear_refs`` (Linux 4.0+); where that is refused the mark counts
from the start of the process.
"""
from __future__ import annotations

import os

import torch


def rss_mib() -> float:
    """Current resident set size of this process (``/proc/self/statm``), MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    """High-water mark of this process's RSS (``VmHWM`` of ``/proc/self/status``), MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not found in /proc/self/status")


def reset_peak_rss() -> bool:
    """Lower this process's RSS high-water mark to its current RSS; False where Linux refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemoryMeter:
    """Peak memory of one device since the last :meth:`reset` (or since construction).

    ``device`` "cuda"/"cuda:N": allocated tensor memory (``max_memory_allocated``); "cpu": the
    process RSS. :meth:`peak_mib` is the absolute peak, :meth:`growth_mib` the peak minus the
    memory in use at the reset. Usable as a context manager around the code to measure.
    """

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.base_mib = 0.0
        self.reset()

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def current_mib(self) -> float:
        """Memory in use now: allocated CUDA memory, or the process RSS."""
        if self.is_cuda:
            return torch.cuda.memory_allocated(self.device) / 2**20
        return rss_mib()

    def reset(self) -> None:
        """Start a new measurement: the peak falls to the memory in use now."""
        if self.is_cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            reset_peak_rss()
        self.base_mib = self.current_mib()

    def peak_mib(self) -> float:
        """The highest memory in use since the reset, MiB."""
        if self.is_cuda:
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return max(peak_rss_mib(), self.current_mib())

    def growth_mib(self) -> float:
        """The peak since the reset minus the memory in use at the reset, MiB."""
        return self.peak_mib() - self.base_mib

    def __enter__(self) -> "PeakMemoryMeter":
        self.reset()
        return self

    def __exit__(self, *exc: object) -> None:
        return None
