"""Video checkpoints: torchvision's and pytorchvideo's MViT names, and 2-D -> 3-D inflation.

- ``torchvision``: ``torchvision.models.video.mvit_v2_s`` / ``mvit_v1_b`` state dicts
  (``conv_proj``, ``pos_encoding.*``, ``attn.project.0``, ``attn.pool_q.pool`` /
  ``attn.pool_q.norm_act.0``, ``mlp.0`` / ``mlp.3``, ``project``, ``head.1``).
- ``pytorchvideo``: ``create_multiscale_vision_transformers`` (``patch_embed.patch_model``,
  ``cls_positional_encoding.*``, separate ``attn.q`` / ``attn.k`` / ``attn.v``, ``norm_embed``,
  ``head.proj``).

Both are renamed to the official (PySlowFast) names, which are ours; PySlowFast's own files
(``model_state`` of a ``.pyth``) carry them already, with ``attn.qkv`` or, where it was built
with separate projections, ``attn.q`` / ``attn.k`` / ``attn.v``, which are merged here too.

Inflation (MViTv2 §4.3): a 2-D (ImageNet) checkpoint in a 3-D model. The stem and the Q/K/V
pooling convs get the 2-D filter in their centre frame and zeros in the others, so a clip of
identical frames is filtered as each frame alone; the spatial rel-pos tables load (interpolated
if needed), the temporal ones start at zero; a joint ``pos_embed`` becomes ``pos_embed_class``
and ``pos_embed_spatial`` with a zero ``pos_embed_temporal``.
"""
from __future__ import annotations

import re
from typing import Mapping

import torch

from ..mvit import interpolate_abs_pos

# anchors: the stem's weight in each layout
TORCHVISION_ANCHOR = "conv_proj.weight"
PYTORCHVIDEO_ANCHOR = "patch_embed.patch_model.weight"

# (pattern, replacement) on the names after the model's prefix
_TORCHVISION_RULES = (
    (r"^conv_proj\.", "patch_embed.proj."),
    (r"^pos_encoding\.class_token$", "cls_token"),
    (r"^pos_encoding\.spatial_pos$", "pos_embed_spatial"),
    (r"^pos_encoding\.temporal_pos$", "pos_embed_temporal"),
    (r"^pos_encoding\.class_pos$", "pos_embed_class"),
    (r"\.attn\.project\.0\.", ".attn.proj."),
    (r"\.attn\.pool_([qkv])\.pool\.", r".attn.pool_\1."),
    (r"\.attn\.pool_([qkv])\.norm_act\.0\.", r".attn.norm_\1."),
    (r"\.mlp\.0\.", ".mlp.fc1."),
    (r"\.mlp\.3\.", ".mlp.fc2."),
    (r"^(blocks\.\d+)\.project\.", r"\1.proj."),
    (r"^head\.1\.", "head.projection."),
)
_PYTORCHVIDEO_RULES = (
    (r"^patch_embed\.patch_model\.", "patch_embed.proj."),
    (r"^cls_positional_encoding\.", ""),
    (r"^norm_embed\.", "norm."),
    (r"^head\.proj\.", "head.projection."),
)
# torchvision keeps these as vectors or matrices; ours are (1, N, C)
_BATCHED = ("cls_token", "pos_embed_spatial", "pos_embed_temporal", "pos_embed_class")


def _anchor_prefix(state: Mapping[str, torch.Tensor], anchor: str) -> str | None:
    for k in state:
        if k == anchor or k.endswith("." + anchor):
            return k[: -len(anchor)]
    return None


def video_format(state: Mapping[str, torch.Tensor]) -> str | None:
    """'torchvision' or 'pytorchvideo' when the state dict has that layout's stem, else None."""
    if _anchor_prefix(state, TORCHVISION_ANCHOR) is not None:
        return "torchvision"
    if _anchor_prefix(state, PYTORCHVIDEO_ANCHOR) is not None:
        return "pytorchvideo"
    return None


def video_to_official(state: Mapping[str, torch.Tensor], fmt: str) -> tuple[dict, dict]:
    """Rename a ``torchvision`` or ``pytorchvideo`` state dict to the official names (keys
    outside the model's prefix are kept), then merge separate q/k/v projections.

    Returns:
        (renamed state dict, {checkpoint name: official name} for every renamed key).
    """
    anchor, rules = {"torchvision": (TORCHVISION_ANCHOR, _TORCHVISION_RULES),
                     "pytorchvideo": (PYTORCHVIDEO_ANCHOR, _PYTORCHVIDEO_RULES)}[fmt]
    prefix = _anchor_prefix(state, anchor) or ""
    out, renamed = {}, {}
    for key, value in state.items():
        new = key
        if key.startswith(prefix):
            name = key[len(prefix):]
            for pattern, replacement in rules:
                name = re.sub(pattern, replacement, name)
            if name in _BATCHED:
                value = value.reshape(1, -1, value.shape[-1])
            new = prefix + name
        out[new] = value
        if new != key:
            renamed[key] = new
    out, merged = merge_separate_qkv(out)
    for key, new in list(renamed.items()):
        renamed[key] = merged.get(new, new)
    for key, new in merged.items():
        renamed.setdefault(key, new)
    return out, renamed


def merge_separate_qkv(state: Mapping[str, torch.Tensor]) -> tuple[dict, dict]:
    """Separate ``attn.q`` / ``attn.k`` / ``attn.v`` projections (pytorchvideo, PySlowFast
    with ``SEPARATE_QKV``) -> one ``attn.qkv`` (rows q, k, v, the order of the joint layer).

    Returns:
        (state dict, {separate name: merged name}).
    """
    out, renamed = dict(state), {}
    for key in state:
        m = re.match(r"^(.*\.attn\.)q\.(weight|bias)$", key)
        if not m:
            continue
        base, kind = m.groups()
        parts = [f"{base}{p}.{kind}" for p in "qkv"]
        if not all(p in state for p in parts):
            continue
        merged = f"{base}qkv.{kind}"
        out[merged] = torch.cat([out.pop(p) for p in parts])
        renamed.update({p: merged for p in parts})
    return out, renamed


_INFLATABLE = re.compile(r"(^|\.)(patch_embed\.proj|attn\.pool_[qkv])\.weight$")


def inflate_filter(key: str, value: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """A 2-D conv filter (out, in, kh, kw) of the stem or a Q/K/V pooling -> the 3-D target's
    shape (out, in, kt, kh, kw): the 2-D filter in the centre frame, zeros elsewhere (MViTv2
    §4.3). None if ``key`` is no such filter or the shapes do not match."""
    if not (_INFLATABLE.search(key) and value.dim() == 4 and target.dim() == 5
            and value.shape == target.shape[:2] + target.shape[3:]):
        return None
    inflated = value.new_zeros(target.shape)
    inflated[:, :, target.shape[2] // 2] = value
    return inflated


def inflate_positions(
    state: dict[str, torch.Tensor], model_state: Mapping[str, torch.Tensor], prefix: str
) -> dict[str, str]:
    """Add to ``state`` (in place) the 3-D model's position parameters a 2-D checkpoint lacks:
    zero temporal rel-pos tables and, for separate space/time positions, ``pos_embed_spatial``
    and ``pos_embed_class`` from the checkpoint's ``pos_embed`` (removed from ``state``) with a
    zero ``pos_embed_temporal``. ``prefix``: where the model's trunk starts.

    Returns:
        {model name: how it was made} for the report.
    """
    made = {}
    for key, target in model_state.items():
        if key.endswith("rel_pos_t") and key not in state:
            state[key] = torch.zeros_like(target, device="cpu")
            made[key] = "zeros: the 2-D checkpoint has no time axis"
    joint = state.pop(prefix + "pos_embed", None)
    spatial_key = prefix + "pos_embed_spatial"
    if joint is not None and spatial_key in model_state:
        target = model_state[spatial_key]
        has_cls = joint.shape[1] != int(round(joint.shape[1] ** 0.5)) ** 2
        side = int(round(target.shape[1] ** 0.5))
        grid = joint[:, int(has_cls):].float()
        state[spatial_key] = interpolate_abs_pos(grid, (side, side)).to(joint.dtype)
        made[spatial_key] = f"pos_embed {list(joint.shape)} without its class position"
        temporal_key = prefix + "pos_embed_temporal"
        state[temporal_key] = torch.zeros_like(model_state[temporal_key], device="cpu")
        made[temporal_key] = "zeros: the 2-D checkpoint has no time axis"
        class_key = prefix + "pos_embed_class"
        if class_key in model_state and has_cls:
            state[class_key] = joint[:, :1]
            made[class_key] = "the class position of pos_embed"
    elif joint is not None:
        state[prefix + "pos_embed"] = joint
    return made
