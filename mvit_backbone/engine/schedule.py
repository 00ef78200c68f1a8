"""The one learning-rate schedule: linear warm-up, then a half-period cosine.

:class:`WarmupCosine` is an fvcore ``ParamScheduler`` (a function of the fraction of training
done), so the same object serves detectron2's ``LRScheduler`` hook as a LazyConfig
``lr_multiplier``, the demo's budget-paced loop and the ImageNet trainer's per-iteration
learning rate.
"""
from __future__ import annotations

import math

from fvcore.common.param_scheduler import ParamScheduler


class WarmupCosine(ParamScheduler):
    """Value at ``where`` in [0, 1] (the fraction of training done).

    From ``start`` it rises linearly to ``peak`` over the first ``warmup`` of training, then
    falls along a half cosine to ``end`` at ``where = 1`` (and stays there after it).

    Args:
        peak: the value at the end of the warm-up (the peak learning rate, or 1.0 for a
            multiplier).
        warmup: the fraction of training spent warming up (above 1, training ends warming up).
        start: the value at ``where = 0``.
        end: the value at ``where = 1``.
    """

    def __init__(self, peak: float = 1.0, warmup: float = 0.0, start: float = 0.0,
                 end: float = 0.0):
        if warmup < 0.0:
            raise ValueError(f"warmup is a fraction of training, at least 0, got {warmup}")
        self.peak, self.warmup, self.start, self.end = peak, warmup, start, end

    def __call__(self, where: float) -> float:
        if where < self.warmup:
            return self.start + (self.peak - self.start) * where / self.warmup
        progress = min((where - self.warmup) / max(1.0 - self.warmup, 1e-12), 1.0)
        return self.end + (self.peak - self.end) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def __repr__(self) -> str:
        return (f"WarmupCosine(peak={self.peak}, warmup={self.warmup}, start={self.start}, "
                f"end={self.end})")


def recipe_lr_multiplier(epochs: float, warmup_epochs: float, peak_lr: float, base_lr: float,
                         warmup_start_lr: float, end_lr: float,
                         scale_start_end_lr: bool = False) -> WarmupCosine:
    """The learning rate of the MViT recipes as a multiple of ``peak_lr`` (a function of the
    fraction of training done): linear warm-up from ``warmup_start_lr`` to ``peak_lr`` over
    ``warmup_epochs``, then half-period cosine down to ``end_lr`` at ``epochs`` (with
    ``scale_start_end_lr`` both scaled by ``peak_lr / base_lr``, as the official code)."""
    scale = peak_lr / base_lr if scale_start_end_lr else 1.0
    return WarmupCosine(peak=1.0, warmup=warmup_epochs / epochs,
                        start=warmup_start_lr * scale / peak_lr, end=end_lr * scale / peak_lr)
