"""Decomposed relative position embeddings (MViTv2 §3.1, Eq. 4).

The attention logit between query ``i`` and key ``j`` gets ``q_i · (R_h[h(i)-h(j)] + R_w[w(i)-w(j)])``
(and ``R_t`` for video). One table per axis, of length ``2 * max(q_len, k_len) - 1``; at run
time a table is linearly interpolated when the query/key lengths differ from the ones it was
built for, so a model built for 224² runs at 1024² or 800×1333.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

EINSUM_AXES = "thw"  # einsum letters for up to three spatial axes


def resize_rel_pos(rel_pos: torch.Tensor, length: int) -> torch.Tensor:
    """Linearly interpolate a table (L, C) to (length, C); identity when L == length."""
    if rel_pos.shape[0] == length:
        return rel_pos
    resized = F.interpolate(rel_pos.t().unsqueeze(0), size=length, mode="linear")
    return resized.squeeze(0).t()


def rel_pos_lookup(q_len: int, k_len: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Embeddings for every (query, key) offset along one axis: (q_len, k_len, C).

    When the lengths differ (pooled keys), coordinates of the shorter side are scaled up so both
    live on the finer grid, as in the MViTv2 paper.
    """
    table = resize_rel_pos(rel_pos, 2 * max(q_len, k_len) - 1)
    q_scale = max(k_len / q_len, 1.0)
    k_scale = max(q_len / k_len, 1.0)
    q_coords = torch.arange(q_len, device=rel_pos.device)[:, None] * q_scale
    k_coords = torch.arange(k_len, device=rel_pos.device)[None, :] * k_scale
    offsets = (q_coords - k_coords) + (k_len - 1) * k_scale
    return table[offsets.long()]


def rel_pos_terms(
    q: torch.Tensor,
    rel_pos: Sequence[torch.Tensor],
    q_shape: Sequence[int],
    k_shape: Sequence[int],
) -> list[torch.Tensor]:
    """Per-axis terms ``q · R_axis`` of the decomposed bias.

    Args:
        q: unscaled queries (B, Lq, C) with Lq = prod(q_shape), spatial tokens only.
        rel_pos: one table per spatial axis, each (L_axis, C).
        q_shape / k_shape: spatial sizes of the query and key grids, e.g. (H, W) or (T, H, W).

    Returns:
        One tensor per axis a, of shape (B, *q_shape, k_shape[a]).
    """
    ndim = len(q_shape)
    axes = EINSUM_AXES[-ndim:]
    q_grid = q.reshape(q.shape[0], *q_shape, q.shape[-1])
    terms = []
    for a, table in enumerate(rel_pos):
        r = rel_pos_lookup(q_shape[a], k_shape[a], table)
        terms.append(torch.einsum(f"b{axes}c,{axes[a]}kc->b{axes}k", q_grid, r))
    return terms


def rel_pos_bias(
    q: torch.Tensor,
    rel_pos: Sequence[torch.Tensor],
    q_shape: Sequence[int],
    k_shape: Sequence[int],
) -> torch.Tensor:
    """The full decomposed bias (B, Lq, Lk), broadcast from the per-axis terms."""
    ndim = len(q_shape)
    bias = None
    for a, term in enumerate(rel_pos_terms(q, rel_pos, q_shape, k_shape)):
        # place the key axis `a` among ndim key axes, singleton elsewhere
        view = [1] * ndim
        view[a] = k_shape[a]
        term = term.reshape(*term.shape[:-1], *view)
        bias = term if bias is None else bias + term
    return bias.reshape(q.shape[0], q.shape[1], -1)
