"""The MViT block: pooling attention + MLP, with pooled and projected skip connections."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn
from timm.layers import DropPath
from torch.utils.checkpoint import checkpoint

from .attention import MultiScaleAttention, as_tuple
from .linear import TOKEN_CHUNK, Linear, Mlp, norm_linear, onednn_applies, recompute_in_backward


class MultiScaleBlock(nn.Module):
    """x -> x' + Attn(norm1(x)) -> x'' + MLP(norm2(x'')), where x' is the skip path.

    Channel expansion ``dim -> dim_out`` happens either inside the attention (MViTv2,
    ``expand_in_attention=True``; the skip is ``proj(norm1(x))``) or at the end of the MLP
    (MViTv1; the skip of the MLP is ``proj(norm2(x))``). When the query is pooled (stride_q > 1)
    the skip is max-pooled with kernel stride+1 to the same grid.

    Shapes: forward(x (B, num_prefix + prod(shape), dim), shape) ->
        (B, num_prefix + prod(shape_out), dim_out), shape_out.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        qkv_pool_kernel: Sequence[int] = (3, 3),
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
        expand_in_attention: bool = True,
        attn_impl: str = "auto",
        window_padding: str = "detectron2",
    ):
        super().__init__()
        ndim = len(qkv_pool_kernel)
        self.expand_in_attention = expand_in_attention
        self.num_prefix = num_prefix
        attn_dim = dim_out if expand_in_attention else dim
        self.norm1 = norm_layer(dim)
        self.attn = MultiScaleAttention(
            dim,
            attn_dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            norm_layer=norm_layer,
            pool_kernel=qkv_pool_kernel,
            stride_q=stride_q,
            stride_kv=stride_kv,
            pool_mode=pool_mode,
            residual_pooling=residual_pooling,
            window_size=window_size,
            shift_windows=shift_windows,
            use_rel_pos=use_rel_pos,
            rel_pos_zero_init=rel_pos_zero_init,
            input_size=input_size,
            num_prefix=num_prefix,
            attn_impl=attn_impl,
            window_padding=window_padding,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(attn_dim)
        mlp_hidden = int(attn_dim * mlp_ratio)
        self.mlp = Mlp(attn_dim, mlp_hidden, dim_out, act_layer=act_layer)
        if dim != dim_out:
            self.proj = Linear(attn_dim if not expand_in_attention else dim, dim_out)

        stride_q = as_tuple(stride_q, ndim)
        self.pool_skip = None
        if any(s > 1 for s in stride_q):
            kernel = [s + 1 if s > 1 else s for s in stride_q]
            pool_cls = nn.MaxPool2d if ndim == 2 else nn.MaxPool3d
            self.pool_skip = pool_cls(kernel, stride_q, [k // 2 for k in kernel], ceil_mode=False)

    def _skip(
        self,
        x: torch.Tensor,
        x_in: torch.Tensor,
        shape: Sequence[int],
        norm1: nn.Module | None,
    ) -> torch.Tensor:
        """The attention's skip: the block input x, or in MViTv2 transition blocks the
        projection of ``norm1(x)`` to dim_out, max-pooled to the query grid. ``x_in`` is what
        the projections read: norm1(x), or x itself when ``norm1`` is given to be fused."""
        if self.expand_in_attention and hasattr(self, "proj"):
            x = norm_linear(x_in, norm1, [(self.proj.weight, self.proj.bias)])[0]
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

    def _inference_fast_path(self) -> bool:
        """No autograd and nothing stochastic: residual adds may run in place, MLP in chunks."""
        return not torch.is_grad_enabled() and isinstance(self.drop_path, nn.Identity)

    def forward(
        self, x: torch.Tensor, shape: Sequence[int]
    ) -> tuple[torch.Tensor, tuple[int, ...]]:
        # When training on the oneDNN path, norm1 and norm2 are applied inside the projections
        # that read them (fused there, so their outputs are not stored for backward);
        # otherwise norm1 is applied once here, as two projections may read it.
        fuse = torch.is_grad_enabled() and onednn_applies(x, self.attn.qkv.weight)
        norm1 = self.norm1 if fuse else None
        x_in = x if norm1 is not None else self.norm1(x)
        x_attn, out_shape = self.attn(x_in, shape, norm=norm1)
        if self.pool_skip is not None and recompute_in_backward():
            # the projected skip before pooling (and the pooling's indices) would be kept for
            # backward at the input resolution; recompute them from x, which is kept anyway
            skip = checkpoint(self._skip, x, x_in, shape, norm1, use_reentrant=False)
        else:
            skip = self._skip(x, x_in, shape, norm1)
        fast = self._inference_fast_path()
        # x_attn is a fresh tensor (the attention's projection), so adding into it is safe
        x = x_attn.add_(skip) if fast else skip + self.drop_path(x_attn)
        if not self.expand_in_attention and hasattr(self, "proj"):
            x_norm = self.norm2(x)
            return self.proj(x_norm) + self.drop_path(self.mlp(x_norm)), out_shape
        if fast:
            # Token chunks: the 4x-wide hidden layer of a chunk stays in cache and no
            # token-sized temporaries are allocated (each fresh allocation of a large tensor
            # costs page faults, which at detection sizes take as long as the GELU).
            for chunk in x.view(-1, x.shape[-1]).split(TOKEN_CHUNK):
                chunk += self.mlp(chunk, norm=self.norm2)
            return x, out_shape
        return x + self.drop_path(self.mlp(x, norm=self.norm2)), out_shape
