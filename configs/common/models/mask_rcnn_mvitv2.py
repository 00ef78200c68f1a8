"""Mask R-CNN (FPN) with an MViTv2-T backbone (``mvit_backbone.MViT``, Hwin windows
[56, 28, 14, 7]) on RGB input normalised with ImageNet statistics, as the official
``mask_rcnn_mvitv2_t_3x.py``. Size configs update ``model.backbone.bottom_up`` with
``mvitv2_backbone_args(...)``."""
from functools import partial

import torch.nn as nn

from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from mvit_backbone import MViT

from ..mvitv2_backbone import mvitv2_backbone_args

model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model
constants = model_zoo.get_config("common/data/constants.py").constants
model.pixel_mean = constants.imagenet_rgb256_mean
model.pixel_std = constants.imagenet_rgb256_std
model.input_format = "RGB"
model.backbone.bottom_up = L(MViT)(
    **mvitv2_backbone_args("T"),
    residual_pooling=True,
    window_mode="hwin",
    adaptive_window_size=56,
    adaptive_kv_stride=4,
    norm_layer=partial(nn.LayerNorm, eps=1e-6),
    out_features=("scale2", "scale3", "scale4", "scale5"),
)
model.backbone.in_features = "${.bottom_up.out_features}"
