"""Image classification models and the model factory."""
from .models import ClassificationHead, MViTClassifier, create_model, list_models, register_model

__all__ = ["ClassificationHead", "MViTClassifier", "create_model", "list_models", "register_model"]
