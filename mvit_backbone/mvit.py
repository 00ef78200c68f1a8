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
- ``"window"``, ``"swin"``, ``"hwin"`` with ``global_blocks``: global attention in exactly the
  listed blocks (no stride change), windows in the others.
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

from .kernels import check_policy, eager_mode, run_block
from .layers import AttentionConfig, BlockConfig, MultiScaleBlock, PatchEmbed
from .layers.attention import AttendFn

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


def interpolate_abs_pos(
    pos: torch.Tensor, shape: Sequence[int], src_shape: Sequence[int] | None = None
) -> torch.Tensor:
    """Absolute position grid (1, N, C) of ``src_shape`` (default: a square 2-D grid) ->
    (1, prod(shape), C), linear (1-D), bicubic (2-D) or trilinear (3-D) when resized."""
    n = pos.shape[1]
    if src_shape is None:
        side = int(math.sqrt(n))
        if side * side != n:
            raise ValueError(f"absolute position embedding of {n} tokens is not a square grid")
        src_shape = (side, side)
    if tuple(shape) == tuple(src_shape):
        return pos
    grid = pos.reshape(1, *src_shape, -1).movedim(-1, 1)
    mode = {1: "linear", 2: "bicubic", 3: "trilinear"}[len(src_shape)]
    grid = F.interpolate(grid, size=tuple(shape), mode=mode, align_corners=False)
    # contiguous tokens: added to the patch tokens, a transposed view would make the sum (and
    # so the first blocks' tensors) strided
    return grid.flatten(2).transpose(1, 2).contiguous()


class MViTTrunk(nn.Module):
    """Patch (or cube) embedding and MViT blocks. Arguments and defaults follow detectron2's
    ``MViT``; 3-D (video) when ``patch_kernel`` has three entries.

    Extra arguments:
        window_mode: "hwin" | "swin" | "window" | "none" (see the module docstring).
        window_padding: "detectron2" (default, detectron2's results) | "minimal" (no padded
            windows; differs from detectron2 where the pooled grids are not window multiples).
        pool_mode: "conv" (MViTv2), "max" or "avg" pooling of Q/K/V (MViTv1 options).
        pool_q_unstrided: pool the query in every block (MViTv2); False: only where it is
            strided, at stage transitions (MViTv1).
        residual_pooling_cls: residual pooling adds to the class token too (image models);
            False: to the grid tokens only (the video models of PySlowFast and torchvision).
        pool_norm_layer: the norm of the pooled Q/K/V, None (default): ``norm_layer``
            (pytorchvideo's MViT uses ``nn.LayerNorm`` with its default eps there).
        use_cls_token: prepend a class token (MViTv1 and classification checkpoints).
        sep_pos_embed: with ``use_abs_pos`` on video, separate space and time absolute
            positions, ``pos_embed_spatial`` (1, H*W, C) + ``pos_embed_temporal`` (1, T, C),
            and ``pos_embed_class`` (1, 1, C) for the class token (MViTv1 §3, App. D).
        expand_in_attention: channel expansion in the attention of a stage's first block (v2)
            instead of in the MLP of a stage's last block (v1).
        num_frames: clip length the model is built for (3-D only; sets the rel-pos tables and
            the absolute positions, which interpolate to other lengths).
        kernels: execution policy, "auto" (default) or "reference" (plain PyTorch); same result
            (see :mod:`mvit_backbone.kernels`).
        dim_mul, head_mul: channels and heads are multiplied by these at every stage transition
            (2 in MViT; 1 keeps the width, as the two-scale ViT-B of MViTv1 Table A.2).
        global_blocks: the blocks that attend globally in a window mode (e.g. ViT-B's Hwin, its
            12 blocks as 4 groups of 3: (5, 8, 11); or a stage whose grid a window cannot
            split); None: detectron2's rule for "hwin", no global block for the others.
        pool_stride_one: apply the Q/K/V pooling operator also where its stride is 1 (MViTv2,
            detectron2); False leaves such tensors unpooled (a plain ViT block).

    In 3-D, pooling kernels, strides and windows apply per (t, h, w) axis: the query is pooled
    in space only at stage transitions (1, 2, 2), the adaptive K/V stride is (1, s, s).

    Shapes: ``forward_stages(x (B, C, H, W) or (B, C, T, H, W))`` returns, per stage, tokens
    (B, [1 +] prod(grid_s), C_s) and the grid ((T_s,) H_s, W_s) (:meth:`stage_grids`).

    Inputs (:meth:`check_input`): any size of at least one patch (``patch_stride``) per axis,
    smaller is a ``ValueError`` saying the minimum; a batch of 0 gives empty outputs of the
    shapes a batch of 1 would have; a floating-point dtype other than the weights' is a
    ``ValueError`` outside ``torch.autocast`` (cast the input, or the model); NaN or infinite
    input values are a ``ValueError`` while ``check_finite_input`` is True (the default; set
    it to False to skip the check, which reads the whole input once).
    """

    check_finite_input: bool = True

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
        pool_norm_layer: Callable[[int], nn.Module] | None = None,
        use_abs_pos: bool = False,
        use_rel_pos: bool = True,
        rel_pos_zero_init: bool = True,
        use_act_checkpoint: bool = False,
        pretrain_img_size: int = 224,
        pretrain_use_cls_token: bool = True,
        window_mode: str = "hwin",
        window_padding: str = "detectron2",
        pool_mode: str = "conv",
        pool_q_unstrided: bool = True,
        residual_pooling_cls: bool = True,
        use_cls_token: bool = False,
        sep_pos_embed: bool = False,
        expand_in_attention: bool = True,
        num_frames: int = 16,
        kernels: str = "auto",
        dim_mul: int = 2,
        head_mul: int = 2,
        global_blocks: Sequence[int] | None = None,
        pool_stride_one: bool = True,
    ):
        super().__init__()
        if window_mode not in WINDOW_MODES:
            raise ValueError(f"window_mode must be one of {WINDOW_MODES}, got {window_mode!r}")
        if len(last_block_indexes) < 1 or max(last_block_indexes) >= depth:
            raise ValueError(f"last_block_indexes {last_block_indexes} do not fit depth {depth}")
        ndim = len(patch_kernel)
        if len(patch_stride) != ndim or len(patch_padding) != ndim or len(qkv_pool_kernel) != ndim:
            raise ValueError("patch_kernel, patch_stride, patch_padding and qkv_pool_kernel "
                             f"need one entry per grid axis ({ndim})")
        if ndim == 3 and window_mode != "none":
            raise ValueError("video (3-D) models use global attention: window_mode='none'")
        if sep_pos_embed and (ndim != 3 or not use_abs_pos):
            raise ValueError("sep_pos_embed needs a video (3-D) model with use_abs_pos=True")
        self.kernels = check_policy(kernels)
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
        # the grid the model is built for, and the one its absolute positions were trained on
        frames = (num_frames,) if ndim == 3 else ()
        input_size = [n // s for n, s in zip(frames + (img_size,) * 2, patch_stride)]
        self._pos_grid = tuple(n // s for n, s in zip(frames + (pretrain_img_size,) * 2, patch_stride))
        self.pos_embed = None
        self.sep_pos_embed = sep_pos_embed
        self._pos_has_cls = use_cls_token or pretrain_use_cls_token
        if use_abs_pos and sep_pos_embed:
            frames_grid, *space_grid = self._pos_grid
            self.pos_embed_spatial = nn.Parameter(torch.zeros(1, math.prod(space_grid), embed_dim))
            self.pos_embed_temporal = nn.Parameter(torch.zeros(1, frames_grid, embed_dim))
            if use_cls_token:
                self.pos_embed_class = nn.Parameter(torch.zeros(1, 1, embed_dim))
        elif use_abs_pos:
            self.pos_embed = nn.Parameter(
                torch.zeros(1, math.prod(self._pos_grid) + int(self._pos_has_cls), embed_dim)
            )

        self.block_configs = block_configs(
            ndim=ndim, input_size=input_size, embed_dim=embed_dim, depth=depth,
            num_heads=num_heads, last_block_indexes=self._last_block_indexes,
            window_mode=window_mode, adaptive_window_size=adaptive_window_size,
            adaptive_kv_stride=adaptive_kv_stride, drop_path_rate=drop_path_rate,
            expand_in_attention=expand_in_attention, mlp_ratio=mlp_ratio,
            norm_layer=norm_layer, act_layer=act_layer, pool_norm_layer=pool_norm_layer,
            dim_mul=dim_mul, head_mul=head_mul, global_blocks=global_blocks,
            attention=dict(
                qkv_bias=qkv_bias, pool_kernel=tuple(qkv_pool_kernel), pool_mode=pool_mode,
                pool_q_unstrided=pool_q_unstrided, residual_pooling=residual_pooling,
                residual_pooling_cls=residual_pooling_cls, window_padding=window_padding,
                use_rel_pos=use_rel_pos, rel_pos_zero_init=rel_pos_zero_init,
                num_prefix=self.num_prefix, pool_stride_one=pool_stride_one,
            ),
        )
        self.blocks = nn.ModuleList(MultiScaleBlock(cfg) for cfg in self.block_configs)
        self.stage_channels = [self.block_configs[i].dim_out for i in self._last_block_indexes]
        self.stage_strides = [patch_stride[-1] * 2**s for s in range(len(self._last_block_indexes))]
        self.num_features = self.block_configs[-1].dim_out

        for name in ("pos_embed", "pos_embed_spatial", "pos_embed_temporal", "pos_embed_class"):
            if getattr(self, name, None) is not None:
                nn.init.trunc_normal_(getattr(self, name), std=0.02)
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
            minimum = " x ".join(map(str, self.patch_stride))
            raise ValueError(
                f"input of size {' x '.join(map(str, size))} is smaller than one patch: the "
                f"minimum size is {minimum} (patch_stride {self.patch_stride})"
            )
        weight = self.patch_embed.proj.weight
        if not x.is_floating_point():
            raise ValueError(f"expected a floating-point input, got {x.dtype} (normalise images "
                             "to float first)")
        if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
            raise ValueError(
                f"input dtype {x.dtype} differs from the model's {weight.dtype}: cast the input "
                f"(x.to({weight.dtype})), or the model (model.to({x.dtype})), or run under "
                "torch.autocast"
            )
        # a value check: skipped while tracing, compiling or exporting (the graph has no
        # data-dependent branches)
        if (self.check_finite_input and eager_mode() and x.numel()
                and not bool(torch.isfinite(x).all())):
            raise ValueError(
                f"input holds NaN or infinite values ({int((~torch.isfinite(x)).sum())} of "
                f"{x.numel()}); set model.check_finite_input = False to skip this check"
            )

    def stage_grids(self, size: Sequence[int]) -> list[tuple[int, ...]]:
        """The token grid ((T,) H, W) at the end of every stage for an input of ``size``
        ((T,) H, W): the patch embedding's conv, then each query pooling (kernel k, stride s,
        padding k // 2) of the blocks."""
        conv = self.patch_embed.proj
        grid = [(n + 2 * p - k) // s + 1
                for n, p, k, s in zip(size, conv.padding, conv.kernel_size, conv.stride)]
        grids = []
        for i, cfg in enumerate(self.block_configs):
            attn = cfg.attention
            grid = [n if s == 1 else (n + 2 * (k // 2) - k) // s + 1
                    for n, k, s in zip(grid, attn.pool_kernel, attn.stride_q)]
            if i in self._last_block_indexes:
                grids.append(tuple(grid))
        return grids

    def separate_abs_pos(self, shape: Sequence[int]) -> torch.Tensor:
        """Space + time absolute positions (``sep_pos_embed``) on the grid ``shape`` (T, H, W):
        (1, T*H*W, C), the temporal table interpolated linearly and the spatial one bicubically
        when the grid differs from the one they were built for."""
        frames_grid, *space_grid = self._pos_grid
        temporal = interpolate_abs_pos(self.pos_embed_temporal, shape[:1], (frames_grid,))
        spatial = interpolate_abs_pos(self.pos_embed_spatial, shape[1:], space_grid)
        return (temporal[:, :, None] + spatial[:, None]).flatten(1, 2)

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        self.check_input(x)
        x, shape = self.patch_embed(x)
        cls_pos = None
        if self.sep_pos_embed:
            x = x + self.separate_abs_pos(shape)
            cls_pos = getattr(self, "pos_embed_class", None)
        elif self.pos_embed is not None:
            pos = self.pos_embed
            cls_pos = pos[:, :1] if self._pos_has_cls else None
            spatial = pos[:, 1:] if self._pos_has_cls else pos
            x = x + interpolate_abs_pos(spatial, shape, self._pos_grid)
        if self.num_prefix:
            cls = self.cls_token.expand(x.shape[0], -1, -1)
            if cls_pos is not None:
                cls = cls + cls_pos
            x = torch.cat([cls, x], dim=1)
        return x, shape

    def _run_block(self, block: MultiScaleBlock, x: torch.Tensor, shape: tuple[int, ...],
                   input_pixels: int):
        args = (self.kernels, block, x, shape, input_pixels)
        if self.use_act_checkpoint and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(run_block, *args, use_reentrant=False)
        return run_block(*args)

    def forward_stages(
        self, x: torch.Tensor, attend: AttendFn | None = None
    ) -> list[tuple[torch.Tensor, tuple[int, ...]]]:
        """Run the trunk; return (tokens, grid shape) at the end of every stage. ``attend``:
        run every block's own forward with this attention function instead of the execution
        policy's choice (analysis, e.g. recording the attention probabilities)."""
        if x.shape[0] == 0:  # nothing to compute: empty tokens of the shapes a batch would get
            self.check_input(x)
            return [(x.new_zeros(0, self.num_prefix + math.prod(grid), channels), grid)
                    for grid, channels in zip(self.stage_grids(x.shape[2:]), self.stage_channels)]
        input_pixels = x.shape[0] * math.prod(x.shape[2:])
        x, shape = self._embed(x)
        outputs = []
        for i, block in enumerate(self.blocks):
            if attend is None:
                x, shape = self._run_block(block, x, shape, input_pixels)
            else:
                x, shape = block(x, shape, attend)
            if i in self._last_block_indexes:
                outputs.append((x, shape))
        return outputs


def block_configs(
    ndim: int,
    input_size: Sequence[int],
    embed_dim: int,
    depth: int,
    num_heads: int,
    last_block_indexes: Sequence[int],
    window_mode: str,
    adaptive_window_size: int,
    adaptive_kv_stride: int,
    drop_path_rate: float,
    expand_in_attention: bool,
    mlp_ratio: float,
    norm_layer: Callable[[int], nn.Module],
    act_layer: Callable[[], nn.Module],
    attention: dict,
    pool_norm_layer: Callable[[int], nn.Module] | None = None,
    dim_mul: int = 2,
    head_mul: int = 2,
    global_blocks: Sequence[int] | None = None,
) -> list[BlockConfig]:
    """Per-block options of an MViT: stages end at ``last_block_indexes``; the next block pools
    the query by 2 in space, multiplies the channels by ``dim_mul`` (in its attention, or in v1
    the MLP of the stage's last block), heads by ``head_mul``, and the K/V stride and window
    halve per stage. ``attention``: the options every block's :class:`AttentionConfig` shares."""
    ends = tuple(last_block_indexes)
    hwin_rule = window_mode == "hwin" and global_blocks is None
    global_blocks = ends[1:] if hwin_rule else tuple(global_blocks or ())
    doubled_kv_blocks = ends[1:3] if hwin_rule else ()
    stage_starts = {0} | {i + 1 for i in ends}
    time_axes = (1,) * (ndim - 2)  # video: no pooling in time
    input_size = list(input_size)
    window, stride_kv, dim, heads = adaptive_window_size, adaptive_kv_stride, embed_dim, num_heads
    index_in_stage = 0
    configs = []
    for i in range(depth):
        pooled = i > 0 and i - 1 in ends
        if expand_in_attention:
            dim_out = dim * dim_mul if pooled else dim
        else:
            dim_out = dim * dim_mul if (i in ends and i != ends[-1]) else dim
        block_kv, block_window = stride_kv, window
        if i in doubled_kv_blocks:
            block_kv = stride_kv * 2
        if window_mode == "none" or i in global_blocks:
            block_window = 0
        index_in_stage = 0 if i in stage_starts else index_in_stage + 1
        configs.append(BlockConfig(
            dim=dim,
            dim_out=dim_out,
            mlp_ratio=mlp_ratio,
            # stochastic depth grows linearly with depth
            drop_path=drop_path_rate * i / max(depth - 1, 1),
            expand_in_attention=expand_in_attention,
            norm_layer=norm_layer,
            act_layer=act_layer,
            pool_norm_layer=pool_norm_layer,
            attention=AttentionConfig(
                num_heads=heads,
                stride_q=time_axes + ((2, 2) if pooled else (1, 1)),
                stride_kv=time_axes + (block_kv,) * 2,
                window_size=block_window,
                shift_windows=window_mode == "swin" and index_in_stage % 2 == 1,
                input_size=tuple(input_size),
                **attention,
            ),
        ))
        dim = dim_out
        if i in ends:
            heads *= head_mul
            stride_kv = max(stride_kv // 2, 1)
        if pooled:
            window //= 2
            input_size[-2:] = [s // 2 for s in input_size[-2:]]
    return configs
