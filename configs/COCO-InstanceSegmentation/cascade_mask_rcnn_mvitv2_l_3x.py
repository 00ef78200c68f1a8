"""Cascade Mask R-CNN, MViTv2-L backbone, IN-1K init, 3x schedule (36 epochs), multi-scale training 480-800.

Paper (Table 5): 54.3 AP box, 47.1 AP mask."""
from mvit_backbone import mvitv2_variant

from ..common.coco_loader import dataloader
from ..common.models.cascade_mask_rcnn_mvitv2 import model
from ..common.train_3x import lr_multiplier, optimizer, train

model.backbone.bottom_up.update(mvitv2_variant("L"), drop_path_rate=0.5)
model.backbone.bottom_up.use_act_checkpoint = True
# as the official MViTv2-L checkpoints: channels grow in the MLP of a stage's last block
model.backbone.bottom_up.expand_in_attention = False
train.init_checkpoint = "MViTv2_L_in1k.pyth"
