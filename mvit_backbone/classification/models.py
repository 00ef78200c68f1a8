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
    otherwise the average of the spatial tokens (``global_pool`` "token" or "avg"; "" keeps
    the tokens). The methods follow timm's model protocol, so timm's tools (``features_only``,
    ``forward_intermediates``, ``reset_classifier``, ``train.py``) work on these models.

    Shapes, for x (B, C, H, W) and N = [1 +] H/32 * W/32 tokens of the last stage:
    forward(x) -> logits (B, num_classes);
    forward_features(x) -> normalised tokens (B, N, num_features);
    forward_head(tokens, pre_logits=True) -> pooled features (B, num_features);
    forward_intermediates(x) -> per-stage maps (B, C_s, H/s, W/s), s = 4, 8, 16, 32.
    """

    def __init__(self, num_classes: int = 1000, head_dropout: float = 0.0,
                 global_pool: str | None = None, **trunk_kwargs):
        trunk_kwargs.setdefault("window_mode", "none")
        trunk_kwargs.setdefault("adaptive_window_size", 0)
        super().__init__(**trunk_kwargs)
        self.num_classes = num_classes
        self.global_pool = self._check_pool(global_pool)
        self.norm = self.norm_layer(self.num_features)
        self.head = ClassificationHead(self.num_features, num_classes, head_dropout)
        self.head.apply(self._init_weights)
        self.feature_info = [
            dict(num_chs=c, reduction=s, module=f"blocks.{i}")
            for c, s, i in zip(self.stage_channels, self.stage_strides, self._last_block_indexes)
        ]

    def _check_pool(self, global_pool: str | None) -> str:
        if global_pool is None:
            return "token" if self.num_prefix else "avg"
        if global_pool not in ("token", "avg", ""):
            raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
        if global_pool == "token" and not self.num_prefix:
            raise ValueError("global_pool='token' needs a model with a class token")
        return global_pool

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        tokens, _ = self.forward_stages(x)[-1]
        return self.norm(tokens)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool the tokens of :meth:`forward_features` and classify them (``pre_logits``:
        return the pooled features)."""
        if self.global_pool == "token":
            x = x[:, 0]
        elif self.global_pool == "avg":
            x = x[:, self.num_prefix:].mean(dim=1)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head.projection

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head's projection for a new number of classes (fine-tuning); 0 removes
        it. ``global_pool`` ("token", "avg", "") changes the pooling when given."""
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = self._check_pool(global_pool)
        self.head.projection = (
            nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        )
        self.head.projection.apply(self._init_weights)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass (saves memory)."""
        self.use_act_checkpoint = enable

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs, timm's protocol: ``indices`` takes the last n stages (int) or the
        listed ones; maps (B, C_s, H_s, W_s) for "NCHW", tokens (B, H_s * W_s, C_s) for "NLC"
        (class token dropped). ``norm`` applies the final norm to the last stage. Returns the
        maps, or (normalised last tokens (B, N, C), maps) unless ``intermediates_only``."""
        from timm.models._features import feature_take_indices

        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take, _ = feature_take_indices(len(self.stage_channels), indices)
        stages = self.forward_stages(x)
        maps = []
        for i in take:
            tokens, shape = stages[i]
            if norm and i == len(stages) - 1:
                tokens = self.norm(tokens)
            tokens = tokens[:, self.num_prefix:]
            if output_fmt == "NCHW":
                tokens = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *shape)
            maps.append(tokens)
        if intermediates_only:
            return maps
        return self.norm(stages[-1][0]), maps

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """For feature extraction: drop the norm and/or head; returns the stage indices."""
        from timm.models._features import feature_take_indices

        take, _ = feature_take_indices(len(self.stage_channels), indices)
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take


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


def _kv_stride(overrides: dict, kv_stride: int | None) -> dict:
    """``kv_stride`` (the first stage's K/V pooling stride) as the trunk's ``adaptive_kv_stride``."""
    if kv_stride is None:
        return overrides
    if "adaptive_kv_stride" in overrides:
        raise ValueError("give kv_stride or adaptive_kv_stride, not both")
    return dict(overrides, adaptive_kv_stride=kv_stride)


def _mvitv2(variant: str, num_classes: int, img_size: int = 224, kv_stride: int | None = None,
            **overrides) -> MViTClassifier:
    overrides = _kv_stride(overrides, kv_stride)
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


def _mvitv1(default_depth: int, default_last_block_indexes: tuple[int, ...], num_classes: int,
            **overrides):
    """MViTv1 image model (MViTv1 App. D / PySlowFast MVIT_B_*_CONV): class token, absolute
    position, no rel-pos, no residual pooling, channel expansion in the MLP. ``overrides`` may
    replace any argument, the depth and stage ends included."""
    kwargs = dict(
        embed_dim=96,
        depth=default_depth,
        num_heads=1,
        last_block_indexes=default_last_block_indexes,
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


# ViT-B/16 as MViT trunk arguments: 12 blocks of width 768 with 12 heads, absolute positions,
# no class token, no pooling operators, global attention; ``dim_mul=head_mul=1`` keep the width
# when ``last_block_indexes=(5, 11)`` adds MViTv1 Table A.2's second scale. Windows of 7 cut the
# 14x14 tokens of a 224² image into 2x2.
VIT_B_ARCH: dict = dict(
    patch_kernel=(16, 16), patch_stride=(16, 16), patch_padding=(0, 0),
    embed_dim=768, depth=12, num_heads=12, last_block_indexes=(11,),
    dim_mul=1, head_mul=1, norm_layer=partial(nn.LayerNorm, eps=1e-6),
    use_abs_pos=True, pretrain_use_cls_token=False, use_rel_pos=False,
    residual_pooling=False, pool_stride_one=False, adaptive_kv_stride=1,
    adaptive_window_size=7,
)
# ViT-B's Hwin: its 12 blocks as 4 groups of 3, global attention in the last block of the last
# three groups (MViTv2 §5.3)
VIT_B_HWIN_GLOBAL_BLOCKS = (5, 8, 11)


@register_model
def vit_b(num_classes: int = 1000, kv_stride: int | None = None, **kw) -> MViTClassifier:
    """ViT-B/16 (Dosovitskiy et al.) built from the MViT trunk (:data:`VIT_B_ARCH`), for
    comparing attention mechanisms (MViTv2 Table 4): ``window_mode`` ("hwin": global in
    :data:`VIT_B_HWIN_GLOBAL_BLOCKS`), ``kv_stride`` (K/V pooling stride) and
    ``last_block_indexes=(5, 11)`` (the query pooled by 2 after block 6, width kept) are the
    trunk's arguments."""
    if kw.get("window_mode") == "hwin":
        kw.setdefault("global_blocks", VIT_B_HWIN_GLOBAL_BLOCKS)
    kw = dict(dict(VIT_B_ARCH, drop_path_rate=0.1), **_kv_stride(kw, kv_stride))
    return MViTClassifier(num_classes=num_classes, **kw)
