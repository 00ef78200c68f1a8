"""detectron2 adapter: the ``MViT`` backbone, yacs config and registered builders."""
from .backbone import MViT
from .config import add_mvitv2_config, build_mvitv2_backbone, build_mvitv2_fpn_backbone

__all__ = ["MViT", "add_mvitv2_config", "build_mvitv2_backbone", "build_mvitv2_fpn_backbone"]
