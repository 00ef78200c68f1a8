"""Cascade Mask R-CNN, MViTv2-H backbone, IN-21K init, large-scale jitter 1024x1024, 50 epochs."""
from ..common.mvitv2_backbone import mvitv2_backbone_args
from ..common.coco_loader_lsj import dataloader
from ..common.models.cascade_mask_rcnn_mvitv2 import model
from ..common.train_lsj_50ep import lr_multiplier, optimizer, train

model.backbone.bottom_up.update(mvitv2_backbone_args("H"))
train.init_checkpoint = "detectron2://ImageNetPretrained/mvitv2/MViTv2_H_in21k.pyth"
