"""Demo: Mask R-CNN with a *slim* MViTv2 backbone and *slim* heads, for CPU training in minutes
on the synthetic shapes dataset (``mvit_backbone.data.coco_synthetic``, 4 classes).

Slimmer than the paper's Mask R-CNN MViTv2-T (configs/COCO-InstanceSegmentation):
- backbone: MViTv2 of width 48 and depth 6 (stages of 1, 1, 3, 1 blocks; 48/96/192/384 channels)
  instead of width 96 and depth 10, global pooling attention (``window_mode="none"``; the images
  are small) instead of Hwin;
- FPN of 96 channels instead of 256; box head 2 x FC-256 instead of 4 conv + FC-1024; mask head
  2 convs of 96 channels instead of 4 of 256; RoIAlign with sampling_ratio=2;
- fewer proposals and RoIs (RPN 128 anchors per image, 800 -> 250 proposals in training, 64 RoIs
  per image), anchors 16-256 px for objects of 18-140 px;
- images of short side 176-240 (test 208) instead of 480-800 (test 800).
Recipe kept from the paper: AdamW, warm-up + cosine schedule, no weight decay on norms and
relative positions, and the backbone starts from a pre-trained checkpoint
(``train.init_checkpoint``: per-pixel shape classification of separate synthetic scenes, made by
``tools/demo_pretrain.py``; see ``mvit_backbone/engine/demo.py``).

``tools/demo.py`` trains this config against a wall-clock budget (the number of iterations
follows the measured speed); ``train.max_iter`` is used only by fixed-length engines.
"""
from functools import partial

import torch.nn as nn
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.data import (
    DatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
import detectron2.data.transforms as T
from detectron2.evaluation import COCOEvaluator
from detectron2.layers import ShapeSpec

from mvit_backbone import MViT
from mvit_backbone.engine.demo import DEMO_BACKBONE, DEMO_PIXEL_MEAN, DEMO_PIXEL_STD
from mvit_backbone.engine.schedule import WarmupCosine

# dataset written by the demo itself: split -> (images, seed)
demo = dict(
    dataset_root="datasets/shapes",
    splits={"train": (500, 0), "val": (100, 1)},
    dataset_prefix="shapes",
    num_classes=4,
    vis_images=6,
    # with pre-trained weights, the patch embedding and first block stay frozen (detectron2's
    # FREEZE_AT for ResNets): no backward at the highest resolution, ~20% faster iterations
    freeze_backbone=["patch_embed.", "blocks.0."],
)

model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model
model.backbone.bottom_up = L(MViT)(
    **DEMO_BACKBONE,
    drop_path_rate=0.05,
    out_features=("scale2", "scale3", "scale4", "scale5"),
)
model.backbone.in_features = ("scale2", "scale3", "scale4", "scale5")
model.backbone.out_channels = 96
model.pixel_mean = DEMO_PIXEL_MEAN
model.pixel_std = DEMO_PIXEL_STD
model.input_format = "BGR"

rpn = model.proposal_generator
rpn.head.in_channels = 96
rpn.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
rpn.batch_size_per_image = 128
rpn.pre_nms_topk = (800, 600)
rpn.post_nms_topk = (250, 300)

roi = model.roi_heads
roi.num_classes = demo["num_classes"]
roi.batch_size_per_image = 64
roi.box_pooler.sampling_ratio = 2
roi.box_head.input_shape = ShapeSpec(channels=96, height=7, width=7)
roi.box_head.fc_dims = [256, 256]
roi.box_predictor.input_shape = ShapeSpec(channels=256)
roi.mask_pooler.sampling_ratio = 2
roi.mask_head.input_shape = ShapeSpec(channels=96, width=14, height=14)
roi.mask_head.conv_dims = [96, 96, 96]

dataloader = dict(
    train=L(build_detection_train_loader)(
        dataset=L(get_detection_dataset_dicts)(names=f"{demo['dataset_prefix']}_train"),
        mapper=L(DatasetMapper)(
            is_train=True,
            augmentations=[
                L(T.ResizeShortestEdge)(
                    short_edge_length=(176, 192, 208, 224, 240), sample_style="choice",
                    max_size=384,
                ),
                L(T.RandomFlip)(horizontal=True),
            ],
            image_format="BGR",
            use_instance_mask=True,
        ),
        total_batch_size=2,
        num_workers=1,
    ),
    test=L(build_detection_test_loader)(
        dataset=L(get_detection_dataset_dicts)(
            names=f"{demo['dataset_prefix']}_val", filter_empty=False
        ),
        mapper=L(DatasetMapper)(
            is_train=False,
            augmentations=[L(T.ResizeShortestEdge)(short_edge_length=208, max_size=384)],
            image_format="BGR",
        ),
        num_workers=0,
    ),
    evaluator=L(COCOEvaluator)(
        dataset_name=f"{demo['dataset_prefix']}_val", use_fast_impl=False, output_dir=None
    ),
)

optimizer = model_zoo.get_config("common/optim.py").AdamW
optimizer.lr = 6e-4
optimizer.weight_decay = 0.05
optimizer.params.overrides = {
    "rel_pos_h": {"weight_decay": 0.0},
    "rel_pos_w": {"weight_decay": 0.0},
}

lr_multiplier = L(WarmupCosine)(warmup=0.05, start=0.01, end=0.02)

train = model_zoo.get_config("common/train.py").train
train.output_dir = "output/demo"
train.init_checkpoint = "weights/mvitv2_demo_shapes_pretrain.pth"
train.max_iter = 700
train.device = "cpu"
train.log_period = 20
train.checkpointer.period = 10**9
train.eval_period = 10**9
