"""Building blocks of MViT: pooling attention, windows, relative positions, patch embedding."""
from .attention import ATTN_IMPLS, WINDOW_PADDINGS, MultiScaleAttention, attention_pool, make_pool
from .blocks import MultiScaleBlock
from .patch_embed import PatchEmbed
from .rel_pos import rel_pos_bias, rel_pos_lookup, resize_rel_pos
from .windows import (
    partition_run,
    shifted_window_mask,
    unpartition_run,
    window_partition,
    window_runs,
    window_unpartition,
)

__all__ = [
    "ATTN_IMPLS",
    "WINDOW_PADDINGS",
    "MultiScaleAttention",
    "MultiScaleBlock",
    "PatchEmbed",
    "attention_pool",
    "make_pool",
    "partition_run",
    "rel_pos_bias",
    "rel_pos_lookup",
    "resize_rel_pos",
    "shifted_window_mask",
    "unpartition_run",
    "window_partition",
    "window_runs",
    "window_unpartition",
]
