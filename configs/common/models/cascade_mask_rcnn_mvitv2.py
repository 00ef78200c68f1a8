"""Cascade Mask R-CNN with an MViTv2-T backbone, as the official configs: three stages
(IoU 0.5/0.6/0.7), each with a 4conv+1fc box head and class-agnostic box regression; box and
mask head convolutions normalised with ``NaiveSyncBatchNorm(stats_mode="N")`` (synchronised
across GPUs, weighted by batch size so that heads with no RoIs on a GPU work; plain batch norm
in a single process); an RPN head with two convolutions."""
from functools import partial

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.layers.batch_norm import NaiveSyncBatchNorm
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.roi_heads import CascadeROIHeads, FastRCNNConvFCHead, FastRCNNOutputLayers

from .mask_rcnn_mvitv2 import model

head_norm = partial(NaiveSyncBatchNorm, stats_mode="N")

for key in ("box_head", "box_predictor", "proposal_matcher"):
    model.roi_heads.pop(key)

model.roi_heads.update(
    _target_=CascadeROIHeads,
    box_heads=[
        L(FastRCNNConvFCHead)(
            input_shape=ShapeSpec(channels=256, height=7, width=7),
            conv_dims=[256, 256, 256, 256],
            fc_dims=[1024],
            conv_norm=head_norm,
        )
        for _ in range(3)
    ],
    box_predictors=[
        L(FastRCNNOutputLayers)(
            input_shape=ShapeSpec(channels=1024),
            test_score_thresh=0.05,
            box2box_transform=L(Box2BoxTransform)(weights=(w, w, w // 2, w // 2)),
            cls_agnostic_bbox_reg=True,
            num_classes="${...num_classes}",
        )
        for w in (10, 20, 30)
    ],
    proposal_matchers=[
        L(Matcher)(thresholds=[iou], labels=[0, 1], allow_low_quality_matches=False)
        for iou in (0.5, 0.6, 0.7)
    ],
)
model.roi_heads.mask_head.conv_norm = head_norm
model.proposal_generator.head.conv_dims = [-1, -1]  # two 3x3 convolutions keeping the width
