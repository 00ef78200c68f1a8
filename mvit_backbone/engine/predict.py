"""Run a LazyConfig detector on image files and write PNGs of the drawn predictions."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog, Metadata, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import convert_image_to_rgb, read_image
from detectron2.utils.visualizer import Visualizer
from PIL import Image, UnidentifiedImageError

from .cli import UserError
from .lazy_train import build_model, load_weights

logger = logging.getLogger("mvit_backbone.engine.predict")


@dataclass
class Prediction:
    """What was drawn for one image: the PNG, the detections kept (score >= threshold) and the
    best score of all (None when the model found nothing at all)."""

    image: str
    png: str
    kept: int
    best_score: float | None


def dataset_metadata(name: str) -> Metadata:
    """The metadata of a registered dataset with its class names (``thing_classes``).

    A COCO-format dataset registered from a json learns its class names when its json is read:
    if the metadata has none yet, the dataset is loaded once to get them. Logs a warning when
    there are still none (the drawings then show class numbers).
    """
    metadata = MetadataCatalog.get(name)
    if "thing_classes" not in metadata.as_dict() and name in DatasetCatalog.list():
        DatasetCatalog.get(name)
        metadata = MetadataCatalog.get(name)
    if "thing_classes" not in metadata.as_dict():
        logger.warning("dataset %r has no class names: labels are drawn as class numbers", name)
    return metadata


def read_image_file(path: str, input_format: str) -> np.ndarray:
    """The image (H, W, 3) in ``input_format``; UserError when the file is no image."""
    if not os.path.isfile(path):
        raise UserError(f"image {path} does not exist")
    try:
        return read_image(path, format=input_format)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UserError(f"{path} is not an image file that can be read ({type(e).__name__})") from e


def predict_images(
    cfg: Any,
    weights: str,
    images: Sequence[str],
    output_dir: str,
    score_thresh: float = 0.5,
    dataset: str | None = None,
) -> list[Prediction]:
    """Predict ``images`` with ``cfg.model`` loaded from ``weights``; write one PNG per image.

    Images are resized as ``cfg.dataloader.test`` resizes them; predictions are drawn on the
    original image with detectron2's ``Visualizer`` (boxes, masks, class names from the
    metadata of ``dataset``, default the config's test dataset), keeping scores >=
    ``score_thresh``. Every image is read before the model is built, so a bad file stops the
    run at once.

    Returns:
        One :class:`Prediction` per image; the PNGs are ``output_dir/<image name>.png``.

    Raises:
        UserError: an image path that does not exist or is no image.
        ValueError: weights that do not exist or cannot be read.
    """
    input_format = cfg.model.get("input_format", "BGR")
    decoded = [read_image_file(path, input_format) for path in images]
    model = build_model(cfg).eval()
    load_weights(model, weights)
    augmentation = T.AugmentationList(instantiate(cfg.dataloader.test.mapper.augmentations))
    metadata = dataset_metadata(dataset or cfg.dataloader.test.dataset.names)
    os.makedirs(output_dir, exist_ok=True)
    predictions = []
    for path, image in zip(images, decoded):
        height, width = image.shape[:2]
        resized = augmentation(T.AugInput(image)).apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        with torch.no_grad():
            output = model([{"image": tensor, "height": height, "width": width}])[0]
        instances = output["instances"].to("cpu")
        best = float(instances.scores.max()) if len(instances) else None
        instances = instances[instances.scores >= score_thresh]
        visualizer = Visualizer(convert_image_to_rgb(image, input_format), metadata)
        drawn = visualizer.draw_instance_predictions(instances).get_image()
        out = os.path.join(output_dir, os.path.splitext(os.path.basename(path))[0] + ".png")
        Image.fromarray(drawn).save(out)
        predictions.append(Prediction(path, out, len(instances), best))
    return predictions
