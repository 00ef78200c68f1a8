"""Synthetic datasets: COCO-format shapes (detection demo) and an ImageFolder tree (classification)."""
from .coco_synthetic import (
    SHAPE_CLASSES,
    DatasetError,
    ShapesConfig,
    register_synthetic_coco,
    render_scene,
    validate_coco_split,
    write_coco_split,
)
from .image_folder import render_example, write_synthetic_image_folder
