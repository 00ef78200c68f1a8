"""yacs support: ``cfg.MODEL.MVITV2`` and the detectron2 backbone builders that read it."""
from __future__ import annotations

import inspect
from functools import partial

import torch.nn as nn
from detectron2.config import CfgNode as CN
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, FPN
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

from ..mvit import MViTTrunk, mvitv2_variant
from .backbone import MViT


# Constructor arguments without a yacs key: built from other keys (NORM_EPS, the input shape),
# or options of the video models only (a detection backbone has no class token to add to and no
# time axis)
_NOT_KEYS = ("norm_layer", "act_layer", "pool_norm_layer", "in_chans", "residual_pooling_cls",
             "sep_pos_embed")
# Architecture keys left at None take the variant's value
_VARIANT_KEYS = ("embed_dim", "depth", "num_heads", "last_block_indexes")
# yacs defaults that differ from the constructor's (detectron2's MViTv2 configs)
_YACS_DEFAULTS = {"drop_path_rate": 0.2}


def mvit_arguments() -> dict[str, object]:
    """Every constructor argument of :class:`MViT` (the trunk's and the backbone's) with its
    default."""
    args = {}
    for cls in (MViTTrunk, MViT):
        for name, param in inspect.signature(cls.__init__).parameters.items():
            if param.default is not inspect.Parameter.empty:
                args[name] = param.default
    return args


def add_mvitv2_config(cfg: CN) -> CN:
    """Add ``cfg.MODEL.MVITV2``: a variant name plus one upper-case key per constructor argument
    of MViT (generated from its signature, so the two cannot drift), and ``NORM_EPS``.

    Architecture keys left at ``None`` take the variant's value (Table 1 of MViTv2).
    """
    c = CN()
    c.VARIANT = "T"
    for name, default in mvit_arguments().items():
        if name in _NOT_KEYS:
            continue
        value = None if name in _VARIANT_KEYS else _YACS_DEFAULTS.get(name, default)
        c[name.upper()] = tuple(value) if isinstance(value, list) else value
    c.NORM_EPS = 1e-6
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
