"""A tiny COCO-format detection set written to disk, for the detection tests."""
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def write_tiny_coco(image_dir: Path, json_file: Path, n: int, rng: np.random.Generator) -> None:
    """n JPEGs (64x96, 1-2 rectangles of 2 classes) in ``image_dir`` and their COCO json (boxes
    and polygons) at ``json_file``."""
    image_dir, json_file = Path(image_dir), Path(json_file)
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(n):
        image = Image.new("RGB", (96, 64), tuple(int(v) for v in rng.integers(0, 80, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(1, 3))):
            x0, y0 = int(rng.integers(0, 50)), int(rng.integers(0, 30))
            x1, y1 = x0 + int(rng.integers(16, 46)), y0 + int(rng.integers(16, 34))
            category = int(rng.integers(1, 3))
            draw.rectangle([x0, y0, x1, y1], fill=(230, 40, 40) if category == 1 else (40, 40, 230))
            annotations.append(dict(
                id=len(annotations) + 1, image_id=i + 1, category_id=category, iscrowd=0,
                bbox=[x0, y0, x1 - x0, y1 - y0], area=(x1 - x0) * (y1 - y0),
                segmentation=[[x0, y0, x1, y0, x1, y1, x0, y1]],
            ))
        name = f"{i:03d}.jpg"
        image.save(image_dir / name)
        images.append(dict(id=i + 1, file_name=name, width=96, height=64))
    categories = [dict(id=1, name="red"), dict(id=2, name="blue")]
    json_file.write_text(json.dumps(dict(images=images, annotations=annotations,
                                         categories=categories)))
