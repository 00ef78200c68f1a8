"""Training and multi-view evaluation of the video models (MViTv1 App. D, MViTv2 App. B.4).

The data are list files of videos (:mod:`mvit_backbone.video.data`: Kinetics, Something-
Something v2, Charades); with none given, a synthetic motion dataset is written as mp4 files
(:mod:`mvit_backbone.data.video_synthetic`). The recipe pieces are the ImageNet trainer's:
the one :class:`~mvit_backbone.engine.loop.TrainLoop`, the warm-up + half-cosine schedule
stepped every iteration, the recipes' weight-decay groups (AdamW, or SGD for SSv2 fine-tuning),
timm's mixup/cutmix with label smoothing (applied with the same box to every frame), RandAugment
and random erasing per clip, repeated augmentation through timm's ``RepeatAugSampler``, AMP on
CUDA, torchrun with NCCL or gloo. Charades is multi-label: per-class sigmoid and binary
cross-entropy, no mixup, and test scores are the maximum over views (MViTv1 D.3).

Every ``eval_period`` epochs the model is evaluated on ``val_num_clips`` x ``val_num_crops``
views per video; after training, and with ``eval_only``, on the test views
(``test_num_clips`` x ``test_num_crops``, the paper's protocol). Rank 0 writes, under
``output_dir``: ``checkpoint_last.pth`` every epoch before evaluation (the one before stays as
``checkpoint_previous.pth``), ``log.txt``, tensorboard scalars in ``tb/``, ``history.json``,
``training_curve.png`` and ``metrics.json`` (``eval_metrics.json`` for ``eval_only``). Resuming,
checkpoints and the stop on an unreadable video (after saving the last good state) are the
shared :class:`~mvit_backbone.engine.epochs.EpochRun`'s.

:func:`run` is the entry point; ``projects/MViTv2/train_video.py`` only parses arguments.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Subset

from ..classification.models import create_model
from ..data.checks import DatasetError
from ..data.video import VideoDecodeError
from ..data.video_synthetic import write_synthetic_videos
from ..engine.epochs import EpochRun, EpochTrainConfig, run_epochs
from ..engine.optim import make_optimizer
from ..engine.runs import DistInfo, all_reduce_sum, load_yaml_config, plot_history
from ..engine.schedule import recipe_lr_multiplier
from .data import (DATASET_KINDS, KINETICS_MEAN, KINETICS_STD, TestClipTransform,
                   TrainClipTransform, VideoClipDataset, read_video_list)
from .metrics import evaluate_views

logger = logging.getLogger("mvit_backbone.video.train")

# a video that cannot be decoded (and skip_unreadable is off) stops training with its name
DATA_ERRORS = (DatasetError, VideoDecodeError)


@dataclass
class VideoTrainConfig(EpochTrainConfig):
    """Every setting of a run: the shared :class:`~mvit_backbone.engine.epochs.EpochTrainConfig`
    with the video recipe's defaults, and the fields below. YAML configs and ``--set key=value``
    fill these fields."""

    # data: list files of "<path> <label>" lines; empty train_list -> the synthetic dataset
    dataset: str = "kinetics"  # "kinetics" | "ssv2" | "charades" (sampling and labels)
    train_list: str = ""
    val_list: str = ""
    data_root: str = ""  # relative paths of the lists start here (default: the list's folder)
    classes_file: str = ""  # class names, one a line (default: the synthetic set's, or numbers)
    num_classes: int = 0  # 0: the classes file's length, else the largest label + 1
    skip_unreadable: bool = False  # skip (and count) videos that cannot be decoded
    synthetic_dir: str = "datasets/synthetic_videos"
    synthetic_train_per_class: int = 120
    synthetic_val_per_class: int = 30
    synthetic_frame_size: int = 64
    synthetic_frames: int = 20
    output_dir: str = "output/mvitv2_video"
    # clips
    num_frames: int = 16  # T
    sampling_rate: int = 4  # tau (frames of the video between two frames of a clip)
    img_size: int = 224  # crop size
    test_short_side: int = 256  # shorter side before the test crops
    val_num_clips: int = 1  # views per video at the per-epoch evaluation
    val_num_crops: int = 1
    test_num_clips: int = 5  # views per video at the final test and in eval_only (K x crops)
    test_num_crops: int = 3
    mean: tuple = KINETICS_MEAN
    std: tuple = KINETICS_STD
    # model
    model: str = "mvitv2_s_16x4"
    head_dropout: float | None = None  # None: the model's default
    # optimisation
    optimizer: str = "adamw"  # "adamw" | "sgd"
    momentum: float = 0.9  # sgd only
    epochs: int = 200
    warmup_epochs: float = 30.0
    batch_size: int = 8  # per process
    base_lr: float = 1.6e-3
    base_batch_size: int = 512
    end_lr: float = 1.6e-5
    # augmentation
    auto_augment: str = "rand-m7-n4-mstd0.5-inc1"
    interpolation: str = "bilinear"
    repeated_aug: int = 2
    # run
    eval_period: int = 1  # evaluate every N epochs (and after the last)

    def __post_init__(self):
        if self.dataset not in DATASET_KINDS:
            raise ValueError(f"dataset must be one of {DATASET_KINDS}, got {self.dataset!r}")
        if self.dataset == "charades" and (self.mixup > 0 or self.cutmix > 0):
            raise ValueError("Charades is multi-label and trains without mixup/cutmix "
                             "(MViTv1 App. D.3): set mixup: 0 and cutmix: 0")
        if self.dataset == "ssv2" and self.hflip > 0:
            raise ValueError("Something-Something labels name directions ('left to right'): "
                             "train without flipping, hflip: 0")

    @property
    def multi_label(self) -> bool:
        return self.dataset == "charades"


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> VideoTrainConfig:
    """Read a YAML config (``None``: the dataclass defaults) and apply ``overrides``."""
    return load_yaml_config(VideoTrainConfig, path, overrides)


# --------------------------------------------------------------------------- data


def dataset_lists(cfg: VideoTrainConfig) -> tuple[Path, Path, str, list[str] | None]:
    """(train list, val list, data root, class names or None): the config's, or the synthetic
    dataset's (written if absent)."""
    if cfg.train_list or cfg.val_list:
        if not (cfg.train_list and cfg.val_list):
            raise ValueError("give both train_list and val_list (or neither, for the synthetic set)")
        names = None
        if cfg.classes_file:
            names = [n.strip() for n in Path(cfg.classes_file).read_text().splitlines() if n.strip()]
        return Path(cfg.train_list), Path(cfg.val_list), cfg.data_root, names
    root = write_synthetic_videos(cfg.synthetic_dir, train_per_class=cfg.synthetic_train_per_class,
                                  val_per_class=cfg.synthetic_val_per_class,
                                  frame_size=cfg.synthetic_frame_size,
                                  frames=cfg.synthetic_frames, seed=cfg.seed)
    names = (root / "classes.txt").read_text().split()
    return root / "train.csv", root / "val.csv", str(root), names


def train_transform(cfg: VideoTrainConfig) -> TrainClipTransform:
    return TrainClipTransform(cfg.img_size, scale=cfg.train_scale, ratio=cfg.train_ratio,
                              hflip=cfg.hflip, auto_augment=cfg.auto_augment, reprob=cfg.reprob,
                              mean=cfg.mean, std=cfg.std, interpolation=cfg.interpolation)


def test_transform(cfg: VideoTrainConfig, num_crops: int) -> TestClipTransform:
    return TestClipTransform(cfg.img_size, cfg.test_short_side, num_crops, mean=cfg.mean,
                             std=cfg.std, interpolation=cfg.interpolation)


def mix_clips(mixup, clips: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """timm's ``Mixup`` on clips (B, C, T, H, W): frames are folded into channels, so mixup
    blends whole clips and cutmix pastes the same box into every frame. Returns the mixed clips
    and the soft targets (B, num_classes)."""
    b, c, t, h, w = clips.shape
    mixed, target = mixup(clips.reshape(b, c * t, h, w), target)
    return mixed.reshape(b, c, t, h, w), target


# --------------------------------------------------------------------------- the run


def build_model(cfg: VideoTrainConfig, num_classes: int) -> nn.Module:
    """``create_model(cfg.model)`` with ``model_kwargs`` and the config's drop rates."""
    kwargs = dict(cfg.model_kwargs)
    if cfg.drop_path is not None:
        kwargs.setdefault("drop_path_rate", cfg.drop_path)
    if cfg.head_dropout is not None:
        kwargs.setdefault("head_dropout", cfg.head_dropout)
    return create_model(cfg.model, num_classes=num_classes, **kwargs)


class _Run(EpochRun):
    """State of one video training or evaluation run (one per process)."""

    skip_option = "--skip-unreadable"

    def __init__(self, cfg: VideoTrainConfig, info: DistInfo):
        super().__init__(cfg, info, logger)
        # the synthetic videos are written by rank 0 while the others wait
        train_list, val_list, data_root, names = self.main_first(lambda: dataset_lists(cfg))
        self.train_items = read_video_list(train_list, data_root or None, cfg.multi_label)
        self.val_items = read_video_list(val_list, data_root or None, cfg.multi_label)
        num_classes = cfg.num_classes or (len(names) if names else 1 + max(
            label for item in self.train_items + self.val_items for label in item.labels))
        self.classes = names or [str(i) for i in range(num_classes)]
        if len(self.classes) != num_classes:
            raise ValueError(f"{len(self.classes)} class names for {num_classes} classes")
        self.model = build_model(cfg, num_classes).to(info.device)
        logger.info("model %s: %.2fM parameters, %d classes, %d train / %d val videos (%s), "
                    "clips %dx%d of %d², %d process(es), %d thread(s) each, device %s",
                    cfg.model, sum(p.numel() for p in self.model.parameters()) / 1e6, num_classes,
                    len(self.train_items), len(self.val_items), cfg.dataset, cfg.num_frames,
                    cfg.sampling_rate, cfg.img_size, info.world_size, self.threads, info.device)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _dataset(self, items, train: bool, num_clips: int = 1, num_crops: int = 1) -> VideoClipDataset:
        cfg = self.cfg
        transform = train_transform(cfg) if train else test_transform(cfg, num_crops)
        return VideoClipDataset(items, self.num_classes, cfg.dataset, cfg.num_frames,
                                cfg.sampling_rate, transform, train=train, num_clips=num_clips,
                                skip_unreadable=cfg.skip_unreadable)

    def evaluate(self, model: nn.Module, num_clips: int, num_crops: int, prefix: str) -> dict[str, float]:
        """Multi-view scores of the val list: ``{"<prefix>_<top1|top5|map|loss|...>": value}``."""
        ds = self._dataset(self.val_items, train=False, num_clips=num_clips, num_crops=num_crops)
        shard = Subset(ds, range(self.info.rank, len(ds), self.info.world_size))
        loader = DataLoader(shard, batch_size=self.cfg.eval_batch_size or self.cfg.batch_size,
                            shuffle=False, num_workers=self.cfg.num_workers)
        m = evaluate_views(model, loader, ds.num_videos, self.num_classes, self.cfg.multi_label,
                           self.info, self.amp_ctx)
        scores = (f"mAP {m['map']:.2f}%" if "map" in m else
                  f"top-1 {m.get('top1', 0):.2f}%  top-5 {m.get('top5', 0):.2f}%")
        logger.info("%s (%d videos x %d clips x %d crops): %s  loss %.4f%s", prefix, m["videos"],
                    num_clips, num_crops, scores, m["loss"],
                    f"  ({m['skipped']} unreadable videos skipped)" if m["skipped"] else "")
        return {f"{prefix}_{k}": v for k, v in m.items()}

    def test(self, model: nn.Module) -> dict[str, float]:
        return self.evaluate(model, self.cfg.test_num_clips, self.cfg.test_num_crops, "test")

    def plot(self, history: list[dict[str, Any]], path: Path) -> None:
        """Training and validation loss, and the validation score (top-1, or mAP for
        multi-label) per evaluated epoch, as a PNG."""
        score = "map" if self.cfg.multi_label else "top1"
        plot_history(history, path, {"train": "train_loss", "val": "val_loss"},
                     {f"val {'mAP' if score == 'map' else 'top-1'}": f"val_{score}"},
                     "mAP (%)" if score == "map" else "accuracy (%)")

    def eval_only(self, resume: str | None) -> dict[str, Any]:
        """Test a training checkpoint (or ``cfg.weights``) on the test views."""
        source, epoch = self.load_for_eval(resume)
        return self.write_eval_metrics({"checkpoint": source, "epoch": epoch,
                                        **self.test(self.model)})

    def train(self, resume: str | None) -> dict[str, Any]:
        cfg, info = self.cfg, self.info
        train_set = self._dataset(self.train_items, train=True)
        loader = self.train_loader(train_set, "videos")
        mixup, criterion = self.mixup_and_criterion(cfg.multi_label)

        if cfg.weights:
            self.load_weights()
        model = self.model
        peak = cfg.peak_lr(info.world_size)
        optimizer = make_optimizer(model, cfg.optimizer, peak, cfg.weight_decay,
                                   cfg.zero_decay_pos_cls, tuple(cfg.betas), cfg.momentum)
        ddp = self.distributed(model)
        skipped = [0]  # unreadable training videos replaced this epoch (this process)

        def loss_fn(batch: dict) -> torch.Tensor:
            skipped[0] += int(batch["skipped"].sum())
            clips = batch["clip"].to(info.device, non_blocking=True)
            target = batch["label"].to(info.device, non_blocking=True)
            if mixup is not None:
                clips, target = mix_clips(mixup, clips, target)
            return criterion(ddp(clips), target)

        schedule = recipe_lr_multiplier(cfg.epochs, cfg.warmup_epochs, peak, cfg.base_lr,
                                        cfg.warmup_start_lr, cfg.end_lr, cfg.scale_start_end_lr)
        loop = self.train_loop(ddp, optimizer, loss_fn, schedule)
        resumed = self.resume(resume, optimizer)
        history, skip_batches = resumed.history, resumed.skip_batches

        tb = self.tensorboard()
        iters = len(loader)
        logger.info("training %d epochs from epoch %d: %d iterations/epoch, total batch %d, "
                    "peak lr %.3g (%s), warm-up %.1f epochs", cfg.epochs, resumed.start_epoch,
                    iters, cfg.batch_size * info.world_size, peak, cfg.optimizer,
                    cfg.warmup_epochs)
        progress = self.progress(iters, resumed)

        def state(epoch: int, partial_epoch_iterations: int = 0) -> dict[str, Any]:
            return self.training_state(optimizer, epoch, history, partial_epoch_iterations)

        t_start = time.time()
        for epoch in range(resumed.start_epoch, cfg.epochs):
            t_epoch, skipped[0] = time.time(), 0
            stats = self.run_epoch(loop, loader, progress, epoch, skip_batches, state,
                                   self.step_logger(tb), DATA_ERRORS)
            skip_batches = 0
            # every process runs the same number of equal batches (drop_last)
            loss_total, skipped_total = all_reduce_sum([stats["loss"], skipped[0]], info)
            record: dict[str, Any] = {"epoch": epoch, "lr": peak * schedule(epoch / cfg.epochs),
                                      "train_loss": loss_total / info.world_size,
                                      "train_skipped": int(skipped_total),
                                      "epoch_time_s": time.time() - t_epoch}
            history.append(record)
            # the epoch's training is saved before its evaluation, which may fail (a broken
            # validation video) or be interrupted
            if info.is_main:
                self.save(state(epoch), epoch)
            if (epoch + 1) % cfg.eval_period == 0 or epoch + 1 == cfg.epochs:
                with self.stop_on_bad_eval_data(DATA_ERRORS):
                    record.update(self.evaluate(model, cfg.val_num_clips, cfg.val_num_crops, "val"))
            record["elapsed_s"] = time.time() - t_start
            logger.info("epoch %d/%d done in %.1fs: train loss %.4f", epoch + 1, cfg.epochs,
                        record["epoch_time_s"], record["train_loss"])
            if record["train_skipped"]:
                logger.warning("epoch %d: %d unreadable training videos skipped", epoch + 1,
                               record["train_skipped"])
            if info.is_main:
                self.write_history(history, tb, self.plot)
        metrics: dict[str, Any] = {"epochs": cfg.epochs, "history": history}
        with self.stop_on_bad_eval_data(DATA_ERRORS):
            metrics["final"] = self.test(model)
        return self.finish(metrics, tb, t_start)


def run(cfg: VideoTrainConfig, resume: str | None = None, eval_only: bool = False) -> dict[str, Any]:
    """Train (or with ``eval_only`` test) under the current process group; returns metrics.

    ``resume``: ``None`` (fresh start), ``"auto"`` (the newest intact checkpoint of
    ``output_dir``, if any) or a checkpoint path (must exist).
    """
    return run_epochs(lambda info: _Run(cfg, info), resume, eval_only)
