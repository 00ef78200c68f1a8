"""The MViT block: pooling attention + MLP, with pooled and projected skip connections."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn as nn
from timm.layers import DropPath

from .attention import AttendFn, AttentionConfig, MultiScaleAttention, attend


@dataclass(frozen=True)
class BlockConfig:
    """Options of one :class:`MultiScaleBlock`.

    dim, dim_out: input and output channels. expand_in_attention: the channel expansion
    ``dim -> dim_out`` happens in the attention (MViTv2; the skip is ``proj(norm1(x))``) or at
    the end of the MLP (MViTv1; the MLP's skip is ``proj(norm2(x))``).
    attention: the attention's options (its ``stride_q`` also pools the skip).
    pool_norm_layer: the norm of the pooled Q/K/V; None: ``norm_layer``.
    """

    dim: int
    dim_out: int
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    mlp_ratio: float = 4.0
    drop_path: float = 0.0
    expand_in_attention: bool = True
    norm_layer: Callable[[int], nn.Module] = nn.LayerNorm
    act_layer: Callable[[], nn.Module] = nn.GELU
    pool_norm_layer: Callable[[int], nn.Module] | None = None


class Mlp(nn.Module):
    """fc1 -> act -> fc2, with timm's ``Mlp`` parameter names. (..., in) -> (..., out)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int,
                 act_layer: Callable[[], nn.Module] = nn.GELU):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class MultiScaleBlock(nn.Module):
    """x -> x' + Attn(norm1(x)) -> x'' + MLP(norm2(x'')), where x' is the skip path.

    When the query is pooled (stride_q > 1) the skip is max-pooled with kernel stride+1 to the
    same grid. Built from a :class:`BlockConfig`, or from its fields and the attention's as
    keyword arguments (``MultiScaleBlock(32, 64, num_heads=2, stride_q=2)``).

    Shapes: forward(x (B, num_prefix + prod(shape), dim), shape) ->
        (B, num_prefix + prod(shape_out), dim_out), shape_out.
    """

    def __init__(self, dim: int | BlockConfig, dim_out: int | None = None, **options):
        super().__init__()
        if isinstance(dim, BlockConfig):
            cfg = dim
        else:
            block_fields = set(BlockConfig.__dataclass_fields__)
            attn_options = {k: v for k, v in options.items() if k not in block_fields}
            block_options = {k: v for k, v in options.items() if k in block_fields}
            cfg = BlockConfig(dim, dim_out, AttentionConfig(**attn_options), **block_options)
        self.cfg = cfg
        self.num_prefix = cfg.attention.num_prefix
        attn_dim = cfg.dim_out if cfg.expand_in_attention else cfg.dim
        self.norm1 = cfg.norm_layer(cfg.dim)
        self.attn = MultiScaleAttention(cfg.dim, attn_dim, cfg.attention,
                                        cfg.pool_norm_layer or cfg.norm_layer)
        self.drop_path = DropPath(cfg.drop_path) if cfg.drop_path > 0.0 else nn.Identity()
        self.norm2 = cfg.norm_layer(attn_dim)
        self.mlp = Mlp(attn_dim, int(attn_dim * cfg.mlp_ratio), cfg.dim_out, cfg.act_layer)
        # the projected skip: of norm1(x) in v2 (expansion in attention), of norm2(x) in v1
        self.proj = nn.Linear(attn_dim if not cfg.expand_in_attention else cfg.dim,
                              cfg.dim_out) if cfg.dim != cfg.dim_out else None
        stride_q = cfg.attention.stride_q
        self.pool_skip = None
        if any(s > 1 for s in stride_q):
            kernel = [s + 1 if s > 1 else s for s in stride_q]
            pool_cls = nn.MaxPool2d if len(stride_q) == 2 else nn.MaxPool3d
            self.pool_skip = pool_cls(kernel, stride_q, [k // 2 for k in kernel], ceil_mode=False)

    def pool_to_query_grid(self, x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """Max-pool the skip (B, p + prod(shape), C) to the query grid (identity if unpooled);
        the class token passes through."""
        if self.pool_skip is None:
            return x
        p = self.num_prefix
        prefix, grid = x[:, :p], x[:, p:]
        grid = grid.reshape(x.shape[0], *shape, x.shape[-1]).movedim(-1, 1)
        # back to tokens by movedim + reshape, not flatten + transpose: the gradient then
        # reaches the pooling with channels-last strides that its backward recognises (a
        # size-1 batch given the stride of a flattened axis sends it to a 5x slower NCHW copy)
        grid = self.pool_skip(grid).movedim(1, -1).reshape(x.shape[0], -1, x.shape[-1])
        return torch.cat([prefix, grid], dim=1) if p else grid

    def forward(
        self, x: torch.Tensor, shape: Sequence[int], attend: AttendFn = attend
    ) -> tuple[torch.Tensor, tuple[int, ...]]:
        x_norm = self.norm1(x)
        x_attn, out_shape = self.attn(x_norm, shape, attend)
        if self.cfg.expand_in_attention and self.proj is not None:
            x = self.proj(x_norm)
        x = self.pool_to_query_grid(x, shape) + self.drop_path(x_attn)
        x_norm = self.norm2(x)
        if not self.cfg.expand_in_attention and self.proj is not None:
            x = self.proj(x_norm)
        return x + self.drop_path(self.mlp(x_norm)), out_shape
