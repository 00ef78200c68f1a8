"""Cascade Mask R-CNN, MViTv2-H backbone, IN-21K init, large-scale jitter 1024x1024, 3x schedule (36 epochs).

Twin of detectron2's official ``projects/MViTv2/configs/cascade_mask_rcnn_mvitv2_h_in21k_lsj_3x.py``; its model zoo: 56.1 AP box, 48.5 AP mask.
Paper (Table 5): 56.1 AP box, 48.5 AP mask."""
from ..common.mvitv2_backbone import mvitv2_backbone_args
from ..common.coco_loader_lsj import dataloader
from ..common.models.cascade_mask_rcnn_mvitv2 import model
from ..common.train_3x import lr_multiplier, optimizer, train

model.backbone.bottom_up.update(mvitv2_backbone_args("H"))
train.init_checkpoint = "detectron2://ImageNetPretrained/mvitv2/MViTv2_H_in21k.pyth"
