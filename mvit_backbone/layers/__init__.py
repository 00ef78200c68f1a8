"""Building blocks of MViT: pooling attention, windows, relative positions, patch embedding."""
from .attention import MultiScaleAttention, attention_pool, make_pool
from .blocks import MultiScaleBlock
from .patch_embed import PatchEmbed
from .rel_pos import rel_pos_bias, rel_pos_lookup, resize_rel_pos
from .windows import shifted_window_mask, window_partition, window_unpartition

__all__ = [
    "MultiScaleAttention",
    "MultiScaleBlock",
    "PatchEmbed",
    "attention_pool",
    "make_pool",
    "rel_pos_bias",
    "rel_pos_lookup",
    "resize_rel_pos",
    "shifted_window_mask",
    "window_partition",
    "window_unpartition",
]
