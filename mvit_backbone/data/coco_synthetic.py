"""Synthetic instance-segmentation data ("shapes") written to disk in COCO format.

Every image has a textured background (colour field, noise, optional stripes) with unannotated
distractors (lines, dots, curves and irregular blobs), and 1-6 annotated shapes of the classes in
:data:`SHAPE_CLASSES`, with random sizes, rotations, colours, shading and overlaps. Masks are the
*visible* parts of the shapes (later shapes occlude earlier ones), stored as COCO polygons; a
placement that would leave an instance mostly hidden, or with a hole that polygons cannot
express, is redrawn. Images are JPEGs of varied sizes.

Main entry points:

- :func:`render_scene`: one image and its instances, in memory.
- :func:`write_coco_split`: a split (``<root>/<split>/*.jpg`` + ``<root>/<split>.json``).
- :func:`validate_coco_split`: checks a split on disk, raising :class:`DatasetError` naming the
  broken file.
- :func:`register_synthetic_coco`: writes (or reuses) the splits and registers them with
  detectron2's ``register_coco_instances``.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from .checks import DatasetError

SHAPE_CLASSES: tuple[str, ...] = ("circle", "triangle", "rectangle", "star")


@dataclass(frozen=True)
class ShapesConfig:
    """Parameters of the generator.

    Sizes are in pixels. ``shape_size`` is the size of a shape as a fraction of the image's
    shorter side; ``min_visible`` is the least fraction of a shape's area that must stay
    visible after occlusion (and cropping by the image border).
    """

    width_range: tuple[int, int] = (256, 400)
    height_range: tuple[int, int] = (208, 320)
    instances_range: tuple[int, int] = (1, 6)
    shape_size: tuple[float, float] = (0.1, 0.42)
    distractors_range: tuple[int, int] = (4, 14)
    min_visible: float = 0.45
    min_area: int = 80
    overlap_prob: float = 0.35
    jpeg_quality: tuple[int, int] = (80, 95)
    classes: tuple[str, ...] = field(default=SHAPE_CLASSES)


@dataclass
class Instance:
    """One annotated shape: class index into ``classes``, visible mask and COCO polygons."""

    category: int
    mask: np.ndarray  # (H, W) bool, visible pixels
    polygons: list[list[float]]

    @property
    def bbox(self) -> list[float]:
        """COCO box [x, y, w, h] of the visible mask."""
        ys, xs = np.nonzero(self.mask)
        return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                float(ys.max() - ys.min() + 1)]


# ---------------------------------------------------------------------------------------------
# drawing


def _shape_polygon(rng: np.random.Generator, category: str, cx: float, cy: float,
                   size: float) -> np.ndarray:
    """Vertices (K, 2) of a shape of the given class, size (diameter-like) and random pose."""
    theta = rng.uniform(0, 2 * math.pi)
    r = size / 2
    if category == "circle":
        angles = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        radii = np.full(48, r)
    elif category == "triangle":
        angles = theta + np.arange(3) * 2 * math.pi / 3 + rng.uniform(-0.25, 0.25, 3)
        radii = r * rng.uniform(0.9, 1.1, 3)
    elif category == "rectangle":
        aspect = rng.uniform(0.45, 1.0)
        half = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * [r * 0.85, r * 0.85 * aspect]
        rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
        return half @ rot.T + [cx, cy]
    elif category == "star":
        inner = rng.uniform(0.38, 0.55)
        angles = theta + np.arange(10) * math.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, r * inner)
    else:
        raise ValueError(f"unknown shape class {category!r}; known: {SHAPE_CLASSES}")
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)


def _textured_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Float (H, W, 3) image: base colour + low-frequency colour field + texture noise."""
    base = rng.uniform(50, 205, 3)
    gh, gw = rng.integers(2, 6, 2)
    low = cv2.resize(rng.normal(0, 35, (gh, gw, 3)).astype(np.float32), (w, h),
                     interpolation=cv2.INTER_CUBIC)
    cell = int(rng.integers(3, 12))
    mid = rng.standard_normal((h // cell + 2, w // cell + 2), dtype=np.float32)
    mid = cv2.resize(mid, (w, h), interpolation=cv2.INTER_LINEAR)[..., None] * rng.uniform(4, 18)
    img = (base + low + mid).astype(np.float32)
    if rng.random() < 0.5:  # stripes or a checker-like weave
        period = rng.uniform(6, 30)
        angle = rng.uniform(0, math.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        phase = (xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period
        img = img + (np.sin(phase) * rng.uniform(6, 22))[..., None]
    return img


def _draw_distractors(rng: np.random.Generator, img: np.ndarray, count: int) -> None:
    """Unannotated clutter: lines, dots, random-walk curves and irregular blobs (in place)."""
    h, w = img.shape[:2]
    for _ in range(count):
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        kind = rng.integers(0, 4)
        if kind == 0:
            p1 = tuple(int(v) for v in rng.integers(0, [w, h]))
            p2 = tuple(int(v) for v in rng.integers(0, [w, h]))
            cv2.line(img, p1, p2, colour, int(rng.integers(1, 4)), cv2.LINE_AA)
        elif kind == 1:
            centre = tuple(int(v) for v in rng.integers(0, [w, h]))
            cv2.circle(img, centre, int(rng.integers(2, 6)), colour, -1, cv2.LINE_AA)
        elif kind == 2:
            steps = rng.normal(0, 6, (int(rng.integers(6, 20)), 2)).cumsum(axis=0)
            pts = (steps + rng.integers(0, [w, h])).astype(np.int32)
            cv2.polylines(img, [pts], False, colour, int(rng.integers(1, 3)), cv2.LINE_AA)
        else:
            k = int(rng.integers(7, 13))
            angles = np.sort(rng.uniform(0, 2 * math.pi, k))
            r = rng.uniform(6, 22) * rng.uniform(0.5, 1.3, k)
            cx, cy = rng.integers(0, [w, h])
            pts = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1).astype(np.int32)
            cv2.fillPoly(img, [pts], colour, cv2.LINE_AA)


def _paint_shape(rng: np.random.Generator, img: np.ndarray, poly: np.ndarray,
                 colour: np.ndarray) -> None:
    """Alpha-blend an anti-aliased, shaded shape (with an optional outline) into img."""
    h, w = img.shape[:2]
    x0, y0 = np.clip(np.floor(poly.min(axis=0)).astype(int) - 3, 0, [w, h])
    x1, y1 = np.clip(np.ceil(poly.max(axis=0)).astype(int) + 4, 0, [w, h])
    region = img[y0:y1, x0:x1]  # a view: drawing into it draws into img
    local = np.round((poly - [x0, y0]) * 16).astype(np.int32)  # 4 fractional bits
    alpha = np.zeros(region.shape[:2], np.uint8)
    cv2.fillPoly(alpha, [local], 255, cv2.LINE_AA, shift=4)
    a = alpha.astype(np.float32)[..., None] / 255.0
    yy, xx = np.mgrid[0:y1 - y0, 0:x1 - x0].astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    grad = (xx * math.cos(angle) + yy * math.sin(angle)) / max(h, w) * rng.uniform(-40, 40)
    region *= 1 - a
    region += (colour[None, None, :] + grad[..., None]) * a
    if rng.random() < 0.3:
        edge = tuple(float(c) for c in np.clip(colour * rng.uniform(0.3, 0.7), 0, 255))
        cv2.polylines(region, [local], True, edge, int(rng.integers(1, 3)), cv2.LINE_AA, shift=4)


def mask_to_polygons(mask: np.ndarray, min_area: float = 4.0) -> list[list[float]]:
    """COCO polygons (flat x, y lists) of the outer contours of a binary mask."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for c in contours:
        if len(c) >= 3 and cv2.contourArea(c) >= min_area:
            polygons.append(c.reshape(-1).astype(float).tolist())
    return polygons


def polygons_to_mask(polygons: Sequence[Sequence[float]], h: int, w: int) -> np.ndarray:
    """Rasterise COCO polygons with pycocotools (the evaluator's own decoding): (H, W) bool."""
    from pycocotools import mask as mask_util

    rles = mask_util.frPyObjects([list(p) for p in polygons], h, w)
    return mask_util.decode(mask_util.merge(rles)).astype(bool)


def _contrasting_colour(rng: np.random.Generator, img: np.ndarray, region: np.ndarray) -> np.ndarray:
    """A random colour at least 45 (max over channels) away from the mean under ``region``."""
    under = img[region].mean(axis=0) if region.any() else img.reshape(-1, 3).mean(axis=0)
    colour = rng.uniform(0, 255, 3)
    for _ in range(10):
        if np.abs(colour - under).max() >= 45:
            break
        colour = rng.uniform(0, 255, 3)
    return colour


def render_scene(rng: np.random.Generator, cfg: ShapesConfig = ShapesConfig(),
                 size: tuple[int, int] | None = None) -> tuple[np.ndarray, list[Instance]]:
    """Draw one image (H, W, 3) uint8 BGR and its visible instances.

    ``size`` = (H, W) overrides the random image size.
    """
    if size is None:
        h = int(rng.integers(cfg.height_range[0], cfg.height_range[1] + 1))
        w = int(rng.integers(cfg.width_range[0], cfg.width_range[1] + 1))
    else:
        h, w = size
    img = _textured_background(rng, h, w)
    _draw_distractors(rng, img, int(rng.integers(*cfg.distractors_range, endpoint=True)))

    target = int(rng.integers(*cfg.instances_range, endpoint=True))
    owner = np.full((h, w), -1, np.int32)  # index of the instance that owns each pixel
    full_areas: list[float] = []
    categories: list[int] = []
    attempts = 0
    while len(categories) < target and attempts < 20 * target:
        attempts += 1
        cat = int(rng.integers(len(cfg.classes)))
        size_px = rng.uniform(*cfg.shape_size) * min(h, w)
        if categories and rng.random() < cfg.overlap_prob:  # near an existing shape
            ys, xs = np.nonzero(owner == rng.integers(len(categories)))
            if len(xs) == 0:
                continue
            j = rng.integers(len(xs))
            cx, cy = xs[j] + rng.normal(0, size_px / 3), ys[j] + rng.normal(0, size_px / 3)
        else:
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        poly = _shape_polygon(rng, cfg.classes[cat], cx, cy, size_px)
        full = np.zeros((h, w), np.uint8)
        cv2.fillPoly(full, [np.round(poly * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
        full_area = cv2.contourArea(poly.astype(np.float32))
        covered = full.astype(bool)
        if covered.sum() < cfg.min_visible * full_area or covered.sum() < cfg.min_area:
            continue  # mostly outside the image
        trial = owner.copy()
        trial[covered] = len(categories)
        # every earlier instance must stay visible enough and hole-free
        ok = True
        for i in range(len(categories)):
            vis = trial == i
            if vis.sum() < max(cfg.min_visible * full_areas[i], cfg.min_area):
                ok = False
                break
            _, hierarchy = cv2.findContours(vis.astype(np.uint8), cv2.RETR_CCOMP,
                                            cv2.CHAIN_APPROX_SIMPLE)
            if hierarchy is not None and (hierarchy[0][:, 3] >= 0).any():
                ok = False
                break
        if not ok:
            continue
        colour = _contrasting_colour(rng, img, covered)
        _paint_shape(rng, img, poly, colour)
        owner = trial
        full_areas.append(full_area)
        categories.append(cat)

    img += rng.standard_normal(img.shape, dtype=np.float32) * rng.uniform(2, 7)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (3, 3), 0)
    image = np.clip(img, 0, 255).astype(np.uint8)

    instances = []
    for i, cat in enumerate(categories):
        vis = owner == i
        polygons = mask_to_polygons(vis)
        if not polygons:
            continue
        mask = polygons_to_mask(polygons, h, w)
        if mask.sum() < cfg.min_area:
            continue
        instances.append(Instance(category=cat, mask=mask, polygons=polygons))
    return image, instances


# ---------------------------------------------------------------------------------------------
# COCO files


def split_paths(root: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """(json file, image directory) of a split: ``<root>/<split>.json``, ``<root>/<split>/``."""
    root = Path(root)
    return root / f"{split}.json", root / split


def write_coco_split(root: str | os.PathLike, split: str, num_images: int, seed: int,
                     cfg: ShapesConfig = ShapesConfig()) -> Path:
    """Render ``num_images`` images with ``seed`` and write the split; returns the json path.

    The json also records the generator's parameters under ``info`` so that a later run can
    tell whether files on disk match what it would generate.
    """
    json_path, image_dir = split_paths(root, split)
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        image, instances = render_scene(rng, cfg)
        file_name = f"{image_id:06d}.jpg"
        quality = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
        if not cv2.imwrite(str(image_dir / file_name), image, [cv2.IMWRITE_JPEG_QUALITY, quality]):
            raise DatasetError(f"could not write image {image_dir / file_name}")
        h, w = image.shape[:2]
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
        for inst in instances:
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": inst.category + 1,
                "segmentation": inst.polygons,
                "area": float(inst.mask.sum()),
                "bbox": inst.bbox,
                "iscrowd": 0,
            })
    coco = {
        "info": {"description": "mvit_backbone synthetic shapes", "split": split,
                 "seed": seed, "num_images": num_images,
                 "generator": json.loads(json.dumps(asdict(cfg)))},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n, "supercategory": "shape"}
                       for i, n in enumerate(cfg.classes)],
    }
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(coco))
    tmp.replace(json_path)  # the json appears only once the split is complete
    return json_path


def load_coco_json(json_path: str | os.PathLike) -> dict:
    """Read a COCO json, raising :class:`DatasetError` naming the file if it is broken."""
    json_path = Path(json_path)
    try:
        data = json.loads(json_path.read_text())
    except FileNotFoundError as e:
        raise DatasetError(f"annotation file {json_path} does not exist") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"annotation file {json_path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise DatasetError(f"annotation file {json_path} does not hold a COCO object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"annotation file {json_path} has no '{key}' list")
    return data


def validate_coco_split(json_path: str | os.PathLike, image_dir: str | os.PathLike,
                        decode_images: bool = True) -> dict:
    """Check a split: json readable, every image present (and decodable, with the size the
    json says), annotations refer to known images/categories and their polygons lie inside
    the image. Returns the json; raises :class:`DatasetError` naming the first broken file."""
    data = load_coco_json(json_path)
    image_dir = Path(image_dir)
    sizes = {}
    for entry in data["images"]:
        try:
            path = image_dir / entry["file_name"]
            sizes[entry["id"]] = (entry["height"], entry["width"])
        except (KeyError, TypeError) as e:
            raise DatasetError(f"annotation file {json_path}: malformed image entry {entry!r}") from e
        if not path.is_file():
            raise DatasetError(f"image {path} listed in {json_path} does not exist")
        if decode_images:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                raise DatasetError(f"image {path} is corrupt or not an image")
            if image.shape[:2] != sizes[entry["id"]]:
                raise DatasetError(
                    f"image {path} is {image.shape[1]}x{image.shape[0]} but {json_path} says "
                    f"{entry['width']}x{entry['height']}"
                )
    category_ids = {c["id"] for c in data["categories"]}
    for ann in data["annotations"]:
        image_id = ann.get("image_id")
        if image_id not in sizes or ann.get("category_id") not in category_ids:
            raise DatasetError(
                f"annotation {ann.get('id')} in {json_path} refers to an unknown image or category"
            )
        h, w = sizes[image_id]
        for poly in ann.get("segmentation", []):
            xy = np.asarray(poly, dtype=float).reshape(-1, 2)
            if len(xy) < 3 or (xy < 0).any() or (xy[:, 0] > w).any() or (xy[:, 1] > h).any():
                raise DatasetError(
                    f"annotation {ann['id']} in {json_path} has a polygon outside its image"
                )
    return data


def split_is_current(json_path: Path, seed: int, num_images: int, cfg: ShapesConfig) -> bool:
    """Whether a split on disk was written with these parameters (its json ``info``)."""
    if not json_path.is_file():
        return False
    info = load_coco_json(json_path).get("info", {})
    return (info.get("seed") == seed and info.get("num_images") == num_images
            and info.get("generator") == json.loads(json.dumps(asdict(cfg))))


def register_synthetic_coco(root: str | os.PathLike, splits: dict[str, tuple[int, int]],
                            name_prefix: str = "shapes",
                            cfg: ShapesConfig = ShapesConfig(),
                            validate: bool = True) -> dict[str, str]:
    """Write the splits that are missing or stale, validate them, register them.

    Args:
        root: dataset directory.
        splits: split name -> (number of images, seed), e.g. {"train": (500, 0), "val": (100, 1)}.
        name_prefix: datasets are registered as ``f"{name_prefix}_{split}"``.
        validate: check every split with :func:`validate_coco_split` (decodes all images).

    Returns: split name -> registered dataset name. Names already registered are replaced.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    names = {}
    for split, (num_images, seed) in splits.items():
        json_path, image_dir = split_paths(root, split)
        if not split_is_current(json_path, seed, num_images, cfg):
            write_coco_split(root, split, num_images, seed, cfg)
        if validate:
            validate_coco_split(json_path, image_dir)
        name = f"{name_prefix}_{split}"
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_coco_instances(name, {}, str(json_path), str(image_dir))
        names[split] = name
    return names
