"""Multiscale (pooling) attention, MViTv2 §3 and MViTv1 §3.1.

Tokens travel as (B, N, C) with their spatial grid shape (H, W) or (T, H, W) beside them and an
optional leading class token. Q, K and V are pooled on their grids (depthwise conv + LayerNorm,
or max / average pooling), optionally split into windows, attended with decomposed relative
position bias, and the pooled query is added back (residual pooling).

Tensors stay in the (B, L, heads, C) layout the qkv Linear produces; windows are cut from it
directly, and only windows that hold queries are built (see ``window_padding``). The attention
itself has three implementations with the same result (``attn_impl``): the explicit matmul +
softmax (reference, attention maps), SDPA with the decomposed rel-pos bias as additive mask,
and SDPA with the bias folded into the dot product (q gets ``q·R_h``, ``q·R_w`` appended, k
the one-hot codes of its row and column), which needs no Lq x Lk bias at all.

Training keeps little for backward: the pooled tensors before their norms are recomputed
(checkpointed conv + norm), blocks that pool the query recompute their whole qkv projection
(Q apart from K/V), the folded attention on CPU stores its unfolded operands, and the explicit
attention (window blocks) stores q, k, v and the probabilities only.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .linear import Linear, eager_mode, norm_linear, recompute_in_backward
from .rel_pos import EINSUM_AXES, rel_pos_lookup
from .windows import partition_run, shifted_window_mask, unpartition_run, window_runs

POOL_MODES = ("conv", "max", "avg")
ATTN_IMPLS = ("auto", "sdpa", "folded", "explicit")
WINDOW_PADDINGS = ("detectron2", "minimal")
# largest rel-pos bias built at once by the "sdpa" path (fp32 elements: 16 MiB)
BIAS_CHUNK_ELEMENTS = 1 << 22


def as_tuple(v: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    """A per-axis tuple from an int or a sequence (strides, kernels)."""
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
    pools: Sequence[nn.Module],
    norms: Sequence[nn.Module | None],
    num_prefix: int,
    recompute: bool = True,
) -> tuple[list[torch.Tensor], tuple[int, ...]]:
    """Pools G tensors of per-head tokens on their grid, all heads and tensors in one call.

    Args:
        x: (B, num_prefix + prod(shape), G, heads, C), the layout the qkv Linear produces, so no
            per-head transpose is needed; G = len(pools) (e.g. K and V, which share a stride).
        pools: per tensor, a depthwise conv of C channels shared by the heads (its weight is
            repeated per head and the G weights stacked, for one grouped conv) or a max/avg
            pooling (channel-wise, so the first one serves all tensors).
        norms: per tensor, LayerNorm over C (per head) or None.
        recompute: in training, recompute the pooled tensors before their norms in backward
            (False where the caller already recomputes the whole pooling).

    The class token bypasses the pooling and rejoins before the norm (as in the official code).
    Returns G tensors (B, num_prefix + prod(pooled shape), heads, C) and the pooled grid shape.
    """
    b = x.shape[0]
    groups, heads, c = x.shape[2:]
    # slices only when needed: a slice's backward fills a zero gradient of the whole tensor
    prefix, grid = x.split([num_prefix, x.shape[1] - num_prefix], dim=1) if num_prefix else (x, x)
    # (B, *shape, channels) is channels-last: the depthwise conv reads it without a transpose
    grid = grid.reshape(b, *shape, groups * heads * c).movedim(-1, 1)
    first = pools[0]
    if isinstance(first, (nn.Conv2d, nn.Conv3d)):
        ones = (1,) * (first.weight.dim() - 1)
        weight = torch.cat([p.weight.repeat(heads, *ones) for p in pools])
        conv = F.conv2d if grid.dim() == 4 else F.conv3d

        def pool(t: torch.Tensor) -> torch.Tensor:
            return conv(t, weight, None, first.stride, first.padding, groups=t.shape[1])
    else:
        pool = first
    new_shape = tuple((s + 2 * p - k) // st + 1 for s, p, k, st in zip(
        shape, as_tuple(first.padding, len(shape)), as_tuple(first.kernel_size, len(shape)),
        as_tuple(first.stride, len(shape)),
    ))

    def pool_and_norm(grid: torch.Tensor) -> list[torch.Tensor]:
        out = pool(grid).movedim(1, -1).reshape(b, -1, groups, heads, c)
        if num_prefix:
            out = torch.cat([prefix, out], dim=1)
        return [t if norm is None else norm(t) for t, norm in zip(out.unbind(2), norms)]

    if recompute and recompute_in_backward() and any(norm is not None for norm in norms):
        # The pooled tensors before their norms are needed only by the norms' backward:
        # recompute them there (a depthwise conv) instead of storing them.
        return checkpoint(pool_and_norm, grid, use_reentrant=False), new_shape
    return pool_and_norm(grid), new_shape


def _attn_impl_for(impl: str, q: torch.Tensor, use_rel_pos: bool, windowed: bool = False) -> str:
    """Resolve ``attn_impl="auto"`` for one call.

    On CPU, SDPA's flash kernel takes an additive bias but only as a constant: when the bias
    needs a gradient (training with rel-pos) SDPA falls back to its math kernel, which is the
    explicit path plus overhead. For windows, training then uses the explicit path, whose
    stored probabilities are small (one window's keys per query) and spare backward the
    flash kernel's recomputation of q·kᵀ and the softmax. Global attention would store
    Lq x Lk probabilities; there the folded form keeps the rel-pos inside q·k, so the flash
    kernel runs forward and backward and stores no Lq x Lk matrix. On CUDA the
    memory-efficient kernel supports a bias with a gradient, so plain SDPA is used there.
    """
    if impl != "auto":
        return impl
    if use_rel_pos and q.device.type == "cpu" and torch.is_grad_enabled() and q.requires_grad:
        return "explicit" if windowed else "folded"
    return "sdpa"


class _ExplicitAttention(torch.autograd.Function):
    """The explicit path as one autograd node that stores q, k, v, the lookups and the
    attention probabilities, and nothing else: autograd through the plain ops would also keep
    a scaled copy of q, contiguous copies of q, k and v made by the batched matmuls, and q's
    reshape for the rel-pos einsums. Backward is the textbook one (softmax backward, then the
    bias gradient summed onto its per-axis terms).
    Inputs: explicit (the forward function), q, k, v (Bw, heads, L, C), mask (bool or None),
    q_shape, k_shape, scale, num_prefix, *lookups. Outputs: the attention output and, not
    differentiable, the probabilities.
    """

    @staticmethod
    def forward(ctx, explicit, q, k, v, mask, q_shape, k_shape, scale, num_prefix, *lookups):
        out, probs = explicit(q, k, v, q_shape, k_shape, mask, lookups or None)
        ctx.shapes, ctx.scale, ctx.num_prefix = (q_shape, k_shape), scale, num_prefix
        ctx.save_for_backward(q, k, v, probs, *lookups)
        ctx.mark_non_differentiable(probs)
        # no zero-filled gradient for the probabilities, an Lq x Lk tensor per call
        ctx.set_materialize_grads(False)
        return out, probs

    @staticmethod
    def backward(ctx, grad, _):
        q, k, v, probs, *lookups = ctx.saved_tensors
        if grad is None:  # the output does not reach the loss
            return (None,) * (9 + len(lookups))
        (q_shape, k_shape), p = ctx.shapes, ctx.num_prefix
        grad = grad.contiguous()  # read by two matmuls
        grad_v = probs.transpose(-2, -1) @ grad
        grad_logits = grad @ v.transpose(-2, -1)
        # softmax backward in place (row by row): one Lq x Lk buffer instead of two
        torch.ops.aten._softmax_backward_data.out(
            grad_logits, probs, -1, probs.dtype, grad_input=grad_logits
        )
        grad_q = (grad_logits @ k).mul_(ctx.scale)
        grad_k = (grad_logits.transpose(-2, -1) @ q).mul_(ctx.scale)
        grad_lookups = []
        if lookups:
            # the bias is the sum of per-axis terms q·R_a broadcast over the other key axes
            bw, heads, _, c = q.shape
            ndim = len(k_shape)
            axes = EINSUM_AXES[-ndim:]
            grid = grad_logits[:, :, p:, p:].unflatten(-1, k_shape)
            q_grid = q[:, :, p:].reshape(bw, heads, *q_shape, c)
            grad_q_grid = grad_q[:, :, p:].view(bw, heads, *q_shape, c)
            for a, r in enumerate(lookups):
                others = [3 + i for i in range(ndim) if i != a]
                grad_term = grid.sum(others).reshape(bw, heads, *q_shape, k_shape[a])
                grad_q_grid += torch.einsum(f"bn{axes}k,{axes[a]}kc->bn{axes}c", grad_term, r)
                grad_lookups.append(torch.einsum(
                    f"bn{axes}c,bn{axes}k->{axes[a]}kc", q_grid, grad_term
                ) if ctx.needs_input_grad[9 + a] else None)
        return (None, grad_q, grad_k, grad_v, None, None, None, None, None, *grad_lookups)


class _FoldedFlashAttention(torch.autograd.Function):
    """Folded rel-pos attention on the CPU flash kernel that stores q, k, v, the lookups, the
    unpadded output and the log-sum-exp for backward, and rebuilds the folded operands there.

    Autograd through ``fold`` + SDPA would store the folded q (head size C + k_h + k_w), the
    padded output and the einsum's q besides; this keeps about half of that. Backward is
    exact: the padded output columns are zeros (the padded v columns are).
    Inputs: fold, q, k, v (Bw, heads, L, C), mask (bool or None), q_shape, k_shape, *lookups.
    """

    @staticmethod
    def forward(ctx, fold, q, k, v, mask, q_shape, k_shape, *lookups):
        q_ext, k_ext, v_ext = fold(q, k, v, q_shape, k_shape, lookups)
        bias = None if mask is None else torch.zeros(mask.shape, dtype=q.dtype).masked_fill_(
            ~mask, float("-inf"))
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q_ext, k_ext, v_ext, 0.0, False, attn_mask=bias, scale=1.0
        )
        del q_ext, k_ext, v_ext
        out = out[..., : v.shape[-1]].contiguous()
        ctx.fold, ctx.shapes = fold, (q_shape, k_shape)
        ctx.save_for_backward(q, k, v, bias, out, lse, *lookups)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, bias, out, lse, *lookups = ctx.saved_tensors
        inputs = [t.detach().requires_grad_(need) for t, need in
                  zip([q, k, v, *lookups], ctx.needs_input_grad[1:4] + ctx.needs_input_grad[7:])]
        with torch.enable_grad():
            folded = ctx.fold(*inputs[:3], *ctx.shapes, inputs[3:])
        extra = folded[0].shape[-1] - v.shape[-1]
        grads = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            F.pad(grad, (0, extra)), *(t.detach() for t in folded), F.pad(out, (0, extra)), lse,
            0.0, False, attn_mask=bias, scale=1.0,
        )
        wanted = [t for t in inputs if t.requires_grad]
        found = iter(torch.autograd.grad(folded, wanted, grads, allow_unused=True))
        result = [next(found) if t.requires_grad else None for t in inputs]
        return (None, *result[:3], None, None, None, *result[3:])


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
        attn_impl: "auto" (default: SDPA; on CPU with gradients and rel-pos, explicit in
            windows and folded in global attention), "sdpa", "folded" or "explicit"; all give
            the same result up to float rounding.
        window_padding: "detectron2" (default): keys/values are zero-padded to whole windows
            and those zero keys take part in the softmax, exactly as detectron2 does; padded
            queries are not computed (their outputs are cropped), which changes nothing.
            "minimal": no padding at all; border windows are smaller. Identical to
            "detectron2" when the pooled grids are multiples of the windows, different (no
            phantom zero keys) otherwise. Shifted (Swin) windows keep the padding and mask the
            padded keys.

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
        attn_impl: str = "auto",
        window_padding: str = "detectron2",
    ):
        super().__init__()
        if pool_mode not in POOL_MODES:
            raise ValueError(f"pool_mode must be one of {POOL_MODES}, got {pool_mode!r}")
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {attn_impl!r}")
        if window_padding not in WINDOW_PADDINGS:
            raise ValueError(
                f"window_padding must be one of {WINDOW_PADDINGS}, got {window_padding!r}"
            )
        if window_size and num_prefix:
            raise ValueError("window attention does not take a class token (num_prefix > 0)")
        self.attn_impl = attn_impl
        self.window_padding = window_padding
        ndim = len(pool_kernel)
        self.ndim = ndim
        self.num_heads = num_heads
        head_dim = dim_out // num_heads
        self.scale = head_dim**-0.5
        self.stride_q = as_tuple(stride_q, ndim)
        self.stride_kv = as_tuple(stride_kv, ndim)
        self.residual_pooling = residual_pooling
        self.num_prefix = num_prefix

        self.qkv = Linear(dim, dim_out * 3, bias=qkv_bias)
        self.proj = Linear(dim_out, dim_out)

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

    def _rel_lookups(
        self, q_shape: Sequence[int], k_shape: Sequence[int]
    ) -> list[torch.Tensor] | None:
        """Per axis, the rel-pos embedding of every (query, key) offset: (q_len, k_len, C)."""
        if not self.use_rel_pos:
            return None
        return [rel_pos_lookup(qs, ks, t) for qs, ks, t in zip(q_shape, k_shape, self.rel_pos_tables())]

    def _rel_terms(
        self, q: torch.Tensor, q_shape: Sequence[int], lookups: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Per axis a, ``q · R_a``: (Bw, heads, num_prefix + Lq, k_len_a), zero for class tokens.

        q: unscaled queries (Bw, heads, num_prefix + prod(q_shape), C).
        """
        p = self.num_prefix
        bw, heads, _, c = q.shape
        axes = EINSUM_AXES[-len(q_shape):]
        q_grid = (q.split([p, q.shape[2] - p], dim=2)[1] if p else q).reshape(bw, heads, *q_shape, c)
        terms = []
        for a, r in enumerate(lookups):
            term = torch.einsum(f"bn{axes}c,{axes[a]}kc->bn{axes}k", q_grid, r.to(q.dtype))
            term = term.reshape(bw, heads, -1, r.shape[1])
            terms.append(F.pad(term, (0, 0, p, 0)) if p else term)
        return terms

    def _rel_bias(self, terms: Sequence[torch.Tensor], k_shape: Sequence[int]) -> torch.Tensor:
        """The decomposed bias (Bw, heads, p + Lq, p + Lk) broadcast from the per-axis terms."""
        bias = None
        for a, term in enumerate(terms):
            term = _on_key_axis(term, a, k_shape)
            bias = term if bias is None else bias + term
        bias = bias.flatten(3)
        return F.pad(bias, (self.num_prefix, 0)) if self.num_prefix else bias

    def _explicit(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        q_shape: Sequence[int],
        k_shape: Sequence[int],
        mask: torch.Tensor | None,
        lookups: Sequence[torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """softmax(q·kᵀ·scale + bias) · v by matmuls: (output, probabilities). The rel-pos
        terms are added to the logits in place, axis by axis, so no Lq x Lk bias is built."""
        logits = (q * self.scale) @ k.transpose(-2, -1)
        if lookups is not None:
            grid = logits[..., self.num_prefix:].unflatten(-1, k_shape)
            for a, term in enumerate(self._rel_terms(q, q_shape, lookups)):
                grid.add_(_on_key_axis(term, a, k_shape))
        if mask is not None:
            logits.masked_fill_(~mask, float("-inf"))
        if torch.is_grad_enabled() or not eager_mode() or torch.is_autocast_enabled(q.device.type):
            probs = logits.softmax(dim=-1)
        else:
            # nothing keeps the logits (inference, or the autograd node's forward): the
            # probabilities overwrite them, row by row, so one Lq x Lk buffer serves both
            probs = torch.ops.aten._softmax.out(logits, -1, False, out=logits)
        return probs @ v, probs

    def _key_codes(self, k: torch.Tensor, k_shape: Sequence[int]) -> list[torch.Tensor]:
        """Per axis a, the one-hot position of every key along a: (p + Lk, k_len_a), zero rows
        for class tokens, so that ``[q, q·R_h, q·R_w] · [k, e_h, e_w] = q·k + bias``."""
        ndim = len(k_shape)
        codes = []
        for a, size in enumerate(k_shape):
            view = [1] * ndim
            view[a] = size
            eye = torch.eye(size, dtype=k.dtype, device=k.device).reshape(*view, size)
            code = eye.expand(*k_shape, size).reshape(-1, size)
            codes.append(F.pad(code, (0, 0, self.num_prefix, 0)) if self.num_prefix else code)
        return codes

    def _fold(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        q_shape: Sequence[int],
        k_shape: Sequence[int],
        lookups: Sequence[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The folded operands: ``[q·scale, q·R_h, q·R_w]``, ``[k, e_h, e_w]`` and v zero-padded
        to the same head size (the CPU flash kernel wants one head size for q, k and v), so
        that plain attention on them equals attention with the decomposed rel-pos bias."""
        terms = self._rel_terms(q, q_shape, lookups)
        codes = self._key_codes(k, k_shape)
        lead = k.shape[:2]
        q_ext = torch.cat([q * self.scale, *terms], dim=-1)
        k_ext = torch.cat([k, *(c.expand(*lead, *c.shape) for c in codes)], dim=-1)
        return q_ext, k_ext, F.pad(v, (0, q_ext.shape[-1] - v.shape[-1]))

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        q_shape: Sequence[int],
        k_shape: Sequence[int],
        mask: torch.Tensor | None = None,
        impl: str = "explicit",
        lookups: Sequence[torch.Tensor] | None = None,
        return_attn: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """softmax(q·kᵀ·scale + rel-pos bias) · v for one batch of windows (or whole grids).

        Args:
            q: (Bw, heads, p + prod(q_shape), C); k, v: (Bw, heads, p + prod(k_shape), C).
            q_shape, k_shape: the grids the tokens lie on (one window, or the whole map).
            mask: bool, broadcastable to (Bw, heads, Lq, Lk); True = may attend.
            impl: "explicit" (matmul + softmax; the reference), "sdpa" (the bias as SDPA's
                additive mask) or "folded" (the bias folded into the dot product).
            lookups: rel-pos embeddings per axis (q_len, k_len, C) when they differ from the
                lookup for (q_shape, k_shape) (windows cut at the border use a slice of the
                full window's lookup, so a cell's offsets do not depend on the cut).
            return_attn: also return the attention probabilities (explicit only), for analysis.

        Returns (Bw, heads, p + Lq, C) [and the attention (Bw, heads, p + Lq, p + Lk)].
        """
        if lookups is None:
            lookups = self._rel_lookups(q_shape, k_shape)
        if return_attn and impl != "explicit":
            raise ValueError("attention maps are only available from the explicit path")
        if impl == "explicit":
            if recompute_in_backward() and not torch.is_autocast_enabled(q.device.type):
                out, attn = _ExplicitAttention.apply(
                    self._explicit, q, k, v, mask, q_shape, k_shape, self.scale,
                    self.num_prefix, *(lookups or ()),
                )
            else:
                out, attn = self._explicit(q, k, v, q_shape, k_shape, mask, lookups)
            return (out, attn) if return_attn else out
        if impl == "folded" and lookups is not None:
            if q.device.type == "cpu" and recompute_in_backward():
                return _FoldedFlashAttention.apply(self._fold, q, k, v, mask, q_shape, k_shape, *lookups)
            q_ext, k_ext, v_ext = self._fold(q, k, v, q_shape, k_shape, lookups)
            out = F.scaled_dot_product_attention(q_ext, k_ext, v_ext, attn_mask=mask, scale=1.0)
            return out[..., : v.shape[-1]]
        if impl not in ("sdpa", "folded"):
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {impl!r}")
        if lookups is None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        terms = self._rel_terms(q, q_shape, lookups)
        # The bias is materialised one chunk of queries at a time: a whole-map bias is 10-130
        # MiB at detection sizes, and writing fresh memory of that size costs more than the
        # attention reads from it.
        rows = max(1, BIAS_CHUNK_ELEMENTS // (q.shape[0] * q.shape[1] * k.shape[2]))
        outs = []
        for start in range(0, q.shape[2], rows):
            part = slice(start, start + rows)
            bias = self._rel_bias([t[:, :, part] for t in terms], k_shape).to(q.dtype)
            if mask is not None:
                bias = bias.masked_fill(~mask[..., part, :], float("-inf"))
            outs.append(F.scaled_dot_product_attention(
                q[:, :, part], k, v, attn_mask=bias, scale=self.scale
            ))
        return torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]

    def _windowed(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        q_shape: tuple[int, ...],
        k_shape: tuple[int, ...],
        impl: str,
    ) -> torch.Tensor:
        """Attention inside windows; q: (B, Lq, heads, C), k/v: (B, Lk, heads, C) on 2-D grids,
        no class token. Returns (B, Lq, heads, C)."""
        b, _, heads, c = q.shape
        wq, wk = self.q_window, self.kv_window
        q_grid = q.reshape(b, *q_shape, heads, c)
        k_grid = k.reshape(b, *k_shape, heads, c)
        v_grid = v.reshape(b, *k_shape, heads, c)
        (hq, wdq), (hk, wdk) = q_shape, k_shape
        nh, nw = -(-hq // wq), -(-wdq // wq)
        mask = None
        shifted = self.kv_shift and max(k_shape) > wk
        if shifted:
            q_grid = torch.roll(q_grid, (-self.q_shift,) * 2, dims=(1, 2))
            k_grid = torch.roll(k_grid, (-self.kv_shift,) * 2, dims=(1, 2))
            v_grid = torch.roll(v_grid, (-self.kv_shift,) * 2, dims=(1, 2))
            # shifted windows mix regions: pad to whole windows and mask by region
            q_grid = _pad_grid(q_grid, nh * wq, nw * wq)
            q_pad = (nh * wq, nw * wq)
            kv_pad = (-(-hk // wk) * wk, -(-wdk // wk) * wk)
            k_grid = _pad_grid(k_grid, *kv_pad)
            v_grid = _pad_grid(v_grid, *kv_pad)
            minimal = self.window_padding == "minimal"
            mask = shifted_window_mask(
                q_pad, wq, self.q_shift, kv_pad, wk, self.kv_shift, q.device,
                q_hw=q_shape if minimal else None, kv_hw=k_shape if minimal else None,
            )
            mask = mask.repeat(b, 1, 1)[:, None]
            rows = window_runs(q_pad[0], wq, kv_pad[0], wk, pad_keys=True)
            cols = window_runs(q_pad[1], wq, kv_pad[1], wk, pad_keys=True)
        else:
            pad_keys = self.window_padding == "detectron2"
            if pad_keys:
                # detectron2 pads keys/values with zeros, and those zeros take part in the softmax
                k_grid = _pad_grid(k_grid, -(-hk // wk) * wk, -(-wdk // wk) * wk)
                v_grid = _pad_grid(v_grid, -(-hk // wk) * wk, -(-wdk // wk) * wk)
            rows = window_runs(hq, wq, hk, wk, pad_keys)
            cols = window_runs(wdq, wq, wdk, wk, pad_keys)
        full = self._rel_lookups((wq, wq), (wk, wk))
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
                lookups = None if full is None else [full[0][:qh, :kh], full[1][:qw, :kw]]
                out = self.attend(
                    partition_run(qs, qh, qw),
                    partition_run(ks, kh, kw),
                    partition_run(vs, kh, kw),
                    (qh, qw), (kh, kw), mask, impl, lookups,
                )
                out_cols.append(unpartition_run(out, b, nr, nc, qh, qw))
            out_rows.append(torch.cat(out_cols, dim=2) if len(out_cols) > 1 else out_cols[0])
        out = torch.cat(out_rows, dim=1) if len(out_rows) > 1 else out_rows[0]
        if shifted:
            out = torch.roll(out[:, :hq, :wdq], (self.q_shift, self.q_shift), dims=(1, 2))
        return out.reshape(b, -1, heads, c)

    def _project_and_pool(
        self,
        x: torch.Tensor,
        shape: Sequence[int],
        norm: nn.Module | None,
        parts: Sequence[tuple[slice | None, Sequence[nn.Module], Sequence[nn.Module | None]]],
        recompute_pool: bool = True,
    ) -> tuple[list[torch.Tensor], list[tuple[int, ...]]]:
        """``norm(x)`` projected and pooled, per part ``(rows, pools, norms)``: the rows of the
        qkv weight of a part of Q, K, V that shares a stride (None: all three), and its pools
        and norms. All parts are projected by one node (one norm). Returns one
        (B, p + L, heads, C) tensor per pool, and per part its grid shape.
        ``recompute_pool``: see :func:`attention_pool`."""
        b, n, _ = x.shape
        weight, bias = self.qkv.weight, self.qkv.bias
        projections = [
            (weight, bias) if rows is None
            else (weight[rows], None if bias is None else bias[rows])
            for rows, _, _ in parts
        ]
        pooled, shapes = [], []
        for projected, (_, pools, norms) in zip(norm_linear(x, norm, projections), parts):
            projected = projected.reshape(b, n, len(pools), self.num_heads, -1)
            out, out_shape = attention_pool(
                projected, shape, pools, norms, self.num_prefix, recompute_pool
            )
            pooled += out
            shapes.append(out_shape)
        return pooled, shapes

    def forward(
        self, x: torch.Tensor, shape: Sequence[int], norm: nn.Module | None = None
    ) -> tuple[torch.Tensor, tuple[int, ...]]:
        """x: (B, p + prod(shape), dim); ``norm`` (the block's norm1) is applied to x first,
        fused with the qkv projection so that its output is not kept for backward."""
        b = x.shape[0]
        d = self.qkv.weight.shape[0] // 3
        # The query is pooled in the first block of a stage: there the qkv projection is at the
        # input resolution with the output width, the largest tensor of the block (6 input
        # widths in MViTv2). In training it is recomputed, with its pooling, in backward from
        # x (which the block keeps anyway), Q apart from K and V so that the recomputed
        # projection and its gradient exist for one part at a time.
        recompute = recompute_in_backward() and any(st > 1 for st in self.stride_q)
        if self.stride_q == self.stride_kv and not recompute:
            parts = [(None, (self.pool_q, self.pool_k, self.pool_v),
                      (self.norm_q, self.norm_k, self.norm_v))]
        else:
            # Q and K/V apart: each conv then reads a dense tensor, not a strided slice
            parts = [(slice(0, d), (self.pool_q,), (self.norm_q,)),
                     (slice(d, 3 * d), (self.pool_k, self.pool_v), (self.norm_k, self.norm_v))]
        if recompute:
            pooled, shapes = [], []
            for part in parts:
                out, out_shapes = checkpoint(self._project_and_pool, x, shape, norm, [part],
                                             False, use_reentrant=False)
                pooled += out
                shapes += out_shapes
        else:
            pooled, shapes = self._project_and_pool(x, shape, norm, parts)
        q, k, v = pooled
        q_shape, k_shape = shapes[0], shapes[-1]
        # q, k, v: (B, p + L, heads, C)
        impl = _attn_impl_for(self.attn_impl, q, self.use_rel_pos, bool(self.window_size))
        if self.window_size:
            out = self._windowed(q, k, v, q_shape, k_shape, impl)
        else:
            out = self.attend(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), q_shape, k_shape,
                impl=impl,
            ).transpose(1, 2)
        if self.residual_pooling:
            # the class token takes part too, as in the official image models (and timm)
            out = out + q
        return self.proj(out.reshape(b, -1, out.shape[2] * out.shape[3])), q_shape


def _on_key_axis(term: torch.Tensor, axis: int, k_shape: Sequence[int]) -> torch.Tensor:
    """A per-axis rel-pos term (..., k_shape[axis]) viewed on the key grid: (..., 1, ...,
    k_shape[axis], ..., 1), broadcast over the other key axes."""
    view = [1] * len(k_shape)
    view[axis] = k_shape[axis]
    return term.reshape(*term.shape[:-1], *view)


def _pad_grid(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Zero-pad a (B, H, W, heads, C) grid at the bottom/right to (B, height, width, heads, C)."""
    pad_h, pad_w = height - x.shape[1], width - x.shape[2]
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, 0, 0, pad_w, 0, pad_h))
    return x
