"""Faster R-CNN, MViTv2-L backbone, IN-1K init, 3x schedule (36 epochs), multi-scale training 480-800."""
from mvit_backbone import mvitv2_variant

from ..common.coco_loader import dataloader
from ..common.models.faster_rcnn_mvitv2 import model
from ..common.train_3x import lr_multiplier, optimizer, train

model.backbone.bottom_up.update(mvitv2_variant("L"), drop_path_rate=0.5)
model.backbone.bottom_up.use_act_checkpoint = True
# as the official MViTv2-L checkpoints: channels grow in the MLP of a stage's last block
model.backbone.bottom_up.expand_in_attention = False
dataloader.train.mapper.use_instance_mask = False
train.init_checkpoint = "MViTv2_L_in1k.pyth"
