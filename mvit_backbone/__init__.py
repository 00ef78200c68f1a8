"""mvit_backbone: Multiscale Vision Transformers (MViTv1/v2) for detectron2, images and video.

Importing the package registers ``build_mvitv2_backbone`` and ``build_mvitv2_fpn_backbone`` in
detectron2's ``BACKBONE_REGISTRY``.
"""
from .third_party_warnings import quiet_known_warnings

quiet_known_warnings()  # before detectron2 is imported: its import triggers some of them

from .checkpoint import LoadReport, load_checkpoint  # noqa: E402 (after the filters)
from .classification import MViTClassifier, create_model, list_models
from .detection import MViT, add_mvitv2_config, build_mvitv2_backbone, build_mvitv2_fpn_backbone
from .mvit import MVITV2_VARIANTS, WINDOW_MODES, MViTTrunk, mvitv2_variant
from . import video  # noqa: F401  (registers the video models with create_model)

__version__ = "0.1.0"

__all__ = [
    "LoadReport",
    "MVITV2_VARIANTS",
    "MViT",
    "MViTClassifier",
    "MViTTrunk",
    "WINDOW_MODES",
    "add_mvitv2_config",
    "build_mvitv2_backbone",
    "build_mvitv2_fpn_backbone",
    "create_model",
    "list_models",
    "load_checkpoint",
    "mvitv2_variant",
]
