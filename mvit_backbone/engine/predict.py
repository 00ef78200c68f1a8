"""Run a LazyConfig detector on image files and write PNGs of the drawn predictions."""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch
from detectron2.config import instantiate
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import convert_image_to_rgb, read_image
from detectron2.utils.visualizer import Visualizer
from PIL import Image

from .lazy_train import build_model, load_weights


def _test_augmentation(cfg: Any) -> T.AugmentationList:
    return T.AugmentationList(instantiate(cfg.dataloader.test.mapper.augmentations))


def predict_images(
    cfg: Any,
    weights: str,
    images: Sequence[str],
    output_dir: str,
    score_thresh: float = 0.5,
) -> list[str]:
    """Predict ``images`` with ``cfg.model`` loaded from ``weights``; write one PNG per image.

    Images are resized as ``cfg.dataloader.test`` resizes them; predictions are drawn on the
    original image with detectron2's ``Visualizer`` (boxes, masks, class names from the
    metadata of the config's test dataset), keeping scores >= ``score_thresh``.

    Returns:
        The written PNG paths, ``output_dir/<image name>.png``.

    Raises:
        ValueError: an image path that does not exist.
    """
    for path in images:
        if not os.path.isfile(path):
            raise ValueError(f"image {path} does not exist")
    model = build_model(cfg).eval()
    load_weights(model, weights)
    augmentation = _test_augmentation(cfg)
    metadata = MetadataCatalog.get(cfg.dataloader.test.dataset.names)
    input_format = cfg.model.get("input_format", "BGR")
    os.makedirs(output_dir, exist_ok=True)
    written = []
    for path in images:
        image = read_image(path, format=input_format)
        height, width = image.shape[:2]
        resized = augmentation(T.AugInput(image)).apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        with torch.no_grad():
            output = model([{"image": tensor, "height": height, "width": width}])[0]
        instances = output["instances"].to("cpu")
        instances = instances[instances.scores >= score_thresh]
        visualizer = Visualizer(convert_image_to_rgb(image, input_format), metadata)
        drawn = visualizer.draw_instance_predictions(instances).get_image()
        out = os.path.join(output_dir, os.path.splitext(os.path.basename(path))[0] + ".png")
        Image.fromarray(drawn).save(out)
        written.append(out)
    return written
