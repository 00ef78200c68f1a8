"""Cascade Mask R-CNN, MViTv2-L backbone, IN-21K init, large-scale jitter 1024x1024, 50 epochs.

Twin of detectron2's official ``projects/MViTv2/configs/cascade_mask_rcnn_mvitv2_l_in21k_lsj_50ep.py``; its model zoo: 55.8 AP box, 48.3 AP mask."""
from ..common.mvitv2_backbone import mvitv2_backbone_args
from ..common.coco_loader_lsj import dataloader
from ..common.models.cascade_mask_rcnn_mvitv2 import model
from ..common.train_lsj_50ep import lr_multiplier, optimizer, train

model.backbone.bottom_up.update(mvitv2_backbone_args("L"))
train.init_checkpoint = "detectron2://ImageNetPretrained/mvitv2/MViTv2_L_in21k.pyth"
