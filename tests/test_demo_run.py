"""The demo end to end on a tiny dataset, the pre-training tool, and their error messages."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest
import torch
from detectron2.config import LazyConfig, instantiate

from mvit_backbone.data import DatasetError, write_coco_split
from mvit_backbone.engine.demo import (
    DEFAULT_CONFIG,
    DEFAULT_WEIGHTS,
    PretrainConfig,
    freeze_parameters,
    load_backbone_weights,
    pretrain_backbone,
    run_demo,
)

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / DEFAULT_CONFIG


def tiny_overrides(root: Path, train: int = 4, val: int = 2, vis: int = 1) -> list[str]:
    return [
        f"demo.dataset_root={root}",
        f"demo.splits.train=[{train},0]",
        f"demo.splits.val=[{val},1]",
        f"demo.vis_images={vis}",
        f"train.init_checkpoint={REPO / DEFAULT_WEIGHTS}",
        # small inputs and few proposals/detections keep the test fast
        "dataloader.train.mapper.augmentations.0.short_edge_length=[128]",
        "dataloader.test.mapper.augmentations.0.short_edge_length=128",
        "model.proposal_generator.post_nms_topk=[100,50]",
        "model.roi_heads.box_predictor.test_topk_per_image=20",
    ]


def test_tiny_demo_end_to_end(tmp_path):
    out = tmp_path / "out"
    summary = run_demo(CONFIG, minutes=10, output_dir=out,
                       overrides=tiny_overrides(tmp_path / "ds"), max_iter=2)
    assert summary["train"]["iters"] == 2
    assert summary["pretrained"]
    # AP figures come from pycocotools through COCOEvaluator: all its keys, per class too
    for task in ("bbox", "segm"):
        metrics = summary[task]
        for key in ("AP", "AP50", "AP75", "AP-circle", "AP-triangle", "AP-rectangle", "AP-star"):
            assert key in metrics, (task, key)
        assert 0.0 <= metrics["AP"] <= 100.0
    png = cv2.imread(summary["png"])
    assert png is not None and png.shape == (320, 400, 3)
    saved = json.loads((out / "results.json").read_text())
    assert saved["bbox"]["AP"] == summary["bbox"]["AP"]
    lines = (out / "metrics.json").read_text().splitlines()
    assert lines and "total_loss" in json.loads(lines[-1])


def test_demo_names_a_corrupt_dataset_file(tmp_path):
    root = tmp_path / "ds"
    write_coco_split(root, "train", 4, seed=0)
    write_coco_split(root, "val", 2, seed=1)  # the splits tiny_overrides asks for
    (root / "val" / "000002.jpg").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="000002.jpg"):
        run_demo(CONFIG, minutes=10, output_dir=tmp_path / "out",
                 overrides=tiny_overrides(root), max_iter=1)
    (root / "val.json").write_text("{ broken")
    with pytest.raises(DatasetError, match="val.json"):
        run_demo(CONFIG, minutes=10, output_dir=tmp_path / "out",
                 overrides=tiny_overrides(root), max_iter=1)


def _demo_backbone():
    cfg = LazyConfig.load(str(CONFIG))
    return instantiate(cfg.model.backbone.bottom_up)


def test_pretrain_writes_weights_the_detector_loads(tmp_path):
    path = tmp_path / "w.pth"
    meta = pretrain_backbone(path, PretrainConfig(iters=2, batch_size=4, val_images=4),
                             num_workers=0)
    assert 0.0 <= meta["held_out"]["pixel_acc"] <= 1.0
    saved = torch.load(path, weights_only=True)["model"]
    backbone = _demo_backbone()
    report = load_backbone_weights(backbone, path)
    assert report["loaded"] == len(backbone.state_dict())
    for k, v in backbone.state_dict().items():
        assert torch.equal(v, saved[k]), k


def test_shipped_weights_fit_the_demo_backbone():
    backbone = _demo_backbone()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    report = load_backbone_weights(backbone, REPO / DEFAULT_WEIGHTS)
    assert report["loaded"] == len(before)
    changed = [k for k, v in backbone.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) > len(before) // 2
    meta = torch.load(REPO / DEFAULT_WEIGHTS, weights_only=True)["meta"]
    assert meta["command"].startswith("python tools/demo_pretrain.py")
    assert (REPO / DEFAULT_WEIGHTS).stat().st_size < 20 * 2**20


def test_freeze_parameters_skips_their_gradients():
    backbone = _demo_backbone()
    assert freeze_parameters(backbone, ["patch_embed.", "blocks.0."]) == len(
        [k for k, _ in backbone.named_parameters() if k.startswith(("patch_embed.", "blocks.0."))]
    )
    out = backbone(torch.randn(1, 3, 64, 96))
    sum(v.sum() for v in out.values()).backward()
    for name, p in backbone.named_parameters():
        frozen = name.startswith(("patch_embed.", "blocks.0."))
        assert (p.grad is None) == frozen, name


def test_bad_backbone_weights_are_named(tmp_path):
    backbone = _demo_backbone()
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        load_backbone_weights(backbone, tmp_path / "nothere.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt.pth"):
        load_backbone_weights(backbone, corrupt)
    other = tmp_path / "other.pth"
    state = backbone.state_dict()
    state["blocks.0.mlp.fc1.weight"] = torch.zeros(3, 3)
    torch.save({"model": state}, other)
    with pytest.raises(ValueError, match="other.pth does not fit"):
        load_backbone_weights(backbone, other)


@pytest.mark.slow
def test_demo_keeps_its_time_budget(tmp_path):
    """A 4-minute run on a small dataset trains by the clock and ends on time."""
    summary = run_demo(CONFIG, minutes=4, output_dir=tmp_path / "out",
                       overrides=tiny_overrides(tmp_path / "ds", train=40, val=10, vis=2))
    assert summary["train"]["iters"] >= 5
    assert summary["seconds"] <= 4 * 60 * 1.1
