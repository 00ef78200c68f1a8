"""detectron2 ``Backbone`` over the MViT trunk: multi-scale feature maps scale2 ... scale5."""
from __future__ import annotations

from typing import Sequence

import torch
from detectron2.modeling import Backbone, ShapeSpec

from ..mvit import MViTTrunk


class MViT(MViTTrunk, Backbone):
    """MViTv2 backbone for detectron2.

    Takes every argument of ``detectron2.modeling.MViT`` under the same name and default, plus
    those of :class:`~mvit_backbone.mvit.MViTTrunk` (``window_mode`` ...). With detectron2's
    arguments and ``window_mode="hwin"`` it computes detectron2's model and has its state_dict
    keys: ``patch_embed.proj``, ``blocks.{i}...``, ``scale{k}_norm``.

    Shapes: forward(x (B, C, H, W)) -> {"scale2": (B, C2, H/4, W/4), ..., "scale5": (B, C5,
    H/32, W/32)} for the features named in ``out_features``.
    """

    def __init__(
        self,
        *args,
        out_features: Sequence[str] = ("scale2", "scale3", "scale4", "scale5"),
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if self.num_prefix:
            raise ValueError("the detection backbone does not use a class token")
        self._out_features = list(out_features)
        self._out_feature_channels = {}
        self._out_feature_strides = {}
        self._stage_names = [f"scale{s + 2}" for s in range(len(self.stage_channels))]
        for name in out_features:
            if name not in self._stage_names:
                raise ValueError(f"unknown out_feature {name!r}; available {self._stage_names}")
        for name, channels, stride in zip(self._stage_names, self.stage_channels, self.stage_strides):
            if name in out_features:
                self._out_feature_channels[name] = channels
                self._out_feature_strides[name] = stride
                self.add_module(f"{name}_norm", self.norm_layer(channels))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = {}
        for name, (tokens, shape) in zip(self._stage_names, self.forward_stages(x)):
            if name in self._out_features:
                tokens = getattr(self, f"{name}_norm")(tokens)
                batch, _, channels = tokens.shape  # explicit sizes: a batch of 0 has no -1
                outputs[name] = tokens.transpose(1, 2).reshape(batch, channels, *shape)
        return outputs

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name],
                            stride=self._out_feature_strides[name])
            for name in self._out_features
        }
