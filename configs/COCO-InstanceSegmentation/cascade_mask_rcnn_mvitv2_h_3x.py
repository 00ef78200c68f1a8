"""Cascade Mask R-CNN, MViTv2-H backbone, IN-1K init, multi-scale training 480-800 with random crops, 3x schedule (36 epochs).

No IN-1K MViTv2-H checkpoint is published: give one with ``train.init_checkpoint=...``."""
from ..common.mvitv2_backbone import mvitv2_backbone_args
from ..common.coco_loader import dataloader
from ..common.models.cascade_mask_rcnn_mvitv2 import model
from ..common.train_3x import lr_multiplier, optimizer, train

model.backbone.bottom_up.update(mvitv2_backbone_args("H"))
train.init_checkpoint = ""
