"""The MViT block on CPU in float32, computed to keep less and run faster.

Same result as :meth:`MultiScaleBlock.forward` (float rounding only; tested against it), built
from the block's own modules and the attention's own steps (``pool_parts``, ``attention``,
``pool_to_query_grid``). What differs is how:

Training: the Linear layers on oneDNN (:mod:`.linear`). With ``recompute`` (large inputs),
keeping less:
- ``norm1`` is fused into the qkv projection and the projected skip, ``norm2`` into the MLP
  (oneDNN linears in autograd nodes that store the norm's input, not its output); the MLP keeps
  fc1's output only and recomputes GELU per token chunk (:mod:`.linear`).
- The pooled Q/K/V before their norms are needed only by the norms' backward: they are
  recomputed there (a depthwise conv) instead of stored.
- Where the query is pooled (a stage's first block) the qkv projection is at the input
  resolution with the output width, the largest tensor of the block: it is recomputed with its
  pooling in backward from x, which the block keeps anyway, Q, K and V apart so that the
  recomputed projection and its gradient exist for one of them at a time (in video, each then
  stays below the size from which glibc maps fresh, page-faulted memory on every call); so is
  the projected skip before its max-pool.
Without ``recompute`` (small inputs, where storing is cheap and recomputing is not) the norms
and GELU run in PyTorch's autograd, which stores their outputs.
Inference:
- Residual adds in place, and the MLP in token chunks added into the residual: the 4x-wide
  hidden layer of a chunk stays in cache and no token-sized temporaries are allocated (a
  fresh large tensor costs page faults, which at detection sizes take as long as the GELU).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from ..layers.attention import AttendFn, MultiScaleAttention, attention_pool, pool_grid
from ..layers.blocks import MultiScaleBlock
from .linear import TOKEN_CHUNK, linear, mlp_forward, norm_linear
from .pool import depthwise_conv


def _project_and_pool(
    attn: MultiScaleAttention,
    x: torch.Tensor,
    shape: Sequence[int],
    norm: nn.Module | None,
    parts: Sequence[tuple],
    recompute_pool: bool,
) -> tuple[list[torch.Tensor], list[tuple[int, ...]]]:
    """``norm(x)`` projected by the qkv rows of each part (one node) and pooled. Returns one
    (B, p + L, heads, C) tensor per pool and one grid shape per pool."""
    b, n, dim = x.shape
    p = attn.num_prefix
    weight, bias = attn.qkv.weight, attn.qkv.bias
    projections = [(weight[rows], None if bias is None else bias[rows]) for rows, _, _ in parts]
    # With class tokens and several samples, the grid tokens of a (B, p + L) projection are not
    # a dense channels-last tensor, and the pooling would copy every part of it; the projection
    # of the rows in grid-first order (every sample's grid, then every class token) gives it a
    # dense grid, at the cost of one copy of the narrower input. Unpooled parts would instead
    # need a copy to rejoin the class tokens, so a block with one keeps the (B, p + L) order.
    pooled_parts = not any(isinstance(pools[0], nn.Identity) for _, pools, _ in parts)
    grid_first = p > 0 and b > 1 and pooled_parts
    if grid_first:
        x_prefix, x_grid = x.split([p, n - p], dim=1)
        x = torch.cat([x_grid.reshape(-1, dim), x_prefix.reshape(-1, dim)])
    pooled, shapes = [], []
    for projected, (_, pools, norms) in zip(norm_linear(x, norm, projections), parts):
        if grid_first:
            grid, prefix = projected.split([b * (n - p), b * p])
            tokens = (grid.view(b, n - p, len(pools), attn.num_heads, -1),
                      prefix.view(b, p, len(pools), attn.num_heads, -1))
            pool, args = pool_grid, (*tokens, shape, pools, norms, depthwise_conv)
        else:
            projected = projected.reshape(b, n, len(pools), attn.num_heads, -1)
            pool, args = attention_pool, (projected, shape, pools, norms, p, depthwise_conv)
        if recompute_pool and any(m is not None for m in norms):
            out, out_shape = checkpoint(pool, *args, use_reentrant=False)
        else:
            out, out_shape = pool(*args)
        pooled += out
        shapes += [out_shape] * len(pools)
    return pooled, shapes


def _attention_forward(
    attn: MultiScaleAttention, x: torch.Tensor, shape: Sequence[int], norm: nn.Module | None,
    attend: AttendFn, recompute: bool,
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``attn(norm(x), shape)`` with the projections on oneDNN and, with ``recompute``, the
    pooled tensors (in transition blocks the whole projection) recomputed in backward."""
    if recompute and any(s > 1 for s in attn.cfg.stride_q):
        pooled, shapes = [], []
        for part in attn.pool_parts(separate=True):
            out, out_shapes = checkpoint(_project_and_pool, attn, x, shape, norm, [part], False,
                                         use_reentrant=False)
            pooled += out
            shapes += out_shapes
    else:
        pooled, shapes = _project_and_pool(attn, x, shape, norm, attn.pool_parts(), recompute)
    q, k, v = pooled
    out = attn.residual_pool(attn.attention(q, k, v, shapes[0], shapes[-1], attend), q)
    return linear(out.flatten(2), attn.proj.weight, attn.proj.bias), shapes[0]


def _skip(block: MultiScaleBlock, x: torch.Tensor, x_in: torch.Tensor, shape: Sequence[int],
          norm1: nn.Module | None) -> torch.Tensor:
    """The attention's skip: x, or (v2 transition blocks) the projection of ``norm1(x_in)``,
    pooled to the query grid."""
    if block.cfg.expand_in_attention and block.proj is not None:
        x = norm_linear(x_in, norm1, [(block.proj.weight, block.proj.bias)])[0]
    return block.pool_to_query_grid(x, shape)


def block_forward(
    block: MultiScaleBlock, x: torch.Tensor, shape: Sequence[int], attend: AttendFn,
    recompute: bool = True,
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """:meth:`MultiScaleBlock.forward` on oneDNN (see the module docstring); ``recompute``:
    in training, recompute the pooled tensors, transition projections and skip in backward
    instead of storing them."""
    training = torch.is_grad_enabled()
    recompute = recompute and training
    # recompute: norm1 is applied inside the projections that read it (not stored); otherwise
    # once here, as two projections may read it
    norm1 = block.norm1 if recompute else None
    x_in = x if recompute else block.norm1(x)
    x_attn, out_shape = _attention_forward(block.attn, x_in, shape, norm1, attend, recompute)
    if recompute and block.pool_skip is not None:
        # the projected skip before pooling (and the pooling's indices) would be kept for
        # backward at the input resolution; recompute them from x, which is kept anyway
        skip = checkpoint(_skip, block, x, x_in, shape, norm1, use_reentrant=False)
    else:
        skip = _skip(block, x, x_in, shape, norm1)
    in_place = not training and isinstance(block.drop_path, nn.Identity)
    # x_attn is a fresh tensor (the attention's projection), so adding into it is safe
    x = x_attn.add_(skip) if in_place else skip + block.drop_path(x_attn)
    if not block.cfg.expand_in_attention and block.proj is not None:
        x_norm = block.norm2(x)
        skip = linear(x_norm, block.proj.weight, block.proj.bias)
        return skip + block.drop_path(mlp_forward(block.mlp, x_norm)), out_shape
    if in_place:
        for chunk in x.view(-1, x.shape[-1]).split(TOKEN_CHUNK):
            chunk += mlp_forward(block.mlp, chunk, norm=block.norm2)
        return x, out_shape
    return x + block.drop_path(mlp_forward(block.mlp, x, block.norm2, recompute)), out_shape
