"""A synthetic video-classification dataset written to disk as real video files.

``write_synthetic_videos(root)`` encodes H.264 mp4 files (through PyAV, the decoder the video
datasets read with) into ``root/{train,val}/<class>/<index>.mp4`` and writes Kinetics-style
list files ``root/train.csv`` and ``root/val.csv`` (``<path> <label>`` per line, paths relative
to ``root``) and ``root/classes.txt``. Each class needs motion, not one frame, to be told apart:
any single frame of any class is a shape somewhere on a textured background.

* direction: a shape moving *left*, *right*, *up* or *down* (within 10 degrees of the axis) at
  medium speed;
* sense of rotation: a clock hand turning *clockwise* or *counter-clockwise* about its pivot;
* speed: a shape drifting along a diagonal (within 20 degrees), *slowly* or *fast*;
* appearing vs disappearing: a shape that is absent and then *appears*, or is present and then
  *disappears*, at a random moment in the middle of the video.

Every video also has a noisy background of random dark colour and a static grey distractor;
the moving shape's kind (circle, square, triangle), colour and size are random, its colour
always brighter than the background. Because the
classes include directions and senses of rotation, horizontal flipping changes labels:
train without flip. Generation is deterministic given ``seed``.
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
    "move_left",
    "move_right",
    "move_up",
    "move_down",
    "rotate_clockwise",
    "rotate_counterclockwise",
    "drift_slow",
    "drift_fast",
    "appear",
    "disappear",
)

_MARKER = "synthetic_videos.json"
# fractions of the frame size per frame
_MEDIUM_SPEED = (0.03, 0.04)
_SLOW_SPEED = (0.01, 0.015)
_FAST_SPEED = (0.045, 0.05)
# degrees per frame of the clock hand
_TURN_SPEED = (10.0, 15.0)

Painter = Callable[[ImageDraw.ImageDraw, int], None]


def _background(rng: random.Random, size: int) -> np.ndarray:
    """Random dark colour plus uniform noise: (size, size, 3) uint8, the same in every frame."""
    base = np.array([rng.randint(20, 80) for _ in range(3)], dtype=np.int16)
    noise = np.random.default_rng(rng.getrandbits(32)).integers(-12, 13, (size, size, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _bright_colour(rng: random.Random) -> tuple[int, int, int]:
    """A random hue, brighter than any background in every channel: a shape's edges change the
    pixels the same way (up where it arrives, down where it leaves) whatever its colour."""
    channels = [rng.randint(230, 255), rng.randint(140, 255), rng.randint(140, 200)]
    rng.shuffle(channels)
    return tuple(channels)


def _shape(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float,
           colour: tuple[int, int, int]) -> None:
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif kind == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
    else:
        draw.polygon([(cx + r * math.cos(a), cy + r * math.sin(a))
                      for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)], fill=colour)


def _moving_shape(rng: random.Random, size: int, frames: int, angle_deg: float,
                  speed_range: tuple[float, float]) -> Painter:
    """A shape translating along ``angle_deg`` (0 = right, 90 = up) at ``speed_range`` frame
    sizes per frame for the whole video, placed so that it stays inside the frame."""
    kind = rng.choice(("circle", "square", "triangle"))
    colour, r = _bright_colour(rng), rng.uniform(0.1, 0.14) * size
    speed = rng.uniform(*speed_range) * size
    a = math.radians(angle_deg)
    vx, vy = speed * math.cos(a), -speed * math.sin(a)  # image y grows downwards
    travel_x, travel_y = vx * (frames - 1), vy * (frames - 1)
    margin = r + 1

    def start(travel: float) -> float:
        lo, hi = margin - min(travel, 0.0), size - margin - max(travel, 0.0)
        return rng.uniform(lo, max(lo, hi))

    x0, y0 = start(travel_x), start(travel_y)
    return lambda draw, t: _shape(draw, kind, x0 + vx * t, y0 + vy * t, r, colour)


def _clock_hand(rng: random.Random, size: int, clockwise: bool) -> Painter:
    """A bar turning about one end (its pivot marked by a dot), at a random start angle."""
    colour = _bright_colour(rng)
    length = rng.uniform(0.25, 0.35) * size
    width = max(2, int(round(0.08 * size)))
    cx, cy = (rng.uniform(length + 2, size - length - 2) for _ in range(2))
    start = rng.uniform(0, 360)
    step = rng.uniform(*_TURN_SPEED) * (-1 if clockwise else 1)  # counter-clockwise on screen: +

    def paint(draw: ImageDraw.ImageDraw, t: int) -> None:
        a = math.radians(start + step * t)
        draw.line((cx, cy, cx + length * math.cos(a), cy - length * math.sin(a)), fill=colour,
                  width=width)
        draw.ellipse((cx - width, cy - width, cx + width, cy + width), fill=colour)

    return paint


def _appearing(rng: random.Random, size: int, frames: int, appear: bool) -> Painter:
    """A static shape present only after (``appear``) or only before a moment in the middle
    third of the video."""
    kind = rng.choice(("circle", "square", "triangle"))
    colour, r = _bright_colour(rng), rng.uniform(0.1, 0.14) * size
    cx, cy = (rng.uniform(r + 1, size - r - 1) for _ in range(2))
    moment = rng.randint(int(frames * 0.4), int(math.ceil(frames * 0.6)))

    def paint(draw: ImageDraw.ImageDraw, t: int) -> None:
        if (t >= moment) == appear:
            _shape(draw, kind, cx, cy, r, colour)

    return paint


def _diagonal(rng: random.Random) -> float:
    return 45.0 + 90.0 * rng.randrange(4) + rng.uniform(-20.0, 20.0)


def _painter(class_name: str, rng: random.Random, size: int, frames: int) -> Painter:
    axis = {"move_right": 0.0, "move_up": 90.0, "move_left": 180.0, "move_down": 270.0}
    if class_name in axis:
        return _moving_shape(rng, size, frames, axis[class_name] + rng.uniform(-10, 10), _MEDIUM_SPEED)
    if class_name in ("rotate_clockwise", "rotate_counterclockwise"):
        return _clock_hand(rng, size, clockwise=class_name == "rotate_clockwise")
    if class_name in ("drift_slow", "drift_fast"):
        speed = _SLOW_SPEED if class_name == "drift_slow" else _FAST_SPEED
        return _moving_shape(rng, size, frames, _diagonal(rng), speed)
    if class_name in ("appear", "disappear"):
        return _appearing(rng, size, frames, appear=class_name == "appear")
    raise ValueError(f"unknown synthetic video class {class_name!r}; known: {list(CLASSES)}")


def render_video(class_name: str, size: int, frames: int, rng: random.Random) -> np.ndarray:
    """One video of ``class_name``: (frames, size, size, 3) uint8 RGB, drawn with ``rng``."""
    paint = _painter(class_name, rng, size, frames)
    background = Image.fromarray(_background(rng, size), "RGB")
    draw_bg = ImageDraw.Draw(background)
    grey = rng.randint(110, 130)
    r = rng.uniform(0.05, 0.08) * size
    gx, gy = rng.uniform(r, size - r), rng.uniform(r, size - r)
    (draw_bg.ellipse if rng.random() < 0.5 else draw_bg.rectangle)(
        (gx - r, gy - r, gx + r, gy + r), fill=(grey, grey, grey))
    out = np.empty((frames, size, size, 3), np.uint8)
    for t in range(frames):
        img = background.copy()
        paint(ImageDraw.Draw(img), t)
        out[t] = np.asarray(img)
    return out


def write_video(path: str | Path, frames: np.ndarray, fps: int = 25, codec: str = "libx264",
                options: dict[str, str] | None = None) -> None:
    """Encode ``frames`` (T, H, W, 3) uint8 RGB into ``path`` with PyAV (yuv420p; H and W
    even). The container follows the suffix (``.mp4``, ``.webm``, ...)."""
    import av

    t, h, w, _ = frames.shape
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps, options=options or {})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_synthetic_videos(
    root: str | Path,
    train_per_class: int = 120,
    val_per_class: int = 30,
    frame_size: int = 64,
    frames: int = 20,
    num_classes: int = len(CLASSES),
    seed: int = 0,
) -> Path:
    """Write the videos, ``train.csv``, ``val.csv`` and ``classes.txt`` under ``root``; returns
    ``root``.

    A marker file records the arguments; if it matches, the existing dataset is reused, so a
    training script can call this on every start. ``num_classes`` takes the first classes of
    :data:`CLASSES`. Videos are encoded at quality ``crf 18`` so that compression does not
    wash out the sub-pixel-per-frame motion of the slow class.
    """
    if not 2 <= num_classes <= len(CLASSES):
        raise ValueError(f"num_classes must be in [2, {len(CLASSES)}], got {num_classes}")
    root = Path(root)
    classes = list(CLASSES[:num_classes])
    spec = dict(train_per_class=train_per_class, val_per_class=val_per_class,
                frame_size=frame_size, frames=frames, classes=classes, seed=seed)
    marker = root / _MARKER
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return root
    root.mkdir(parents=True, exist_ok=True)
    for split, per_class, split_seed in (("train", train_per_class, seed),
                                         ("val", val_per_class, seed + 1)):
        lines = []
        for label, name in enumerate(classes):
            out = root / split / name
            out.mkdir(parents=True, exist_ok=True)
            rng = random.Random(split_seed * 1000 + label)
            for i in range(per_class):
                path = out / f"{i:05d}.mp4"
                write_video(path, render_video(name, frame_size, frames, rng), options={"crf": "18"})
                lines.append(f"{path.relative_to(root)} {label}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    marker.write_text(json.dumps(spec, indent=1))
    return root
