"""yacs support: ``cfg.MODEL.MVITV2`` and the detectron2 backbone builders that read it."""
from __future__ import annotations

from functools import partial

import torch.nn as nn
from detectron2.config import CfgNode as CN
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, FPN
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

from ..mvit import mvitv2_variant
from .backbone import MViT


def add_mvitv2_config(cfg: CN) -> CN:
    """Add ``cfg.MODEL.MVITV2``: a variant name plus every constructor argument of MViT.

    Architecture keys left at ``None`` take the variant's value (Table 1 of MViTv2).
    """
    c = CN()
    c.VARIANT = "T"
    c.EMBED_DIM = None
    c.DEPTH = None
    c.NUM_HEADS = None
    c.LAST_BLOCK_INDEXES = None
    c.IMG_SIZE = 224
    c.PATCH_KERNEL = (7, 7)
    c.PATCH_STRIDE = (4, 4)
    c.PATCH_PADDING = (3, 3)
    c.QKV_POOL_KERNEL = (3, 3)
    c.ADAPTIVE_KV_STRIDE = 4
    c.ADAPTIVE_WINDOW_SIZE = 56
    c.RESIDUAL_POOLING = True
    c.MLP_RATIO = 4.0
    c.QKV_BIAS = True
    c.DROP_PATH_RATE = 0.2
    c.NORM_EPS = 1e-6
    c.USE_ABS_POS = False
    c.USE_REL_POS = True
    c.REL_POS_ZERO_INIT = True
    c.USE_ACT_CHECKPOINT = False
    c.PRETRAIN_IMG_SIZE = 224
    c.PRETRAIN_USE_CLS_TOKEN = True
    c.WINDOW_MODE = "hwin"
    c.POOL_MODE = "conv"
    c.ATTN_IMPL = "auto"
    c.WINDOW_PADDING = "detectron2"
    c.OUT_FEATURES = ("scale2", "scale3", "scale4", "scale5")
    cfg.MODEL.MVITV2 = c
    return cfg


def mvit_kwargs_from_cfg(cfg: CN, in_chans: int) -> dict:
    """MViT constructor arguments from ``cfg.MODEL.MVITV2``.

    Every key but ``VARIANT`` and ``NORM_EPS`` is the upper-case name of an argument; lists
    become tuples, and ``None`` architecture keys take the variant's value.
    """
    node = cfg.MODEL.MVITV2
    kwargs = mvitv2_variant(node.VARIANT)
    for key, value in node.items():
        if key in ("VARIANT", "NORM_EPS") or value is None:
            continue
        kwargs[key.lower()] = tuple(value) if isinstance(value, (list, tuple)) else value
    kwargs["norm_layer"] = partial(nn.LayerNorm, eps=node.NORM_EPS)
    kwargs["in_chans"] = in_chans
    return kwargs


@BACKBONE_REGISTRY.register()
def build_mvitv2_backbone(cfg: CN, input_shape: ShapeSpec) -> MViT:
    """MViTv2 alone, outputs ``cfg.MODEL.MVITV2.OUT_FEATURES``."""
    return MViT(**mvit_kwargs_from_cfg(cfg, input_shape.channels))


@BACKBONE_REGISTRY.register()
def build_mvitv2_fpn_backbone(cfg: CN, input_shape: ShapeSpec) -> FPN:
    """MViTv2 + FPN, reading ``cfg.MODEL.FPN`` as detectron2's ResNet-FPN builder does.

    ResNet feature names in ``FPN.IN_FEATURES`` (res2 ... res5, as in model-zoo configs) are
    taken as the MViT stage of the same stride (scale2 ... scale5), so a model-zoo config only
    needs ``MODEL.BACKBONE.NAME`` switched.
    """
    bottom_up = build_mvitv2_backbone(cfg, input_shape)
    in_features = [f.replace("res", "scale") for f in cfg.MODEL.FPN.IN_FEATURES]
    return FPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
