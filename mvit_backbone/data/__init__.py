"""Synthetic datasets: COCO-format shapes for detection and the demo."""
from .coco_synthetic import (
    SHAPE_CLASSES,
    DatasetError,
    ShapesConfig,
    register_synthetic_coco,
    render_scene,
    validate_coco_split,
    write_coco_split,
)
