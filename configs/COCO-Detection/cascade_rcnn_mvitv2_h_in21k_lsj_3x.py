"""Cascade R-CNN, MViTv2-H backbone, IN-21K init, large-scale jitter 1024x1024, 3x schedule (36 epochs)."""
from ..common.mvitv2_backbone import mvitv2_backbone_args
from ..common.coco_loader_lsj import dataloader
from ..common.models.cascade_rcnn_mvitv2 import model
from ..common.train_3x import lr_multiplier, optimizer, train

model.backbone.bottom_up.update(mvitv2_backbone_args("H"))
dataloader.train.mapper.use_instance_mask = False
dataloader.train.mapper.recompute_boxes = False  # needs masks
train.init_checkpoint = "detectron2://ImageNetPretrained/mvitv2/MViTv2_H_in21k.pyth"
