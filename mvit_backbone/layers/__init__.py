"""What MViT computes, in plain PyTorch: pooling attention, windows, relative positions, blocks,
patch embedding. (How it is computed fast lives in ``mvit_backbone.kernels``.)"""
from .attention import (
    WINDOW_PADDINGS,
    AttentionConfig,
    DepthwiseConvFn,
    MultiScaleAttention,
    attend,
    attention_pool,
    attention_probs,
    make_pool,
    plain_depthwise_conv,
    pool_grid,
)
from .blocks import BlockConfig, Mlp, MultiScaleBlock
from .patch_embed import PatchEmbed
from .rel_pos import RelPos, rel_pos_lookup, resize_rel_pos
from .windows import (
    partition_run,
    shifted_window_mask,
    unpartition_run,
    window_partition,
    window_runs,
    window_unpartition,
)

__all__ = [
    "WINDOW_PADDINGS",
    "AttentionConfig",
    "BlockConfig",
    "DepthwiseConvFn",
    "Mlp",
    "MultiScaleAttention",
    "MultiScaleBlock",
    "PatchEmbed",
    "RelPos",
    "attend",
    "attention_pool",
    "attention_probs",
    "make_pool",
    "partition_run",
    "plain_depthwise_conv",
    "pool_grid",
    "rel_pos_lookup",
    "resize_rel_pos",
    "shifted_window_mask",
    "unpartition_run",
    "window_partition",
    "window_runs",
    "window_unpartition",
]
