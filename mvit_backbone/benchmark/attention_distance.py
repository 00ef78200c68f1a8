"""Mean attention distance per head and layer (MViTv1 App. B, Fig. A.6).

For a query token q and its attention probabilities p(k) over the keys, the attention distance
is sum_k p(k) * |pos(q) - pos(k)|, the Euclidean distance of the token centres in input-image
pixels; it is averaged over the queries and images of a batch, per head of every block, and
divided by the largest distance two tokens of the model can have (the corners of the patch
grid), so 1.0 is the largest possible.

Positions: a patch token sits at the centre of its patch; a pooled token (a pooled query, key
or value, in MViT's conv or max/avg pooling) at the centre of its pooling kernel on the grid it
pools, so pooled keys keep their place in the image. Windows (fixed, shifted, Hwin) are handled
by running the attention module's own windowing on the token positions: the partition, the
Swin shift and padding, and the masks are exactly those of the probabilities. Padded keys (zero
keys of detectron2's window padding) and class tokens have no place in the image: they are
left out, and the probabilities of the other keys renormalised.

The probabilities come from the model itself: every block runs its own forward with an
``attend`` (:class:`~mvit_backbone.layers.attention.AttendFn`) that records
:func:`~mvit_backbone.layers.attention.attention_probs` before returning ``p @ v``.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from ..layers.attention import attention_probs
from ..layers.blocks import MultiScaleBlock


def _geometry(module: nn.Module, ndim: int) -> tuple[tuple[int, ...], ...]:
    """(kernel, stride, padding) per axis of a patch embedding or pooling module (identity: 1, 1, 0)."""
    if isinstance(module, nn.Identity):
        return (1,) * ndim, (1,) * ndim, (0,) * ndim

    def per_axis(v) -> tuple[int, ...]:
        return tuple(v) if isinstance(v, (tuple, list)) else (v,) * ndim

    return per_axis(module.kernel_size), per_axis(module.stride), per_axis(module.padding)


class _Grid:
    """A token grid in image pixels: per axis, token i sits at ``scale * i + offset``."""

    def __init__(self, shape: Sequence[int], scale: Sequence[float], offset: Sequence[float]):
        self.shape, self.scale, self.offset = tuple(shape), tuple(scale), tuple(offset)

    def pooled(self, module: nn.Module) -> "_Grid":
        """The grid ``module`` (conv, max/avg pool, identity) makes of this one: output j sits at
        the centre of its kernel, input index j * stride - padding + (kernel - 1) / 2."""
        kernel, stride, padding = _geometry(module, len(self.shape))
        shape = [(n + 2 * p - k) // s + 1 for n, k, s, p in zip(self.shape, kernel, stride, padding)]
        scale = [a * s for a, s in zip(self.scale, stride)]
        offset = [b + a * ((k - 1) / 2 - p)
                  for a, b, k, p in zip(self.scale, self.offset, kernel, padding)]
        return _Grid(shape, scale, offset)

    def positions(self, batch: int, num_prefix: int) -> torch.Tensor:
        """(batch, num_prefix + prod(shape), 1, ndim + 1): per token its pixel position and a
        last channel 1 (0 for the class tokens, which have no position)."""
        axes = [torch.arange(n, dtype=torch.float64) * a + b
                for n, a, b in zip(self.shape, self.scale, self.offset)]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(axes))
        tokens = torch.cat([grid, torch.ones(len(grid), 1, dtype=grid.dtype)], dim=1)
        tokens = torch.cat([torch.zeros(num_prefix, tokens.shape[1], dtype=grid.dtype), tokens])
        return tokens[None, :, None].expand(batch, -1, -1, -1)

    def largest_distance(self) -> float:
        """Distance between the first and the last token (opposite corners)."""
        return math.sqrt(sum((a * (n - 1)) ** 2 for n, a in zip(self.shape, self.scale)))


class _Recorder:
    """An ``AttendFn`` that keeps every call's probabilities (B', heads, Lq, Lk)."""

    def __init__(self):
        self.probs: list[torch.Tensor] = []

    def __call__(self, q, k, v, scale, rel_pos=None, mask=None):
        p = attention_probs(q, k, scale, rel_pos, mask)
        self.probs.append(p)
        return p @ v


class _PositionRecorder:
    """An ``AttendFn`` run on position tensors: keeps every call's (query, key) positions as
    the windowing hands them over, and returns the queries so that the rest runs through."""

    def __init__(self):
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, q, k, v, scale, rel_pos=None, mask=None):
        self.calls.append((q, k))
        return q


def _block_distance(block: MultiScaleBlock, probs: list[torch.Tensor], grid: _Grid,
                    batch: int) -> tuple[torch.Tensor, _Grid]:
    """Mean distance per head (pixels) of one block's recorded probabilities, and its output grid."""
    attn = block.attn
    q_grid, k_grid = grid.pooled(attn.pool_q), grid.pooled(attn.pool_k)
    positions = _PositionRecorder()
    q_pos = q_grid.positions(batch, attn.num_prefix)
    k_pos = k_grid.positions(batch, attn.num_prefix)
    attn.attention(q_pos, k_pos, k_pos, q_grid.shape, k_grid.shape, positions)
    if len(positions.calls) != len(probs):
        raise RuntimeError(f"{len(probs)} attention calls recorded, {len(positions.calls)} "
                           "position calls: the block did not run as its attention module does")
    total = torch.zeros(attn.num_heads, dtype=torch.float64)
    count = 0.0
    for p, (qp, kp) in zip(probs, positions.calls):
        q_valid, k_valid = qp[..., -1], kp[..., -1]  # (B', 1, L)
        dist = torch.cdist(qp[..., :-1], kp[..., :-1])  # (B', 1, Lq, Lk)
        weights = p.double() * k_valid[..., None, :]
        per_query = (weights * dist).sum(-1) / weights.sum(-1).clamp_min(1e-12)  # (B', H, Lq)
        total += (per_query * q_valid).sum(dim=(0, 2))
        count += float(q_valid.sum())
    return total / max(count, 1.0), q_grid


@torch.no_grad()
def mean_attention_distance(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Normalised mean attention distance of every head of every block of an MViT trunk
    (classifier, detection backbone; any weights) on ``images`` (B, 3, H, W).

    Returns one tensor (heads,) per block, in [0, 1]: 0 when every query attends to its own
    position, 1 the largest possible distance (see the module docstring).
    """
    if len(model.patch_kernel) != 2:
        raise ValueError("mean_attention_distance takes image (2-D) models")
    model.eval()
    kernel, stride, padding = _geometry(model.patch_embed.proj, 2)
    shape = [(n + 2 * p - k) // s + 1 for n, k, s, p in zip(images.shape[2:], kernel, stride, padding)]
    grid = _Grid(shape, stride, [(k - 1) / 2 - p for k, p in zip(kernel, padding)])
    largest = grid.largest_distance()
    recorder = _Recorder()
    distances: list[torch.Tensor] = []
    state = {"grid": grid}

    def after_block(block: nn.Module, inputs: tuple, output: tuple) -> None:
        pixels, state["grid"] = _block_distance(block, recorder.probs, state["grid"], len(images))
        distances.append((pixels / largest).float())
        recorder.probs.clear()

    handles = [b.register_forward_hook(after_block) for b in model.blocks]
    try:
        model.forward_stages(images, attend=recorder)
    finally:
        for h in handles:
            h.remove()
    return distances


def dynamic_range(distances: Sequence[torch.Tensor]) -> float:
    """Largest minus smallest mean distance over every head of every block."""
    values = torch.cat([d.flatten() for d in distances])
    return float(values.max() - values.min())


def plot_attention_distance(results: dict[str, Sequence[torch.Tensor]],
                            path: str | os.PathLike, title: str = "") -> None:
    """One panel per model side by side (Fig. A.6): x the block, y the normalised mean
    distance, one point per head."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), sharey=True,
                             squeeze=False)
    for ax, (name, distances) in zip(axes[0], results.items()):
        for layer, d in enumerate(distances):
            ax.scatter([layer] * len(d), d.tolist(), s=12, alpha=0.7)
        ax.set_title(f"{name} (range {dynamic_range(distances):.3f})")
        ax.set_xlabel("block")
        ax.set_ylim(0, max(0.6, max(float(d.max()) for d in distances) * 1.1))
    axes[0][0].set_ylabel("mean attention distance (normalised)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_attention_distance(results: dict[str, Sequence[torch.Tensor]], path: str | os.PathLike,
                             meta: dict | None = None) -> dict:
    """JSON of every head's distance per block, each model's dynamic range and, for two
    models, the ratio of the second's range to the first's; returns the summary written."""
    names = list(results)
    summary = {
        "meta": meta or {},
        "models": {n: {"dynamic_range": dynamic_range(d),
                       "per_block": [v.tolist() for v in d]} for n, d in results.items()},
    }
    if len(names) == 2:
        summary["range_ratio"] = {
            f"{names[1]} / {names[0]}":
                dynamic_range(results[names[1]]) / max(dynamic_range(results[names[0]]), 1e-12)}
    Path(path).write_text(json.dumps(summary, indent=1))
    return summary
