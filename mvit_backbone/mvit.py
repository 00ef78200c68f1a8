"""One MViT trunk for images (and, through the same blocks, video), MViTv1 and MViTv2 options.

The trunk is patch embedding -> [class token] -> [absolute position] -> blocks grouped in
stages. A stage ends at each index of ``last_block_indexes``; the next block pools the query by
2 (halving the resolution), doubles heads and channels, and halves the adaptive K/V stride.
Detection (``mvit_backbone.detection``) and classification (``mvit_backbone.classification``)
subclass it and add their own norms and heads; the trunk knows nothing of either.

Window modes (``window_mode``), with window sizes starting at ``adaptive_window_size`` and
halving every stage:

- ``"hwin"``: windows in every block except the last block of each of the last three stages,
  where K/V strides of stages 2 and 3 also double (MViTv2 §4.1, detectron2's MViT).
- ``"window"``: fixed non-overlapping windows in every block.
- ``"swin"``: windows in every block, alternate blocks of a stage shifted by half a window.
- ``"none"``: global pooling attention in every block.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from .layers import MultiScaleBlock, PatchEmbed

WINDOW_MODES = ("hwin", "swin", "window", "none")

# MViTv2 Table 1 (and detectron2's configs): embed_dim, depth, num_heads, last_block_indexes.
MVITV2_VARIANTS: dict[str, dict] = {
    "T": dict(embed_dim=96, depth=10, num_heads=1, last_block_indexes=(0, 2, 7, 9)),
    "S": dict(embed_dim=96, depth=16, num_heads=1, last_block_indexes=(0, 2, 13, 15)),
    "B": dict(embed_dim=96, depth=24, num_heads=1, last_block_indexes=(1, 4, 20, 23)),
    "L": dict(embed_dim=144, depth=48, num_heads=2, last_block_indexes=(1, 7, 43, 47)),
    "H": dict(embed_dim=192, depth=80, num_heads=3, last_block_indexes=(3, 11, 71, 79)),
}


def mvitv2_variant(name: str) -> dict:
    """Architecture arguments of an MViTv2 variant by name ("T", "mvitv2_t", "tiny", ...)."""
    aliases = {"tiny": "T", "small": "S", "base": "B", "large": "L", "huge": "H"}
    key = name.lower().replace("mvitv2_", "").replace("mvitv2-", "")
    key = aliases.get(key, key.upper())
    if key not in MVITV2_VARIANTS:
        raise ValueError(
            f"unknown MViTv2 variant {name!r}; known: {sorted(MVITV2_VARIANTS)} "
            f"(or mvitv2_t ... mvitv2_h)"
        )
    return dict(MVITV2_VARIANTS[key])


def interpolate_abs_pos(pos: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Square absolute position grid (1, N, C) -> (1, prod(shape), C), bicubic when resized."""
    n = pos.shape[1]
    side = int(math.sqrt(n))
    if side * side != n:
        raise ValueError(f"absolute position embedding of {n} tokens is not a square grid")
    if tuple(shape) == (side, side):
        return pos
    grid = pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(shape), mode="bicubic", align_corners=False)
    # contiguous tokens: added to the patch tokens, a transposed view would make the sum (and
    # so the first blocks' tensors) strided
    return grid.flatten(2).transpose(1, 2).contiguous()


class MViTTrunk(nn.Module):
    """Patch embedding and MViT blocks. Arguments and defaults follow detectron2's ``MViT``.

    Extra arguments:
        window_mode: "hwin" | "swin" | "window" | "none" (see the module docstring).
        pool_mode: "conv" (MViTv2), "max" or "avg" pooling of Q/K/V (MViTv1 options).
        use_cls_token: prepend a class token (MViTv1 and classification checkpoints).
        expand_in_attention: channel expansion in the attention of a stage's first block (v2)
            instead of in the MLP of a stage's last block (v1).
        attn_impl: "auto" | "sdpa" | "folded" | "explicit": how attention is computed (same
            result; see :class:`~mvit_backbone.layers.MultiScaleAttention`).
        window_padding: "detectron2" (default, detectron2's results) | "minimal" (no padded
            windows; differs from detectron2 where the pooled grids are not window multiples).

    Shapes: ``forward_stages(x (B, C, H, W))`` returns, per stage, tokens (B, [1 +] H_s * W_s,
    C_s) and the grid (H_s, W_s).
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_kernel: Sequence[int] = (7, 7),
        patch_stride: Sequence[int] = (4, 4),
        patch_padding: Sequence[int] = (3, 3),
        in_chans: int = 3,
        embed_dim: int = 96,
        depth: int = 16,
        num_heads: int = 1,
        last_block_indexes: Sequence[int] = (0, 2, 11, 15),
        qkv_pool_kernel: Sequence[int] = (3, 3),
        adaptive_kv_stride: int = 4,
        adaptive_window_size: int = 56,
        residual_pooling: bool = True,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        use_abs_pos: bool = False,
        use_rel_pos: bool = True,
        rel_pos_zero_init: bool = True,
        use_act_checkpoint: bool = False,
        pretrain_img_size: int = 224,
        pretrain_use_cls_token: bool = True,
        window_mode: str = "hwin",
        pool_mode: str = "conv",
        use_cls_token: bool = False,
        expand_in_attention: bool = True,
        attn_impl: str = "auto",
        window_padding: str = "detectron2",
    ):
        super().__init__()
        if window_mode not in WINDOW_MODES:
            raise ValueError(f"window_mode must be one of {WINDOW_MODES}, got {window_mode!r}")
        if len(last_block_indexes) < 1 or max(last_block_indexes) >= depth:
            raise ValueError(f"last_block_indexes {last_block_indexes} do not fit depth {depth}")
        self.in_chans = in_chans
        self.patch_kernel = tuple(patch_kernel)
        self.patch_stride = tuple(patch_stride)
        self.window_mode = window_mode
        self.use_act_checkpoint = use_act_checkpoint
        self.norm_layer = norm_layer  # heads of subclasses use the same norm
        self.num_prefix = 1 if use_cls_token else 0
        self._last_block_indexes = tuple(last_block_indexes)

        self.patch_embed = PatchEmbed(patch_kernel, patch_stride, patch_padding, in_chans, embed_dim)
        if use_cls_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = None
        self._pos_has_cls = use_cls_token or pretrain_use_cls_token
        if use_abs_pos:
            grid = [pretrain_img_size // s for s in patch_stride]
            self.pos_embed = nn.Parameter(
                torch.zeros(1, math.prod(grid) + int(self._pos_has_cls), embed_dim)
            )

        # stochastic depth grows linearly with depth (plain floats: works on the meta device too)
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        ends = self._last_block_indexes
        stage_starts = {0} | {i + 1 for i in ends}
        input_size = [img_size // s for s in patch_stride]
        window = adaptive_window_size
        stride_kv = adaptive_kv_stride
        dim, heads = embed_dim, num_heads
        self.stage_channels: list[int] = []
        self.stage_strides: list[int] = []
        stride = patch_stride[0]
        self.blocks = nn.ModuleList()
        index_in_stage = 0
        for i in range(depth):
            pooled = i > 0 and i - 1 in ends
            if expand_in_attention:
                dim_out = dim * 2 if pooled else dim
            else:
                dim_out = dim * 2 if (i in ends and i != ends[-1]) else dim
            block_kv = stride_kv
            block_window = window
            if window_mode == "hwin":
                if i in ends[1:3]:
                    block_kv = stride_kv * 2
                if i in ends[1:]:
                    block_window = 0
            elif window_mode == "none":
                block_window = 0
            index_in_stage = 0 if i in stage_starts else index_in_stage + 1
            self.blocks.append(
                MultiScaleBlock(
                    dim=dim,
                    dim_out=dim_out,
                    num_heads=heads,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    drop_path=dpr[i],
                    norm_layer=norm_layer,
                    act_layer=act_layer,
                    qkv_pool_kernel=qkv_pool_kernel,
                    stride_q=2 if pooled else 1,
                    stride_kv=block_kv,
                    pool_mode=pool_mode,
                    residual_pooling=residual_pooling,
                    window_size=block_window,
                    shift_windows=window_mode == "swin" and index_in_stage % 2 == 1,
                    use_rel_pos=use_rel_pos,
                    rel_pos_zero_init=rel_pos_zero_init,
                    input_size=input_size,
                    num_prefix=self.num_prefix,
                    expand_in_attention=expand_in_attention,
                    attn_impl=attn_impl,
                    window_padding=window_padding,
                )
            )
            dim = dim_out
            if i in ends:
                self.stage_channels.append(dim_out)
                self.stage_strides.append(stride)
                heads *= 2
                stride_kv = max(stride_kv // 2, 1)
                stride *= 2
            if pooled:
                window //= 2
                input_size = [s // 2 for s in input_size]
        self.num_features = dim

        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if use_cls_token:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError for inputs the trunk cannot take, naming what is wrong."""
        ndim = len(self.patch_kernel)
        layout = "(B, C, H, W)" if ndim == 2 else "(B, C, T, H, W)"
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"expected a tensor {layout}, got {type(x).__name__}")
        if x.dim() != ndim + 2:
            raise ValueError(
                f"expected a {ndim + 2}-D tensor {layout}, got a {x.dim()}-D tensor of shape "
                f"{tuple(x.shape)}"
            )
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"expected {self.in_chans} input channels, got {x.shape[1]} (shape {tuple(x.shape)})"
            )
        size = tuple(x.shape[2:])
        if any(s < p for s, p in zip(size, self.patch_stride)):
            raise ValueError(
                f"input of spatial size {size} is smaller than one patch {self.patch_stride}"
            )

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        self.check_input(x)
        x, shape = self.patch_embed(x)
        if self.pos_embed is not None:
            pos = self.pos_embed
            cls_pos = pos[:, :1] if self._pos_has_cls else None
            spatial = pos[:, 1:] if self._pos_has_cls else pos
            x = x + interpolate_abs_pos(spatial, shape)
        if self.num_prefix:
            cls = self.cls_token.expand(x.shape[0], -1, -1)
            if self.pos_embed is not None:
                cls = cls + cls_pos
            x = torch.cat([cls, x], dim=1)
        return x, shape

    def _run_block(self, block: nn.Module, x: torch.Tensor, shape: tuple[int, ...]):
        if self.use_act_checkpoint and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(block, x, shape, use_reentrant=False)
        return block(x, shape)

    def forward_stages(self, x: torch.Tensor) -> list[tuple[torch.Tensor, tuple[int, ...]]]:
        """Run the trunk; return (tokens, grid shape) at the end of every stage."""
        x, shape = self._embed(x)
        outputs = []
        for i, block in enumerate(self.blocks):
            x, shape = self._run_block(block, x, shape)
            if i in self._last_block_indexes:
                outputs.append((x, shape))
        return outputs
