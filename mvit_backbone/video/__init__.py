"""Video classification models (registered with ``mvit_backbone.create_model``)."""
from .models import (
    mvitv1_b24_32x3,
    mvitv1_b_16x4,
    mvitv1_b_32x3,
    mvitv2_b_32x3,
    mvitv2_l_40x3,
    mvitv2_s_16x4,
    mvitv2_video_nano,
)

VIDEO_MODELS = (
    "mvitv2_s_16x4", "mvitv2_b_32x3", "mvitv2_l_40x3", "mvitv1_b_16x4", "mvitv1_b_32x3",
    "mvitv1_b24_32x3", "mvitv2_video_nano",
)

__all__ = [
    "VIDEO_MODELS",
    "mvitv1_b24_32x3",
    "mvitv1_b_16x4",
    "mvitv1_b_32x3",
    "mvitv2_b_32x3",
    "mvitv2_l_40x3",
    "mvitv2_s_16x4",
    "mvitv2_video_nano",
]
