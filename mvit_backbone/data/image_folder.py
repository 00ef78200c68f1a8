"""A synthetic image-classification dataset written to disk as an ImageFolder tree.

``write_synthetic_image_folder(root)`` draws PNG files into ``root/train/<class>/`` and
``root/val/<class>/`` (the ImageNet layout that ``torchvision.datasets.ImageFolder`` reads).
The ten classes cannot be told apart by colour or texture statistics alone; they need where
things are relative to each other, how many there are, or which way they run:

* relations: a red square and a blue circle, the square *left of*, *right of*, *above* or
  *below* the circle (the same two objects in every one of these four classes);
* counts: *two* or *three* yellow triangles (same size range, anywhere);
* orientations: stripes running *horizontally*, *vertically*, *diagonally* (down-right) or
  *anti-diagonally* (up-right), in random colours, period and phase.

Every image also gets a noisy background of random colour and a grey distractor shape, so no
single pixel statistic gives the class away. Generation is deterministic given ``seed``.
"""
from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

CLASSES: tuple[str, ...] = (
    "square_left_of_circle",
    "square_right_of_circle",
    "square_above_circle",
    "square_below_circle",
    "two_triangles",
    "three_triangles",
    "stripes_horizontal",
    "stripes_vertical",
    "stripes_diagonal",
    "stripes_antidiagonal",
)

_RED = (220, 40, 40)
_BLUE = (40, 70, 230)
_YELLOW = (240, 210, 30)
_MARKER = "synthetic_image_folder.json"


def _background(rng: random.Random, size: int) -> Image.Image:
    """Random dull colour plus uniform noise: (size, size) RGB."""
    base = np.array([rng.randint(60, 160) for _ in range(3)], dtype=np.int16)
    noise = np.random.default_rng(rng.getrandbits(32)).integers(-25, 26, (size, size, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def _distractor(draw: ImageDraw.ImageDraw, rng: random.Random, size: int) -> None:
    """A small grey ellipse or rectangle somewhere: carries no class information."""
    r = rng.uniform(0.04, 0.07) * size
    cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
    grey = rng.randint(170, 230)
    box = (cx - r, cy - r, cx + r, cy + r)
    (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=(grey, grey, grey))


def _triangle(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, angle: float) -> None:
    pts = [
        (cx + r * math.cos(angle + k * 2 * math.pi / 3), cy + r * math.sin(angle + k * 2 * math.pi / 3))
        for k in range(3)
    ]
    draw.polygon(pts, fill=_YELLOW)


def _draw_relation(img: Image.Image, rng: random.Random, relation: str) -> None:
    """Red square and blue circle; ``relation`` of the square to the circle."""
    size = img.size[0]
    draw = ImageDraw.Draw(img)
    r = rng.uniform(0.09, 0.13) * size
    margin = r + 2
    # offset along the relation's axis is large; the other axis is jittered by less
    along = rng.uniform(2.6 * r, size - 2 * margin)
    across = rng.uniform(-0.4, 0.4) * along
    sign = -1.0 if relation in ("left", "above") else 1.0
    dx, dy = (sign * along, across) if relation in ("left", "right") else (across, sign * along)
    # place the pair's midpoint so both objects stay inside the image
    lo_x, hi_x = margin + abs(dx) / 2, size - margin - abs(dx) / 2
    lo_y, hi_y = margin + abs(dy) / 2, size - margin - abs(dy) / 2
    mx, my = rng.uniform(lo_x, max(lo_x, hi_x)), rng.uniform(lo_y, max(lo_y, hi_y))
    sx, sy = mx + dx / 2, my + dy / 2  # square
    ox, oy = mx - dx / 2, my - dy / 2  # circle
    draw.rectangle((sx - r, sy - r, sx + r, sy + r), fill=_RED)
    draw.ellipse((ox - r, oy - r, ox + r, oy + r), fill=_BLUE)


def _draw_count(img: Image.Image, rng: random.Random, count: int) -> None:
    """``count`` yellow triangles that do not overlap."""
    size = img.size[0]
    draw = ImageDraw.Draw(img)
    placed: list[tuple[float, float, float]] = []
    while len(placed) < count:
        r = rng.uniform(0.08, 0.12) * size
        cx, cy = rng.uniform(r + 2, size - r - 2), rng.uniform(r + 2, size - r - 2)
        if all(math.hypot(cx - x, cy - y) > r + q + 3 for x, y, q in placed):
            placed.append((cx, cy, r))
    for cx, cy, r in placed:
        _triangle(draw, cx, cy, r, rng.uniform(0, 2 * math.pi))


def _draw_stripes(img: Image.Image, rng: random.Random, direction: str) -> None:
    """Stripes in a random-sized square patch covering most of the image."""
    size = img.size[0]
    side = int(rng.uniform(0.6, 0.9) * size)
    x0, y0 = rng.randint(0, size - side), rng.randint(0, size - side)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    coord = {
        "horizontal": yy,
        "vertical": xx,
        "diagonal": (xx - yy) / math.sqrt(2),
        "antidiagonal": (xx + yy) / math.sqrt(2),
    }[direction]
    period = rng.uniform(0.12, 0.2) * size
    on = np.sin(2 * math.pi * coord / period + rng.uniform(0, 2 * math.pi)) > 0
    c1 = np.array([rng.randint(0, 255) for _ in range(3)], dtype=np.uint8)
    c2 = 255 - c1
    patch = np.where(on[..., None], c1, c2).astype(np.uint8)
    img.paste(Image.fromarray(patch, "RGB"), (x0, y0))


_DRAW: dict[str, Callable[[Image.Image, random.Random], None]] = {
    "square_left_of_circle": lambda im, rng: _draw_relation(im, rng, "left"),
    "square_right_of_circle": lambda im, rng: _draw_relation(im, rng, "right"),
    "square_above_circle": lambda im, rng: _draw_relation(im, rng, "above"),
    "square_below_circle": lambda im, rng: _draw_relation(im, rng, "below"),
    "two_triangles": lambda im, rng: _draw_count(im, rng, 2),
    "three_triangles": lambda im, rng: _draw_count(im, rng, 3),
    "stripes_horizontal": lambda im, rng: _draw_stripes(im, rng, "horizontal"),
    "stripes_vertical": lambda im, rng: _draw_stripes(im, rng, "vertical"),
    "stripes_diagonal": lambda im, rng: _draw_stripes(im, rng, "diagonal"),
    "stripes_antidiagonal": lambda im, rng: _draw_stripes(im, rng, "antidiagonal"),
}


def render_example(class_name: str, size: int, rng: random.Random) -> Image.Image:
    """One (size, size) RGB image of ``class_name``, drawn with ``rng``."""
    if class_name not in _DRAW:
        raise ValueError(f"unknown synthetic class {class_name!r}; known: {list(CLASSES)}")
    img = _background(rng, size)
    draw = ImageDraw.Draw(img)
    if class_name.startswith("stripes"):
        _DRAW[class_name](img, rng)
        _distractor(draw, rng, size)
    else:
        _distractor(draw, rng, size)
        _DRAW[class_name](img, rng)
    return img


def write_synthetic_image_folder(
    root: str | Path,
    train_per_class: int = 300,
    val_per_class: int = 50,
    image_size: int = 72,
    num_classes: int = len(CLASSES),
    seed: int = 0,
) -> Path:
    """Write ``root/{train,val}/<class>/<index>.png`` and return ``root``.

    A marker file records the arguments; if it matches, the existing tree is reused, so the
    training script can call this on every start. ``num_classes`` takes the first classes of
    :data:`CLASSES` (at most 10).
    """
    if not 2 <= num_classes <= len(CLASSES):
        raise ValueError(f"num_classes must be in [2, {len(CLASSES)}], got {num_classes}")
    root = Path(root)
    spec = dict(
        train_per_class=train_per_class,
        val_per_class=val_per_class,
        image_size=image_size,
        classes=list(CLASSES[:num_classes]),
        seed=seed,
    )
    marker = root / _MARKER
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return root
    for split, per_class, split_seed in (("train", train_per_class, seed), ("val", val_per_class, seed + 1)):
        for ci, name in enumerate(CLASSES[:num_classes]):
            out = root / split / name
            out.mkdir(parents=True, exist_ok=True)
            rng = random.Random(split_seed * 1000 + ci)
            for i in range(per_class):
                render_example(name, image_size, rng).save(out / f"{i:05d}.png")
    marker.write_text(json.dumps(spec, indent=1))
    return root
