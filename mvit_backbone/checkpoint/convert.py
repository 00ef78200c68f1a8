"""Convert checkpoints between the layouts: ours (official names), detectron2's and timm's.

- ``ours``: the official MViT names (facebookresearch/mvit, PySlowFast), which our classifiers
  and backbones use; a whole detector keeps detectron2's names (our ``MViT`` backbone has
  exactly detectron2's keys).
- ``detectron2``: a detector state dict under ``{"model": ...}``, the MViT under
  ``backbone.bottom_up.``; stock detectron2's ``DetectionCheckpointer`` loads it into a model
  built with ``detectron2.modeling.MViT``. A classification checkpoint keeps its trunk (its
  ``norm``, ``head`` and class token, which detectron2's MViT lacks, are left out).
- ``timm``: the names of timm's ``mvitv2_*`` models (``stages.{s}.blocks.{j}``,
  ``shortcut_proj_attn|mlp``, ``head.fc``); stage boundaries are where a block changes the width.

Files are written by their suffix: ``.safetensors`` (the default of the command-line tool),
``.pth`` / ``.pt`` / ``.bin`` (``torch.save``) or, for detectron2, ``.pkl`` (numpy arrays, like
detectron2's model zoo).
"""
from __future__ import annotations

import os
import pickle
import re
from typing import Any, Mapping

import torch
from tqdm import tqdm

from .loader import (
    DETECTRON2_PREFIX,
    detect_format,
    to_official_names,
    trunk_prefix,
    unwrap_state_dict,
)
from .reader import read_checkpoint

LAYOUTS = ("ours", "detectron2", "timm")
_CLASSIFIER_ONLY = re.compile(r"^(norm\.|head\.|cls_token$)")
_OUTPUT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".pkl")


def to_ours(state: Mapping[str, torch.Tensor], source: str = "<state_dict>") -> dict[str, torch.Tensor]:
    """Any supported layout -> ours: timm's, torchvision's and pytorchvideo's names renamed, a
    ``module.`` (or other) prefix in front of the trunk removed; a detector's state dict
    (``backbone.bottom_up.``) is kept whole."""
    state, _ = to_official_names(state, detect_format(state))
    prefix = trunk_prefix(state, source)
    if prefix.endswith(DETECTRON2_PREFIX):
        prefix = prefix[: -len(DETECTRON2_PREFIX)]
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _trunk(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The MViT of a state dict in our layout, at the top level (detector heads left out)."""
    if any(k.startswith(DETECTRON2_PREFIX) for k in state):
        return {k[len(DETECTRON2_PREFIX):]: v for k, v in state.items()
                if k.startswith(DETECTRON2_PREFIX)}
    return dict(state)


def to_detectron2(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Ours -> the keys of a detectron2 detector with ``detectron2.modeling.MViT`` as
    ``backbone.bottom_up`` (a detector's state dict is returned as it is)."""
    if any(k.startswith(DETECTRON2_PREFIX) for k in state):
        return dict(state)
    return {DETECTRON2_PREFIX + k: v for k, v in state.items() if not _CLASSIFIER_ONLY.match(k)}


def _stage_starts(trunk: Mapping[str, torch.Tensor]) -> list[int]:
    """First block of each stage: where a block's shortcut projection changes the width (in
    the attention: that block; in the MLP, as in MViTv1: the next one)."""
    depth = 1 + max(int(m.group(1)) for k in trunk if (m := re.match(r"blocks\.(\d+)\.", k)))
    starts = {0}
    for i in range(depth):
        if f"blocks.{i}.proj.weight" not in trunk:
            continue
        qkv = trunk[f"blocks.{i}.attn.qkv.weight"]
        expands_in_attention = qkv.shape[0] // 3 != qkv.shape[1]
        starts.add(i if expands_in_attention else i + 1)
    return sorted(s for s in starts if s < depth) + [depth]


def to_timm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Ours -> the keys of timm's ``mvitv2_*`` models (the trunk of a detector; its scale norms
    and heads are left out, timm's classifier then starts as initialised)."""
    trunk = {k: v for k, v in _trunk(state).items() if not re.match(r"scale\d+_norm\.", k)}
    bounds = _stage_starts(trunk)
    out = {}
    for key, value in trunk.items():
        m = re.match(r"blocks\.(\d+)\.(.*)$", key)
        if m:
            i, rest = int(m.group(1)), m.group(2)
            stage = max(s for s, start in enumerate(bounds[:-1]) if start <= i)
            if rest.startswith("proj."):
                qkv = trunk[f"blocks.{i}.attn.qkv.weight"]
                kind = "attn" if qkv.shape[0] // 3 != qkv.shape[1] else "mlp"
                rest = f"shortcut_proj_{kind}." + rest[len("proj."):]
            key = f"stages.{stage}.blocks.{i - bounds[stage]}.{rest}"
        else:
            key = key.replace("head.projection.", "head.fc.")
        out[key] = value
    return out


def convert_state_dict(state: Mapping[str, torch.Tensor], to: str,
                       source: str = "<state_dict>") -> dict[str, torch.Tensor]:
    """Convert a state dict of any supported layout to ``to`` (one of :data:`LAYOUTS`)."""
    if to not in LAYOUTS:
        raise ValueError(f"unknown layout {to!r}; choose one of {', '.join(LAYOUTS)}")
    ours = to_ours(state, source)
    return {"ours": lambda s: s, "detectron2": to_detectron2, "timm": to_timm}[to](ours)


def _write(state: dict[str, torch.Tensor], dst: str, to: str, progress: bool) -> None:
    suffix = os.path.splitext(dst)[1]
    total = sum(v.numel() * v.element_size() for v in state.values())
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"converting to {to}",
              disable=not progress) as bar:
        plain = {}
        for key, value in state.items():
            plain[key] = value.detach().cpu().contiguous().clone()
            bar.update(value.numel() * value.element_size())
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(plain, dst, metadata={"format": "pt", "layout": to})
    elif suffix == ".pkl":
        with open(dst, "wb") as f:
            pickle.dump({"model": {k: v.numpy() for k, v in plain.items()},
                         "__author__": "mvit_backbone"}, f)
    else:
        torch.save({"model": plain} if to == "detectron2" else plain, dst)


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, to: str = "ours",
                       progress: bool = False) -> dict[str, Any]:
    """Read ``src`` (any format :func:`read_checkpoint` reads, any layout), write it to ``dst``
    in layout ``to``; the file type follows ``dst``'s suffix.

    Returns:
        ``{"source_layout", "layout", "tensors", "bytes", "path"}`` of what was written.

    Raises:
        ValueError: an unknown layout or suffix, a file that cannot be read or is refused, or
            one without MViT weights; the message names the file.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    suffix = os.path.splitext(dst)[1]
    if suffix not in _OUTPUT_SUFFIXES or (suffix == ".pkl" and to != "detectron2"):
        raise ValueError(f"cannot write {dst}: the output suffix must be one of "
                         f"{', '.join(_OUTPUT_SUFFIXES)} (.pkl for detectron2 only)")
    state = unwrap_state_dict(read_checkpoint(src), src)
    converted = convert_state_dict(state, to, src)
    _write(converted, dst, to, progress)
    return {"source_layout": detect_format(state), "layout": to, "tensors": len(converted),
            "bytes": os.path.getsize(dst), "path": dst}
