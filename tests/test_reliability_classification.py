"""Classification training with broken data, corrupt checkpoints, a NaN loss, typed config
overrides and deterministic runs: real files on disk, the real training entry point."""
from __future__ import annotations

import importlib.util
import logging
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from timm.data.distributed_sampler import RepeatAugSampler

from mvit_backbone.checkpoint import read_checkpoint
from mvit_backbone.classification.train import (
    CheckpointError,
    CorruptImageError,
    TrainConfig,
    build_dataset,
    load_config,
    run,
)
from mvit_backbone.data.checks import DatasetError
from mvit_backbone.data.image_folder import write_synthetic_image_folder
from mvit_backbone.engine.loop import TrainingStopped

from helpers.torchrun import torchrun_imagenet

REPO = Path(__file__).resolve().parents[1]
ENTRY = REPO / "projects" / "MViTv2" / "train_imagenet.py"


def tiny(data: Path, out: Path, **overrides) -> TrainConfig:
    """nano MViTv2 at 32x32, 2 classes, no augmentation randomness beyond the crop."""
    values = dict(
        data_dir=str(data), output_dir=str(out), model="mvitv2_nano", img_size=32, epochs=2,
        warmup_epochs=1, batch_size=4, base_lr=1e-3, base_batch_size=4, auto_augment="",
        color_jitter=0.0, hflip=0.0, reprob=0.0, mixup=0.0, cutmix=0.0, label_smoothing=0.0,
        repeated_aug=1, num_workers=0, threads=1, log_period=1, eval_protocols=("center",),
    )
    values.update(overrides)
    return TrainConfig.from_dict(values)


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    return write_synthetic_image_folder(tmp_path / "data", train_per_class=8, val_per_class=2,
                                        image_size=36, num_classes=2, seed=0)


def truncate(path: Path) -> None:
    """Cut an image file to half its bytes (a torn copy): the header still parses."""
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])


def train_order(root: Path, epoch: int, rank: int = 0, world_size: int = 1) -> list[Path]:
    """The order the training sampler of process ``rank`` visits the train images in ``epoch``
    (seed 0)."""
    ds = build_dataset(root, "train", None)
    sampler = RepeatAugSampler(ds, num_replicas=world_size, rank=rank, shuffle=True,
                               num_repeats=1, selected_round=0)
    sampler.set_epoch(epoch)
    return [Path(ds.samples[i][0]) for i in sampler]


# ----------------------------------------------------------------------------- data


def test_grayscale_and_rgba_images_are_converted(data: Path) -> None:
    cls = sorted((data / "train").iterdir())[0]
    Image.new("L", (30, 20), 128).save(cls / "gray.png")
    Image.new("RGBA", (20, 30), (10, 20, 30, 100)).save(cls / "rgba.png")
    Image.new("P", (25, 25)).save(cls / "palette.png")
    ds = build_dataset(data, "train", None)
    for name in ("gray.png", "rgba.png", "palette.png"):
        index = [Path(p).name for p, _ in ds.samples].index(name)
        assert ds[index][0].mode == "RGB"


def test_empty_class_folder_names_split_and_root(data: Path) -> None:
    (data / "val" / "zz_empty_class").mkdir()
    with pytest.raises(DatasetError, match=f"image folder {data / 'val'}.*zz_empty_class"):
        build_dataset(data, "val", None)


def test_zero_byte_file_is_an_error_or_skipped_at_construction(data: Path, caplog) -> None:
    empty = sorted((data / "train").glob("*/00003.png"))[0]
    empty.write_bytes(b"")
    with pytest.raises(DatasetError, match=f"{empty}: is empty"):
        build_dataset(data, "train", None)
    with caplog.at_level(logging.WARNING, logger="mvit_backbone.data"):
        ds = build_dataset(data, "train", None, skip_bad_data=True)
    assert len(ds) == 15 and str(empty) not in {p for p, _ in ds.samples}
    assert str(empty) in caplog.text and "skipped 1 broken item" in caplog.text


def test_truncated_or_missing_image_named_when_read_or_skipped(data: Path, caplog) -> None:
    files = sorted((data / "val").glob("*/*.png"))
    truncate(files[1])
    ds = build_dataset(data, "val", None)
    files[3].unlink()  # vanished after the folder was listed
    with pytest.raises(CorruptImageError, match=str(files[1])):
        ds[1]
    with pytest.raises(CorruptImageError, match=f"{files[3]}: .*No such file"):
        ds[3]
    checked = build_dataset(data, "val", None, skip_bad_data=True, substitute=False)
    with caplog.at_level(logging.WARNING, logger="mvit_backbone.data"):
        assert checked[1] is None  # evaluation leaves it out
    assert checked.skipped.count == 1 and str(files[1]) in caplog.text
    training = build_dataset(data, "val", None, skip_bad_data=True)
    assert training[1][1] == training.samples[2][1]  # the next readable image takes its place


def test_check_data_finds_undecodable_files_before_training(data: Path, tmp_path: Path) -> None:
    bad = sorted((data / "val").glob("*/*.png"))[0]
    truncate(bad)
    with pytest.raises(DatasetError, match=f"(?s)1 broken item.*{bad}: cannot be decoded"):
        run(tiny(data, tmp_path / "o", check_data=True))
    assert not (tmp_path / "o" / "checkpoint_last.pth").exists()  # nothing trained


@pytest.mark.slow
def test_broken_val_image_stops_after_the_epoch_is_saved(data: Path, tmp_path: Path) -> None:
    bad = sorted((data / "val").glob("*/*.png"))[-1]
    truncate(bad)
    out = tmp_path / "o"
    with pytest.raises(TrainingStopped, match=f"bad data: cannot decode image file {bad}.*"
                                              f"saved in {out / 'checkpoint_last.pth'}"):
        run(tiny(data, out, epochs=1))
    ckpt = read_checkpoint(out / "checkpoint_last.pth")
    assert ckpt["epoch"] == 0 and ckpt["partial_epoch_iterations"] == 0  # the epoch is kept
    # skipped: the run finishes, the evaluation counts the readable images only
    metrics = run(tiny(data, tmp_path / "skip", epochs=1, skip_bad_data=True))
    assert math.isfinite(metrics["final"]["val_center_top1"])
    log = (tmp_path / "skip" / "log.txt").read_text()
    assert "(center, 3 images)" in log and "skipped 1 image(s)" in log


@pytest.mark.slow
def test_broken_train_image_mid_epoch_saves_the_last_good_state(data: Path, tmp_path: Path) -> None:
    """Epoch 1 trains; a train image breaks; epoch 2 stops at the batch holding it, saving the
    two finished iterations of epoch 2; after the file is fixed, --resume continues there."""
    out = tmp_path / "o"
    run(tiny(data, out, epochs=1))
    bad = train_order(data, epoch=1)[2 * 4 + 1]  # in the third batch of epoch 2
    good = bad.read_bytes()
    truncate(bad)
    with pytest.raises(TrainingStopped, match=f"cannot decode image file {bad}.*last good state "
                                              "is saved"):
        run(tiny(data, out, epochs=2), resume="auto")
    ckpt = read_checkpoint(out / "checkpoint_last.pth")
    assert (ckpt["epoch"], ckpt["partial_epoch_iterations"]) == (0, 2)
    bad.write_bytes(good)
    metrics = run(tiny(data, out, epochs=2), resume="auto")
    resumed = (out / "log.txt").read_text().split("resumed from")[-1]
    assert resumed.startswith(f" {out / 'checkpoint_last.pth'} at epoch 1, iteration 2 of the epoch")
    assert "iter: 7/8" in resumed and "iter: 6/8" not in resumed
    assert [h["epoch"] for h in metrics["history"]] == [0, 1]
    # skipping instead: the run goes through and says how many it skipped
    truncate(bad)
    metrics = run(tiny(data, tmp_path / "skip", epochs=2, skip_bad_data=True))
    assert len(metrics["history"]) == 2
    assert "skipped 2 image(s)" in (tmp_path / "skip" / "log.txt").read_text()  # once an epoch


def test_broken_image_in_one_process_stops_both_and_saves(data: Path, tmp_path: Path) -> None:
    """torchrun, 2 gloo processes: an image of rank 1's second batch is torn. Both processes
    stop at that batch (rank 0 does not wait forever in DDP's all-reduce); rank 0 saves the one
    finished iteration and its message names rank 1 and the file."""
    bad = train_order(data, epoch=0, rank=1, world_size=2)[4 + 1]
    truncate(bad)
    out = tmp_path / "ddp"
    proc = torchrun_imagenet(tiny(data, out, epochs=1), tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"training stopped on bad data: rank 1: cannot decode image file {bad}" in output
    assert f"the last good state is saved in {out / 'checkpoint_last.pth'}" in output
    ckpt = read_checkpoint(out / "checkpoint_last.pth")
    assert (ckpt["epoch"], ckpt["partial_epoch_iterations"]) == (-1, 1)


# ----------------------------------------------------------------------------- checkpoints


@pytest.mark.slow
def test_checkpoint_is_written_before_evaluation_and_atomically(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    run(tiny(data, out, epochs=2))
    assert {p.name for p in out.iterdir() if "checkpoint" in p.name} == {
        "checkpoint_last.pth", "checkpoint_previous.pth"}  # no temporary file is left
    log = (out / "log.txt").read_text()
    assert read_checkpoint(out / "checkpoint_previous.pth")["epoch"] == 0
    # resuming puts the evaluation results (written after the checkpoint) back in the history
    metrics = run(tiny(data, out, epochs=2), resume="auto")
    assert all("val_center_top1" in h for h in metrics["history"])
    assert "epoch 1/2 done" in log


@pytest.mark.slow
def test_resume_falls_back_from_a_truncated_last_checkpoint(data: Path, tmp_path: Path, caplog) -> None:
    out = tmp_path / "o"
    run(tiny(data, out, epochs=2))
    last = out / "checkpoint_last.pth"
    last.write_bytes(last.read_bytes()[:5000])
    (out / ".checkpoint_last.pth.tmp").write_bytes(b"half a write")  # a killed write's leftover
    with caplog.at_level(logging.WARNING, logger="mvit_backbone.checkpoint.saving"):
        metrics = run(tiny(data, out, epochs=2), resume="auto")
    assert f"checkpoint {last} cannot be used" in caplog.text
    assert f"resuming from {out / 'checkpoint_previous.pth'}, the newest intact" in caplog.text
    assert [h["epoch"] for h in metrics["history"]] == [0, 1]  # epoch 2 trained again
    assert "resumed from" in (out / "log.txt").read_text()
    # nothing intact at all: an error that lists each file, not a fresh start over them
    for p in out.glob("checkpoint_*.pth"):
        p.write_bytes(b"")
    with pytest.raises(CheckpointError, match="no intact checkpoint.*the file is empty"):
        run(tiny(data, out, epochs=2), resume="auto")


def test_non_finite_loss_stops_naming_iteration_and_keeps_the_checkpoint(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    run(tiny(data, out, epochs=1))
    last = out / "checkpoint_last.pth"
    ckpt = read_checkpoint(last)
    ckpt["model"]["head.projection.weight"][0, 0] = math.nan  # weights that give a NaN loss
    torch.save(ckpt, last)
    before = last.read_bytes()
    with pytest.raises(TrainingStopped, match=r"non-finite loss nan at iteration 4 \(loss terms: "
                                              rf"none\); the last good checkpoint {last} is kept"):
        run(tiny(data, out, epochs=2), resume="auto")
    assert last.read_bytes() == before


# ----------------------------------------------------------------------------- config, determinism


def test_overrides_parse_numbers_and_name_the_key_of_a_wrong_type(tmp_path: Path) -> None:
    cfg = load_config(None, {"base_lr": "1e6", "warmup_start_lr": "1.0e-4", "epochs": "3",
                             "drop_path": None, "betas": [0.9, 0.95]})
    assert cfg.base_lr == 1e6 and cfg.warmup_start_lr == 1e-4 and cfg.epochs == 3
    assert isinstance(cfg.base_lr, float) and cfg.betas == (0.9, 0.95)
    for key, value in (("base_lr", "abc"), ("epochs", 2.5), ("amp", "yes"), ("betas", 3)):
        with pytest.raises(ValueError, match=f"config key '{key}' must be"):
            load_config(None, {key: value})
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("base_lr: 1e-3\nweight_decay: 5e-2\n")  # YAML 1.1 strings
    assert load_config(yaml_file).weight_decay == 0.05
    spec = importlib.util.spec_from_file_location("train_imagenet", ENTRY)
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    with pytest.raises(SystemExit) as stop:  # at start-up, before any data or model
        entry.main(["--set", "base_lr=fast", "--output-dir", str(tmp_path)])
    assert str(stop.value) == "error: config key 'base_lr' must be float, got 'fast' (str)"


@pytest.mark.slow
def test_two_seeded_deterministic_runs_give_identical_losses(data: Path, tmp_path: Path) -> None:
    losses = []
    try:
        for name in ("a", "b"):
            metrics = run(tiny(data, tmp_path / name, epochs=1, deterministic=True, seed=3,
                               train_scale=(0.5, 1.0), hflip=0.5))
            log = (tmp_path / name / "log.txt").read_text()
            losses.append([line.split("loss: ")[1].split()[0] for line in log.splitlines()
                           if "iter: " in line])
            losses[-1].append(metrics["history"][0]["train_loss"])
    finally:
        torch.use_deterministic_algorithms(False)
    assert len(losses[0]) == 5 and losses[0] == losses[1]
