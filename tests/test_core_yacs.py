"""A detectron2 model-zoo yacs config with only the backbone switched to MViTv2."""
import itertools

import pytest
import torch
from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.engine import SimpleTrainer
from detectron2.modeling import BACKBONE_REGISTRY, build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

import mvit_backbone
from mvit_backbone import add_mvitv2_config


def _model_zoo_cfg():
    cfg = get_cfg()
    add_mvitv2_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"))
    cfg.merge_from_list(["MODEL.BACKBONE.NAME", "build_mvitv2_fpn_backbone", "MODEL.DEVICE", "cpu",
                         "MODEL.WEIGHTS", ""])
    return cfg


def _instances(h, w, n, num_classes=80):
    inst = Instances((h, w))
    xy = torch.rand(n, 2) * torch.tensor([w * 0.6, h * 0.6])
    wh = torch.rand(n, 2) * torch.tensor([w * 0.3, h * 0.3]) + 8
    boxes = torch.cat([xy, xy + wh], dim=1)
    inst.gt_boxes = Boxes(boxes)
    inst.gt_classes = torch.randint(0, num_classes, (n,))
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
        masks[i, y0:y1, x0:x1] = True
    inst.gt_masks = BitMasks(masks)
    return inst


def test_backbones_registered_on_import():
    assert mvit_backbone.build_mvitv2_backbone is BACKBONE_REGISTRY.get("build_mvitv2_backbone")
    assert BACKBONE_REGISTRY.get("build_mvitv2_fpn_backbone") is mvit_backbone.build_mvitv2_fpn_backbone


def test_model_zoo_yaml_with_mvitv2_backbone_trains_a_step():
    torch.manual_seed(0)
    cfg = _model_zoo_cfg()
    cfg.MODEL.MVITV2.VARIANT = "T"
    model = build_model(cfg)
    assert isinstance(model.backbone.bottom_up, mvit_backbone.MViT)
    assert model.backbone._out_features == ["p2", "p3", "p4", "p5", "p6"]
    model.train()
    batch = [
        {"image": torch.randint(0, 255, (3, 160, 224), dtype=torch.uint8).float(),
         "instances": _instances(160, 224, 3)},
        {"image": torch.randint(0, 255, (3, 192, 160), dtype=torch.uint8).float(),
         "instances": _instances(192, 160, 2)},
    ]
    with EventStorage(0):
        losses = model(batch)
    assert {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    # one real optimisation step through detectron2's trainer
    qkv = model.backbone.bottom_up.blocks[0].attn.qkv.weight
    before = qkv.detach().clone()
    trainer = SimpleTrainer(model, itertools.repeat(batch), torch.optim.SGD(model.parameters(), lr=0.01))
    trainer.train(0, 1)
    assert trainer.iter == 1 and not torch.equal(before, qkv.detach())
    model.eval()
    with torch.no_grad():
        out = model([{"image": batch[0]["image"]}])
    assert "instances" in out[0]


def test_yacs_keys_reach_the_backbone():
    cfg = _model_zoo_cfg()
    cfg.MODEL.MVITV2.VARIANT = "S"
    cfg.MODEL.MVITV2.WINDOW_MODE = "swin"
    cfg.MODEL.MVITV2.ADAPTIVE_WINDOW_SIZE = 28
    backbone = BACKBONE_REGISTRY.get("build_mvitv2_backbone")(cfg, mvit_backbone.detection.config.ShapeSpec(channels=3))
    assert len(backbone.blocks) == 16
    assert backbone.window_mode == "swin"
    assert backbone.blocks[1].attn.kv_shift == 0 and backbone.blocks[2].attn.kv_shift > 0
    assert backbone.blocks[0].norm1.eps == 1e-6


def test_yacs_unknown_variant_is_a_clear_error():
    cfg = _model_zoo_cfg()
    cfg.MODEL.MVITV2.VARIANT = "XL"
    with pytest.raises(ValueError, match="unknown MViTv2 variant 'XL'"):
        build_model(cfg)
