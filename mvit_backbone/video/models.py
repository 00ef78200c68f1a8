"""Video classification models: the 3-D MViT trunk + norm + class token + dropout + linear head.

A video model is :class:`~mvit_backbone.classification.MViTClassifier` on a clip: the trunk is
3-D when ``patch_kernel`` has three entries (cube stem 3x7x7, stride 2x4x4; MViTv1 Table A.4),
the query is pooled in space only at stage transitions (1x2x2) and the adaptive K/V stride
starts at 1x8x8 and halves in space per stage (1x4x4, 1x2x2, 1x1x1). The class token is
pooled for the head, as in PySlowFast and torchvision.

Shapes: forward(x (B, 3, T, H, W)) -> logits (B, num_classes). Any T, H, W run: the relative
(MViTv2) and absolute (MViTv1) position embeddings interpolate to the clip's token grid.

The builders register under the names of ``mvit_backbone.create_model`` (one registry for
image and video models): ``mvitv2_s_16x4``, ``mvitv2_b_32x3``, ``mvitv2_l_40x3`` (312²),
``mvitv1_b_16x4``, ``mvitv1_b_32x3``, ``mvitv1_b24_32x3`` and the slim ``mvitv2_video_nano``.
"""
from __future__ import annotations

from functools import partial

import torch.nn as nn

from ..classification.models import MViTClassifier, register_model
from ..mvit import mvitv2_variant

# The 3-D stem and pooling shared by every video model (MViTv1 App. D, MViTv2 App. B.4).
_VIDEO = dict(
    patch_kernel=(3, 7, 7),
    patch_stride=(2, 4, 4),
    patch_padding=(1, 3, 3),
    qkv_pool_kernel=(3, 3, 3),
    adaptive_kv_stride=8,
    use_cls_token=True,
    norm_layer=partial(nn.LayerNorm, eps=1e-6),
    head_dropout=0.5,
    img_size=224,
)
# MViTv2: decomposed rel-pos over t, h, w, residual pooling of the grid tokens, no absolute
# position, channel expansion in the attention, Q pooled (stride 1) in every block.
_MVITV2_VIDEO = dict(
    _VIDEO,
    use_abs_pos=False,
    use_rel_pos=True,
    rel_pos_zero_init=False,
    residual_pooling=True,
    residual_pooling_cls=False,
)
# MViTv1: separate space and time absolute positions, no rel-pos, no residual pooling, channel
# expansion in the MLP of a stage's last block, Q pooled only at stage transitions.
_MVITV1_VIDEO = dict(
    _VIDEO,
    embed_dim=96,
    num_heads=1,
    use_abs_pos=True,
    sep_pos_embed=True,
    use_rel_pos=False,
    residual_pooling=False,
    expand_in_attention=False,
    pool_q_unstrided=False,
)


def _video_model(defaults: dict, num_classes: int, **overrides) -> MViTClassifier:
    kwargs = dict(defaults, **overrides)
    # absolute positions (MViTv1) are built for the clip size the model is built for
    kwargs.setdefault("pretrain_img_size", kwargs["img_size"])
    return MViTClassifier(num_classes=num_classes, **kwargs)


def _mvitv2_video(variant: str, num_classes: int, **overrides) -> MViTClassifier:
    """MViTv2 video model (MViTv2 §4.3, App. B.4; PySlowFast MVITv2 configs): the image
    variant's width, depth, heads and stages on the 3-D trunk."""
    return _video_model(dict(_MVITV2_VIDEO, **mvitv2_variant(variant)), num_classes, **overrides)


def _mvitv1_video(num_classes: int, **overrides) -> MViTClassifier:
    """MViTv1 video model (MViTv1 §3, Table 3 and App. D; PySlowFast MVIT_B configs)."""
    return _video_model(_MVITV1_VIDEO, num_classes, **overrides)


# keyword arguments win over a builder's defaults
def _with(defaults: dict, overrides: dict) -> dict:
    return dict(defaults, **overrides)


@register_model
def mvitv2_s_16x4(num_classes: int = 400, **kw) -> MViTClassifier:
    """MViTv2-S, 16 frames (sampling rate 4), 224²."""
    return _mvitv2_video("S", num_classes, **_with(dict(num_frames=16, drop_path_rate=0.2), kw))


@register_model
def mvitv2_b_32x3(num_classes: int = 400, **kw) -> MViTClassifier:
    """MViTv2-B, 32 frames (sampling rate 3), 224²."""
    return _mvitv2_video("B", num_classes, **_with(dict(num_frames=32, drop_path_rate=0.3), kw))


@register_model
def mvitv2_l_40x3(num_classes: int = 400, **kw) -> MViTClassifier:
    """MViTv2-L, 40 frames (sampling rate 3), 312²."""
    # as the image MViTv2-L, channels expand in the MLP of a stage's last block (217.6 M
    # parameters, MViTv2 Table 7)
    defaults = dict(num_frames=40, img_size=312, drop_path_rate=0.75, expand_in_attention=False)
    return _mvitv2_video("L", num_classes, **_with(defaults, kw))


_MVITV1_B = dict(depth=16, last_block_indexes=(0, 2, 13, 15))


@register_model
def mvitv1_b_16x4(num_classes: int = 400, **kw) -> MViTClassifier:
    """MViTv1-B, 16 blocks, 16 frames (sampling rate 4), 224²."""
    return _mvitv1_video(num_classes, **_with(dict(_MVITV1_B, num_frames=16, drop_path_rate=0.2), kw))


@register_model
def mvitv1_b_32x3(num_classes: int = 400, **kw) -> MViTClassifier:
    """MViTv1-B, 16 blocks, 32 frames (sampling rate 3), 224²."""
    return _mvitv1_video(num_classes, **_with(dict(_MVITV1_B, num_frames=32, drop_path_rate=0.3), kw))


@register_model
def mvitv1_b24_32x3(num_classes: int = 400, **kw) -> MViTClassifier:
    """MViTv1-B-24, 24 blocks, 32 frames (sampling rate 3), 224²."""
    defaults = dict(depth=24, last_block_indexes=(1, 4, 20, 23), num_frames=32, drop_path_rate=0.3)
    return _mvitv1_video(num_classes, **_with(defaults, kw))


@register_model
def mvitv2_video_nano(num_classes: int = 400, **kw) -> MViTClassifier:
    """A slim MViTv2 video model (not in the papers) for CPU runs on small clips, e.g. the
    synthetic default of ``projects/MViTv2/train_video.py``: width 32, 4 blocks, one per stage,
    built for 8 frames of 64² (other sizes interpolate); K/V stride 4 in stage 1, no dropout."""
    defaults = dict(embed_dim=32, depth=4, num_heads=1, last_block_indexes=(0, 1, 2, 3),
                    adaptive_kv_stride=4, drop_path_rate=0.0, head_dropout=0.0, num_frames=8,
                    img_size=64)
    return _video_model(_MVITV2_VIDEO, num_classes, **_with(defaults, kw))
