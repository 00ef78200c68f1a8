"""Video datasets and clip transforms of the video recipes (MViTv1 App. D, MViTv2 App. B.4).

Datasets read list files: one video per line, ``<path> <label>`` with the path relative to a
data root (Kinetics' layout as PySlowFast reads it). Multi-label sets (Charades) list the
labels comma-separated: ``<path> 3,17,42``. Three sampling schemes:

- ``"kinetics"``: a clip of T frames every tau frames; in training from a random start, at test
  from K starts spread uniformly over the video;
- ``"ssv2"``: segment-based sampling, one frame from each of T equal segments (random in
  training, middle at test); the recipe trains without flipping, whose labels ("pushing
  something from left to right") it would swap;
- ``"charades"``: Kinetics' clips with several labels per video (per-class sigmoid targets).

Training clips get, in timm's order for images, an inception-style random resized crop, a
horizontal flip, RandAugment, normalisation and random erasing, each with the same parameters on
every frame of the clip. Test clips are resized so the shorter side is ``short_side`` and cut
into 1 (centre) or 3 (both ends and centre of the longer side) square crops.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..data.video import (
    VideoDecodeError,
    clip_frame_indices,
    decode_frames,
    random_clip_start,
    segment_frame_indices,
    uniform_clip_starts,
)

logger = logging.getLogger("mvit_backbone.video.data")

DATASET_KINDS = ("kinetics", "ssv2", "charades")
# PySlowFast's Kinetics normalisation
KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)


class VideoListError(ValueError):
    """A list file is missing or has a malformed line; the message names the file and line."""


@dataclass(frozen=True)
class VideoItem:
    """One line of a list file: the video's path and its label(s)."""

    path: str
    labels: tuple[int, ...]


def read_video_list(list_file: str | Path, data_root: str | Path | None = None,
                    multi_label: bool = False) -> list[VideoItem]:
    """Read ``<path> <label>`` lines (``<path> <l1>,<l2>,...`` with ``multi_label``); blank
    lines are skipped. Relative paths are taken from ``data_root`` (default: the list's folder).

    Raises:
        VideoListError: the file is missing, empty, or a line has no integer label(s).
    """
    list_file = Path(list_file)
    if not list_file.is_file():
        raise VideoListError(f"video list {list_file} does not exist")
    root = Path(data_root) if data_root else list_file.parent
    items = []
    for n, line in enumerate(list_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().rsplit(None, 1)
        try:
            if len(parts) != 2:
                raise ValueError("expected '<path> <label>'")
            labels = tuple(int(x) for x in parts[1].split(",")) if multi_label else (int(parts[1]),)
        except ValueError as e:
            raise VideoListError(f"{list_file}, line {n}: {line.strip()!r}: {e}") from e
        items.append(VideoItem(str(root / parts[0]), labels))
    if not items:
        raise VideoListError(f"video list {list_file} lists no videos")
    return items


# --------------------------------------------------------------------------- transforms


class TrainClipTransform:
    """Training augmentation of a clip: uint8 (T, H, W, 3) -> float (3, T, size, size).

    Inception-style random resized crop (area fraction ``scale``, aspect ``ratio``), flip with
    probability ``hflip``, timm's RandAugment (``auto_augment``, e.g. "rand-m7-n4-mstd0.5-inc1";
    empty: off), normalisation, timm's random erasing with probability ``reprob``. One draw of
    every random parameter serves all frames: the RandAugment ops and magnitudes are drawn once
    (the random state is rewound for each frame) and the erased box is the same in every frame.
    """

    def __init__(self, size: int, scale: Sequence[float] = (0.08, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3), hflip: float = 0.5,
                 auto_augment: str = "", reprob: float = 0.0,
                 mean: Sequence[float] = KINETICS_MEAN, std: Sequence[float] = KINETICS_STD,
                 interpolation: str = "bilinear"):
        from timm.data.auto_augment import rand_augment_transform
        from timm.data.random_erasing import RandomErasing

        self.size, self.scale, self.ratio, self.hflip = size, tuple(scale), tuple(ratio), hflip
        self.mean = torch.tensor(mean).view(3, 1, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1, 1)
        self.interpolation = interpolation
        self.rand_augment = None
        if auto_augment:
            hparams = dict(translate_const=int(size * 0.45),
                           img_mean=tuple(round(255 * m) for m in mean))
            self.rand_augment = rand_augment_transform(auto_augment, hparams)
        self.erase = (RandomErasing(reprob, mode="pixel", max_count=1, device="cpu")
                      if reprob > 0 else None)

    def _crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        from torchvision.transforms import RandomResizedCrop

        return RandomResizedCrop.get_params(torch.empty(1, height, width), list(self.scale),
                                            list(self.ratio))

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        clip = torch.from_numpy(frames).permute(0, 3, 1, 2)  # (T, 3, H, W) uint8
        top, left, h, w = self._crop_box(clip.shape[2], clip.shape[3])
        clip = resize(clip[:, :, top:top + h, left:left + w].float(), (self.size, self.size),
                      self.interpolation)
        if random.random() < self.hflip:
            clip = clip.flip(-1)
        clip = clip.round_().clamp_(0, 255)
        if self.rand_augment is not None:
            clip = self._rand_augment(clip.to(torch.uint8)).float()
        clip = (clip.permute(1, 0, 2, 3) / 255.0 - self.mean) / self.std  # (3, T, S, S)
        if self.erase is not None:
            c, t, s, _ = clip.shape
            clip = self.erase(clip.reshape(c * t, s, s)).reshape(c, t, s, s)
        return clip

    def _rand_augment(self, clip: torch.Tensor) -> torch.Tensor:
        """timm's RandAugment on each frame of (T, 3, S, S) uint8 with the same draws."""
        py_state, np_state = random.getstate(), np.random.get_state()
        out = []
        for frame in clip.permute(0, 2, 3, 1).numpy():
            random.setstate(py_state)
            np.random.set_state(np_state)
            out.append(np.asarray(self.rand_augment(Image.fromarray(frame))))
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)


def resize(clip: torch.Tensor, size: tuple[int, int], interpolation: str = "bilinear") -> torch.Tensor:
    """(T, 3, H, W) float -> (T, 3, *size), antialiased when shrinking."""
    if tuple(clip.shape[-2:]) == tuple(size):
        return clip
    return F.interpolate(clip, size=size, mode=interpolation, align_corners=False,
                         antialias=interpolation in ("bilinear", "bicubic"))


class TestClipTransform:
    """Test views of a clip: uint8 (T, H, W, 3) -> float (num_crops, 3, T, size, size).

    The shorter side is resized to ``short_side``; ``num_crops`` 1 takes the centre square of
    ``size``, 3 takes the squares at the start, centre and end of the longer side (PySlowFast's
    ``uniform_crop``), then normalises.
    """

    def __init__(self, size: int, short_side: int, num_crops: int = 1,
                 mean: Sequence[float] = KINETICS_MEAN, std: Sequence[float] = KINETICS_STD,
                 interpolation: str = "bilinear"):
        if num_crops not in (1, 3):
            raise ValueError(f"num_crops must be 1 or 3, got {num_crops}")
        if short_side < size:
            raise ValueError(f"short_side {short_side} is smaller than the crop size {size}")
        self.size, self.short_side, self.num_crops = size, short_side, num_crops
        self.mean = torch.tensor(mean).view(3, 1, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1, 1)
        self.interpolation = interpolation

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        clip = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # (T, 3, H, W)
        h, w = clip.shape[-2:]
        scale = self.short_side / min(h, w)
        new_h, new_w = max(self.size, round(h * scale)), max(self.size, round(w * scale))
        clip = resize(clip, (new_h, new_w), self.interpolation).round_().clamp_(0, 255)
        crops = []
        for k in ([1] if self.num_crops == 1 else [0, 1, 2]):
            # along the longer side: start, centre, end; centred along the shorter one
            y = (new_h - self.size) * k // 2 if new_h > new_w else (new_h - self.size) // 2
            x = (new_w - self.size) * k // 2 if new_h <= new_w else (new_w - self.size) // 2
            crop = clip[:, :, y:y + self.size, x:x + self.size]
            crops.append((crop.permute(1, 0, 2, 3) / 255.0 - self.mean) / self.std)
        return torch.stack(crops)


# --------------------------------------------------------------------------- datasets


class VideoClipDataset(torch.utils.data.Dataset):
    """Clips of the videos of a list file, for training (one random clip per video and visit)
    or test (``num_clips`` uniform clips per video, each an item with all its crops).

    Items are dicts:
        ``clip``: (3, T, S, S) in training, (num_crops, 3, T, S, S) at test;
        ``label``: int, or a float multi-hot (num_classes,) for multi-label sets;
        ``video``: index of the video in the list (test views are aggregated by it);
        ``skipped``: how many unreadable files this item skipped (with ``skip_unreadable``);
        ``valid``: False for a test item whose video could not be read (skipped).

    Args:
        items: from :func:`read_video_list`.
        num_classes: number of classes (multi-hot size; labels are checked against it).
        kind: "kinetics", "ssv2" or "charades" (see the module docstring).
        num_frames, sampling_rate: T and tau of a clip (tau unused by "ssv2").
        transform: :class:`TrainClipTransform` (training) or :class:`TestClipTransform`.
        train: random clips (True) or the ``num_clips`` uniform test clips.
        skip_unreadable: instead of raising :class:`VideoDecodeError`, a training item takes
            another random video and a test item is marked invalid; both count the file.
    """

    def __init__(self, items: Sequence[VideoItem], num_classes: int, kind: str,
                 num_frames: int, sampling_rate: int, transform, train: bool,
                 num_clips: int = 1, skip_unreadable: bool = False):
        if kind not in DATASET_KINDS:
            raise ValueError(f"dataset kind must be one of {DATASET_KINDS}, got {kind!r}")
        for item in items:
            bad = [label for label in item.labels if not 0 <= label < num_classes]
            if bad:
                raise VideoListError(f"{item.path}: label(s) {bad} outside [0, {num_classes})")
        self.items, self.num_classes, self.kind = list(items), num_classes, kind
        self.num_frames, self.sampling_rate = num_frames, sampling_rate
        self.transform, self.train = transform, train
        self.num_clips = 1 if train else num_clips
        self.skip_unreadable = skip_unreadable

    @property
    def multi_label(self) -> bool:
        return self.kind == "charades"

    @property
    def num_videos(self) -> int:
        return len(self.items)

    def __len__(self) -> int:
        return len(self.items) * self.num_clips

    def frame_indices(self, video_frames: int, clip: int | None) -> list[int]:
        """The frames of clip number ``clip`` (test) or of a random clip (``clip`` None)."""
        if self.kind == "ssv2":
            return segment_frame_indices(video_frames, self.num_frames,
                                         random if clip is None else None)
        span = self.num_frames * self.sampling_rate
        start = (random_clip_start(video_frames, span, random) if clip is None
                 else uniform_clip_starts(video_frames, span, self.num_clips)[clip])
        return clip_frame_indices(start, self.num_frames, self.sampling_rate)

    def _label(self, video: int):
        labels = self.items[video].labels
        if self.multi_label:
            target = torch.zeros(self.num_classes)
            target[list(labels)] = 1.0
            return target
        return labels[0]

    def _load(self, video: int, clip: int | None) -> torch.Tensor:
        frames, _ = decode_frames(self.items[video].path,
                                  lambda info: self.frame_indices(info.num_frames, clip))
        return self.transform(frames)

    def __getitem__(self, index: int) -> dict:
        video, clip = (index, None) if self.train else divmod(index, self.num_clips)
        skipped = 0
        while True:
            try:
                data = self._load(video, clip)
                break
            except VideoDecodeError as e:
                if not self.skip_unreadable:
                    raise
                skipped += 1
                logger.warning("skipping unreadable video: %s", e)
                if not self.train:
                    crops = getattr(self.transform, "num_crops", 1)
                    size = getattr(self.transform, "size", 1)
                    data = torch.zeros(crops, 3, self.num_frames, size, size)
                    return dict(clip=data, label=self._label(video), video=video,
                                skipped=skipped, valid=False)
                if skipped >= 100:
                    raise VideoDecodeError(e.path, "and 99 other videos in a row are unreadable") from e
                video = random.randrange(len(self.items))
        return dict(clip=data, label=self._label(video), video=video, skipped=skipped, valid=True)
