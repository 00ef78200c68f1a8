"""Cascade R-CNN with an MViTv2-T backbone: the Cascade Mask R-CNN model without its mask branch."""
from .cascade_mask_rcnn_mvitv2 import model

for key in ("mask_in_features", "mask_pooler", "mask_head"):
    model.roi_heads.pop(key)
