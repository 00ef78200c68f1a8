"""Image classification models, the model factory, and their registration with timm."""
from . import timm_models  # noqa: F401  (registers our image models in timm's registry)
from .models import ClassificationHead, MViTClassifier, create_model, list_models, register_model

__all__ = ["ClassificationHead", "MViTClassifier", "create_model", "list_models", "register_model"]
