"""COCO loaders with large-scale jitter (the strong recipe of MViTv2-L/H): random rescale of a
1024x1024 canvas by 0.1-2.0, fixed-size crop/pad to 1024x1024, flip; evaluation at 1024."""
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L

from .coco_loader import dataloader

image_size = 1024
dataloader.train.mapper.augmentations = [
    L(T.RandomFlip)(horizontal=True),
    L(T.ResizeScale)(
        min_scale=0.1, max_scale=2.0, target_height=image_size, target_width=image_size
    ),
    L(T.FixedSizeCrop)(crop_size=(image_size, image_size), pad=False),
]
dataloader.train.mapper.recompute_boxes = True  # boxes from the cropped masks
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=image_size, max_size=image_size),
]
