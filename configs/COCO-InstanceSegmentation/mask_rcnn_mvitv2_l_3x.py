"""Mask R-CNN, MViTv2-L backbone, IN-1K init, multi-scale training 480-800 with random crops, 3x schedule (36 epochs).

Paper (Table 5): 51.8 AP box, 46.2 AP mask."""
from ..common.mvitv2_backbone import mvitv2_backbone_args
from ..common.coco_loader import dataloader
from ..common.models.mask_rcnn_mvitv2 import model
from ..common.train_3x import lr_multiplier, optimizer, train

model.backbone.bottom_up.update(mvitv2_backbone_args("L"))
train.init_checkpoint = "detectron2://ImageNetPretrained/mvitv2/MViTv2_L_in1k.pyth"
