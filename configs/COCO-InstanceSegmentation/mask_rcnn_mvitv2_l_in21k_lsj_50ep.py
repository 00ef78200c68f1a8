"""Mask R-CNN, MViTv2-L backbone, IN-21K init, large-scale jitter 1024x1024, 50 epochs."""
from ..common.mvitv2_backbone import mvitv2_backbone_args
from ..common.coco_loader_lsj import dataloader
from ..common.models.mask_rcnn_mvitv2 import model
from ..common.train_lsj_50ep import lr_multiplier, optimizer, train

model.backbone.bottom_up.update(mvitv2_backbone_args("L"))
train.init_checkpoint = "detectron2://ImageNetPretrained/mvitv2/MViTv2_L_in21k.pyth"
