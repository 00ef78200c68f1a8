"""The ImageNet training entry point on a tiny synthetic ImageFolder: the recipe's pieces
(parameter groups, schedule), a short run that learns, resume, eval-only, error reporting,
and two-process gloo training through torchrun."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import mvit_backbone
from mvit_backbone.classification.train import (
    CheckpointError,
    TrainConfig,
    load_config,
    lr_multiplier,
    run,
)
from mvit_backbone.data.image_folder import write_synthetic_image_folder
from mvit_backbone.engine.optim import param_groups

from helpers.torchrun import torchrun_imagenet

REPO = Path(__file__).resolve().parents[1]
ENTRY = REPO / "projects" / "MViTv2" / "train_imagenet.py"


def tiny_config(data: Path, out: Path, **overrides) -> TrainConfig:
    """nano MViTv2 at 32x32 on 4 classes; light augmentation so that 4 epochs visibly learn."""
    values = dict(
        data_dir=str(data), output_dir=str(out), model="mvitv2_nano", img_size=32,
        epochs=4, warmup_epochs=1, batch_size=16, base_lr=2e-3, base_batch_size=16,
        end_lr=1e-4, auto_augment="", color_jitter=0.0, hflip=0.0, train_scale=(0.7, 1.0),
        reprob=0.0, mixup=0.0, cutmix=0.0, label_smoothing=0.0, repeated_aug=1,
        num_workers=0, threads=1, log_period=2, eval_protocols=("center", "full"),
    )
    values.update(overrides)
    return TrainConfig.from_dict(values)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_image_folder(tmp_path_factory.mktemp("data"), train_per_class=24,
                                        val_per_class=6, image_size=36, num_classes=4, seed=0)


@pytest.fixture(scope="module")
def trained(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("run")
    metrics = run(tiny_config(data, out, checkpoint_period=1))
    return out, metrics


# ----------------------------------------------------------------------------- recipe


def test_no_weight_decay_on_norms_biases_positions() -> None:
    model = mvit_backbone.create_model("mvitv1_b16", num_classes=10)
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = set(no_decay["names"])
    assert {"cls_token", "pos_embed", "norm.weight", "norm.bias", "head.projection.bias"} <= names
    assert "head.projection.weight" in decay["names"] and "patch_embed.proj.weight" in decay["names"]
    v2 = mvit_backbone.create_model("mvitv2_nano", num_classes=10, img_size=64)
    d2, n2 = param_groups(v2, 0.1)
    assert any(n.endswith("attn.rel_pos_h") for n in n2["names"])
    assert not any("rel_pos" in n or n.endswith(".bias") for n in d2["names"])
    assert all(p.ndim >= 2 for p in d2["params"])
    total = sum(p.numel() for p in v2.parameters())
    assert sum(p.numel() for g in (d2, n2) for p in g["params"]) == total


def test_weight_decay_on_positions_as_the_official_code() -> None:
    """``zero_decay_pos_cls=False``: rel-pos tables and position embeddings decay; 1-d
    parameters and biases still do not."""
    model = mvit_backbone.create_model("mvitv1_b16", num_classes=10)
    decay, no_decay = param_groups(model, 0.05, zero_decay_pos_cls=False)
    assert {"cls_token", "pos_embed"} <= set(decay["names"])
    assert {"norm.weight", "norm.bias", "head.projection.bias"} <= set(no_decay["names"])
    v2 = mvit_backbone.create_model("mvitv2_nano", num_classes=10, img_size=64)
    d2, n2 = param_groups(v2, 0.1, zero_decay_pos_cls=False)
    assert any(n.endswith("attn.rel_pos_h") for n in d2["names"])
    assert not any("rel_pos" in n for n in n2["names"])


def test_lr_schedule_warmup_then_half_cosine() -> None:
    cfg = TrainConfig(epochs=300, warmup_epochs=70, base_lr=2e-3, base_batch_size=2048,
                      batch_size=128, warmup_start_lr=1e-6, end_lr=1e-6)
    peak = cfg.peak_lr(world_size=8)  # 128 x 8 = 1024 images: half of 2e-3
    assert peak == pytest.approx(1e-3)

    def lr_at(epoch: float) -> float:
        return peak * lr_multiplier(cfg, peak)(epoch / cfg.epochs)

    assert lr_at(0) == pytest.approx(1e-6)
    assert lr_at(35) == pytest.approx((1e-6 + 1e-3) / 2)
    assert lr_at(70) == pytest.approx(peak)
    assert lr_at(185) == pytest.approx((peak + 1e-6) / 2)  # half-way down the cosine
    assert lr_at(300) == pytest.approx(1e-6)
    lrs = [lr_at(e) for e in range(70, 301)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_lr_schedule_scales_start_and_end_with_the_batch() -> None:
    """The official code scales the warm-up start and the cosine end like the base lr."""
    cfg = TrainConfig(epochs=300, warmup_epochs=70, base_lr=2e-3, base_batch_size=2048,
                      batch_size=128, warmup_start_lr=8e-8, end_lr=8e-6, scale_start_end_lr=True)
    peak = cfg.peak_lr(world_size=8)  # half of the reference batch
    schedule = lr_multiplier(cfg, peak)
    assert peak * schedule(0.0) == pytest.approx(4e-8)
    assert peak * schedule(70 / 300) == pytest.approx(peak)
    assert peak * schedule(1.0) == pytest.approx(4e-6)


def test_paper_configs_load() -> None:
    cfg_dir = REPO / "projects" / "MViTv2" / "configs"
    drop = {"t": 0.1, "s": 0.1, "b": 0.3, "l": 0.5, "h": 0.8}
    for size, dp in drop.items():
        cfg = load_config(cfg_dir / f"mvitv2_{size}_in1k.yaml")
        assert cfg.model == f"mvitv2_{size}" and cfg.drop_path == dp
        assert (cfg.epochs, cfg.warmup_epochs, cfg.base_lr, cfg.base_batch_size) == (300, 70, 2e-3, 2048)
        assert cfg.weight_decay == (0.1 if size in "lh" else 0.05)
        assert (cfg.mixup, cfg.cutmix, cfg.reprob, cfg.label_smoothing) == (0.8, 1.0, 0.25, 0.1)
        # the official code's settings (facebookresearch/mvit), and the paper's repeated augmentation
        assert cfg.auto_augment == "rand-m9-n6-mstd0.5-inc1" and cfg.clip_grad == 1.0 and not cfg.ema
        assert not cfg.zero_decay_pos_cls and cfg.scale_start_end_lr
        assert cfg.peak_lr(1) / cfg.base_lr * cfg.warmup_start_lr == pytest.approx(1e-8 * cfg.batch_size / 256)
        assert cfg.peak_lr(1) / cfg.base_lr * cfg.end_lr == pytest.approx(1e-6 * cfg.batch_size / 256)
        assert cfg.repeated_aug > 1
    with pytest.raises(ValueError, match="unknown config keys"):
        load_config(None, {"learning_rate": 1.0})


# ----------------------------------------------------------------------------- training


def test_short_run_lowers_loss_and_writes_outputs(trained: tuple[Path, dict]) -> None:
    out, metrics = trained
    hist = metrics["history"]
    assert [h["epoch"] for h in hist] == [0, 1, 2, 3]
    assert hist[-1]["train_loss"] < 0.85 * hist[0]["train_loss"], [h["train_loss"] for h in hist]
    assert hist[-1]["val_center_loss"] < hist[0]["val_center_loss"]
    for name in ("checkpoint_last.pth", "checkpoint_0002.pth", "metrics.json", "history.json", "log.txt"):
        assert (out / name).is_file(), name
    with open(out / "training_curve.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert list((out / "tb").glob("events.out.tfevents.*"))
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["final"]["val_center_top1"] == pytest.approx(hist[-1]["val_center_top1"])
    log = (out / "log.txt").read_text()
    assert "eta: " in log and "max_mem: " in log and "top-1" in log and "top-5" in log


def test_resume_continues_at_epoch_and_lr(trained: tuple[Path, dict], tmp_path: Path, data: Path) -> None:
    out, metrics = trained
    cfg = tiny_config(data, tmp_path)
    # as if the first run had stopped after epoch 2 (index 1): its checkpoint of that epoch
    resumed = run(cfg, resume=str(out / "checkpoint_0002.pth"))
    hist, ref = resumed["history"], metrics["history"]
    assert [h["epoch"] for h in hist] == [0, 1, 2, 3]
    assert hist[:2] == ref[:2]  # carried over from the checkpoint
    peak = cfg.peak_lr(1)
    assert hist[2]["lr"] == pytest.approx(peak * lr_multiplier(cfg, peak)(2 / cfg.epochs))
    assert hist[2]["lr"] == pytest.approx(ref[2]["lr"])
    assert hist[3]["lr"] == pytest.approx(ref[3]["lr"])
    log = (tmp_path / "log.txt").read_text()
    assert "resumed from" in log and "epoch 3/4" in log and "epoch 1/4  eta" not in log
    ckpt = torch.load(tmp_path / "checkpoint_last.pth", weights_only=True)
    assert ckpt["epoch"] == 3
    # resuming a finished run trains nothing more
    again = run(cfg, resume="auto")
    assert len(again["history"]) == 4 and again["final"]["val_center_top1"] == hist[-1]["val_center_top1"]


def test_eval_only_reproduces_logged_accuracy(trained: tuple[Path, dict], data: Path, tmp_path: Path) -> None:
    out, metrics = trained
    cfg = tiny_config(data, tmp_path / "eval", eval_batch_size=7)
    result = run(cfg, resume=str(out / "checkpoint_last.pth"), eval_only=True)
    logged = metrics["history"][-1]
    assert result["epoch"] == 3
    for proto in ("center", "full"):
        assert result[f"val_{proto}_top1"] == pytest.approx(logged[f"val_{proto}_top1"], abs=1e-9)
        assert result[f"val_{proto}_top5"] == pytest.approx(logged[f"val_{proto}_top5"], abs=1e-9)
        assert result[f"val_{proto}_loss"] == pytest.approx(logged[f"val_{proto}_loss"], rel=1e-4)
    assert json.loads((tmp_path / "eval" / "eval_metrics.json").read_text())["epoch"] == 3


def test_bad_checkpoints_are_reported(trained: tuple[Path, dict], data: Path, tmp_path: Path) -> None:
    out, _ = trained
    cfg = tiny_config(data, tmp_path / "o")
    missing = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError, match="does not exist"):
        run(cfg, resume=str(missing))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(os.urandom(256))
    with pytest.raises(CheckpointError, match="garbage.pth cannot be read"):
        run(cfg, resume=str(garbage), eval_only=True)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((out / "checkpoint_last.pth").read_bytes()[:4000])
    with pytest.raises(CheckpointError, match="truncated.pth cannot be read"):
        run(cfg, resume=str(truncated), eval_only=True)
    weights_only = tmp_path / "weights.pth"
    torch.save(torch.load(out / "checkpoint_last.pth", weights_only=True)["model"], weights_only)
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        run(cfg, resume=str(weights_only))
    wider = tiny_config(data, tmp_path / "w", model_kwargs={"embed_dim": 48})
    with pytest.raises(CheckpointError, match="does not fit model"):
        run(wider, resume=str(out / "checkpoint_last.pth"), eval_only=True)
    with pytest.raises(CheckpointError, match="eval-only needs a checkpoint"):
        run(cfg, eval_only=True)


# ----------------------------------------------------------------------------- distributed


@pytest.mark.slow
def test_two_process_gloo_training(data: Path, tmp_path: Path) -> None:
    cfg = tiny_config(data, tmp_path / "ddp", epochs=1, repeated_aug=2, batch_size=8, eval_batch_size=5)
    proc = torchrun_imagenet(cfg, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    log = (tmp_path / "ddp" / "log.txt").read_text()
    assert "2 process(es)" in log and "total batch 16" in log
    # 96 images, 2 repeats, per rank 48 selected -> 6 batches of 8 per rank
    assert "epoch 1/1  eta: " in log and "iter: 6/6" in log
    assert math.isfinite(metrics["history"][0]["train_loss"])
    # every val image counted once across the two shards (24 = 4 classes x 6)
    assert "(center, 24 images)" in log and "(full, 24 images)" in log
    assert (tmp_path / "ddp" / "checkpoint_last.pth").is_file()


def test_eval_only_with_weights_file(trained: tuple[Path, dict], data: Path, tmp_path: Path) -> None:
    """``weights`` goes through ``mvit_backbone.load_checkpoint`` (a bare state dict here)."""
    out, metrics = trained
    weights = tmp_path / "model_only.pth"
    torch.save(torch.load(out / "checkpoint_last.pth", weights_only=True)["model"], weights)
    result = run(tiny_config(data, tmp_path / "e", weights=str(weights)), eval_only=True)
    assert result["checkpoint"] == str(weights) and result["epoch"] == -1
    assert result["val_center_top1"] == pytest.approx(metrics["history"][-1]["val_center_top1"], abs=1e-9)


@pytest.mark.slow
def test_default_command_reaches_90_percent_in_10_minutes(tmp_path: Path) -> None:
    """The README's no-argument command (synthetic data, mvitv2_nano at 64x64), from scratch:
    dataset writing + training + evaluation within 10 minutes, >= 90% top-1 (centre crop)."""
    out, data_dir = tmp_path / "out", tmp_path / "synthetic"
    cmd = [sys.executable, str(ENTRY), "--output-dir", str(out), "--set", f"synthetic_dir={data_dir}"]
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO)
    wall = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    final = json.loads((out / "metrics.json").read_text())["final"]
    assert final["val_center_top1"] >= 90.0, final
    assert wall < 600, f"took {wall:.0f}s"
    assert (out / "training_curve.png").is_file()
