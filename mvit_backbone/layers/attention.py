"""Multiscale (pooling) attention, MViTv2 §3 and MViTv1 §3.1.

Tokens travel as (B, N, C) with their spatial grid shape (H, W) or (T, H, W) beside them and an
optional leading class token. Q, K and V are pooled on their grids (depthwise conv + LayerNorm,
or max / average pooling), optionally split into windows, attended with decomposed relative
position bias, and the pooled query is added back (residual pooling).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .rel_pos import rel_pos_bias
from .windows import shifted_window_mask, window_partition, window_unpartition

POOL_MODES = ("conv", "max", "avg")


def _as_tuple(v, ndim: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * ndim


def make_pool(
    head_dim: int,
    kernel: Sequence[int],
    stride: Sequence[int],
    mode: str,
    norm_layer: Callable[[int], nn.Module],
) -> tuple[nn.Module, nn.Module | None]:
    """The pooling operator and its norm for one of Q, K, V.

    ``mode="conv"``: depthwise conv shared by all heads, then LayerNorm (MViTv2);
    ``"max"``/``"avg"``: parameter-free pooling, no norm (MViTv1 options).
    """
    ndim = len(kernel)
    padding = [k // 2 for k in kernel]
    if mode == "conv":
        conv = nn.Conv2d if ndim == 2 else nn.Conv3d
        pool = conv(head_dim, head_dim, kernel, stride, padding, groups=head_dim, bias=False)
        return pool, norm_layer(head_dim)
    pool_cls = {("max", 2): nn.MaxPool2d, ("max", 3): nn.MaxPool3d,
                ("avg", 2): nn.AvgPool2d, ("avg", 3): nn.AvgPool3d}[(mode, ndim)]
    return pool_cls(kernel, stride, padding, ceil_mode=False), None


def attention_pool(
    x: torch.Tensor,
    shape: Sequence[int],
    pool: nn.Module,
    norm: nn.Module | None,
    num_prefix: int,
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Pools per-head tokens (B, heads, num_prefix + prod(shape), C) on their grid.

    The class token bypasses the pooling and rejoins before the norm (as in the official code).
    Returns the pooled tokens and the pooled grid shape.
    """
    b, heads, _, c = x.shape
    prefix, x = x[:, :, :num_prefix], x[:, :, num_prefix:]
    grid = pool(x.reshape(b * heads, *shape, c).movedim(-1, 1))
    new_shape = tuple(grid.shape[2:])
    x = grid.flatten(2).transpose(1, 2).reshape(b, heads, -1, c)
    if num_prefix:
        x = torch.cat([prefix, x], dim=2)
    if norm is not None:
        x = norm(x)
    return x, new_shape


class MultiScaleAttention(nn.Module):
    """Pooling attention with optional windows and decomposed relative position bias.

    Args:
        dim: input channels. dim_out: output channels (channel expansion happens here in v2).
        num_heads: attention heads; pooling is per head with shared weights.
        pool_kernel, stride_q, stride_kv: pooling kernel and strides (ints or per-axis tuples).
        pool_mode: "conv" (depthwise conv + norm), "max" or "avg".
        residual_pooling: add the pooled query to the attention output (MViTv2).
        window_size: window on the block's input grid, 0 for global attention. Queries use
            ``window_size // stride_q``, keys ``window_size // stride_kv`` (2-D only).
        shift_windows: Swin-style cyclic shift by half a window, with the cross-border mask.
        use_rel_pos: decomposed relative position embeddings ``rel_pos_h``/``rel_pos_w``
            (``rel_pos_t`` too for 3-D), sized for ``input_size`` (the block's input grid).
        num_prefix: number of class tokens in front of the spatial tokens (0 or 1).

    Shapes: forward(x (B, num_prefix + prod(shape), dim), shape) ->
        (B, num_prefix + prod(shape_q), dim_out), shape_q.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        qkv_bias: bool = True,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        pool_kernel: Sequence[int] = (3, 3),
        stride_q: int | Sequence[int] = 1,
        stride_kv: int | Sequence[int] = 1,
        pool_mode: str = "conv",
        residual_pooling: bool = True,
        window_size: int = 0,
        shift_windows: bool = False,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        input_size: Sequence[int] | None = None,
        num_prefix: int = 0,
    ):
        super().__init__()
        if pool_mode not in POOL_MODES:
            raise ValueError(f"pool_mode must be one of {POOL_MODES}, got {pool_mode!r}")
        ndim = len(pool_kernel)
        self.ndim = ndim
        self.num_heads = num_heads
        head_dim = dim_out // num_heads
        self.scale = head_dim**-0.5
        self.stride_q = _as_tuple(stride_q, ndim)
        self.stride_kv = _as_tuple(stride_kv, ndim)
        self.residual_pooling = residual_pooling
        self.num_prefix = num_prefix

        self.qkv = nn.Linear(dim, dim_out * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim_out, dim_out)

        # The official layout: pool_q/norm_q, pool_k/norm_k, pool_v/norm_v directly on the module.
        self.pool_q, self.norm_q = make_pool(head_dim, pool_kernel, self.stride_q, pool_mode, norm_layer)
        self.pool_k, self.norm_k = make_pool(head_dim, pool_kernel, self.stride_kv, pool_mode, norm_layer)
        self.pool_v, self.norm_v = make_pool(head_dim, pool_kernel, self.stride_kv, pool_mode, norm_layer)

        self.window_size = window_size
        if window_size:
            if ndim != 2:
                raise ValueError("window attention is defined for 2-D inputs only")
            self.q_window = window_size // self.stride_q[0]
            self.kv_window = window_size // self.stride_kv[0]
            if self.q_window < 1 or self.kv_window < 1:
                raise ValueError(
                    f"window_size {window_size} is smaller than the pooling strides "
                    f"q={self.stride_q} kv={self.stride_kv}"
                )
        # Swin shift expressed on the key grid, so the query shift maps to the same image offset.
        self.kv_shift = self.kv_window // 2 if (window_size and shift_windows) else 0
        self.q_shift = self.kv_shift * self.stride_kv[0] // self.stride_q[0]

        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if input_size is None:
                raise ValueError("use_rel_pos needs input_size (the block's input grid)")
            # rel_pos_t, rel_pos_h, rel_pos_w: official names, in spatial-axis order.
            self._rel_pos_names = ("rel_pos_t", "rel_pos_h", "rel_pos_w")[-ndim:]
            for axis, name in enumerate(self._rel_pos_names):
                q_len = input_size[axis] // self.stride_q[axis]
                kv_len = input_size[axis] // self.stride_kv[axis]
                table = nn.Parameter(torch.zeros(2 * max(q_len, kv_len) - 1, head_dim))
                if not rel_pos_zero_init:
                    nn.init.trunc_normal_(table, std=0.02)
                setattr(self, name, table)

    def rel_pos_tables(self) -> list[torch.Tensor]:
        return [getattr(self, n) for n in self._rel_pos_names]

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        q_shape: Sequence[int],
        k_shape: Sequence[int],
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """softmax(q·kᵀ·scale + rel-pos bias) · v on (..., L, C) tensors; mask: True = keep."""
        attn = (q * self.scale) @ k.transpose(-2, -1)
        if self.use_rel_pos:
            p = self.num_prefix
            lead = attn.shape[:-2]
            q_sp = q[..., p:, :].reshape(-1, q.shape[-2] - p, q.shape[-1])
            bias = rel_pos_bias(q_sp, self.rel_pos_tables(), q_shape, k_shape)
            bias = bias.reshape(*lead, *bias.shape[1:])
            if p:
                attn[..., p:, p:] = attn[..., p:, p:] + bias
            else:
                attn = attn + bias
        if mask is not None:
            attn = attn.masked_fill(~mask, float("-inf"))
        return attn.softmax(dim=-1) @ v

    def _windowed(self, q, k, v, q_shape, k_shape):
        """Attention inside windows; q/k/v: (B, heads, L, C) on 2-D grids, no class token."""
        b, heads, _, c = q.shape
        q_grid = q.reshape(b * heads, *q_shape, c)
        k_grid = k.reshape(b * heads, *k_shape, c)
        v_grid = v.reshape(b * heads, *k_shape, c)
        if self.kv_shift and max(k_shape) > self.kv_window:
            q_roll, kv_roll = (-self.q_shift,) * 2, (-self.kv_shift,) * 2
            q_grid = torch.roll(q_grid, q_roll, dims=(1, 2))
            k_grid = torch.roll(k_grid, kv_roll, dims=(1, 2))
            v_grid = torch.roll(v_grid, kv_roll, dims=(1, 2))
            shifted = True
        else:
            shifted = False
        qw, q_pad = window_partition(q_grid, self.q_window)
        kw, kv_pad = window_partition(k_grid, self.kv_window)
        vw, _ = window_partition(v_grid, self.kv_window)
        n_win_q, n_win_kv = qw.shape[0], kw.shape[0]
        if n_win_q != n_win_kv:
            raise ValueError(
                f"query grid {tuple(q_shape)} and key grid {tuple(k_shape)} split into different "
                f"numbers of windows ({n_win_q} vs {n_win_kv}); choose a window size that both "
                "pooled grids divide consistently"
            )
        mask = None
        if shifted:
            mask = shifted_window_mask(
                q_pad, self.q_window, self.q_shift, kv_pad, self.kv_window, self.kv_shift, q.device
            )
            # windows are ordered (batch*heads, window): repeat the per-window mask
            mask = mask.repeat(b * heads, 1, 1)
        win_q = (self.q_window, self.q_window)
        win_kv = (self.kv_window, self.kv_window)
        out = self.attend(qw.flatten(1, 2), kw.flatten(1, 2), vw.flatten(1, 2), win_q, win_kv, mask)
        out = window_unpartition(out.view(-1, *win_q, c), self.q_window, q_pad, q_shape)
        if shifted:
            out = torch.roll(out, (self.q_shift, self.q_shift), dims=(1, 2))
        return out.reshape(b, heads, -1, c)

    def forward(
        self, x: torch.Tensor, shape: Sequence[int]
    ) -> tuple[torch.Tensor, tuple[int, ...]]:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        q, q_shape = attention_pool(q, shape, self.pool_q, self.norm_q, self.num_prefix)
        k, k_shape = attention_pool(k, shape, self.pool_k, self.norm_k, self.num_prefix)
        v, _ = attention_pool(v, shape, self.pool_v, self.norm_v, self.num_prefix)

        if self.window_size:
            out = self._windowed(q, k, v, q_shape, k_shape)
        else:
            out = self.attend(q, k, v, q_shape, k_shape)

        if self.residual_pooling:
            # the class token takes part too, as in the official image models (and timm)
            out = out + q
        out = out.transpose(1, 2).reshape(b, -1, out.shape[1] * out.shape[3])
        return self.proj(out), q_shape
