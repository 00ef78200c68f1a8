"""Synthetic datasets (COCO-format shapes, an ImageFolder tree, motion videos) and video
decoding."""
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
from .video import VideoDecodeError, VideoInfo, decode_frames, probe_video
from .video_synthetic import render_video, write_synthetic_videos, write_video
