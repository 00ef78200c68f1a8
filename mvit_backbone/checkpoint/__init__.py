"""Reading checkpoints of every known MViT layout (official, detectron2, timm)."""
from .loader import LoadReport, detect_format, load_checkpoint

__all__ = ["LoadReport", "detect_format", "load_checkpoint"]
