"""Every official detectron2 ``projects/MViTv2/configs/*.py`` has a twin of the same file name in
``configs/COCO-InstanceSegmentation/`` that builds the same modules and trains the same way.

The official configs' values are held here as data (numbers, module types, augmentation lists),
with the parameter counts of detectron2's model zoo table. L deliberately differs in one point,
channel expansion in the MLP (the layout of the official MViTv2-L ImageNet checkpoints), which
changes its parameter count by a fraction of a percent.
"""
from __future__ import annotations

import functools
import os
from typing import Any

import pytest
import torch
import torch.nn as nn
from detectron2.config import LazyConfig
from detectron2.layers.batch_norm import NaiveSyncBatchNorm
from detectron2.modeling import MViT as Detectron2MViT
from detectron2.modeling.roi_heads import CascadeROIHeads, StandardROIHeads
from fvcore.nn import parameter_count

from mvit_backbone import MViT
from mvit_backbone.engine import instantiate_on_meta

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDER = os.path.join(REPO, "configs", "COCO-InstanceSegmentation")
PRETRAINED = "detectron2://ImageNetPretrained/mvitv2/MViTv2_{}.pyth"

BACKBONES = {
    "T": dict(embed_dim=96, depth=10, num_heads=1, last_block_indexes=(0, 2, 7, 9)),
    "S": dict(embed_dim=96, depth=16, num_heads=1, last_block_indexes=(0, 2, 13, 15)),
    "B": dict(embed_dim=96, depth=24, num_heads=1, last_block_indexes=(1, 4, 20, 23)),
    "L": dict(embed_dim=144, depth=48, num_heads=2, last_block_indexes=(1, 7, 43, 47)),
    "H": dict(embed_dim=192, depth=80, num_heads=3, last_block_indexes=(3, 11, 71, 79)),
}
SCHEDULE_3X = dict(lr=1.6e-4, max_iter=67500, milestones=[52500, 62500, 67500], num_updates=None)
SCHEDULE_LSJ_50EP = dict(lr=1e-4, max_iter=92187, milestones=[81944, 88773], num_updates=92187)

# file name -> size, drop path, activation checkpointing, cascade heads, loader, schedule,
# checkpoint, parameters (M) in the official model zoo table
OFFICIAL: dict[str, dict[str, Any]] = {
    "mask_rcnn_mvitv2_t_3x": dict(size="T", drop_path=0.2, act_checkpoint=False, cascade=False,
                                  loader="multiscale", schedule=SCHEDULE_3X, ckpt="T_in1k", params_m=44),
    "cascade_mask_rcnn_mvitv2_t_3x": dict(size="T", drop_path=0.2, act_checkpoint=False, cascade=True,
                                          loader="multiscale", schedule=SCHEDULE_3X, ckpt="T_in1k", params_m=76),
    "cascade_mask_rcnn_mvitv2_s_3x": dict(size="S", drop_path=0.2, act_checkpoint=False, cascade=True,
                                          loader="multiscale", schedule=SCHEDULE_3X, ckpt="S_in1k", params_m=87),
    "cascade_mask_rcnn_mvitv2_b_3x": dict(size="B", drop_path=0.4, act_checkpoint=False, cascade=True,
                                          loader="multiscale", schedule=SCHEDULE_3X, ckpt="B_in1k", params_m=103),
    "cascade_mask_rcnn_mvitv2_b_in21k_3x": dict(size="B", drop_path=0.4, act_checkpoint=False, cascade=True,
                                                loader="multiscale", schedule=SCHEDULE_3X, ckpt="B_in21k",
                                                params_m=103),
    "cascade_mask_rcnn_mvitv2_l_in21k_lsj_50ep": dict(size="L", drop_path=0.5, act_checkpoint=False, cascade=True,
                                                      loader="lsj", schedule=SCHEDULE_LSJ_50EP, ckpt="L_in21k",
                                                      params_m=270),
    "cascade_mask_rcnn_mvitv2_h_in21k_lsj_3x": dict(size="H", drop_path=0.6, act_checkpoint=True, cascade=True,
                                                    loader="lsj", schedule=SCHEDULE_3X, ckpt="H_in21k", params_m=718),
}

# augmentations as (type name, arguments); RandomApply holds its branch as a list
MULTISCALE_TRAIN = [
    ("RandomApply", dict(prob=0.5, tfm_or_aug=[
        ("ResizeShortestEdge", dict(short_edge_length=[400, 500, 600], sample_style="choice")),
        ("RandomCrop", dict(crop_type="absolute_range", crop_size=[384, 600])),
    ])),
    ("ResizeShortestEdge", dict(short_edge_length=[480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800],
                                sample_style="choice", max_size=1333)),
    ("RandomFlip", dict(horizontal=True)),
]
LSJ_TRAIN = [
    ("RandomFlip", dict(horizontal=True)),
    ("ResizeScale", dict(min_scale=0.1, max_scale=2.0, target_height=1024, target_width=1024)),
    ("FixedSizeCrop", dict(crop_size=[1024, 1024], pad=True)),
]
TEST_RESIZE = [("ResizeShortestEdge", dict(short_edge_length=800, max_size=1333))]
# the two-conv RPN head and normalised heads of the official cascade configs
CASCADE_IOUS = [0.5, 0.6, 0.7]
CASCADE_BOX_WEIGHTS = [(10, 10, 5, 5), (20, 20, 10, 10), (30, 30, 15, 15)]


def load(name: str):
    return LazyConfig.load(os.path.join(FOLDER, name + ".py"))


def augmentation_facts(augs) -> list[tuple[str, dict]]:
    """``(type name, arguments)`` of LazyCall augmentations; defaults of the class filled in."""
    facts = []
    for aug in augs:
        args = {k: v for k, v in aug.items() if k != "_target_"}
        if aug._target_.__name__ == "RandomApply":
            args["tfm_or_aug"] = augmentation_facts(aug.tfm_or_aug.augs)
        if aug._target_.__name__ == "FixedSizeCrop":
            args.setdefault("pad", True)
        facts.append((aug._target_.__name__, {k: list(v) if isinstance(v, (list, tuple)) else v
                                              for k, v in args.items()}))
    return facts


def test_every_official_config_has_a_twin():
    missing = [name for name in OFFICIAL if not os.path.isfile(os.path.join(FOLDER, name + ".py"))]
    assert not missing


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_twin_trains_as_the_official_config(name):
    fact = OFFICIAL[name]
    cfg = load(name)
    assert cfg.train.init_checkpoint == PRETRAINED.format(fact["ckpt"])
    assert cfg.train.amp.enabled and cfg.train.ddp.fp16_compression
    assert cfg.dataloader.train.total_batch_size == 64
    optimizer = cfg.optimizer
    assert optimizer._target_ is torch.optim.AdamW
    assert (optimizer.lr, tuple(optimizer.betas), optimizer.weight_decay) == (
        pytest.approx(fact["schedule"]["lr"]), (0.9, 0.999), 0.1)
    assert optimizer.params.weight_decay_norm == 0.0
    assert dict(optimizer.params.overrides) == {
        key: {"weight_decay": 0.0} for key in ("pos_embed", "rel_pos_h", "rel_pos_w")}
    schedule = fact["schedule"]
    assert cfg.train.max_iter == schedule["max_iter"]
    scheduler = cfg.lr_multiplier.scheduler
    assert list(scheduler["values"]) == [1.0, 0.1, 0.01]
    assert list(scheduler.milestones) == schedule["milestones"]
    assert scheduler.get("num_updates") == schedule["num_updates"]
    assert cfg.lr_multiplier.warmup_length * cfg.train.max_iter == pytest.approx(250)
    assert cfg.lr_multiplier.warmup_factor == 0.001
    mapper = cfg.dataloader.train.mapper
    train_augs = MULTISCALE_TRAIN if fact["loader"] == "multiscale" else LSJ_TRAIN
    assert augmentation_facts(mapper.augmentations) == train_augs
    assert mapper.get("recompute_boxes", False) == (fact["loader"] == "lsj")
    assert mapper.image_format == "RGB" and mapper.use_instance_mask
    assert augmentation_facts(cfg.dataloader.test.mapper.augmentations) == TEST_RESIZE


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_twin_builds_the_official_modules(name):
    fact = OFFICIAL[name]
    cfg = load(name)
    args = cfg.model.backbone.bottom_up
    assert args._target_ is MViT
    for key, value in BACKBONES[fact["size"]].items():
        got = tuple(args[key]) if isinstance(value, tuple) else args[key]
        assert got == value, key
    assert args.drop_path_rate == fact["drop_path"]
    assert bool(args.get("use_act_checkpoint", False)) == fact["act_checkpoint"]
    assert args.residual_pooling and args.norm_layer.keywords == {"eps": 1e-6}
    assert cfg.model.input_format == "RGB"
    model = instantiate_on_meta(cfg)
    assert type(model.roi_heads) is (CascadeROIHeads if fact["cascade"] else StandardROIHeads)
    rpn_convs = [m for m in model.proposal_generator.rpn_head.conv.modules() if isinstance(m, nn.Conv2d)]
    assert len(rpn_convs) == (2 if fact["cascade"] else 1)
    head_norms = [m for m in model.roi_heads.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    if fact["cascade"]:
        assert len(model.roi_heads.box_head) == 3
        for head in model.roi_heads.box_head:
            assert [m.out_channels for m in head.modules() if isinstance(m, nn.Conv2d)] == [256] * 4
            assert [m.out_features for m in head.modules() if isinstance(m, nn.Linear)] == [1024]
        assert [p.box2box_transform.weights for p in model.roi_heads.box_predictor] == CASCADE_BOX_WEIGHTS
        assert all(p.bbox_pred.out_features == 4 for p in model.roi_heads.box_predictor)
        assert [m.thresholds[1] for m in model.roi_heads.proposal_matchers] == CASCADE_IOUS
        # 4 box-head convs x 3 stages + 4 mask-head convs
        assert len(head_norms) == 16
        assert all(type(m) is NaiveSyncBatchNorm and m._stats_mode == "N" for m in head_norms)
    else:
        assert not head_norms
    params_m = parameter_count(model)[""] / 1e6
    assert abs(params_m - fact["params_m"]) <= 0.01 * fact["params_m"], params_m
    if fact["size"] in "TSB":  # detectron2's MViT cannot be built on the meta device (L, H)
        ours = parameter_count(model.backbone.bottom_up)[""]
        assert ours == detectron2_backbone_parameters(fact["size"])


@functools.lru_cache(maxsize=None)
def detectron2_backbone_parameters(size: str) -> int:
    """Parameters of detectron2's own MViT of that size, with the official configs' arguments."""
    reference = Detectron2MViT(**BACKBONES[size], residual_pooling=True,
                               out_features=("scale2", "scale3", "scale4", "scale5"))
    return parameter_count(reference)[""]
