"""Cascade R-CNN, MViTv2-L backbone, IN-21K init, multi-scale training 480-800 with random crops, 3x schedule (36 epochs)."""
from ..common.mvitv2_backbone import mvitv2_backbone_args
from ..common.coco_loader import dataloader
from ..common.models.cascade_rcnn_mvitv2 import model
from ..common.train_3x import lr_multiplier, optimizer, train

model.backbone.bottom_up.update(mvitv2_backbone_args("L"))
dataloader.train.mapper.use_instance_mask = False
train.init_checkpoint = "detectron2://ImageNetPretrained/mvitv2/MViTv2_L_in21k.pyth"
