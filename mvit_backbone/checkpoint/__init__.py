"""Reading checkpoints of every known MViT layout (official, detectron2, timm) safely, and
converting between them."""
from .detection import SafeDetectionCheckpointer
from .loader import LoadReport, detect_format, load_checkpoint
from .reader import CheckpointReadError, read_checkpoint
from .saving import (
    atomic_save,
    atomic_write_text,
    checkpoint_candidates,
    load_newest_intact,
)

__all__ = [
    "CheckpointReadError",
    "LoadReport",
    "SafeDetectionCheckpointer",
    "detect_format",
    "load_checkpoint",
    "atomic_save",
    "atomic_write_text",
    "checkpoint_candidates",
    "load_newest_intact",
    "read_checkpoint",
]
