"""COCO loaders with large-scale jitter (the strong recipe of MViTv2-L/H), as the official
``coco_loader_lsj.py``: flip, random rescale of a 1024x1024 canvas by 0.1-2.0, a 1024x1024 crop
padded to full size; evaluation as the multi-scale recipe (800, longer side <= 1333)."""
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L

from .coco_loader import dataloader

image_size = 1024
dataloader.train.mapper.augmentations = [
    L(T.RandomFlip)(horizontal=True),
    L(T.ResizeScale)(
        min_scale=0.1, max_scale=2.0, target_height=image_size, target_width=image_size
    ),
    L(T.FixedSizeCrop)(crop_size=(image_size, image_size), pad=True),
]
dataloader.train.mapper.recompute_boxes = True  # boxes from the cropped masks
