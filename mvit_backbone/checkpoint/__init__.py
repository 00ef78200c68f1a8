"""Reading checkpoints of every known MViT layout (official, detectron2, timm) safely, and
converting between them."""
from .detection import SafeDetectionCheckpointer
from .loader import LoadReport, detect_format, load_checkpoint
from .reader import CheckpointReadError, read_checkpoint

__all__ = [
    "CheckpointReadError",
    "LoadReport",
    "SafeDetectionCheckpointer",
    "detect_format",
    "load_checkpoint",
    "read_checkpoint",
]
