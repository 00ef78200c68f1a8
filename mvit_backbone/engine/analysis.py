"""Parameter and FLOP counts of LazyConfig detectors with fvcore (how the papers counted)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from detectron2.config import CfgNode, instantiate
from detectron2.modeling import build_model
from detectron2.modeling.roi_heads import FastRCNNOutputLayers
from detectron2.utils.analysis import FlopCountAnalysis
from fvcore.nn import parameter_count, parameter_count_table


def _build(cfg: Any) -> nn.Module:
    if isinstance(cfg, CfgNode):  # yacs config (tools/train_net.py)
        return build_model(cfg)
    return instantiate(cfg.model)


def instantiate_on_meta(cfg: Any) -> nn.Module:
    """``instantiate(cfg.model)`` on the meta device: right shapes, no memory, no
    initialisation time (MViTv2-H takes about a second instead of half a minute).
    For counting only; the model cannot run."""
    with torch.device("meta"):
        return _build(cfg)


def count_parameters(cfg: Any) -> int:
    """Number of parameters of the model of a LazyConfig (``cfg.model``) or a yacs config."""
    return parameter_count(instantiate_on_meta(cfg))[""]


def parameter_table(cfg: Any, max_depth: int = 3) -> str:
    """fvcore's per-module parameter table of ``cfg.model``."""
    return parameter_count_table(instantiate_on_meta(cfg), max_depth=max_depth)


# The input at which the MViTv2 paper's Table 5 FLOPs are reproduced for detectron2's own MViT
# (with the mask head on TABLE5_DETECTIONS detections): see count_flops.
TABLE5_INPUT = (1024, 1024)
TABLE5_DETECTIONS = 100


def keep_top_detections(model: nn.Module, detections: int = TABLE5_DETECTIONS) -> nn.Module:
    """Make every box predictor of ``model`` keep its top ``detections`` boxes whatever their
    score, so that a model with random weights runs its mask head on as many RoIs as a trained
    one does on a typical COCO image (for counting and timing). Returns the model."""
    for module in model.modules():
        if isinstance(module, FastRCNNOutputLayers):
            module.test_score_thresh = 0.0
            module.test_topk_per_image = detections
    return model


def count_flops(
    cfg: Any,
    height: int = TABLE5_INPUT[0],
    width: int = TABLE5_INPUT[1],
    detections: int = TABLE5_DETECTIONS,
) -> tuple[float, dict[str, int]]:
    """Inference FLOPs (fvcore multiply-adds, in G) of the config's model on one random image.

    The model is built on CPU with its initial weights and run in eval mode; detectron2's
    ``FlopCountAnalysis`` wrapper feeds it ``[{"image": (3, H, W)}]``. A model with random
    weights scores no box above the usual test threshold, so every box predictor keeps its top
    ``detections`` boxes whatever their score: the mask head then runs on as many RoIs as it
    does for a trained model on a typical COCO image (detectron2's cap is 100). Returns the total
    in G and the operators fvcore could not count (name -> occurrences).
    """
    if height < 32 or width < 32:
        raise ValueError(f"flop input must be at least 32x32, got {height}x{width}")
    model = keep_top_detections(_build(cfg).to("cpu").eval(), detections)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8).float()
    analysis = FlopCountAnalysis(model, [{"image": image}])
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with torch.no_grad():
        total = analysis.total() / 1e9
    return total, dict(analysis.unsupported_ops())
