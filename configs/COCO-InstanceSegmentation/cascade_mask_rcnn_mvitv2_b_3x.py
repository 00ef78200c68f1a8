"""Cascade Mask R-CNN, MViTv2-B backbone, IN-1K init, multi-scale training 480-800 with random crops, 3x schedule (36 epochs).

Twin of detectron2's official ``projects/MViTv2/configs/cascade_mask_rcnn_mvitv2_b_3x.py``; its model zoo: 54.1 AP box, 46.7 AP mask.
Paper (Table 5): 54.1 AP box, 46.8 AP mask."""
from ..common.mvitv2_backbone import mvitv2_backbone_args
from ..common.coco_loader import dataloader
from ..common.models.cascade_mask_rcnn_mvitv2 import model
from ..common.train_3x import lr_multiplier, optimizer, train

model.backbone.bottom_up.update(mvitv2_backbone_args("B"))
train.init_checkpoint = "detectron2://ImageNetPretrained/mvitv2/MViTv2_B_in1k.pyth"
