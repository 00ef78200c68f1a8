"""FLOPs of the default models, counted the way users count them: fvcore's ``FlopCountAnalysis``
(and detectron2's wrapper for whole detectors) on the model as built, nothing switched.

Counts are compared with the same networks built from reference code (detectron2's ``MViT``)
and with MViTv2 Table 1. Every attention op must be counted: fvcore lists what it cannot count in
``unsupported_ops()``, and no attention kernel (``aten::scaled_dot_product_attention``, or a
custom autograd node, traced as ``prim::PythonOp``) may appear there.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn
from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import MViT as Detectron2MViT
from detectron2.utils.analysis import FlopCountAnalysis as Detectron2FlopCountAnalysis
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_analysis import JitModelAnalysis

import mvit_backbone
from mvit_backbone.engine import count_flops
from test_classification_complexity import within_printed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MASK_RCNN_T = "configs/COCO-InstanceSegmentation/mask_rcnn_mvitv2_t_3x.py"
ATTENTION_OPS = ("aten::scaled_dot_product_attention", "prim::PythonOp")


def uncounted_attention(analysis: JitModelAnalysis) -> list[str]:
    """Operators that fvcore skipped and that compute attention."""
    return [op for op in analysis.unsupported_ops() if op.startswith(ATTENTION_OPS)]


def gflops(analysis: JitModelAnalysis) -> float:
    """Total of a quiet analysis, in G (fvcore: one multiply-add = one FLOP)."""
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with torch.no_grad():
        return analysis.total() / 1e9


# A side that is a multiple of 224: every stage's grid is a multiple of its Hwin window (56, 28,
# 14, 7 at strides 4-32), so no window is padded. (Where detectron2 pads windows it also attends
# over the padding; we compute the same result without that work, and count fewer FLOPs.)
SIDE = 448


def test_default_backbone_counts_as_detectron2_mvit():
    """MViTv2-T backbone (Hwin): our default model against detectron2's MViT."""
    args = dict(mvit_backbone.mvitv2_variant("T"), residual_pooling=True,
                out_features=("scale2", "scale3", "scale4", "scale5"))
    image = torch.zeros(1, 3, SIDE, SIDE)
    ours = FlopCountAnalysis(mvit_backbone.MViT(**args).eval(), image)
    reference = FlopCountAnalysis(Detectron2MViT(**args).eval(), image)
    ours_g, reference_g = gflops(ours), gflops(reference)
    assert not uncounted_attention(ours), ours.unsupported_ops()
    assert ours_g == pytest.approx(reference_g, rel=0.01)


def load_config(path: str, detectron2_trunk: bool = False):
    """A detector LazyConfig; ``detectron2_trunk``: with detectron2's MViT, built from the same
    arguments, as the backbone trunk."""
    cfg = LazyConfig.load(os.path.join(REPO, path))
    if detectron2_trunk:
        assert cfg.model.backbone.bottom_up.pop("window_mode") == "hwin"  # detectron2's only mode
        cfg.model.backbone.bottom_up._target_ = Detectron2MViT
    return cfg


def detector(path: str, detectron2_trunk: bool = False) -> nn.Module:
    """The config's detector in eval mode, with few proposals and a fixed number of detections
    (so that both models run their heads on the same number of RoIs)."""
    cfg = LazyConfig.apply_overrides(load_config(path, detectron2_trunk), [
        "model.proposal_generator.post_nms_topk=[64,64]",
        "model.roi_heads.box_predictor.test_score_thresh=0.0",
        "model.roi_heads.box_predictor.test_topk_per_image=8",
    ])
    return instantiate(cfg.model).eval()


def test_default_mask_rcnn_t_counts_as_with_detectron2_mvit():
    """Whole Mask R-CNN T detector, through detectron2's ``FlopCountAnalysis``: ours against
    the same detector (same weights) with detectron2's MViT as the trunk."""
    torch.manual_seed(0)
    ours = detector(MASK_RCNN_T)
    reference = detector(MASK_RCNN_T, detectron2_trunk=True)
    reference.load_state_dict(ours.state_dict())
    image = torch.randint(0, 256, (3, SIDE, SIDE), dtype=torch.uint8).float()
    ours_a = Detectron2FlopCountAnalysis(ours, [{"image": image}])
    reference_a = Detectron2FlopCountAnalysis(reference, [{"image": image}])
    ours_g, reference_g = gflops(ours_a), gflops(reference_a)
    assert not uncounted_attention(ours_a), ours_a.unsupported_ops()
    assert ours_g == pytest.approx(reference_g, rel=0.01)


@pytest.mark.slow
def test_table5_input_reproduces_the_paper_for_detectron2_mvit(paper_numbers):
    """``count_flops``' default input (and detections) reproduces Table 5's Mask R-CNN T count
    for detectron2's own MViT, within 2%."""
    torch.manual_seed(0)
    count, _ = count_flops(load_config(MASK_RCNN_T, detectron2_trunk=True))
    assert count == pytest.approx(paper_numbers["coco_table5"]["mask_rcnn"]["T"][2], rel=0.02)


@pytest.mark.parametrize(
    "variant", ["T", pytest.param("S", marks=pytest.mark.slow), pytest.param("B", marks=pytest.mark.slow)]
)
def test_default_classifier_flops_match_table1(variant, paper_numbers):
    """Classifiers at 224x224: Table 1, and the count of timm's port of the official models."""
    target = paper_numbers["mvitv2_image_variants_table1"][variant]["gflops"]
    measured = paper_numbers["mvitv2_image_measured_with_timm_and_fvcore"][variant]["gflops"]
    model = mvit_backbone.create_model(f"mvitv2_{variant.lower()}", num_classes=1000).eval()
    analysis = FlopCountAnalysis(model, torch.zeros(1, 3, 224, 224))
    count = gflops(analysis)
    assert not uncounted_attention(analysis), analysis.unsupported_ops()
    assert within_printed(count, target), f"{variant}: {count:.3f} GFLOPs vs Table 1's {target}"
    assert count == pytest.approx(measured, rel=0.01)
