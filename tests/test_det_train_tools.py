"""Training tools on a tiny COCO-format dataset written to disk: resume after an interruption,
two-process gloo training, yacs train_net with a model-zoo config, detectron2 checkpoint
parity, predictions drawn to PNG, and clear errors for broken annotation files."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2 import model_zoo
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import MViT as D2MViT
from helpers.tiny_coco import write_tiny_coco
from PIL import Image

from mvit_backbone.engine import build_model, load_weights, predict_images, register_coco_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/COCO-InstanceSegmentation/mask_rcnn_mvitv2_t_3x.py"
FEW_ROIS = (
    "model.proposal_generator.pre_nms_topk=[64,64]",
    "model.proposal_generator.post_nms_topk=[16,16]",
    "model.roi_heads.batch_size_per_image=16",
)


def _write_split(root, split: str, n: int, rng: np.random.Generator) -> str:
    """n JPEGs in root/split and their COCO json root/split.json."""
    json_file = os.path.join(root, f"{split}.json")
    write_tiny_coco(Path(root) / split, Path(json_file), n, rng)
    return json_file


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tiny_coco"))
    rng = np.random.default_rng(0)
    return {split: (_write_split(root, split, n, rng), os.path.join(root, split))
            for split, n in (("train", 4), ("val", 2))}


def _register_args(tiny_coco) -> list[str]:
    args = []
    for split, (json_file, image_dir) in tiny_coco.items():
        args += ["--register-coco", f"det_tiny_{split}", json_file, image_dir]
    return args


def _lazy_opts(output_dir, max_iter: int, batch: int = 1) -> list[str]:
    return [
        "train.device=cpu", "train.init_checkpoint=''", f"train.output_dir={output_dir}",
        f"train.max_iter={max_iter}", "train.checkpointer.period=2", "train.eval_period=0",
        "train.log_period=1", "dataloader.train.dataset.names=det_tiny_train",
        "dataloader.test.dataset.names=det_tiny_val", f"dataloader.train.total_batch_size={batch}",
        "dataloader.train.num_workers=0", "dataloader.test.num_workers=0",
        # no random-crop branch (it resizes to 400-600 first); the multi-scale resize made small
        "dataloader.train.mapper.augmentations.0.prob=0.0",
        "dataloader.train.mapper.augmentations.1.short_edge_length=[64]",
        "dataloader.train.mapper.augmentations.1.max_size=96",
        "dataloader.test.mapper.augmentations.0.short_edge_length=64",
        "dataloader.test.mapper.augmentations.0.max_size=96",
        "model.roi_heads.num_classes=2", *FEW_ROIS,
    ]


def _lazy_cmd(tiny_coco, *extra: str) -> list[str]:
    return [sys.executable, "tools/lazyconfig_train_net.py", "--config-file", CONFIG,
            *_register_args(tiny_coco), *extra]


def _run(cmd: list[str], timeout: int = 400) -> str:
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out.stdout + out.stderr


def _iterations(output_dir) -> list[int]:
    with open(os.path.join(output_dir, "metrics.json")) as f:
        records = [json.loads(line) for line in f]
    return [r["iteration"] for r in records if "total_loss" in r]  # training records


@pytest.fixture(scope="module")
def resumed_run(tiny_coco, tmp_path_factory):
    """Train (max_iter 6, checkpoint every 2), kill the process after its first checkpoint,
    then resume; returns (output_dir, resumed checkpoint name, log of the resumed run)."""
    out = str(tmp_path_factory.mktemp("resume"))
    opts = [*_lazy_opts(out, max_iter=6), "optimizer.lr=1e-6"]
    cmd = _lazy_cmd(tiny_coco, *opts)
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    last = os.path.join(out, "last_checkpoint")
    deadline = time.time() + 300
    while not os.path.exists(last) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    _, err = proc.communicate()
    assert os.path.exists(last), err[-4000:]
    with open(last) as f:
        interrupted_at = f.read().strip()
    assert not os.path.exists(os.path.join(out, "model_final.pth")), "run was not interrupted"
    shutil.copy(os.path.join(out, interrupted_at), os.path.join(out, "interrupted.pth"))
    log = _run(_lazy_cmd(tiny_coco, "--resume", *opts))
    return out, interrupted_at, log


def test_det_resume_continues_from_last_checkpoint(resumed_run):
    out, interrupted_at, log = resumed_run
    k = int(re.search(r"model_(\d+)\.pth", interrupted_at).group(1))
    assert f"Resumed from {os.path.join(out, interrupted_at)} at iteration {k + 1}" in log
    before = torch.load(os.path.join(out, "interrupted.pth"), weights_only=True)
    final = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
    assert before["iteration"] == k and final["iteration"] == 5
    # AdamW counts its updates: the resumed optimizer went on from k + 1 updates to 6.
    steps = {float(s["step"]) for s in final["trainer"]["optimizer"]["state"].values()}
    assert steps == {6.0}
    # Weights go on from the checkpoint: at lr 1e-6 four AdamW steps move them by < 1e-5,
    # far less than the distance to any fresh random initialisation.
    diffs = [(final["model"][n] - w).abs().max().item() for n, w in before["model"].items()
             if w.is_floating_point()]
    assert 0 < max(diffs) < 1e-4
    iterations = _iterations(out)
    assert iterations.count(0) == 1 and iterations[-1] == 5
    # detectron2's hooks print the package's progress line (ETA, losses, lr, peak memory)
    assert re.search(r"eta: 0:00:00  iter: 6/6  .*total_loss: .*  lr: .*  max_mem: \d+M", log)


@pytest.mark.slow
def test_det_predict_writes_pngs(resumed_run, tiny_coco):
    out, _, _ = resumed_run
    register_coco_dataset("det_tiny_val", *tiny_coco["val"])
    cfg = LazyConfig.apply_overrides(
        LazyConfig.load(os.path.join(REPO, CONFIG)), _lazy_opts(out, max_iter=6)
    )
    image_dir = tiny_coco["val"][1]
    images = sorted(os.path.join(image_dir, n) for n in os.listdir(image_dir))
    written = predict_images(cfg, os.path.join(out, "model_final.pth"), images,
                             os.path.join(out, "pred"), score_thresh=0.0)
    assert [os.path.basename(p.png) for p in written] == ["000.png", "001.png"]
    for path, source in zip([p.png for p in written], images):
        drawn, original = np.asarray(Image.open(path)), np.asarray(Image.open(source))
        assert drawn.shape == original.shape
        assert np.abs(drawn.astype(int) - original.astype(int)).mean() > 1  # something drawn


@pytest.mark.slow
def test_det_two_process_gloo_training(tiny_coco, tmp_path):
    log = _run(_lazy_cmd(tiny_coco, "--num-gpus", "2", "--dist-url", "auto",
                         *_lazy_opts(tmp_path, max_iter=2, batch=2)))
    assert "World size: 2" in log
    assert _iterations(tmp_path)[-1] == 1
    assert torch.load(tmp_path / "model_final.pth", weights_only=True)["iteration"] == 1


def test_det_yacs_train_net_with_model_zoo_config(tiny_coco, tmp_path):
    zoo = model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml")
    log = _run([
        sys.executable, "tools/train_net.py", "--config-file", zoo, *_register_args(tiny_coco),
        "MODEL.BACKBONE.NAME", "build_mvitv2_fpn_backbone", "MODEL.DEVICE", "cpu",
        "MODEL.WEIGHTS", "", "INPUT.FORMAT", "RGB",
        "MODEL.PIXEL_MEAN", "[123.675, 116.28, 103.53]", "MODEL.PIXEL_STD", "[58.395, 57.12, 57.375]",
        "DATASETS.TRAIN", "('det_tiny_train',)", "DATASETS.TEST", "()",
        "SOLVER.IMS_PER_BATCH", "1", "SOLVER.MAX_ITER", "2", "SOLVER.BASE_LR", "0.0001",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96", "INPUT.MIN_SIZE_TEST", "64",
        "INPUT.MAX_SIZE_TEST", "96", "MODEL.ROI_HEADS.NUM_CLASSES", "2",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16", "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "64",
        "MODEL.RPN.POST_NMS_TOPK_TRAIN", "16", "DATALOADER.NUM_WORKERS", "0",
        "OUTPUT_DIR", str(tmp_path),
    ])
    weights = torch.load(tmp_path / "model_final.pth", weights_only=True)["model"]
    assert "backbone.bottom_up.blocks.9.attn.rel_pos_h" in weights
    assert "backbone.fpn_lateral2.weight" in weights
    # 2 iterations: fewer than IterationTimer's warm-up, so no iteration time and no ETA
    assert re.search(r"eta: n/a  iter: 2/2  .*total_loss: .*max_mem: \d+M", log)


def test_det_detectron2_checkpoint_gives_identical_outputs(tmp_path):
    """Mask R-CNN built with detectron2's own MViT, saved by DetectionCheckpointer, loaded into
    the model of our config by the --eval-only path (load_weights)."""
    overrides = ["train.device=cpu", "model.roi_heads.box_predictor.test_score_thresh=0.0"]
    ours_cfg = LazyConfig.apply_overrides(LazyConfig.load(os.path.join(REPO, CONFIG)), overrides)
    d2_cfg = LazyConfig.apply_overrides(LazyConfig.load(os.path.join(REPO, CONFIG)), overrides)
    d2_cfg.model.backbone.bottom_up._target_ = D2MViT
    d2_cfg.model.backbone.bottom_up.pop("window_mode")
    torch.manual_seed(0)
    d2 = instantiate(d2_cfg.model).eval()
    with torch.no_grad():  # non-zero rel-pos tables, so that they are checked too
        for name, p in d2.named_parameters():
            if "rel_pos" in name:
                p.normal_(0, 0.02)
    DetectionCheckpointer(d2, save_dir=str(tmp_path)).save("model_final")
    ours = build_model(ours_cfg).eval()
    load_weights(ours, str(tmp_path / "model_final.pth"))
    torch.manual_seed(1)
    batch = [{"image": torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8)} for _ in range(2)]
    with torch.no_grad():
        expected, got = d2(batch), ours(batch)
    for e, g in zip(expected, got):
        e, g = e["instances"], g["instances"]
        assert len(e) > 0 and len(e) == len(g)
        torch.testing.assert_close(g.pred_boxes.tensor, e.pred_boxes.tensor, atol=1e-3, rtol=0)
        torch.testing.assert_close(g.scores, e.scores, atol=1e-5, rtol=0)
        assert torch.equal(g.pred_classes, e.pred_classes)
        assert (g.pred_masks == e.pred_masks).float().mean() > 0.999


@pytest.mark.parametrize("content,problem", [
    ('{"images": [], "annotations": [', "not valid json"),
    ('{"images": [], "categories": []}', "no 'annotations' list"),
])
def test_det_broken_annotation_json_names_the_file(tmp_path, content, problem):
    json_file = tmp_path / "broken.json"
    json_file.write_text(content)
    with pytest.raises(ValueError, match=problem) as info:
        register_coco_dataset("det_broken", str(json_file), str(tmp_path))
    assert str(json_file) in str(info.value)
