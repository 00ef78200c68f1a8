"""Image classification models: MViT trunk + norm + pooling + dropout + linear head.

``create_model(name, num_classes=..., **overrides)`` builds any registered model;
``list_models()`` lists the names. Parameter names follow the official checkpoints
(``norm``, ``head.projection``, ``cls_token``, ``pos_embed``), so they load by name.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch
import torch.nn as nn

from ..mvit import MViTTrunk, mvitv2_variant


class ClassificationHead(nn.Module):
    """Dropout then ``projection`` (Linear): (B, C) -> (B, num_classes)."""

    def __init__(self, dim: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.projection = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.dropout(x))


class MViTClassifier(MViTTrunk):
    """MViT for image classification (MViTv2 App. B.1; MViTv1 with a class token).

    The last stage's tokens are normalised, then pooled: the class token if the model has one,
    otherwise the average of the spatial tokens.

    Shapes: forward(x (B, C, H, W)) -> logits (B, num_classes);
    forward_features(x) -> pooled features (B, num_features).
    """

    def __init__(self, num_classes: int = 1000, head_dropout: float = 0.0, **trunk_kwargs):
        trunk_kwargs.setdefault("window_mode", "none")
        trunk_kwargs.setdefault("adaptive_window_size", 0)
        super().__init__(**trunk_kwargs)
        self.num_classes = num_classes
        self.norm = self.norm_layer(self.num_features)
        self.head = ClassificationHead(self.num_features, num_classes, head_dropout)
        self.head.apply(self._init_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        tokens, _ = self.forward_stages(x)[-1]
        tokens = self.norm(tokens)
        return tokens[:, 0] if self.num_prefix else tokens.mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head's projection for a new number of classes (fine-tuning)."""
        self.num_classes = num_classes
        self.head.projection = (
            nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        )
        self.head.projection.apply(self._init_weights)


_MODEL_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: make a builder available to :func:`create_model` under its function name."""
    _MODEL_BUILDERS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """Names :func:`create_model` accepts."""
    return sorted(_MODEL_BUILDERS)


def create_model(name: str, num_classes: int = 1000, **overrides) -> nn.Module:
    """Build a registered model; keyword overrides replace the builder's defaults."""
    if name not in _MODEL_BUILDERS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return _MODEL_BUILDERS[name](num_classes=num_classes, **overrides)


# Defaults of the official MViTv2 image models (and timm's port of them).
_MVITV2_IMAGE = dict(
    norm_layer=partial(nn.LayerNorm, eps=1e-6),
    rel_pos_zero_init=False,
    use_rel_pos=True,
    residual_pooling=True,
    adaptive_kv_stride=4,
)
# drop path per size, MViTv2 App. B.2
_MVITV2_DROP_PATH = {"T": 0.1, "S": 0.1, "B": 0.3, "L": 0.5, "H": 0.8}


def _mvitv2(variant: str, num_classes: int, img_size: int = 224, **overrides) -> MViTClassifier:
    kwargs = dict(_MVITV2_IMAGE, **mvitv2_variant(variant))
    kwargs.update(img_size=img_size, drop_path_rate=_MVITV2_DROP_PATH[variant])
    if variant == "L":
        # the official MViTv2-L expands channels in the MLP of a stage's last block
        kwargs["expand_in_attention"] = False
    kwargs.update(overrides)
    return MViTClassifier(num_classes=num_classes, **kwargs)


@register_model
def mvitv2_t(num_classes: int = 1000, **kw) -> MViTClassifier:
    return _mvitv2("T", num_classes, **kw)


@register_model
def mvitv2_s(num_classes: int = 1000, **kw) -> MViTClassifier:
    return _mvitv2("S", num_classes, **kw)


@register_model
def mvitv2_b(num_classes: int = 1000, **kw) -> MViTClassifier:
    return _mvitv2("B", num_classes, **kw)


@register_model
def mvitv2_l(num_classes: int = 1000, **kw) -> MViTClassifier:
    return _mvitv2("L", num_classes, **kw)


@register_model
def mvitv2_h(num_classes: int = 1000, **kw) -> MViTClassifier:
    return _mvitv2("H", num_classes, **kw)


@register_model
def mvitv2_b_384(num_classes: int = 1000, **kw) -> MViTClassifier:
    return _mvitv2("B", num_classes, **dict(dict(img_size=384), **kw))


@register_model
def mvitv2_l_384(num_classes: int = 1000, **kw) -> MViTClassifier:
    return _mvitv2("L", num_classes, **dict(dict(img_size=384), **kw))


@register_model
def mvitv2_l_512(num_classes: int = 1000, **kw) -> MViTClassifier:
    return _mvitv2("L", num_classes, **dict(dict(img_size=512), **kw))


@register_model
def mvitv2_h_512(num_classes: int = 1000, **kw) -> MViTClassifier:
    return _mvitv2("H", num_classes, **dict(dict(img_size=512), **kw))


def _mvitv1(depth: int, last_block_indexes: tuple[int, ...], num_classes: int, **overrides):
    """MViTv1 image model (MViTv1 App. D / PySlowFast MVIT_B_*_CONV): class token, absolute
    position, no rel-pos, no residual pooling, channel expansion in the MLP."""
    kwargs = dict(
        embed_dim=96,
        depth=depth,
        num_heads=1,
        last_block_indexes=last_block_indexes,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        use_cls_token=True,
        use_abs_pos=True,
        use_rel_pos=False,
        residual_pooling=False,
        expand_in_attention=False,
        pool_mode="conv",
        drop_path_rate=0.1,
    )
    kwargs.update(overrides)
    return MViTClassifier(num_classes=num_classes, **kwargs)


@register_model
def mvitv1_b16(num_classes: int = 1000, **kw) -> MViTClassifier:
    return _mvitv1(16, (0, 2, 13, 15), num_classes, **kw)


@register_model
def mvitv1_b24(num_classes: int = 1000, **kw) -> MViTClassifier:
    return _mvitv1(24, (1, 4, 20, 23), num_classes, **kw)


@register_model
def mvitv2_nano(num_classes: int = 1000, **kw) -> MViTClassifier:
    """A slim MViTv2 (not in the paper) for CPU runs on small images, e.g. the synthetic
    default of ``projects/MViTv2/train_imagenet.py``: width 32, 4 blocks, one per stage;
    same attention as MViTv2-T (rel-pos, residual pooling, K/V stride 4 in stage 1)."""
    arch = dict(embed_dim=32, depth=4, num_heads=1, last_block_indexes=(0, 1, 2, 3), drop_path_rate=0.0)
    return _mvitv2("T", num_classes, **dict(arch, **kw))
