"""Multiscale (pooling) attention, MViTv2 §3 and MViTv1 §3.1, in plain PyTorch.

Tokens travel as (B, N, C) with their grid shape (H, W) or (T, H, W) beside them and an
optional leading class token. One attention call is: qkv projection -> Q/K/V pooling on the
grid (depthwise conv + LayerNorm, or max / average pooling) -> optional windows (with the Swin
shift and mask) -> ``attend(q, k, v, rel_pos=..., mask=...)`` -> residual pooling (the pooled
query added back) -> output projection.

``attend`` is passed in: :func:`attend` here is the reference (matmul + softmax);
``mvit_backbone.kernels`` holds faster implementations of the same function and picks one per
call (the execution policy). They all take the relative-position bias as per-axis terms from
:mod:`.rel_pos`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .rel_pos import RelPos, rel_pos_lookup
from .windows import partition_run, shifted_window_mask, unpartition_run, window_runs

POOL_MODES = ("conv", "max", "avg")
WINDOW_PADDINGS = ("detectron2", "minimal")


class AttendFn(Protocol):
    """softmax(q·kᵀ·scale + rel-pos bias, masked) · v.

    q: (B, heads, Lq, C); k, v: (B, heads, Lk, C); mask: bool broadcastable to
    (B, heads, Lq, Lk), True = may attend. Returns (B, heads, Lq, C).
    """

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                 rel_pos: RelPos | None = None,
                 mask: torch.Tensor | None = None) -> torch.Tensor: ...


def attention_probs(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float,
    rel_pos: RelPos | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """softmax(q·kᵀ·scale + bias) with masked keys excluded: (B, heads, Lq, Lk)."""
    logits = (q * scale) @ k.transpose(-2, -1)
    if rel_pos is not None:
        logits = logits + rel_pos.bias(rel_pos.terms(q))
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return logits.softmax(dim=-1)


class DepthwiseConvFn(Protocol):
    """conv(x, weight, stride, padding, groups=C) without bias; x: (B, C, *grid), weight
    (C, 1, *kernel)."""

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, stride: Sequence[int],
                 padding: Sequence[int]) -> torch.Tensor: ...


def plain_depthwise_conv(x: torch.Tensor, weight: torch.Tensor, stride: Sequence[int],
                         padding: Sequence[int]) -> torch.Tensor:
    """The reference :class:`DepthwiseConvFn`."""
    conv = F.conv2d if x.dim() == 4 else F.conv3d
    return conv(x, weight, None, stride, padding, groups=x.shape[1])


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    rel_pos: RelPos | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The reference :class:`AttendFn`: explicit matmul + softmax."""
    return attention_probs(q, k, scale, rel_pos, mask) @ v


def as_tuple(v: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    """A per-axis tuple from an int or a sequence (strides, kernels)."""
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * ndim


@dataclass(frozen=True)
class AttentionConfig:
    """Options of one :class:`MultiScaleAttention` (the trunk builds one per block).

    num_heads: attention heads; pooling is per head with shared weights.
    pool_kernel, stride_q, stride_kv: pooling kernel and strides (per grid axis; the kernel's
        length sets the number of axes, 2 for images, 3 for video).
    pool_mode: "conv" (depthwise conv + norm, MViTv2), "max" or "avg" (MViTv1 options).
    pool_q_unstrided: pool (and normalise) the query also where its stride is 1 (MViTv2);
        False: only where it is strided, other blocks have no ``pool_q`` (MViTv1).
    residual_pooling: add the pooled query to the attention output (MViTv2).
    residual_pooling_cls: residual pooling adds to the class token too (the image models);
        False: to the grid tokens only (PySlowFast's and torchvision's video models).
    window_size: window on the block's input grid, 0 for global attention. Queries use
        ``window_size // stride_q``, keys ``window_size // stride_kv`` (2-D only).
    shift_windows: Swin-style cyclic shift by half a window, with the cross-border mask.
    window_padding: "detectron2": keys/values are zero-padded to whole windows and those zero
        keys take part in the softmax, exactly as detectron2 does; "minimal": no padding,
        border windows are smaller (identical where the grids are window multiples).
    use_rel_pos: decomposed relative position tables ``rel_pos_{t,h,w}`` sized for
        ``input_size`` (the block's input grid), interpolated to other sizes at run time.
    num_prefix: class tokens in front of the grid tokens (0 or 1).
    pool_stride_one: Q, K or V with stride 1 still go through their pooling operator (MViTv2);
        False: they are not pooled (no operator, no parameters), as in a plain ViT block.
    """

    num_heads: int = 1
    qkv_bias: bool = True
    pool_kernel: tuple[int, ...] = (3, 3)
    stride_q: tuple[int, ...] = (1, 1)
    stride_kv: tuple[int, ...] = (1, 1)
    pool_mode: str = "conv"
    pool_q_unstrided: bool = True
    residual_pooling: bool = True
    residual_pooling_cls: bool = True
    window_size: int = 0
    shift_windows: bool = False
    window_padding: str = "detectron2"
    use_rel_pos: bool = False
    rel_pos_zero_init: bool = True
    input_size: tuple[int, ...] | None = None
    num_prefix: int = 0
    pool_stride_one: bool = True

    def __post_init__(self) -> None:
        ndim = len(self.pool_kernel)
        object.__setattr__(self, "pool_kernel", tuple(self.pool_kernel))
        object.__setattr__(self, "stride_q", as_tuple(self.stride_q, ndim))
        object.__setattr__(self, "stride_kv", as_tuple(self.stride_kv, ndim))
        if self.input_size is not None:
            object.__setattr__(self, "input_size", tuple(self.input_size))
        if self.pool_mode not in POOL_MODES:
            raise ValueError(f"pool_mode must be one of {POOL_MODES}, got {self.pool_mode!r}")
        if self.window_padding not in WINDOW_PADDINGS:
            raise ValueError(
                f"window_padding must be one of {WINDOW_PADDINGS}, got {self.window_padding!r}"
            )
        if self.window_size and self.num_prefix:
            raise ValueError("window attention does not take a class token (num_prefix > 0)")
        if self.window_size and ndim != 2:
            raise ValueError("window attention is defined for 2-D inputs only")
        if self.use_rel_pos and self.input_size is None:
            raise ValueError("use_rel_pos needs input_size (the block's input grid)")


def make_pool(
    head_dim: int,
    kernel: Sequence[int],
    stride: Sequence[int],
    mode: str,
    norm_layer: Callable[[int], nn.Module],
    pool_stride_one: bool = True,
) -> tuple[nn.Module, nn.Module | None]:
    """The pooling operator and its norm for one of Q, K, V.

    ``mode="conv"``: depthwise conv shared by all heads, then LayerNorm (MViTv2);
    ``"max"``/``"avg"``: parameter-free pooling, no norm (MViTv1 options); ``nn.Identity``
    and no norm where the stride is 1 and ``pool_stride_one`` is False.
    """
    ndim = len(kernel)
    if not pool_stride_one and all(s == 1 for s in stride):
        return nn.Identity(), None
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
    pools: Sequence[nn.Module],
    norms: Sequence[nn.Module | None],
    num_prefix: int,
    depthwise_conv: DepthwiseConvFn = plain_depthwise_conv,
) -> tuple[list[torch.Tensor], tuple[int, ...]]:
    """Pools G tensors of per-head tokens on their grid, all heads and tensors in one call.

    Args:
        x: (B, num_prefix + prod(shape), G, heads, C), the layout the qkv Linear produces;
            G = len(pools) (e.g. K and V, which share a stride).
        pools: per tensor, a depthwise conv of C channels shared by the heads (its weight is
            repeated per head and the G weights stacked, for one grouped conv) or a max/avg
            pooling (channel-wise, so the first one serves all tensors).
        norms: per tensor, LayerNorm over C (per head) or None.
        depthwise_conv: computes the conv pooling (default: :func:`plain_depthwise_conv`);
            ``mvit_backbone.kernels`` passes a faster one.

    The class token bypasses the pooling and rejoins before the norm (as in the official code).
    Returns G tensors (B, num_prefix + prod(pooled shape), heads, C) and the pooled grid shape.
    An ``nn.Identity`` pool (unpooled, stride 1) returns the tensors as they are.
    """
    if isinstance(pools[0], nn.Identity):  # unpooled (``pool_stride_one`` or ``pool_q_unstrided``)
        return list(x.unbind(2)), tuple(shape)
    # split, not slices: a slice's backward fills a zero gradient of the whole tensor
    prefix, grid = x.split([num_prefix, x.shape[1] - num_prefix], dim=1) if num_prefix else (None, x)
    return pool_grid(grid, prefix, shape, pools, norms, depthwise_conv)


def pool_grid(
    grid: torch.Tensor,
    prefix: torch.Tensor | None,
    shape: Sequence[int],
    pools: Sequence[nn.Module],
    norms: Sequence[nn.Module | None],
    depthwise_conv: DepthwiseConvFn = plain_depthwise_conv,
) -> tuple[list[torch.Tensor], tuple[int, ...]]:
    """:func:`attention_pool` of the grid tokens (B, prod(shape), G, heads, C) and the class
    tokens (B, p, G, heads, C) (or None) given apart."""
    if isinstance(pools[0], nn.Identity):
        tokens = grid if prefix is None else torch.cat([prefix, grid], dim=1)
        return list(tokens.unbind(2)), tuple(shape)
    first = pools[0]
    b = grid.shape[0]
    groups, heads, c = grid.shape[2:]
    # (B, *shape, channels) is channels-last: the depthwise conv reads it without a transpose
    # (when the grid's rows are dense, see ``kernels.block``)
    grid = grid.reshape(b, *shape, groups * heads * c).movedim(-1, 1)
    if isinstance(first, (nn.Conv2d, nn.Conv3d)):
        ones = (1,) * (first.weight.dim() - 1)
        weight = torch.cat([p.weight.repeat(heads, *ones) for p in pools])
        pooled = depthwise_conv(grid, weight, first.stride, first.padding)
    else:
        pooled = first(grid)
    new_shape = tuple(pooled.shape[2:])
    # (G, B, heads, L, C) views, strided; the norm's copy of its input, or the cat with the
    # class token, lays each out (B, heads, L, C), the layout the attention matmuls read, so
    # they copy nothing more
    out = pooled.movedim(1, -1).reshape(b, -1, groups, heads, c).permute(2, 0, 3, 1, 4).unbind(0)
    if prefix is not None:
        prefix = prefix.permute(2, 0, 3, 1, 4).unbind(0)
        out = [torch.cat(pair, dim=2) for pair in zip(prefix, out)]
    normed = [t if norm is None else norm(t) for t, norm in zip(out, norms)]
    return [t.transpose(1, 2) for t in normed], new_shape


class MultiScaleAttention(nn.Module):
    """Pooling attention with optional windows and decomposed relative position bias.

    Args:
        dim: input channels. dim_out: output channels (channel expansion happens here in v2).
        cfg: the options (:class:`AttentionConfig`); keyword arguments build one instead.
        norm_layer: the norm after conv pooling.

    Shapes: forward(x (B, num_prefix + prod(shape), dim), shape) ->
        (B, num_prefix + prod(shape_q), dim_out), shape_q.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        cfg: AttentionConfig | None = None,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        **options,
    ):
        super().__init__()
        cfg = AttentionConfig(**options) if cfg is None else cfg
        self.cfg = cfg
        self.num_heads = cfg.num_heads
        self.num_prefix = cfg.num_prefix
        head_dim = dim_out // cfg.num_heads
        self.scale = head_dim**-0.5

        self.qkv = nn.Linear(dim, dim_out * 3, bias=cfg.qkv_bias)
        self.proj = nn.Linear(dim_out, dim_out)
        # The official layout: pool_q/norm_q, pool_k/norm_k, pool_v/norm_v directly on the module.
        pool = (head_dim, cfg.pool_kernel)
        # MViTv1 pools the query only where it is strided; a plain ViT block pools nothing
        # where the stride is 1
        q_stride_one = cfg.pool_stride_one and cfg.pool_q_unstrided
        self.pool_q, self.norm_q = make_pool(*pool, cfg.stride_q, cfg.pool_mode, norm_layer,
                                             q_stride_one)
        kv_pool = (cfg.stride_kv, cfg.pool_mode, norm_layer, cfg.pool_stride_one)
        self.pool_k, self.norm_k = make_pool(*pool, *kv_pool)
        self.pool_v, self.norm_v = make_pool(*pool, *kv_pool)

        self.window_size = cfg.window_size
        if cfg.window_size:
            self.q_window = cfg.window_size // cfg.stride_q[0]
            self.kv_window = cfg.window_size // cfg.stride_kv[0]
            if self.q_window < 1 or self.kv_window < 1:
                raise ValueError(
                    f"window_size {cfg.window_size} is smaller than the pooling strides "
                    f"q={cfg.stride_q} kv={cfg.stride_kv}"
                )
        # Swin shift expressed on the key grid, so the query shift maps to the same image offset.
        self.kv_shift = self.kv_window // 2 if (cfg.window_size and cfg.shift_windows) else 0
        self.q_shift = self.kv_shift * cfg.stride_kv[0] // cfg.stride_q[0]

        self.use_rel_pos = cfg.use_rel_pos
        # rel_pos_t, rel_pos_h, rel_pos_w: official names, in grid-axis order.
        self._rel_pos_names = ("rel_pos_t", "rel_pos_h", "rel_pos_w")[-len(cfg.pool_kernel):]
        if cfg.use_rel_pos:
            for axis, name in enumerate(self._rel_pos_names):
                q_len = cfg.input_size[axis] // cfg.stride_q[axis]
                kv_len = cfg.input_size[axis] // cfg.stride_kv[axis]
                table = nn.Parameter(torch.zeros(2 * max(q_len, kv_len) - 1, head_dim))
                if not cfg.rel_pos_zero_init:
                    nn.init.trunc_normal_(table, std=0.02)
                setattr(self, name, table)

    def rel_pos_tables(self) -> list[torch.Tensor]:
        return [getattr(self, n) for n in self._rel_pos_names]

    def rel_pos_lookups(self, q_shape: Sequence[int], k_shape: Sequence[int]) -> list[torch.Tensor] | None:
        """Per axis, the rel-pos embedding of every (query, key) offset: (q_len, k_len, C)."""
        if not self.use_rel_pos:
            return None
        return [rel_pos_lookup(qs, ks, t) for qs, ks, t in zip(q_shape, k_shape, self.rel_pos_tables())]

    def pool_parts(
        self, separate: bool = False
    ) -> list[tuple[slice, tuple[nn.Module, ...], tuple[nn.Module | None, ...]]]:
        """The parts of Q, K, V pooled together: (rows of the qkv output, pools, norms). K and V
        share a stride and are one part, unless ``separate``; Q joins them when its stride is
        the same and it is pooled, unless ``separate``. An unpooled Q is a part with pool
        ``nn.Identity``."""
        d = self.qkv.out_features // 3
        q, k, v = ((slice(i * d, (i + 1) * d), (pool,), (norm,)) for i, (pool, norm) in
                   enumerate([(self.pool_q, self.norm_q), (self.pool_k, self.norm_k),
                              (self.pool_v, self.norm_v)]))
        if separate:
            return [q, k, v]
        q_pooled_as_kv = isinstance(self.pool_q, nn.Identity) == isinstance(self.pool_k, nn.Identity)
        if self.cfg.stride_q == self.cfg.stride_kv and q_pooled_as_kv:
            return [(slice(0, 3 * d), (self.pool_q, self.pool_k, self.pool_v),
                     (self.norm_q, self.norm_k, self.norm_v))]
        # Q and K/V apart: each conv then reads a dense tensor, not a strided slice
        return [q, (slice(d, 3 * d), (self.pool_k, self.pool_v), (self.norm_k, self.norm_v))]

    def attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        q_shape: tuple[int, ...],
        k_shape: tuple[int, ...],
        attend: AttendFn = attend,
    ) -> torch.Tensor:
        """Attention of pooled q (B, p + Lq, heads, C) to k, v (B, p + Lk, heads, C), globally
        or in windows. Returns (B, p + Lq, heads, C)."""
        if self.window_size:
            return self._windowed(q, k, v, q_shape, k_shape, attend)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        lookups = self.rel_pos_lookups(q_shape, k_shape)
        rel_pos = None if lookups is None else RelPos(lookups, q_shape, k_shape, self.num_prefix)
        return attend(q, k, v, self.scale, rel_pos).transpose(1, 2)

    def forward(
        self, x: torch.Tensor, shape: Sequence[int], attend: AttendFn = attend
    ) -> tuple[torch.Tensor, tuple[int, ...]]:
        """x: (B, p + prod(shape), dim), already normalised (the block's norm1)."""
        b, n, _ = x.shape
        qkv = self.qkv(x)
        parts = self.pool_parts()
        # split, not slices: a slice's backward fills a zero gradient of the whole tensor
        columns = qkv.split([rows.stop - rows.start for rows, _, _ in parts], dim=-1)
        pooled, shapes = [], []
        for part, (_, pools, norms) in zip(columns, parts):
            part = part.reshape(b, n, len(pools), self.num_heads, -1)
            out, out_shape = attention_pool(part, shape, pools, norms, self.num_prefix)
            pooled += out
            shapes += [out_shape] * len(pools)
        q, k, v = pooled
        out = self.residual_pool(self.attention(q, k, v, shapes[0], shapes[-1], attend), q)
        return self.proj(out.flatten(2)), shapes[0]

    def residual_pool(self, out: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """MViTv2's residual pooling: the attention output (B, p + Lq, heads, C) plus the
        pooled query q (same shape), where ``residual_pooling``; the class tokens take part
        unless ``residual_pooling_cls`` is False."""
        if not self.cfg.residual_pooling:
            return out
        p = self.num_prefix
        if p and not self.cfg.residual_pooling_cls:
            prefix, grid = out.split([p, out.shape[1] - p], dim=1)
            return torch.cat([prefix, grid + q[:, p:]], dim=1)
        return out + q

    def _windowed(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        q_shape: tuple[int, ...],
        k_shape: tuple[int, ...],
        attend: AttendFn,
    ) -> torch.Tensor:
        """Attention inside windows; q: (B, Lq, heads, C), k/v: (B, Lk, heads, C) on 2-D grids,
        no class token. Returns (B, Lq, heads, C).

        Windows of equal size along each axis are cut and attended as one batch (a "run"), so
        border windows cost one more call, not padded queries; padded queries would only be
        cropped.
        """
        b, _, heads, c = q.shape
        wq, wk = self.q_window, self.kv_window
        q_grid = q.reshape(b, *q_shape, heads, c)
        k_grid = k.reshape(b, *k_shape, heads, c)
        v_grid = v.reshape(b, *k_shape, heads, c)
        (hq, wdq), (hk, wdk) = q_shape, k_shape
        kv_padded = (-(-hk // wk) * wk, -(-wdk // wk) * wk)
        mask = None
        shifted = self.kv_shift and max(k_shape) > wk
        if shifted:
            q_grid = torch.roll(q_grid, (-self.q_shift,) * 2, dims=(1, 2))
            k_grid = torch.roll(k_grid, (-self.kv_shift,) * 2, dims=(1, 2))
            v_grid = torch.roll(v_grid, (-self.kv_shift,) * 2, dims=(1, 2))
            # shifted windows mix regions: pad to whole windows and mask by region
            q_padded = (-(-hq // wq) * wq, -(-wdq // wq) * wq)
            q_grid = _pad_grid(q_grid, *q_padded)
            k_grid, v_grid = _pad_grid(k_grid, *kv_padded), _pad_grid(v_grid, *kv_padded)
            minimal = self.cfg.window_padding == "minimal"
            mask = shifted_window_mask(
                q_padded, wq, self.q_shift, kv_padded, wk, self.kv_shift, q.device,
                q_hw=q_shape if minimal else None, kv_hw=k_shape if minimal else None,
            )
            mask = mask.repeat(b, 1, 1)[:, None]
            rows = window_runs(q_padded[0], wq, kv_padded[0], wk, pad_keys=True)
            cols = window_runs(q_padded[1], wq, kv_padded[1], wk, pad_keys=True)
        else:
            pad_keys = self.cfg.window_padding == "detectron2"
            if pad_keys:
                # detectron2 pads keys/values with zeros, and those zeros take part in the softmax
                k_grid, v_grid = _pad_grid(k_grid, *kv_padded), _pad_grid(v_grid, *kv_padded)
            rows = window_runs(hq, wq, hk, wk, pad_keys)
            cols = window_runs(wdq, wq, wdk, wk, pad_keys)
        # a window cut at the border uses a slice of the full window's lookup, so a cell's
        # offsets do not depend on the cut
        full = self.rel_pos_lookups((wq, wq), (wk, wk))
        # split (not slice) into runs: the backward of split is one cat, while every slice's
        # backward would allocate and fill a zero gradient of the whole grid
        q_rows = q_grid.split([nr * qh for _, qh, _, _, nr in rows], dim=1)
        k_rows = k_grid.split([nr * kh for _, _, _, kh, nr in rows], dim=1)
        v_rows = v_grid.split([nr * kh for _, _, _, kh, nr in rows], dim=1)
        q_sizes = [nc * qw for _, qw, _, _, nc in cols]
        k_sizes = [nc * kw for _, _, _, kw, nc in cols]
        out_rows = []
        for (_, qh, _, kh, nr), q_row, k_row, v_row in zip(rows, q_rows, k_rows, v_rows):
            out_cols = []
            for (_, qw, _, kw, nc), qs, ks, vs in zip(
                cols, q_row.split(q_sizes, dim=2), k_row.split(k_sizes, dim=2),
                v_row.split(k_sizes, dim=2),
            ):
                rel_pos = None if full is None else RelPos(
                    [full[0][:qh, :kh], full[1][:qw, :kw]], (qh, qw), (kh, kw))
                out = attend(partition_run(qs, qh, qw), partition_run(ks, kh, kw),
                             partition_run(vs, kh, kw), self.scale, rel_pos, mask)
                out_cols.append(unpartition_run(out, b, nr, nc, qh, qw))
            out_rows.append(torch.cat(out_cols, dim=2) if len(out_cols) > 1 else out_cols[0])
        out = torch.cat(out_rows, dim=1) if len(out_rows) > 1 else out_rows[0]
        if shifted:
            out = torch.roll(out[:, :hq, :wdq], (self.q_shift, self.q_shift), dims=(1, 2))
        return out.reshape(b, -1, heads, c)


def _pad_grid(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Zero-pad a (B, H, W, heads, C) grid at the bottom/right to (B, height, width, heads, C)."""
    pad_h, pad_w = height - x.shape[1], width - x.shape[2]
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, 0, 0, pad_w, 0, pad_h))
    return x
