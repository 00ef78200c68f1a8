"""Our image classifiers in timm's model registry (``import mvit_backbone`` registers them).

``timm.create_model("mvitv2_t", num_classes=10)``, ``features_only=True`` (the four stages,
strides 4 to 32), ``timm.data.resolve_data_config`` and timm's ``train.py`` then work on them.
The names (``mvitv2_t`` ... ``mvitv2_h``, ``mvitv1_b16``, ``mvitv1_b24``, the ``_384``/``_512``
fine-tuning sizes) do not clash with timm's own ``mvitv2_tiny`` ... family. No weights are
downloaded: ``pretrained=True`` needs ``pretrained_cfg_overlay=dict(file=PATH)`` with a
checkpoint in any layout :func:`mvit_backbone.load_checkpoint` reads.
"""
from __future__ import annotations

from typing import Any

import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from ..checkpoint import load_checkpoint
from .models import create_model

_IMAGE_SIZES = {
    "mvitv2_t": 224, "mvitv2_s": 224, "mvitv2_b": 224, "mvitv2_l": 224, "mvitv2_h": 224,
    "mvitv2_b_384": 384, "mvitv2_l_384": 384, "mvitv2_l_512": 512, "mvitv2_h_512": 512,
    "mvitv1_b16": 224, "mvitv1_b24": 224,
}
TIMM_MODEL_NAMES: tuple[str, ...] = tuple(_IMAGE_SIZES)


def _pretrained_cfg(size: int) -> dict[str, Any]:
    return {
        "url": "", "num_classes": 1000, "input_size": (3, size, size), "pool_size": None,
        "crop_pct": 0.9 if size == 224 else 1.0, "crop_mode": "center", "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj", "classifier": "head.projection",
        "fixed_input_size": False, "license": "apache-2.0",
    }


default_cfgs = generate_default_cfgs({name: _pretrained_cfg(s) for name, s in _IMAGE_SIZES.items()})


def _entrypoint(name: str):
    """timm's entry point for ``name``: ``build_model_with_cfg`` around :func:`create_model`
    (timm's ``drop_rate`` is our ``head_dropout``); ``pretrained=True`` loads the local file
    of ``pretrained_cfg_overlay=dict(file=PATH)`` with :func:`load_checkpoint`."""

    def entry(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        if "drop_rate" in kwargs:
            kwargs["head_dropout"] = kwargs.pop("drop_rate")
        model = build_model_with_cfg(
            lambda **model_kwargs: create_model(name, **model_kwargs), name, pretrained=False,
            feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls="getter"), **kwargs,
        )
        if pretrained:
            path = model.pretrained_cfg.get("file")
            if not path:
                raise ValueError(f"{name}: no weights are downloaded; give "
                                 "pretrained_cfg_overlay=dict(file=PATH) with a local checkpoint")
            trunk = model.model if hasattr(model, "model") else model  # features_only wrapper
            load_checkpoint(trunk, path, strict=False)
        return model

    entry.__name__ = entry.__qualname__ = name
    entry.__module__ = __name__
    entry.__doc__ = f"Our ``{name}`` (see :func:`mvit_backbone.create_model`) for timm."
    return entry


for _name in TIMM_MODEL_NAMES:
    globals()[_name] = register_model(_entrypoint(_name))
