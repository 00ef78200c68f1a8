"""Detection with broken data (COCO json and images on disk), corrupt and interrupted
checkpoints, a non-finite loss, typed overrides and deterministic runs, through detectron2's
registration, mapper, trainer and our checkpointer."""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from detectron2.config import LazyConfig
from detectron2.data import DatasetCatalog, DatasetMapper, get_detection_dataset_dicts
from detectron2.engine import SimpleTrainer, hooks
from helpers.tiny_coco import write_tiny_coco
from PIL import Image

from mvit_backbone.checkpoint import SafeDetectionCheckpointer
from mvit_backbone.checkpoint.reader import CheckpointReadError
from mvit_backbone.data.checks import DatasetError
from mvit_backbone.engine import (
    GuardedMapper,
    TrainingStopped,
    apply_overrides,
    check_datasets,
    do_train,
    register_coco_dataset,
)

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "Demo" / "mask_rcnn_mvitv2_demo.py"
KILL_DRIVER = REPO / "tests" / "helpers" / "kill_during_save.py"


def write_coco(root: Path, n: int = 4, seed: int = 0) -> tuple[Path, Path]:
    """n JPEGs in root/images and their COCO json root/instances.json."""
    json_file, image_dir = root / "instances.json", root / "images"
    write_tiny_coco(image_dir, json_file, n, np.random.default_rng(seed))
    return json_file, image_dir


def edit_json(json_file: Path, edit) -> None:
    content = json.loads(json_file.read_text())
    edit(content)
    json_file.write_text(json.dumps(content))


def truncate(path: Path) -> None:
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])


# ----------------------------------------------------------------------------- registration

def _missing_file(j, d):
    (d / "001.jpg").unlink()
    return d / "001.jpg", "does not exist"


def _zero_bytes(j, d):
    (d / "001.jpg").write_bytes(b"")
    return d / "001.jpg", r"is empty \(0 bytes\)"


def _missing_field(j, d):
    edit_json(j, lambda c: c["images"][1].pop("height"))
    return j, r"image entry .* lacks \['height'\]"


def _duplicate_ids(j, d):
    edit_json(j, lambda c: c["images"][1].update(id=1))
    return j, "image id 1 is used by 2 images"


def _unknown_category(j, d):
    edit_json(j, lambda c: c["annotations"][0].update(category_id=7))
    return j, r"annotation 1 has category_id 7, not in 'categories' \[1, 2\]"


def _annotation_without_bbox(j, d):
    edit_json(j, lambda c: c["annotations"][0].pop("bbox"))
    return j, r"annotation \{'id': 1.* lacks \['bbox'\]"


@pytest.mark.parametrize("breaks", [_missing_file, _zero_bytes, _missing_field, _duplicate_ids,
                                    _unknown_category, _annotation_without_bbox])
def test_registration_finds_broken_entries_error_or_skip(tmp_path: Path, caplog, breaks) -> None:
    json_file, image_dir = write_coco(tmp_path)
    named, problem = breaks(json_file, image_dir)
    with pytest.raises(DatasetError, match=rf"(?s)det_rel.*--skip-bad-data.*{named}: {problem}"):
        register_coco_dataset("det_rel", json_file, image_dir)
    with caplog.at_level(logging.WARNING, logger="mvit_backbone.data"):
        register_coco_dataset("det_rel", json_file, image_dir, skip_bad_data=True)
    assert str(named) in caplog.text and "broken item(s)" in caplog.text
    dicts = DatasetCatalog.get("det_rel")
    kept_images = {_unknown_category: 4, _annotation_without_bbox: 4, _duplicate_ids: 2}.get(breaks, 3)
    assert len(dicts) == kept_images
    assert all(Path(d["file_name"]).is_file() for d in dicts)


def test_degenerate_boxes_and_short_polygons_are_dropped_with_one_warning(tmp_path: Path, caplog) -> None:
    json_file, image_dir = write_coco(tmp_path)

    def degenerate(c):
        c["annotations"][0]["bbox"][2] = 0  # empty box
        c["annotations"][1]["segmentation"] = [[1, 1, 5, 5]]  # a 2-point polygon
        c["annotations"][2]["segmentation"].append([3, 3, 9, 9])  # one short polygon of two
        c["annotations"] = [a for a in c["annotations"] if a["image_id"] != 4]  # no annotations
    edit_json(json_file, degenerate)
    total = len(json.loads(json_file.read_text())["annotations"])
    with caplog.at_level(logging.WARNING, logger="mvit_backbone.data"):
        register_coco_dataset("det_rel_degenerate", json_file, image_dir)
    assert f"{json_file}: dropped 3 degenerate annotation part(s)" in caplog.text
    assert "bbox [" in caplog.text and "of fewer than 3 points" in caplog.text
    dicts = DatasetCatalog.get("det_rel_degenerate")
    assert sum(len(d["annotations"]) for d in dicts) == total - 2
    assert all(len(p) >= 6 for d in dicts for a in d["annotations"] for p in a["segmentation"])
    # the image without annotations is kept for evaluation, left out of training by detectron2
    assert len(dicts) == 4
    annotated = [d for d in dicts if d["annotations"]]
    assert len(get_detection_dataset_dicts("det_rel_degenerate", filter_empty=True)) == len(annotated)


def test_unusable_annotation_file_is_always_an_error(tmp_path: Path) -> None:
    json_file = tmp_path / "broken.json"
    for content, problem in (("{", "is not valid json"), ("[]", "does not hold a COCO object"),
                             ('{"images": [], "annotations": []}', "has no 'categories' list")):
        json_file.write_text(content)
        with pytest.raises(DatasetError, match=f"{json_file}.*{problem}"):
            register_coco_dataset("det_rel_json", json_file, tmp_path, skip_bad_data=True)
    with pytest.raises(DatasetError, match="does not exist"):
        register_coco_dataset("det_rel_json", tmp_path / "nope.json", tmp_path)


# ----------------------------------------------------------------------------- images when read

def test_check_data_and_the_mapper_name_undecodable_and_mis_sized_images(tmp_path: Path, caplog) -> None:
    json_file, image_dir = write_coco(tmp_path, n=5)
    truncate(image_dir / "000.jpg")
    Image.new("RGB", (50, 40)).save(image_dir / "001.jpg")  # the json says 96 x 64
    Image.new("L", (96, 64), 90).save(image_dir / "002.jpg")  # grayscale: converted
    Image.new("RGBA", (96, 64), (1, 2, 3, 4)).save(image_dir / "003.png")  # RGBA: converted
    edit_json(json_file, lambda c: c["images"][3].update(file_name="003.png"))
    register_coco_dataset("det_rel_images", json_file, image_dir)  # cheap checks pass
    problems = check_datasets(["det_rel_images"])
    assert [Path(p.file).name for p in problems] == ["000.jpg", "001.jpg"]
    assert problems[0].what.startswith("cannot be decoded (OSError")
    assert problems[1].what == "is 50x40 (width x height) but the annotation file says 96x64"
    dicts = DatasetCatalog.get("det_rel_images")
    mapper = GuardedMapper(DatasetMapper(is_train=True, augmentations=[], image_format="BGR"))
    for d in dicts[2:]:
        assert mapper(dict(d))["image"].shape == (3, 64, 96)
    for d, problem in ((dicts[0], "OSError"), (dicts[1], "Mismatched image shape")):
        with pytest.raises(DatasetError, match=f"{d['file_name']}: cannot be used.*{problem}"):
            mapper(dict(d))
    skipping = GuardedMapper(mapper.mapper, skip_bad_data=True)
    with caplog.at_level(logging.WARNING, logger="mvit_backbone.data"):
        assert skipping(dict(dicts[0])) is None and skipping(dict(dicts[0])) is None
    assert skipping.skipped.count == 2 and caplog.text.count(dicts[0]["file_name"]) == 1


# ----------------------------------------------------------------------------- checkpoints

class _Counter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(3))


def _trainer(model: nn.Module) -> SimpleTrainer:
    return SimpleTrainer(model, data_loader=[], optimizer=torch.optim.SGD(model.parameters(), lr=0.1))


def test_detection_checkpoints_are_atomic_and_resume_falls_back(tmp_path: Path, caplog) -> None:
    model = _Counter()
    trainer = _trainer(model)
    saver = SafeDetectionCheckpointer(model, str(tmp_path), trainer=trainer)
    for iteration in (1, 3, 5):
        trainer.iter = iteration
        with torch.no_grad():
            model.weight.fill_(iteration)
        saver.save(f"model_{iteration:07d}")
        time.sleep(0.01)  # distinct write times
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "last_checkpoint", "model_0000001.pth", "model_0000003.pth", "model_0000005.pth"]

    def resume() -> tuple[int, float, SafeDetectionCheckpointer]:
        fresh = _Counter()
        fresh_trainer = _trainer(fresh)
        loader = SafeDetectionCheckpointer(fresh, str(tmp_path), trainer=fresh_trainer)
        loader.resume_or_load("", resume=True)
        return fresh_trainer.iter, float(fresh.weight[0]), loader

    assert resume()[:2] == (5, 5.0)
    last = tmp_path / "model_0000005.pth"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # truncated
    with caplog.at_level(logging.WARNING):
        iteration, value, loader = resume()
    assert (iteration, value) == (3, 3.0) and loader.resumed_from == str(tmp_path / "model_0000003.pth")
    assert f"checkpoint {last} cannot be used" in caplog.text and "newest intact" in caplog.text
    (tmp_path / "last_checkpoint").write_text("")  # empty tag
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert resume()[:2] == (3, 3.0)
    assert "last_checkpoint is empty or missing" in caplog.text
    (tmp_path / "last_checkpoint").unlink()
    assert resume()[:2] == (3, 3.0)
    for p in tmp_path.glob("model_*.pth"):
        p.write_bytes(b"")
    with pytest.raises(CheckpointReadError, match="no intact checkpoint"):
        resume()


# ----------------------------------------------------------------------------- training runs

@pytest.fixture(scope="module")
def tiny_sets(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("det_rel_data")
    sets = {name: write_coco(root / name, n=4, seed=i) for i, name in enumerate(("train", "val"))}
    return sets


def demo_opts(out: Path, max_iter: int, period: int = 2) -> list[str]:
    """The slim demo detector on 64x96 images, on CPU, from scratch."""
    return [
        "train.device=cpu", "train.init_checkpoint=", f"train.output_dir={out}",
        f"train.max_iter={max_iter}", f"train.checkpointer.period={period}",
        "train.eval_period=0", "train.log_period=1", "train.seed=0",
        "dataloader.train.dataset.names=det_rel_train", "dataloader.test.dataset.names=det_rel_val",
        "dataloader.evaluator.dataset_name=det_rel_val", "dataloader.train.total_batch_size=1",
        "dataloader.train.num_workers=0", "dataloader.test.num_workers=0",
        "dataloader.train.mapper.augmentations.0.short_edge_length=[64]",
        "dataloader.train.mapper.augmentations.0.max_size=96",
        "dataloader.test.mapper.augmentations.0.short_edge_length=64",
        "dataloader.test.mapper.augmentations.0.max_size=96", "model.roi_heads.num_classes=2",
    ]


def register_args(sets) -> list[str]:
    return [a for name, (j, d) in sets.items() for a in ("--register-coco", f"det_rel_{name}",
                                                          str(j), str(d))]


def demo_cfg(sets, out: Path, max_iter: int, *extra: str):
    for name, (j, d) in sets.items():
        register_coco_dataset(f"det_rel_{name}", j, d)
    return apply_overrides(LazyConfig.load(str(DEMO_CONFIG)), demo_opts(out, max_iter) + list(extra))


def losses_of(out: Path) -> list[float]:
    with open(out / "metrics.json") as f:
        return [r["total_loss"] for r in map(json.loads, f) if "total_loss" in r]


def test_overrides_are_numbers_and_a_wrong_type_names_the_key() -> None:
    cfg = LazyConfig.load(str(DEMO_CONFIG))
    cfg = apply_overrides(cfg, ["optimizer.lr=1e6", "optimizer.weight_decay=1.0e-4",
                                "train.max_iter=2e3", "train.output_dir=/tmp/x"])
    assert cfg.optimizer.lr == 1e6 and cfg.optimizer.weight_decay == 1e-4
    assert cfg.train.max_iter == 2000.0
    with pytest.raises(ValueError, match=r"override optimizer.lr='fast': optimizer.lr is 0.0006 "
                                         r"\(float\), got a str"):
        apply_overrides(LazyConfig.load(str(DEMO_CONFIG)), ["optimizer.lr=fast"])
    with pytest.raises(ValueError, match="override train.amp.enabled='3': .* is False"):
        apply_overrides(cfg, ["train.amp.enabled=3"])


@pytest.mark.slow
def test_detection_bad_image_mid_run_saves_last_good_state_then_resume_or_skip(
        tiny_sets, tmp_path: Path, monkeypatch) -> None:
    """An image breaks on disk while training runs (all of them, after the 3rd iteration's
    batch was read): the run stops naming it and saves the state after iteration 2; once the
    files are back, --resume continues at iteration 3. With skip_bad_data it trains on."""
    json_file, image_dir = tiny_sets["train"]
    saved = {p: p.read_bytes() for p in image_dir.iterdir()}
    out = tmp_path / "o"
    cfg = demo_cfg(tiny_sets, out, 6, "train.checkpointer.period=100")

    class BreakImagesAfterIteration2(hooks.HookBase):
        def after_step(self):
            if self.trainer.iter == 2:
                for p in image_dir.iterdir():
                    truncate(p)

    register_hooks = SimpleTrainer.register_hooks
    monkeypatch.setattr(SimpleTrainer, "register_hooks", lambda self, hook_list: register_hooks(
        self, [*hook_list, BreakImagesAfterIteration2()]))
    with pytest.raises(TrainingStopped, match=rf"bad data: {image_dir}/\d+.jpg: cannot be used "
                                              rf".*saved in {out}/model_0000002.pth"):
        do_train(cfg)
    monkeypatch.undo()
    for p, content in saved.items():
        p.write_bytes(content)
    assert (out / "last_checkpoint").read_text() == "model_0000002.pth"
    do_train(demo_cfg(tiny_sets, out, 6), resume=True)
    with open(out / "metrics.json") as f:
        iterations = [r["iteration"] for r in map(json.loads, f) if "total_loss" in r]
    assert iterations == [0, 1, 2, 3, 4, 5] and (out / "model_final.pth").is_file()
    truncate(image_dir / "001.jpg")
    try:
        do_train(demo_cfg(tiny_sets, tmp_path / "skip", 4), skip_bad_data=True)
    finally:
        for p, content in saved.items():
            p.write_bytes(content)
    assert len(losses_of(tmp_path / "skip")) == 4


@pytest.mark.slow
def test_detection_non_finite_loss_names_iteration_and_terms(tiny_sets, tmp_path: Path) -> None:
    """Weights whose class scores are NaN: the loss check stops the resumed run at its first
    iteration, naming it and the loss terms, and keeps the checkpoint."""
    from mvit_backbone.checkpoint import read_checkpoint

    out = tmp_path / "o"
    do_train(demo_cfg(tiny_sets, out, 2))
    final = out / "model_final.pth"
    ckpt = read_checkpoint(final)
    ckpt["model"]["roi_heads.box_predictor.cls_score.weight"][0, 0] = math.nan
    torch.save(ckpt, final)
    before = final.read_bytes()
    with pytest.raises(TrainingStopped, match=r"non-finite loss nan at iteration 2 \(loss terms: "
                                              r"loss_cls=nan, .*loss_mask=.*\); the last good "
                                              rf"checkpoint {final} is kept"):
        do_train(demo_cfg(tiny_sets, out, 4), resume=True)
    assert final.read_bytes() == before


@pytest.mark.slow
def test_detection_two_seeded_deterministic_runs_give_identical_losses(tiny_sets, tmp_path: Path) -> None:
    losses = []
    torch.use_deterministic_algorithms(True)
    try:
        for name in ("a", "b"):
            torch.manual_seed(0)
            np.random.seed(0)
            # numpy's seed orders the sampler, the loader's seed its generator
            do_train(demo_cfg(tiny_sets, tmp_path / name, 3, "dataloader.train.seed=0"))
            losses.append(losses_of(tmp_path / name))
    finally:
        torch.use_deterministic_algorithms(False)
    assert len(losses[0]) == 3 and all(map(math.isfinite, losses[0]))
    assert losses[0] == losses[1]


def _run_until(cmd: list[str], marker, timeout: float = 400) -> subprocess.Popen:
    """Start ``cmd``; return once ``marker(line)`` holds for a line of its output."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    deadline = time.time() + timeout
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if marker(line) or time.time() > deadline:
            break
    assert proc.poll() is None, "".join(lines[-40:])
    return proc


@pytest.mark.slow
def test_detection_sigkill_during_checkpoint_write_then_resume(tiny_sets, tmp_path: Path) -> None:
    """Checkpoint every 2 iterations; the second write (iteration 3) is killed half-way. The
    first checkpoint and its tag stay intact, --resume continues at iteration 2."""
    out = tmp_path / "o"
    args = ["--config-file", str(DEMO_CONFIG), *register_args(tiny_sets), *demo_opts(out, 6)]
    proc = _run_until([sys.executable, str(KILL_DRIVER), "2", "tools/lazyconfig_train_net.py",
                       *args], lambda line: line.startswith("WRITING"))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / "last_checkpoint").read_text() == "model_0000001.pth"
    assert (out / ".model_0000003.pth.tmp").is_file() and not (out / "model_0000003.pth").exists()
    resumed = subprocess.run([sys.executable, "tools/lazyconfig_train_net.py", "--resume", *args],
                             cwd=REPO, capture_output=True, text=True, timeout=600,
                             env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resumed from {out}/model_0000001.pth at iteration 2" in resumed.stdout + resumed.stderr
    assert (out / "model_final.pth").is_file()
    with open(out / "metrics.json") as f:
        iterations = [r["iteration"] for r in map(json.loads, f) if "total_loss" in r]
    assert iterations[-4:] == [2, 3, 4, 5]


@pytest.mark.slow
def test_classification_sigkill_during_training_and_checkpoint_write(tmp_path: Path) -> None:
    """Kill the ImageNet entry point while it writes the checkpoint of epoch 2, resume: epoch 1's
    checkpoint is intact and epoch 2 is trained again; kill it again while it trains epoch 3,
    resume: epochs 1 and 2 are kept."""
    from mvit_backbone.data.image_folder import write_synthetic_image_folder

    data = write_synthetic_image_folder(tmp_path / "data", 8, 2, image_size=36, num_classes=2)
    out = tmp_path / "o"
    entry = "projects/MViTv2/train_imagenet.py"
    sets = ["model=mvitv2_nano", "img_size=32", "epochs=3", "warmup_epochs=1", "batch_size=4",
            "base_batch_size=4", "auto_augment=''", "reprob=0", "mixup=0", "cutmix=0",
            "repeated_aug=1", "num_workers=0", "threads=1", "log_period=1",
            "eval_protocols=[center]"]
    args = ["--data-dir", str(data), "--output-dir", str(out)]
    for s in sets:
        args += ["--set", s]
    proc = _run_until([sys.executable, str(KILL_DRIVER), "2", entry, *args],
                      lambda line: line.startswith("WRITING"))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    from mvit_backbone.checkpoint import read_checkpoint

    assert read_checkpoint(out / "checkpoint_last.pth")["epoch"] == 0
    proc = _run_until([sys.executable, entry, "--resume", *args],
                      lambda line: "epoch 3/3  eta" in line)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    log = (out / "log.txt").read_text()
    assert "resumed from" in log.split("epoch 1/3 done")[-1]
    assert read_checkpoint(out / "checkpoint_last.pth")["epoch"] == 1
    done = subprocess.run([sys.executable, entry, "--resume", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=400, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [0, 1, 2]
    assert "at epoch 2" in (out / "log.txt").read_text().split("resumed from")[-1]
