"""Cascade Mask R-CNN, MViTv2-H backbone, IN-21K init, large-scale jitter 1024x1024, 50 epochs."""
from mvit_backbone import mvitv2_variant

from ..common.coco_loader_lsj import dataloader
from ..common.models.cascade_mask_rcnn_mvitv2 import model
from ..common.train_lsj_50ep import lr_multiplier, optimizer, train

model.backbone.bottom_up.update(mvitv2_variant("H"), drop_path_rate=0.6)
model.backbone.bottom_up.use_act_checkpoint = True
train.init_checkpoint = "MViTv2_H_in21k.pyth"
