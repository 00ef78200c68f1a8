"""Every detection LazyConfig instantiates and its model trains a step; parameter counts match
Table 5 of MViTv2 (Mask R-CNN T/S/B/L, Cascade Mask R-CNN T/S/B/L/H, 80 classes)."""
import glob
import os
import re
import subprocess
import sys

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from mvit_backbone import MViT
from mvit_backbone.engine import count_parameters, instantiate_on_meta

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(
    os.path.relpath(p, REPO)
    for folder in ("COCO-InstanceSegmentation", "COCO-Detection")
    for p in glob.glob(os.path.join(REPO, "configs", folder, "*.py"))
)
TINY = re.compile(r"_mvitv2_t_")


def load(path: str, *overrides: str):
    return LazyConfig.apply_overrides(LazyConfig.load(os.path.join(REPO, path)), list(overrides))


def test_det_config_folders_are_complete():
    names = {os.path.basename(p) for p in CONFIGS}
    expected = {f"mask_rcnn_mvitv2_{s}_3x.py" for s in "tsbl"}
    expected |= {f"cascade_mask_rcnn_mvitv2_{s}_3x.py" for s in "tsblh"}
    expected |= {f"cascade_mask_rcnn_mvitv2_{s}_in21k_3x.py" for s in "blh"}
    expected |= {f"cascade_mask_rcnn_mvitv2_{s}_in21k_lsj_50ep.py" for s in "lh"}
    expected |= {"cascade_mask_rcnn_mvitv2_h_in21k_lsj_3x.py", "cascade_rcnn_mvitv2_h_in21k_lsj_3x.py"}
    expected |= {f"faster_rcnn_mvitv2_{s}_3x.py" for s in "tsbl"}
    expected |= {f"cascade_rcnn_mvitv2_{s}_3x.py" for s in "tsblh"}
    assert expected <= names, sorted(expected - names)


@pytest.mark.parametrize("path", CONFIGS)
def test_det_config_instantiates(path):
    cfg = load(path)
    model = instantiate_on_meta(cfg)
    bottom_up = model.backbone.bottom_up
    assert type(bottom_up) is MViT and bottom_up.window_mode == "hwin"
    size = re.search(r"_mvitv2_([tsblh])_", path).group(1).upper()
    pretrain = "in21k" if "in21k" in path else "in1k"
    # the published ImageNet checkpoints (detectron2 resolves the URL); none for H on IN-1K
    published = f"detectron2://ImageNetPretrained/mvitv2/MViTv2_{size}_{pretrain}.pyth"
    assert cfg.train.init_checkpoint == ("" if (size, pretrain) == ("H", "in1k") else published)
    has_masks = "COCO-InstanceSegmentation" in path
    assert model.roi_heads.mask_on == has_masks
    assert cfg.dataloader.train.mapper.use_instance_mask == has_masks
    mapper = instantiate(cfg.dataloader.train.mapper)
    assert mapper.image_format == "RGB" == cfg.model.input_format
    instantiate(cfg.dataloader.test.mapper)
    assert cfg.dataloader.evaluator.use_fast_impl is False
    instantiate(cfg.lr_multiplier)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    no_decay = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    rel_pos = [p for n, p in bottom_up.named_parameters() if "rel_pos" in n]
    assert rel_pos and all(id(p) in no_decay for p in rel_pos)
    assert optimizer.defaults["lr"] == pytest.approx(1e-4 if "lsj_50ep" in path else 1.6e-4)
    assert cfg.dataloader.train.total_batch_size == 64


def _batch(with_masks: bool) -> list[dict]:
    image = torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8)
    instances = Instances((64, 96))
    instances.gt_boxes = Boxes(torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 10.0, 90.0, 60.0]]))
    instances.gt_classes = torch.tensor([3, 17])
    if with_masks:
        masks = torch.zeros(2, 64, 96, dtype=torch.bool)
        masks[0, 6:50, 4:40] = True
        masks[1, 10:60, 30:90] = True
        instances.gt_masks = BitMasks(masks)
    return [{"image": image, "instances": instances}]


# Fewer proposals and sampled RoIs per image (defaults 2000 and 512): same parameters and
# code paths, a fraction of the head compute on CPU.
FEW_ROIS = (
    "model.proposal_generator.pre_nms_topk=[64,64]",
    "model.proposal_generator.post_nms_topk=[16,16]",
    "model.roi_heads.batch_size_per_image=16",
)
_checked_models: dict[str, str] = {}


def _train_step(path: str, *overrides: str) -> None:
    cfg = load(path, *FEW_ROIS, *overrides)
    spec = str(cfg.model)
    if spec in _checked_models:  # same model as another config (only data/schedule differ)
        return
    torch.manual_seed(0)
    model = instantiate(cfg.model).train()
    with EventStorage():
        losses = model(_batch(model.roi_heads.mask_on))
    assert ("loss_mask" in losses) == model.roi_heads.mask_on
    total = sum(losses.values())
    assert torch.isfinite(total), losses
    total.backward()
    grads = [p.grad for p in model.backbone.bottom_up.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    _checked_models[spec] = path


@pytest.mark.parametrize("path", [p for p in CONFIGS if TINY.search(p)])
def test_det_config_forward_backward(path):
    """The MViTv2-T config of each detector family (Mask / Cascade Mask / Faster / Cascade
    R-CNN); the other sizes only change backbone hyper-parameters and run in the slow test."""
    _train_step(path)


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in CONFIGS if not TINY.search(p)])
def test_det_config_forward_backward_other_sizes(path):
    _train_step(path)


TABLE5 = [("mask_rcnn", s) for s in "TSBL"] + [("cascade_mask_rcnn", s) for s in "TSBLH"]


@pytest.mark.parametrize("kind,size", TABLE5)
def test_det_param_count_matches_table5(kind, size, paper_numbers):
    target_m = paper_numbers["coco_table5"][kind][size][3]
    path = f"configs/COCO-InstanceSegmentation/{kind}_mvitv2_{size.lower()}_3x.py"
    params_m = count_parameters(load(path)) / 1e6
    assert abs(params_m - target_m) <= 0.02 * target_m, (path, params_m, target_m)


def test_det_analyze_model_tool_prints_parameters(paper_numbers):
    path = "configs/COCO-InstanceSegmentation/cascade_mask_rcnn_mvitv2_t_3x.py"
    out = subprocess.run(
        [sys.executable, "tools/analyze_model.py", "--config-file", path, "--max-depth", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    params_m = float(re.search(r"parameters: ([\d.]+) M", out.stdout).group(1))
    target_m = paper_numbers["coco_table5"]["cascade_mask_rcnn"]["T"][3]
    assert abs(params_m - target_m) <= 0.02 * target_m
    assert "roi_heads" in out.stdout
