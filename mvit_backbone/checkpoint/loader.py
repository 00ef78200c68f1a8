"""Load MViT checkpoints of every known layout into our models.

Files are read by :func:`~mvit_backbone.checkpoint.reader.read_checkpoint` (PyTorch zip or
legacy, pickles of numpy arrays, safetensors; nothing in a file runs). Supported layouts
(detected from the keys, see :func:`detect_format`):

- ``official``: facebookresearch/mvit and PySlowFast names (``blocks.{i}...``,
  ``head.projection``), which are also ours; wrapped in ``model_state`` / ``model`` /
  ``state_dict`` or bare, with or without a ``module.`` (DDP) prefix.
- ``detectron2``: the same names under ``backbone.bottom_up.`` (whole detection models, ``.pkl``
  of numpy arrays from detectron2's model zoo or ``.pth``).
- ``timm``: ``stages.{s}.blocks.{j}``, ``shortcut_proj_attn|mlp``, ``head.fc``.
- ``torchvision`` (``mvit_v2_s``, ``mvit_v1_b``) and ``pytorchvideo`` (MViT) video models,
  renamed by :mod:`.video`. PySlowFast's video ``.pyth`` files are ``official``.

Relative position tables are linearly interpolated and absolute position embeddings bicubically
resized (class token kept apart; separate temporal positions linearly) when the checkpoint was
trained at another resolution or clip length. A 2-D checkpoint in a 3-D (video) model is
inflated (:mod:`.video`; the report lists what under ``inflated``). A classification head of
another class count is not loaded (the model keeps its initialised head) and the report lists
it under ``dropped``.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np
import torch
import torch.nn as nn

from ..layers.rel_pos import resize_rel_pos
from ..mvit import interpolate_abs_pos
from .reader import read_checkpoint
from .video import (
    inflate_filter,
    inflate_positions,
    merge_separate_qkv,
    video_format,
    video_to_official,
)

logger = logging.getLogger(__name__)

_WRAPPER_KEYS = ("model_state", "model", "state_dict", "model_ema", "module")
ANCHOR_KEY = "patch_embed.proj.weight"  # present in every MViT checkpoint
DETECTRON2_PREFIX = "backbone.bottom_up."  # where detectron2 detectors hold the MViT
_CLASSIFIER = re.compile(r"(^|\.)head\.projection\.(weight|bias)$")


@dataclass
class LoadReport:
    """What :func:`load_checkpoint` did. Keys are the model's names."""

    source: str
    format: str
    loaded: list[str] = field(default_factory=list)
    converted: dict[str, str] = field(default_factory=dict)  # checkpoint name -> model name
    interpolated: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)  # model name -> why it was not loaded
    inflated: dict[str, str] = field(default_factory=dict)  # model name -> how 2-D became 3-D

    def __str__(self) -> str:
        lines = [
            f"checkpoint {self.source} ({self.format}): loaded {len(self.loaded)} tensors, "
            f"converted {len(self.converted)} names, interpolated {len(self.interpolated)}"
        ]
        for key, (old, new) in self.interpolated.items():
            lines.append(f"  interpolated {key}: {list(old)} -> {list(new)}")
        for key, how in self.inflated.items():
            lines.append(f"  inflated 2-D -> 3-D {key}: {how}")
        for key, why in self.dropped.items():
            lines.append(f"  not loaded {key}: {why}")
        if self.missing:
            lines.append(f"  missing in checkpoint ({len(self.missing)}): {', '.join(self.missing)}")
        if self.unexpected:
            lines.append(
                f"  unexpected in checkpoint ({len(self.unexpected)}): {', '.join(self.unexpected)}"
            )
        return "\n".join(lines)


def unwrap_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """Find the state dict inside a checkpoint object (``model_state``, ``model``,
    ``state_dict``, ...) and make every value a tensor; ``source`` names it in errors."""
    while isinstance(obj, Mapping) and not any(
        isinstance(v, (torch.Tensor, np.ndarray)) for v in obj.values()
    ):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            raise ValueError(
                f"checkpoint {source} holds no state dict (top-level keys: {sorted(obj)[:10]})"
            )
        obj = inner
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint {source} is a {type(obj).__name__}, not a state dict")
    state = {}
    for k, v in obj.items():
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(v)
        if isinstance(v, torch.Tensor):
            state[k] = v
    if not state:
        raise ValueError(f"checkpoint {source} holds no tensors")
    return state


def detect_format(state: Mapping[str, Any]) -> str:
    """'timm', 'torchvision', 'pytorchvideo', 'detectron2' (a detector:
    ``backbone.bottom_up.`` prefix) or 'official' (facebookresearch/mvit, PySlowFast, ours)."""
    if any(re.search(r"(^|\.)stages\.\d+\.blocks\.\d+\.", k) for k in state):
        return "timm"
    video = video_format(state)
    if video is not None:
        return video
    if any(k.startswith(DETECTRON2_PREFIX) for k in state):
        return "detectron2"
    return "official"


def timm_to_official(state: Mapping[str, torch.Tensor]) -> tuple[dict, dict]:
    """Rename a timm ``mvitv2_*`` state dict to the official names.

    Returns:
        (renamed state dict, {timm name: official name} for every renamed key).
    """
    depths: dict[int, int] = {}
    for k in state:
        m = re.search(r"stages\.(\d+)\.blocks\.(\d+)\.", k)
        if m:
            s, j = int(m.group(1)), int(m.group(2))
            depths[s] = max(depths.get(s, 0), j + 1)
    starts = {s: sum(depths.get(t, 0) for t in range(s)) for s in depths}
    out, renamed = {}, {}
    for k, v in state.items():
        new = re.sub(
            r"stages\.(\d+)\.blocks\.(\d+)\.",
            lambda m: f"blocks.{starts[int(m.group(1))] + int(m.group(2))}.",
            k,
        )
        new = re.sub(r"\.shortcut_proj_(attn|mlp)\.", ".proj.", new)
        new = new.replace("head.fc.", "head.projection.")
        out[new] = v
        if new != k:
            renamed[k] = new
    return out, renamed


def to_official_names(state: Mapping[str, torch.Tensor], fmt: str) -> tuple[dict, dict]:
    """A state dict of layout ``fmt`` (:func:`detect_format`) renamed to the official names.

    Returns:
        (renamed state dict, {checkpoint name: official name} for every renamed key).
    """
    if fmt == "timm":
        return timm_to_official(state)
    if fmt in ("torchvision", "pytorchvideo"):
        return video_to_official(state, fmt)
    return merge_separate_qkv(state)


def trunk_prefix(keys: Iterable[str], source: str) -> str:
    """What precedes the MViT trunk's names (``""``, ``"module."``, ``"backbone.bottom_up."``);
    ValueError naming ``source`` when no key ends in ``patch_embed.proj.weight``."""
    for k in keys:
        if k.endswith(ANCHOR_KEY):
            return k[: -len(ANCHOR_KEY)]
    raise ValueError(f"{source}: no MViT weights found (no key ending in {ANCHOR_KEY!r})")


def _align_prefixes(state: dict, model_keys, source: str) -> tuple[dict, dict]:
    """Re-prefix checkpoint keys so they sit where the model has its trunk (e.g. a classifier
    checkpoint into ``backbone.bottom_up.`` of a detectron2 model, or the reverse)."""
    ckpt_prefix = trunk_prefix(state, source)
    model_prefix = trunk_prefix(model_keys, "model")
    if ckpt_prefix == model_prefix:
        return state, {}
    out, renamed = {}, {}
    for k, v in state.items():
        new = model_prefix + k[len(ckpt_prefix):] if k.startswith(ckpt_prefix) else k
        out[new] = v
        if new != k:
            renamed[k] = new
    return out, renamed


def _fit_shape(key: str, value: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """Interpolate position tables to the model's shape; None if the shapes cannot be fit."""
    if re.search(r"rel_pos_[thw]$", key) and value.dim() == 2 and value.shape[1] == target.shape[1]:
        return resize_rel_pos(value.float(), target.shape[0]).to(value.dtype)
    if key.endswith("pos_embed_temporal") and value.dim() == 3 and value.shape[2] == target.shape[2]:
        return interpolate_abs_pos(value.float(), (target.shape[1],), (value.shape[1],)).to(value.dtype)
    if key.endswith("pos_embed_spatial") and value.dim() == 3 and value.shape[2] == target.shape[2]:
        side = int(round(target.shape[1] ** 0.5))
        return interpolate_abs_pos(value.float(), (side, side)).to(value.dtype)
    if key.endswith("pos_embed") and value.dim() == 3 and value.shape[2] == target.shape[2]:
        prefix = target.shape[1] - int(round((target.shape[1]) ** 0.5)) ** 2
        src_prefix = value.shape[1] - int(round((value.shape[1]) ** 0.5)) ** 2
        if prefix not in (0, 1) or src_prefix not in (0, 1):
            return None
        side = int(round((target.shape[1] - prefix) ** 0.5))
        grid = interpolate_abs_pos(value[:, src_prefix:].float(), (side, side)).to(value.dtype)
        if prefix:
            cls = value[:, :1] if src_prefix else torch.zeros_like(value[:, :1])
            grid = torch.cat([cls, grid], dim=1)
        return grid
    return None


def load_checkpoint(
    model: nn.Module,
    path_or_state_dict: str | os.PathLike | Mapping[str, Any],
    strict: bool = True,
) -> LoadReport:
    """Load an MViT checkpoint of any supported layout into ``model``.

    Args:
        model: any module holding an MViT trunk (classifier, ``MViT`` backbone, or a whole
            detectron2 model with the backbone under ``backbone.bottom_up``).
        path_or_state_dict: a file (``.pth``, ``.pt``, ``.pyth``, ``.bin``, ``.pkl``,
            ``.safetensors``) or an in-memory checkpoint.
        strict: raise ``ValueError`` if any model parameter is missing from the checkpoint or
            any checkpoint tensor has no place in the model. A trunk tensor of another shape
            that cannot be interpolated is an error either way; a classification head of
            another class count is never loaded (``report.dropped``); with ``strict=False``
            other tensors outside the trunk (detector heads) of another shape are dropped too.

    Raises:
        ValueError: the file cannot be read or is refused (see
            :func:`~mvit_backbone.checkpoint.reader.read_checkpoint`), holds no MViT weights,
            or does not fit the model as described above; the message names the tensors.

    Returns:
        A :class:`LoadReport` (``str(report)`` is a readable summary).
    """
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        source = os.fspath(path_or_state_dict)
        raw = read_checkpoint(source)
    else:
        source = "<state_dict>"
        raw = path_or_state_dict
    state = unwrap_state_dict(raw, source)
    fmt = detect_format(state)
    report = LoadReport(source=source, format=fmt)
    state, renamed = to_official_names(state, fmt)
    report.converted.update(renamed)
    model_state = model.state_dict()
    state, renamed = _align_prefixes(state, model_state.keys(), source)
    report.converted.update(renamed)

    model_trunk = trunk_prefix(model_state.keys(), "model")
    stem = model_trunk + ANCHOR_KEY
    if state[stem].dim() == 4 and model_state[stem].dim() == 5:
        report.inflated.update(inflate_positions(state, model_state, model_trunk))
    to_load = {}
    bad_shapes = []
    for key, value in state.items():
        if key not in model_state:
            report.unexpected.append(key)
            continue
        target = model_state[key]
        if value.shape != target.shape:
            inflated = inflate_filter(key, value, target)
            if inflated is not None:
                report.inflated[key] = f"2-D filter {list(value.shape)} in the centre frame, zeros elsewhere"
                to_load[key] = inflated
                continue
            fitted = _fit_shape(key, value, target)
            if fitted is not None and fitted.shape == target.shape:
                report.interpolated[key] = (tuple(value.shape), tuple(target.shape))
                to_load[key] = fitted
                continue
            shapes = f"checkpoint {list(value.shape)} vs model {list(target.shape)}"
            if _CLASSIFIER.search(key):
                report.dropped[key] = f"classifier of another class count ({shapes}); kept as initialised"
            elif not strict and not key.startswith(model_trunk):
                report.dropped[key] = f"outside the MViT trunk, another shape ({shapes})"
            else:
                bad_shapes.append(f"{key}: {shapes}")
            continue
        to_load[key] = value
    report.missing = [k for k in model_state if k not in to_load and k not in report.dropped]
    if bad_shapes:
        shown = bad_shapes[:8]
        if len(bad_shapes) > len(shown):
            shown.append(f"... and {len(bad_shapes) - len(shown)} more")
        raise ValueError(
            f"checkpoint {source} does not fit the model ({len(bad_shapes)} tensors of another "
            "shape; a different variant?):\n  " + "\n  ".join(shown)
        )
    if strict and (report.missing or report.unexpected):
        raise ValueError(f"strict loading failed:\n{report}")
    model.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    logger.info("%s", report)
    return report
