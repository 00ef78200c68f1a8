"""The one progress report of long jobs: iterations done, time per iteration, ETA and peak memory.

:class:`Progress` serves every loop of the package (the shared training loop, the benchmarks);
:class:`ProgressWriter` prints the same line from detectron2's ``EventStorage``, in place of
detectron2's ``CommonMetricPrinter``, for trainers that run on detectron2's hooks.
"""
from __future__ import annotations

import logging
import os
import statistics
import time
from collections import deque
from typing import Mapping

from detectron2.utils.events import EventWriter, JSONWriter, TensorboardXWriter, get_event_storage

from .memory import PeakMemoryMeter


def format_eta(seconds: float) -> str:
    """Seconds as ``H:MM:SS`` (hours unbounded; negative counts as 0)."""
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def progress_line(done: int, total: int, seconds_per_iter: float | None,
                  metrics: Mapping[str, float] | None = None, memory_mib: float | None = None,
                  unit: str = "iter") -> str:
    """``eta: H:MM:SS  iter: done/total  <metric>: value ...  time: s/iter  max_mem: NM``.

    The ETA is ``seconds_per_iter`` times the iterations left; with no iteration time yet
    (``None``) it reads ``eta: n/a`` and ``time`` is left out.
    """
    eta = "n/a" if seconds_per_iter is None else format_eta(seconds_per_iter * (total - done))
    parts = [f"eta: {eta}", f"{unit}: {done}/{total}"]
    parts += [f"{k}: {v:.4g}" for k, v in (metrics or {}).items()]
    if seconds_per_iter is not None:
        parts.append(f"time: {seconds_per_iter:.3f}")
    if memory_mib is not None:
        parts.append(f"max_mem: {memory_mib:.0f}M")
    return "  ".join(parts)


class Progress:
    """Progress of a job of ``total`` steps (iterations, configurations, ...).

    Each :meth:`step` records the time since the last one; the time per step is the median
    of the last ``window`` steps, so one slow step does not swing the ETA. ``total`` may be
    changed while the job runs (a job paced by the clock re-estimates it).
    """

    def __init__(self, total: int, window: int = 20, done: int = 0,
                 memory: PeakMemoryMeter | None = None, unit: str = "iter"):
        self.total, self.done, self.memory, self.unit = total, done, memory, unit
        self.times: deque[float] = deque(maxlen=window)
        self.start = self._last = time.perf_counter()

    def step(self) -> float:
        """One step done; returns its seconds."""
        now = time.perf_counter()
        seconds, self._last = now - self._last, now
        self.times.append(seconds)
        self.done += 1
        return seconds

    def mark(self) -> None:
        """Time the next step from now (after a pause that is not a step, e.g. evaluation)."""
        self._last = time.perf_counter()

    @property
    def elapsed(self) -> float:
        """Seconds since the job started."""
        return time.perf_counter() - self.start

    def seconds_per_step(self) -> float:
        """Median seconds of the recent steps (0 before the first)."""
        return statistics.median(self.times) if self.times else 0.0

    def eta_seconds(self) -> float:
        """Estimated seconds left."""
        return self.seconds_per_step() * max(self.total - self.done, 0)

    def line(self, metrics: Mapping[str, float] | None = None) -> str:
        """The :func:`progress_line` of the job now (with the meter's peak memory, if any)."""
        memory = self.memory.peak_mib() if self.memory is not None else None
        return progress_line(self.done, self.total, self.seconds_per_step(), metrics, memory,
                             self.unit)


class ProgressWriter(EventWriter):
    """detectron2 ``EventWriter`` printing :func:`progress_line` for a run of ``max_iter``
    iterations: the median of the last ``window`` values of every ``*loss*`` scalar and of
    ``time`` (``hooks.IterationTimer``, which skips the first iterations: until then the ETA
    reads n/a), the latest ``lr``, and the peak memory of ``device``."""

    def __init__(self, max_iter: int, device: str = "cpu", window: int = 20,
                 logger: logging.Logger | None = None):
        self.max_iter, self.window = max_iter, window
        self.memory = PeakMemoryMeter(device)
        self.logger = logger or logging.getLogger("detectron2")

    def write(self) -> None:
        storage = get_event_storage()
        if storage.iter >= self.max_iter:  # the flush after training: the last line is printed
            return
        latest = storage.latest()
        metrics = {k: storage.history(k).median(self.window) for k in sorted(latest) if "loss" in k}
        if "lr" in latest:
            metrics["lr"] = latest["lr"][0]
        seconds_per_iter = storage.history("time").median(self.window) if "time" in latest else None
        self.logger.info(progress_line(storage.iter + 1, self.max_iter, seconds_per_iter, metrics,
                                       self.memory.peak_mib()))


def training_writers(output_dir: str, max_iter: int, device: str = "cpu") -> list[EventWriter]:
    """detectron2's ``default_writers`` with :class:`ProgressWriter` as the console printer:
    progress lines, ``output_dir/metrics.json`` and tensorboard events in ``output_dir``."""
    os.makedirs(output_dir, exist_ok=True)
    return [ProgressWriter(max_iter, device), JSONWriter(os.path.join(output_dir, "metrics.json")),
            TensorboardXWriter(output_dir)]
